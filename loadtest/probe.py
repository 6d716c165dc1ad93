"""A reader of the room-stats topic in a process of its own, that only notes when each window arrives.

The harness's collector keeps every output record and checks it (duplicates, conflicts, the
ground truth's keys), in the event loop that also sends the live traffic: a record it fetched
late, because the loop was busy sending or checking, got a late arrival time. A dashboard
reading room-stats does none of that. The probe reads ``read_committed`` (as any consumer of a
transactional producer must) from the topic's end as it starts, and writes, per record, the
wall time of the fetch that brought it, the window start and the room id to a file:
``<d`` arrival (unix seconds), ``<q`` window start, ``<H`` length, then the room id in UTF-8.

``python -m loadtest.probe BOOTSTRAP TOPIC FILE``: prints ``ready`` once it holds a position on
every partition, and stops when its standard input closes (so it cannot outlive the harness).
"""

from __future__ import annotations

import asyncio
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import orjson
from aiokafka import AIOKafkaConsumer

from ._packed import SpilledMap, packed_floats

_HEAD = struct.Struct("<dqH")


def write_record(out: BinaryIO, arrival: float, window_start: int, room_id: bytes) -> None:
    out.write(_HEAD.pack(arrival, window_start, len(room_id)))
    out.write(room_id)


def read_records(path: Path) -> Iterator[tuple[str, int, float]]:
    """``(room id, window start, arrival)`` of each record of a probe's file, in arrival order.

    A record cut short at the end (the probe killed while writing) is left out."""
    head = _HEAD.size
    with path.open("rb") as f:
        while True:
            raw = f.read(head)
            if len(raw) < head:
                return
            arrival, ws, n = _HEAD.unpack(raw)
            room = f.read(n)
            if len(room) < n:
                return
            yield room.decode(), ws, arrival


def arrivals_of(path: Path) -> SpilledMap[tuple[str, int], float]:
    """First arrival per window ``(room id, window start)`` in a probe's file."""
    first = packed_floats()
    batch: dict[tuple[str, int], float] = {}
    for room, ws, arrival in read_records(path):
        key = (room, ws)
        if key not in batch:
            batch[key] = arrival
        if len(batch) >= 20_000:
            _keep_first(first, batch)
    _keep_first(first, batch)
    return first


def _keep_first(into: SpilledMap[tuple[str, int], float], batch: dict[tuple[str, int], float]) -> None:
    keys = list(batch)
    for key, held in zip(keys, into.get_many(keys), strict=True):
        if held is None:
            into[key] = batch[key]
    batch.clear()


async def follow(bootstrap: str, topic: str, path: Path, stop: asyncio.Event) -> int:
    """Read ``topic`` from its end until ``stop``; returns the records written to ``path``."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,  # every partition, no group
        auto_offset_reset="latest",
        isolation_level="read_committed",
        enable_auto_commit=False,
        metadata_max_age_ms=2_000,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    written = 0
    try:
        deadline = time.monotonic() + 30
        while not consumer.assignment():
            if time.monotonic() > deadline:
                raise SystemExit(f"probe: topic {topic} has no partitions")
            await asyncio.sleep(0.1)
        for tp in consumer.assignment():
            await consumer.position(tp)  # resolved to the end now: "ready" means from here on
        print("ready", flush=True)
        with path.open("wb") as out:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=50, max_records=10_000)
                now = time.time()  # the fetch's time: nothing here waits on the records' handling
                for messages in batches.values():
                    for m in messages:
                        try:
                            ws = orjson.loads(m.value)["window_start"]
                        except (orjson.JSONDecodeError, KeyError, TypeError):
                            continue  # not a room-stats record: no window to time
                        write_record(out, now, ws, m.key or b"")
                        written += 1
    finally:
        await consumer.stop()
    return written


async def _main(bootstrap: str, topic: str, path: Path) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def watch_stdin() -> None:
        while os.read(0, 65_536):  # empty at EOF: the harness closed the pipe, or is gone
            pass
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    return await follow(bootstrap, topic, path, stop)


class Probe:
    """The probe as a child process of the harness."""

    def __init__(self, bootstrap: str, topic: str, path: Path) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "loadtest.probe", bootstrap, topic, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    async def ready(self, timeout_s: float = 60) -> None:
        """Wait for the probe to hold its positions; raise if it exits or takes too long."""
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), timeout_s)
        if line.strip() != b"ready":
            self.kill()
            raise RuntimeError(f"the latency probe did not start (exit {self.proc.wait()}): {line!r}")

    def stop(self, timeout_s: float = 30) -> SpilledMap[tuple[str, int], float]:
        """Stop the probe and read what it saw (first arrival per window)."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise RuntimeError("the latency probe did not stop") from None
        finally:
            self.kill()
        if code != 0:
            raise RuntimeError(f"the latency probe exited with {code}")
        return arrivals_of(self.path)

    def kill(self) -> None:
        """Make sure the probe is gone and its pipes are closed."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


def main(argv: list[str]) -> int:
    bootstrap, topic, path = argv
    written = asyncio.run(_main(bootstrap, topic, Path(path)))
    print(f"probe: {written:,} records", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
