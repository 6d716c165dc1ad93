"""CPU cost of the worker's per-batch pipeline without a broker (run by hand; not a test).

    python -m loadtest.bench_pipeline [--events 1000000] [--rooms 100000] [--repeat 3] [--profile]

Generates the load test's backlog (``loadtest.traffic``, same scenarios and
seed as ``livepulse loadtest run``), cuts it into the per-partition, per-topic
batches a consumer fetches, and runs on each batch what the data plane runs:
strict batch decode, dead letters, ``TaskAggregator.apply``, ``tick``, the
closed windows encoded and appended to Kafka record batches (aiokafka's own
builder, as the producer path does), alerts encoded, and a checkpoint
(changelog records appended the same way) every ``--checkpoint-s`` of wall
time. Only the network is missing, so this isolates the worker's own CPU
cost. In the same run it measures the plain ceiling of the load test
(orjson-decode each message and count per room in a dict) and reports
messages per CPU-second, medians of ``--repeat`` interleaved runs. Variants
take parts away to attribute the cost: ``decode`` (strict decoding alone),
``plain+windows`` (the plain loop plus one output record per room and window),
``no-checkpoint``, ``no-detector``.

``--profile`` runs the pipeline once more under cProfile and prints the top
functions by own and cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import platform
import pstats
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import orjson
from aiokafka.producer.message_accumulator import BatchBuilder

from schemas import (
    Limits,
    ViewerEvent,
    dead_letter,
    decode_gift_batch,
    decode_order_batch,
    decode_viewer_batch,
    encode_dead_letter,
    encode_room_stats,
)
from streams._changelog import stage_checkpoint
from streams.core import CoreConfig, TaskAggregator, partition_for, to_alertmanager
from streams.settings import Settings

from . import scenarios
from .produce import generate
from .traffic import Phase, TrafficConfig

DECODERS = (decode_viewer_batch, decode_order_batch, decode_gift_batch)
PARTITIONS = 4
BATCH_BYTES = 1024 * 1024


class Sink:
    """Kafka record batches per (topic, partition), built like the producer path builds them."""

    def __init__(self) -> None:
        self.batches: dict[tuple[str, int], BatchBuilder] = {}
        self.records = 0

    def add(self, topic: str, partition: int, key: bytes | None, value: bytes | None) -> None:
        builder = self.batches.get((topic, partition))
        if builder is None:
            builder = self.batches[(topic, partition)] = BatchBuilder(BATCH_BYTES, 0)
        if builder.append(key=key, value=value, timestamp=None) is None:
            builder = self.batches[(topic, partition)] = BatchBuilder(BATCH_BYTES, 0)
            builder.append(key=key, value=value, timestamp=None)
        self.records += 1


def fetches(phase: Phase, batch: int) -> list[tuple[int, int, list[tuple[int, bytes]]]]:
    """(partition, source, [(offset, payload)]) in the order a round-robin fetcher would hand them over."""
    logs: dict[tuple[int, int], list[tuple[int, bytes]]] = defaultdict(list)
    for source, partition, _key, payload, _ts, _ev in phase.messages:
        log = logs[(partition, source)]
        log.append((len(log), payload))
    cursors = dict.fromkeys(logs, 0)
    out = []
    while cursors:
        for tp in sorted(cursors):
            at = cursors[tp]
            chunk = logs[tp][at : at + batch]
            out.append((tp[0], tp[1], chunk))
            if at + batch >= len(logs[tp]):
                del cursors[tp]
            else:
                cursors[tp] = at + batch
    return out


def run_plain(batches: Sequence[tuple[int, int, list[tuple[int, bytes]]]], _now_ms: int) -> int:
    """The load test's plain ceiling: orjson-decode and count per room."""
    counts: dict[str, int] = {}
    loads = orjson.loads
    n = 0
    for _p, _s, items in batches:
        for _off, raw in items:
            try:
                room = loads(raw)["room_id"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue
            counts[room] = counts.get(room, 0) + 1
        n += len(items)
    return n


def run_decode(batches: Sequence[tuple[int, int, list[tuple[int, bytes]]]], now_ms: int) -> int:
    """Strict decoding and validation alone (the first step of the pipeline)."""
    limits = Limits()
    n = 0
    for _p, source, items in batches:
        DECODERS[source](items, now_ms, limits)
        n += len(items)
    return n


def run_plain_windows(batches: Sequence[tuple[int, int, list[tuple[int, bytes]]]], _now_ms: int) -> int:
    """The plain ceiling plus the output this workload demands: one record per room per window.

    orjson-decode, count per (room, 10 s window), and when the newest event time passes a
    window's end + 2 s, encode each room's count as a small JSON object and append it to a
    Kafka record batch. No validation, state, dedup, watermark per source, detector or
    checkpoint: the least any windowed per-room consumer in Python does here.
    """
    loads, dumps = orjson.loads, orjson.dumps
    windows: dict[int, dict[str, int]] = {}
    sink = Sink()
    newest = 0
    n = 0
    for partition, _s, items in batches:
        for _off, raw in items:
            try:
                obj = loads(raw)
                room, ts = obj["room_id"], obj["ts"]
                ws = ts - ts % 10_000
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue
            counts = windows.get(ws)
            if counts is None:
                counts = windows[ws] = {}
            counts[room] = counts.get(room, 0) + 1
            if ts > newest:
                newest = ts
        n += len(items)
        for ws in [ws for ws in windows if ws + 12_000 <= newest]:
            for room, count in windows.pop(ws).items():
                record = {"room_id": room, "window_start": ws, "window_end": ws + 10_000, "events": count}
                sink.add("room-stats", partition, room.encode(), dumps(record))
    return n


def run_pipeline(
    batches: Sequence[tuple[int, int, list[tuple[int, bytes]]]],
    now_ms: int,
    checkpoint_s: float = 1.0,
    detect_spikes: bool = True,
) -> int:
    """Everything the data plane does to a batch, minus the network."""
    config = CoreConfig()
    limits = Limits()
    tasks = {
        p: TaskAggregator(config, sources=(0, 1, 2), detect_spikes=detect_spikes) for p in range(PARTITIONS)
    }
    sink = Sink()
    last_checkpoint = time.perf_counter()
    n = 0
    for partition, source, items in batches:
        task = tasks[partition]
        good, bad = DECODERS[source](items, now_ms, limits)
        for offset, raw, invalid in bad:
            letter = dead_letter(
                invalid, topic="in", partition=partition, offset=offset, key=None, raw=raw, now_ms=now_ms
            )
            sink.add("dlq", partition, None, encode_dead_letter(letter))
        task.apply(source, good, now_ms)
        n += len(items)
        for p, t in tasks.items():
            t.tick(now_ms, busy=(0, 1, 2))
            for stats in t.drain():
                sink.add("room-stats", p, stats.room_id.encode(), encode_room_stats(stats))
            for alert in t.drain_alerts():
                key = alert.fingerprint.encode()
                sink.add("alerts", partition_for(key, PARTITIONS), key, orjson.dumps(to_alertmanager(alert)))
        if time.perf_counter() - last_checkpoint >= checkpoint_s:
            for p, t in tasks.items():
                stage_checkpoint(sink, "changelog", p, t.checkpoint())
            last_checkpoint = time.perf_counter()
    return n


def burst(rooms: int, repeat: int) -> None:
    """CPU time to close one window in ``rooms`` rooms at once (a window boundary), publish, then detect.

    Each room has two windows of history (so the detector holds a baseline) and one viewer
    event in the window that closes; one event of the next window moves the watermark past it.
    """
    config = CoreConfig()
    base = (int(time.time() * 1000) // 10_000 - 10) * 10_000
    publish, detect = [], []
    for _ in range(repeat):
        task = TaskAggregator(config, sources=(0,))
        offset = 0
        for w in range(3):
            items = []
            for r in range(rooms):
                offset += 1
                items.append(
                    (offset, ViewerEvent("join", f"r{r}", f"u{r}-{w}", base + w * 10_000 + r % 9_000))
                )
            task.apply(0, items, base + 60_000)
            if w < 2:  # close the history windows and let the detector see them
                task.apply(
                    0, [(offset + 1, ViewerEvent("join", "tick", "u", base + (w + 1) * 10_000 + 2_500))], 0
                )
                offset += 1
                task.drain()
                task.drain_alerts()
        sink = Sink()
        gc.collect()
        t0 = time.process_time()
        task.apply(0, [(offset + 1, ViewerEvent("join", "tick", "u", base + 32_500))], 0)
        for stats in task.drain():
            sink.add("room-stats", 0, stats.room_id.encode(), encode_room_stats(stats))
        t1 = time.process_time()
        task.drain_alerts()
        t2 = time.process_time()
        publish.append(t1 - t0)
        detect.append(t2 - t1)
    med_p, med_d = statistics.median(publish), statistics.median(detect)
    print(
        f"window boundary with {rooms:,} rooms closing: close + publish {med_p:.3f} s CPU "
        f"(min {min(publish):.3f}), then detection {med_d:.3f} s (min {min(detect):.3f}); medians of {repeat}"
    )


def measure(fn: Any, batches: Any, now_ms: int, **kwargs: Any) -> float:
    gc.collect()
    t0 = time.process_time()
    n = fn(batches, now_ms, **kwargs)
    return n / (time.process_time() - t0)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rooms", type=int, default=100_000)
    parser.add_argument("--scenario", default="all")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2_000, help="messages per partition fetch")
    parser.add_argument("--checkpoint-s", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--only", help="comma-separated variants to run (default: all)")
    parser.add_argument(
        "--gc-threshold", type=int, default=Settings().gc_threshold, help="as LIVEPULSE_GC_THRESHOLD"
    )
    parser.add_argument(
        "--burst", type=int, default=0, help="instead: time one window boundary closing this many rooms"
    )
    args = parser.parse_args(argv)
    if args.burst:
        if args.gc_threshold:
            gc.set_threshold(args.gc_threshold, 50, 100)
        burst(args.burst, args.repeat)
        return
    config = TrafficConfig(rooms=args.rooms, partitions=PARTITIONS)
    t0 = time.perf_counter()
    _model, phase = generate(
        config,
        scenarios.parse(args.scenario),
        seed=args.seed,
        events=args.events,
        window_ms=10_000,
        grace_ms=2_000,
        realtime=False,
    )
    batches = fetches(phase, args.batch)
    now_ms = phase.end_ms + 60_000
    summary = (len(phase.messages), phase.end_ms - phase.start_ms)
    del phase, _model
    # The batches stand in for the broker's log: keep them out of the worker's collections.
    gc.collect()
    gc.freeze()
    if args.gc_threshold:
        gc.set_threshold(args.gc_threshold, 50, 100)
    print(
        f"python {platform.python_version()}: {summary[0]:,} messages, {args.rooms:,} rooms, "
        f"{summary[1] / 1000:.0f} s of event time, {len(batches):,} fetches, gc threshold "
        f"{gc.get_threshold()} "
        f"(generated in {time.perf_counter() - t0:.0f} s)"
    )
    variants: dict[str, Any] = {
        "plain": (run_plain, {}),
        "plain+windows": (run_plain_windows, {}),
        "decode": (run_decode, {}),
        "no-checkpoint": (run_pipeline, {"checkpoint_s": float("inf")}),
        "no-detector": (run_pipeline, {"checkpoint_s": args.checkpoint_s, "detect_spikes": False}),
        "pipeline": (run_pipeline, {"checkpoint_s": args.checkpoint_s}),
    }
    if args.only:
        variants = {name: variants[name] for name in args.only.split(",")}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeat):
        for name, (fn, kwargs) in variants.items():
            rates[name].append(measure(fn, batches, now_ms, **kwargs))
    base = statistics.median(rates["plain"]) if "plain" in rates else float("nan")
    print(f"{'variant':<15}{'median msg/CPU-s':>18}{'min':>12}{'max':>12}{'vs plain':>10}{'us/msg':>8}")
    for name, got in rates.items():
        med = statistics.median(got)
        print(
            f"{name:<15}{med:>18,.0f}{min(got):>12,.0f}{max(got):>12,.0f}{med / base:>9.2f}x{1e6 / med:>8.2f}"
        )
    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(run_pipeline, batches, now_ms, checkpoint_s=args.checkpoint_s)
        stats = pstats.Stats(prof)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(30)


if __name__ == "__main__":
    main()
