"""Micro-benchmark of the aggregation core (run by hand; not a test).

    python -m loadtest.bench_core [--events 300000] [--repeat 5]

Measures events per CPU-second on the realistic mix (80 % viewer, 15 % gift,
5 % order; 10 k Zipf rooms; one hot room with 30 % of traffic) for:

* ``baseline``: orjson-decode each message and sum a count per room in a dict
  (the practical ceiling for any Python consumer);
* ``apply``: ``TaskAggregator.apply`` on pre-decoded events;
* ``decode+apply``: strict decode + validation + apply, the real hot path.

Each variant runs ``--repeat`` times interleaved; medians are reported.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import time
from collections.abc import Callable

import orjson

from schemas import decode_gift_batch, decode_order_batch, decode_viewer_batch
from streams.core import CoreConfig, TaskAggregator

from .synth import GIFT_TOPIC, ORDER_TOPIC, VIEWER_TOPIC, Mix, Synth, encode_event

SOURCES = {VIEWER_TOPIC: 0, ORDER_TOPIC: 1, GIFT_TOPIC: 2}
DECODERS = {VIEWER_TOPIC: decode_viewer_batch, ORDER_TOPIC: decode_order_batch, GIFT_TOPIC: decode_gift_batch}
BATCH = 2_000


def build(n: int, seed: int) -> tuple[list[tuple[str, list[tuple[int, bytes]]]], list[tuple[int, list]], int]:
    """Batches per topic as a consumer would see them: raw bytes and pre-decoded events."""
    start_ms = int(time.time() * 1000) - 3_600_000
    synth = Synth(Mix(rate_per_s=100_000), seed=seed, start_ms=start_ms)
    raw_batches: list[tuple[str, list[tuple[int, bytes]]]] = []
    ev_batches: list[tuple[int, list]] = []
    pending: dict[str, list] = {t: [] for t in SOURCES}
    offsets = dict.fromkeys(SOURCES, 0)
    for topic, ev in synth.events(n, disorder_ms=500):
        offsets[topic] += 1
        pending[topic].append((offsets[topic], ev))
        if len(pending[topic]) == BATCH:
            _flush(topic, pending, raw_batches, ev_batches)
    for topic in SOURCES:
        if pending[topic]:
            _flush(topic, pending, raw_batches, ev_batches)
    return raw_batches, ev_batches, start_ms


def _flush(topic: str, pending: dict[str, list], raw_batches: list, ev_batches: list) -> None:
    items = pending[topic]
    pending[topic] = []
    raw_batches.append((topic, [(off, encode_event(ev)) for off, ev in items]))
    ev_batches.append((SOURCES[topic], items))


def run_baseline(raw_batches: list, _: list, __: int) -> int:
    counts: dict[str, int] = {}
    loads = orjson.loads
    n = 0
    for _topic, batch in raw_batches:
        for _off, raw in batch:
            room = loads(raw)["room_id"]
            counts[room] = counts.get(room, 0) + 1
        n += len(batch)
    return n


def run_apply(_: list, ev_batches: list, now_ms: int) -> int:
    agg = TaskAggregator(CoreConfig())
    n = 0
    for source, items in ev_batches:
        agg.apply(source, items, now_ms)
        agg.drain()
        n += len(items)
    return n


def run_decode_apply(raw_batches: list, _: list, now_ms: int) -> int:
    agg = TaskAggregator(CoreConfig())
    n = 0
    for topic, batch in raw_batches:
        decode, source = DECODERS[topic], SOURCES[topic]
        items, bad = decode(batch, now_ms)
        assert not bad
        agg.apply(source, items, now_ms)
        agg.drain()
        n += len(batch)
    return n


def measure(fn: Callable[[list, list, int], int], raw: list, evs: list, now_ms: int) -> float:
    gc.collect()
    t0 = time.process_time()
    n = fn(raw, evs, now_ms)
    return n / (time.process_time() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    raw, evs, start_ms = build(args.events, args.seed)
    now_ms = start_ms + 3_600_000
    variants = {"baseline": run_baseline, "apply": run_apply, "decode+apply": run_decode_apply}
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeat):
        for name, fn in variants.items():
            results[name].append(measure(fn, raw, evs, now_ms))
    base = statistics.median(results["baseline"])
    machine = f"python {platform.python_version()} on {platform.machine()}"
    print(f"{machine}, {args.events} events x {args.repeat} runs")
    print(f"{'variant':<14}{'median ev/CPU-s':>18}{'min':>12}{'max':>12}{'vs baseline':>13}")
    for name, rates in results.items():
        med = statistics.median(rates)
        print(f"{name:<14}{med:>18,.0f}{min(rates):>12,.0f}{max(rates):>12,.0f}{med / base:>12.2f}x")


if __name__ == "__main__":
    main()
