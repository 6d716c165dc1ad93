"""Memory and restore cost of room state (run by hand; not a test).

    python -m loadtest.bench_memory [--rooms 100000] [--events-per-room 20]
    python -m loadtest.bench_memory --census [--rooms 100000]
    python -m loadtest.bench_memory --long-lived WINDOWS [--rooms N] [--new-viewers 5]
        [--plain] [--no-spikes] [--no-trim]

Builds one task with ``--rooms`` active rooms (viewer events from distinct
users, some orders and gifts, all inside open windows), reports process RSS
growth per room while windows are open and after they closed (idle rooms),
then checkpoints every room and times a restore from those records (decode
only; reading the changelog from Kafka is measured by the load test).

``--census``: instead, the load test's backlog (``--rooms``, 1 M events, all
scenarios) through the worker's pipeline as ``loadtest.bench_pipeline`` drives it,
then the bytes of Python objects each field of a room holds, per room (an object
shared by rooms counted once; a HyperLogLog sketch by its serialised size, an
estimate of its C++ memory).

``--long-lived WINDOWS``: rooms live that many windows, each window bringing
``--new-viewers`` viewers never seen before (a broadcast's audience grows), so
the unique-viewer sketches of their sessions and rollups fill up; reports RSS
growth and changelog bytes per room at the end. ``--plain``: without sessions and
rollups; ``--no-spikes``: without the spike detector. A checkpoint follows every window (the
worker takes one a second), then a ``malloc_trim`` as the worker's (``--no-trim``: none); the last
checkpoint's size is reported.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
import types
from collections import Counter
from typing import Any

import psutil
from datasketches import hll_sketch, hll_union

from schemas import GiftEvent, OrderEvent, ViewerEvent
from streams.core import CoreConfig, TaskAggregator
from streams.dataplane import release_free_memory

MB = 1024 * 1024


def rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=100_000)
    parser.add_argument("--events-per-room", type=int, default=20)
    parser.add_argument("--long-lived", type=int, default=0, metavar="WINDOWS")
    parser.add_argument("--new-viewers", type=int, default=5)
    parser.add_argument("--plain", action="store_true")
    parser.add_argument("--no-spikes", action="store_true")
    parser.add_argument("--no-trim", action="store_true")
    parser.add_argument("--census", action="store_true")
    args = parser.parse_args()
    if args.census:
        census(args.rooms)
        return
    if args.long_lived:
        long_lived(
            args.rooms,
            args.long_lived,
            args.new_viewers,
            plain=args.plain,
            spikes=not args.no_spikes,
            trim=not args.no_trim,
        )
        return
    rng = random.Random(1)
    # A fixed event time, 5 s into a window: every room's 8 s of events span two windows (with a
    # start from the clock, where the boundary fell changed the state measured by up to 15 %).
    start_ms = 1_767_225_605_000  # 2026-01-01T00:00:05Z
    wall_ms = start_ms + 60_000
    # Grace covers the whole span, so rooms can be fed a chunk at a time (nothing is late) and the
    # input never has to exist in memory all at once: process RSS is then the state's.
    config = CoreConfig(grace_ms=60_000, room_idle_ms=10**12)
    task = TaskAggregator(config, sources=(0, 1, 2))
    base = rss()
    offsets = [0, 0, 0]
    for chunk in range(0, args.rooms, 2_000):
        batches: dict[int, list] = {0: [], 1: [], 2: []}
        for room in range(chunk, min(chunk + 2_000, args.rooms)):
            room_id = f"room-{room}"
            for i in range(args.events_per_room):
                ts = start_ms + rng.randrange(8_000)  # all inside one or two open windows
                roll = rng.random()
                if roll < 0.8:
                    kind = rng.choice(("join", "heartbeat", "like", "leave"))
                    ev, source = ViewerEvent(kind, room_id, f"user-{rng.randrange(10**7)}", ts), 0
                elif roll < 0.9:
                    ev, source = OrderEvent(f"o-{room}-{i}", room_id, "u", ts, "paid", 1_990, "CNY"), 1
                else:
                    ev, source = GiftEvent(f"g-{room}-{i}", room_id, "u", ts, 1, 100), 2
                offsets[source] += 1
                batches[source].append((offsets[source], ev))
        for source, items in batches.items():
            task.apply(source, items, now_ms=wall_ms)
    del batches
    counters = task.counters
    assert not counters.late, counters.late
    open_rss = rss() - base
    print(
        f"{args.rooms} rooms, {args.events_per_room} events each, windows open: "
        f"RSS +{open_rss / MB:.0f} MB ({open_rss / args.rooms:.0f} B/room)"
    )

    # Wall clock moves on past the grace period: every window closes, no room is old enough to expire.
    task.tick(now_ms=wall_ms + 10_000)
    task.tick(now_ms=wall_ms + 200_000)
    closed = task.drain()
    task.drain_sessions()  # published by the pipeline: not state
    task.drain_rollups()
    idle_rss = rss() - base
    print(
        f"after closing {len(closed)} windows (rooms idle: detector state and last window kept): "
        f"RSS +{idle_rss / MB:.0f} MB ({idle_rss / args.rooms:.0f} B/room); process RSS {rss() / MB:.0f} MB"
    )
    del closed

    t0 = time.perf_counter()
    checkpoint = task.checkpoint()
    encode_s = time.perf_counter() - t0
    size = sum(len(k) + len(v) for k, v in checkpoint.upserts)
    print(
        f"checkpoint of {len(checkpoint.upserts)} records: {encode_s:.2f}s, {size / MB:.0f} MB "
        f"({size / args.rooms:.0f} B/room)"
    )
    t0 = time.perf_counter()
    restored = TaskAggregator(config, sources=(0, 1, 2))
    restored.restore(checkpoint.upserts)
    restore_s = time.perf_counter() - t0
    print(f"restore of {len(restored.rooms)} rooms from records: {restore_s:.2f}s")


def census(rooms: int) -> None:
    """Bytes per room of each field of the rooms the load test's backlog leaves (see the module doc)."""
    from . import bench_pipeline

    phase, now_ms = bench_pipeline.backlog(rooms)
    logs = bench_pipeline.logs_of(phase)
    del phase
    kept: list[Any] = []
    bench_pipeline.run_pipeline(logs, now_ms, kept=kept)
    del logs
    counted: set[int] = set()
    skipped = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)

    def size(obj: object) -> int:
        total, stack = 0, [obj]
        while stack:
            item = stack.pop()
            if id(item) in counted or isinstance(item, skipped):
                continue
            counted.add(id(item))
            total += sys.getsizeof(item)
            if isinstance(item, hll_sketch):
                total += item.get_updatable_serialization_bytes()
            elif isinstance(item, hll_union):
                total += item.get_result().get_updatable_serialization_bytes()
            elif not isinstance(item, (str, bytes, int, float)):
                stack.extend(gc.get_referents(item))
        return total

    fields: Counter[str] = Counter()
    held = [room for pipeline in kept for room in pipeline.core.rooms.values()]
    for room in held:
        counted.add(id(room))
        fields["the room object"] += sys.getsizeof(room)
        for name in type(room).__slots__:
            fields[name] += size(getattr(room, name))
    print(f"{len(held):,} rooms; process RSS {rss() / MB:.0f} MB; bytes of Python objects per room:")
    for name, total in fields.most_common():
        print(f"  {name:16} {total / len(held):7.0f}")
    print(f"  {'all':16} {sum(fields.values()) / len(held):7.0f}")


def long_lived(rooms: int, windows: int, new_viewers: int, *, plain: bool, spikes: bool, trim: bool) -> None:
    """Rooms that live ``windows`` windows, each with ``new_viewers`` new viewers (see the module doc)."""
    start_ms = 1_767_225_600_000  # a window boundary
    kwargs: dict[str, object] = {"sessions": False, "rollup_windows_ms": ()} if plain else {}
    config = CoreConfig(**kwargs)  # type: ignore[arg-type]
    task = TaskAggregator(config, sources=(0,), detect_spikes=spikes)
    base = rss()
    offset = 0
    for window in range(windows):
        for viewer in range(new_viewers):
            ts = start_ms + window * config.window_ms + viewer * config.window_ms // new_viewers
            batch = []
            for room in range(rooms):
                offset += 1
                batch.append((offset, ViewerEvent("join", f"room-{room}", f"user-{window}-{viewer}", ts)))
            task.apply(0, batch, now_ms=0)
        task.drain()
        task.drain_sessions()
        task.drain_rollups()
        task.drain_alerts()
        size = sum(len(v) for _, v in task.checkpoint().upserts)  # as the worker does, every second
        if trim:
            release_free_memory()  # as the worker does after a checkpoint, every 10 s
    grown = rss() - base
    print(
        f"{rooms} rooms, {windows} windows of {new_viewers} new viewers each "
        f"(sessions and rollups {'off' if plain else 'on'}, spikes {'on' if spikes else 'off'}, "
        f"malloc_trim {'each window' if trim else 'never'}): "
        f"RSS +{grown / rooms / 1024:.1f} KiB/room, changelog {size / rooms / 1024:.1f} KiB/room"
    )


if __name__ == "__main__":
    main()
