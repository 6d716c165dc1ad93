"""Micro-benchmark of the aggregation core (run by hand; not a test).

    python -m loadtest.bench_core [--events 300000] [--repeat 5]

Measures events per CPU-second on the traffic model's base mix (``loadtest.traffic``:
80 % viewer, 15 % gift, 5 % new orders and their later statuses; 10 k Zipf rooms over a
uniform floor; out of order by up to 500 ms) for:

* ``baseline``: orjson-decode each message and sum a count per room in a dict
  (the practical ceiling for any Python consumer);
* ``apply``: ``TaskAggregator.apply`` on pre-decoded events;
* ``decode+apply``: strict decode + validation + apply, the real hot path.

Each variant runs ``--repeat`` times interleaved; medians are reported.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import platform
import statistics
import time
from collections.abc import Callable

import orjson

from schemas import Event, decode_gift_batch, decode_order_batch, decode_viewer_batch
from streams.core import CoreConfig, TaskAggregator

from .traffic import GIFT, ORDER, VIEWER, TrafficConfig, TrafficModel

DECODERS = {VIEWER: decode_viewer_batch, ORDER: decode_order_batch, GIFT: decode_gift_batch}
BATCH = 2_000


def build(n: int, seed: int) -> tuple[list[tuple[int, list[tuple[int, bytes]]]], list[tuple[int, list]], int]:
    """Batches per source as a consumer would see them: raw bytes and pre-decoded events."""
    start_ms = int(time.time() * 1000) - 3_600_000
    config = TrafficConfig(rate_per_s=100_000, disorder_share=1.0, disorder_ms=500)
    ticks = TrafficModel(config, seed=seed).ticks(start_ms, realtime=False)
    raw_batches: list[tuple[int, list[tuple[int, bytes]]]] = []
    ev_batches: list[tuple[int, list]] = []
    pending: dict[int, list[tuple[int, bytes, Event]]] = {source: [] for source in DECODERS}
    offsets = dict.fromkeys(DECODERS, 0)

    def flush(source: int) -> None:
        items, pending[source] = pending[source], []
        raw_batches.append((source, [(off, raw) for off, raw, _ in items]))
        ev_batches.append((source, [(off, ev) for off, _, ev in items]))

    for source, _, _, raw, _, ev in itertools.islice(itertools.chain.from_iterable(ticks), n):
        offsets[source] += 1
        pending[source].append((offsets[source], raw, ev))
        if len(pending[source]) == BATCH:
            flush(source)
    for source in DECODERS:
        if pending[source]:
            flush(source)
    return raw_batches, ev_batches, start_ms


def run_baseline(raw_batches: list, _: list, __: int) -> int:
    counts: dict[str, int] = {}
    loads = orjson.loads
    n = 0
    for _source, batch in raw_batches:
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
    for source, batch in raw_batches:
        items, bad = DECODERS[source](batch, now_ms)
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
