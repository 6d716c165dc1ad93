"""CPU of one window boundary in one task, step by step (run by hand; not a test).

    python -m loadtest.bench_boundary [--rooms 26000] [--history 3] [--repeat 3]

The p99 of event -> room-stats at 100 000 rooms is bound by the window boundary: every room with
an event in the window closes at once, and its records and its changed state are written before
the task commits (RESULTS.md, session 21). This builds one task (one partition, the load
test's short rollups) with ``--rooms`` rooms, each with ``--history`` closed windows behind it (a
detector, a session, open rollups) and a viewer, an order and a gift in the window that then
closes, and times the boundary's steps through the product's own pipeline
(``streams.pipeline.TaskPipeline``): the batch whose events move the watermark past the window
(closing it: sums, sessions and rollups folded), publishing the records (room-stats, sessions,
rollups, leaderboard partials), the spike detector, and staging the checkpoint (each closed
room's ``r/`` and ``t/`` records). Prints microseconds per closed room, medians of ``--repeat``
fresh builds, CPU time (``time.process_time``).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import orjson

from schemas import Source
from streams.metrics import Metrics
from streams.pipeline import Record, Routing, TaskPipeline
from streams.settings import Settings

from .bench_pipeline import START_MS, TaskSink
from .deployment import short_rollup_windows

#: one task on one partition: no other task's watermark markers to wait for
PARTITIONS = 1
BUSY = (Source.VIEWER, Source.ORDER, Source.GIFT)


def room_ids(n: int) -> list[str]:
    return [f"room-{i}" for i in range(n)]


class Feed:
    """Records of the three inputs, offsets counted per input."""

    def __init__(self) -> None:
        self.offsets = [0, 0, 0]

    def batch(self, source: int, values: list[dict[str, object]]) -> list[Record]:
        first = self.offsets[source]
        self.offsets[source] += len(values)
        return [Record(first + i, None, orjson.dumps(v), ()) for i, v in enumerate(values)]


def window_events(rooms: list[str], ws: int, w: int) -> tuple[list[dict[str, object]], ...]:
    """A join, a like, a paid order and a gift per room, spread over window ``ws``."""
    viewers: list[dict[str, object]] = []
    orders: list[dict[str, object]] = []
    gifts: list[dict[str, object]] = []
    for i, room in enumerate(rooms):
        ts = ws + (i * 7919) % 9_000
        viewers.append({"type": "join", "room_id": room, "user_id": f"u{i}-{w}", "ts": ts})
        viewers.append({"type": "like", "room_id": room, "user_id": f"v{i}-{w}", "ts": ts + 10})
        orders.append(
            {
                "order_id": f"o{i}-{w}",
                "room_id": room,
                "user_id": f"u{i}",
                "ts": ts + 20,
                "status": "paid",
                "amount_minor": 1_999,
                "currency": "USD",
            }
        )
        gifts.append(
            {
                "gift_id": f"g{i}-{w}",
                "room_id": room,
                "user_id": f"u{i}",
                "ts": ts + 30,
                "count": 1,
                "value_minor": 100,
            }
        )
    # in time order, as producers send them: out of order by more than the grace, they would be late
    return tuple(sorted(events, key=_ts) for events in (viewers, orders, gifts))


def _ts(event: dict[str, object]) -> int:
    ts = event["ts"]
    assert isinstance(ts, int)
    return ts


def one_boundary(n_rooms: int, history: int) -> dict[str, float]:
    """Build a task with ``history`` closed windows per room, then time the next boundary."""
    settings = Settings(partitions=PARTITIONS)
    window_ms = settings.core.window_ms
    settings = replace(
        settings, core=replace(settings.core, rollup_windows_ms=short_rollup_windows(window_ms))
    )
    routing = Routing(settings.topics, PARTITIONS)
    sink = TaskSink(settings.topics.repartition)
    pipeline = TaskPipeline(0, routing.task_core(0, settings.core), sink, routing, settings, Metrics())
    names = routing.names
    rooms = room_ids(n_rooms)
    feed = Feed()
    now_ms = START_MS + (history + 3) * window_ms
    positions: dict[int, int] = {}

    def deliver(events: tuple[list[dict[str, object]], ...]) -> None:
        for source, values in enumerate(events):
            pipeline.process(names[source], feed.batch(source, values), now_ms)
            positions[source] = feed.offsets[source]
        pipeline.tick(now_ms, BUSY)

    def boundary(next_ws: int, timings: dict[str, float]) -> None:
        # one event per input at the window's end + grace (room 0's, in the next window): the
        # watermark reaches the window's end, which closes it and nothing later
        past = window_events(rooms[:1], next_ws, 10_000 + next_ws // window_ms)
        steps: list[tuple[str, Callable[[], object]]] = [
            # the batch closes the windows and publishes their records (TaskPipeline.process)
            ("close + publish", lambda: deliver(tuple(values[:1] for values in past))),
            ("detect", lambda: pipeline.publish_alerts(now_ms)),
            ("stage", lambda: pipeline.stage_checkpoint(now_ms, positions)),
        ]
        for name, step in steps:
            t0 = time.process_time()
            step()
            timings[name] = time.process_time() - t0

    start = START_MS - START_MS % window_ms
    for w in range(history):
        deliver(window_events(rooms, start + w * window_ms, w))
        boundary(start + (w + 1) * window_ms + settings.core.grace_ms, {})
    ws = start + history * window_ms
    deliver(window_events(rooms, ws, history))
    pipeline.stage_checkpoint(now_ms, positions)
    gc.collect()
    closed_before = pipeline.core.counters.windows_emitted
    timings: dict[str, float] = {}
    boundary(ws + window_ms + settings.core.grace_ms, timings)
    closed = pipeline.core.counters.windows_emitted - closed_before
    late = sum(pipeline.core.counters.late.values())
    assert late == 0, f"{late} events late: the history is not what it says"
    return {name: 1e6 * t / closed for name, t in timings.items()} | {"closed": closed}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rooms", type=int, default=26_000)
    parser.add_argument("--history", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs = [one_boundary(args.rooms, args.history) for _ in range(args.repeat)]
    print(
        f"{int(runs[0]['closed']):,} rooms closed at the boundary;"
        f" µs per closed room (CPU), median of {args.repeat}"
    )
    total = 0.0
    for name in (key for key in runs[0] if key != "closed"):
        values = [r[name] for r in runs]
        med = statistics.median(values)
        total += med
        print(f"  {name:16s} {med:7.2f}   ({min(values):.2f}-{max(values):.2f})")
    print(f"  {'total':16s} {total:7.2f}")


if __name__ == "__main__":
    main()
