"""The native room state (``streams/native/src/rooms.rs``, ``LIVEPULSE_NATIVE_ROOMS``) against the Python
task, on the same work (run by hand; not a test).

    python -m loadtest.bench_native_rooms [--events 100000] [--rooms 2000] [--repeat 3]

Three measurements, CPU time, ``--repeat`` alternating runs each:

- apply and close, without and with the spike detector (default rules; natively the quiet path
  on native state and the Python detector for the rest): the oracle tests' random stream
  (``tests.unit.test_core_oracle.make_stream``, ``--events`` over ``--rooms`` rooms, one input
  per batch of at most 500) through
  ``TaskAggregator.apply`` (the windows due closed, folded into sessions and rollups, drained) and
  through the native table (``apply``, ``close_due``, handed the watermark limit the Python task
  computes for each batch), from the same decoded events, the room-windows closed checked equal;
  the garbage collector off (the stream's events are held throughout, and each collection would
  walk them);
- a window boundary: ``loadtest.bench_boundary``'s task (26 000 rooms, a join, a like, an order
  and a gift each, three closed windows behind), each room's records read into the native table,
  then every room-window closed: in Python ``_close_room_window``, the room-stats, rollup and
  session records encoded, the room's ``r/`` and ``t/`` records; natively ``close_window_records``,
  ``encode_room``, ``encode_tail`` (three Python calls a room).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import random
import statistics
import time
from dataclasses import replace
from typing import Any

import loadtest.bench_boundary as bb
import streams.pipeline as sp
from schemas import encode_room_session, encode_room_stats
from streams.core import TaskAggregator
from tests.unit.test_core_changelog import CFG
from tests.unit.test_core_oracle import SOURCES, make_stream

# the core's internals, through the tests that hold the native table to them
from tests.unit.test_native_rooms import (
    NativeRooms,
    NativeSpikes,
    encode_room,
    encode_room_tail,
    python_records,
)


def apply_and_close(events: int, rooms: int, repeat: int, spikes: bool) -> dict[str, list[float]]:
    rng = random.Random(1)
    cfg = replace(CFG, room_idle_ms=10**12, max_rooms=10**7)
    stream = make_stream(rng, events, rooms, events * 10, 1_900)
    batches: list[tuple[int, list[Any]]] = []
    i = 0
    while i < len(stream):
        source, j = stream[i][0], i
        while j < len(stream) and j < i + 500 and stream[j][0] == source:
            j += 1
        batches.append((source, [(offset, event) for _, offset, event in stream[i:j]]))
        i = j
    # the time the other inputs let the watermark move to, per batch, as the Python task sees it
    # (`_delivery`): the native table is handed the same, so both do the same work
    shadow = TaskAggregator(cfg, SOURCES)
    others: list[int] = []
    windows = 0
    for source, items in batches:
        others.append(shadow._delivery(source, 0))
        shadow.apply(source, items, now_ms=0)
        windows += len(shadow.drain())
    gc.collect()
    gc.freeze()
    gc.disable()
    out: dict[str, list[float]] = {"python": [], "native": []}
    try:
        for _ in range(repeat):
            agg = TaskAggregator(cfg, SOURCES, detect_spikes=spikes)
            t0 = time.process_time()
            for source, items in batches:
                agg.apply(source, items, now_ms=0)
                agg.drain(), agg.drain_sessions(), agg.drain_rollups()
                if spikes:
                    agg.detect()
            out["python"].append(1e6 * (time.process_time() - t0) / len(stream))
            native = NativeRooms(cfg, detect_spikes=spikes)
            spike_detector = NativeSpikes(native, cfg.window_ms)
            closed = 0
            t0 = time.process_time()
            for (source, items), allowed in zip(batches, others, strict=True):
                at = 0
                while True:
                    at, _ = native.apply(source, items, at, allowed, -1)
                    if at >= len(items):
                        break
                    closed += native.close_due()
                if spikes:
                    spike_detector.detect(None)
            out["native"].append(1e6 * (time.process_time() - t0) / len(stream))
            assert closed == windows, f"native closed {closed} room-windows, Python {windows}"
            assert spike_detector.evaluated == agg.counters.detector_evaluations
            assert len(spike_detector.alerts) == len(agg.drain_alerts())
    finally:
        gc.enable()
        gc.unfreeze()
    return out


def boundary(repeat: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"python": [], "native": []}
    captured: dict[str, Any] = {}
    init = sp.TaskPipeline.__init__

    def capture(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        captured["pipeline"] = self

    class Measured(Exception):
        pass

    collect = gc.collect

    def measure() -> int:
        collect()
        core = captured["pipeline"].core
        rooms = [room for room in core.rooms.values() if room.open_ws]
        native = NativeRooms(core.config)
        for room in rooms:
            head, tail = python_records(room)
            native.restore_room(head)
            if tail is not None:
                native.restore_tail(room.room_id, tail)
        work = [(room, min(room.open_ws)) for room in rooms]
        collect()
        t0 = time.process_time()
        for room, ws in work:
            native.close_window_records(room.room_id, ws)
            native.encode_room(room.room_id)
            native.encode_tail(room.room_id)
        out["native"].append(1e6 * (time.process_time() - t0) / len(work))
        collect()
        t0 = time.process_time()
        for room, ws in work:
            core._rollup_outbox.clear()
            core._session_outbox.clear()
            encode_room_stats(core._close_room_window(room, ws))
            for _, rollup in core._rollup_outbox:
                encode_room_stats(rollup)
            for session in core._session_outbox:
                encode_room_session(session)
            encode_room(room)
            encode_room_tail(room)
        out["python"].append(1e6 * (time.process_time() - t0) / len(work))
        raise Measured

    sp.TaskPipeline.__init__ = capture  # type: ignore[method-assign]
    bb.gc.collect = measure  # type: ignore[assignment]
    try:
        for _ in range(repeat):
            with contextlib.suppress(Measured):
                bb.one_boundary(26_000, 3)
    finally:
        sp.TaskPipeline.__init__ = init  # type: ignore[method-assign]
        bb.gc.collect = collect
    return out


def report(title: str, runs: dict[str, list[float]], unit: str) -> None:
    py, nat = statistics.median(runs["python"]), statistics.median(runs["native"])
    each = {name: ", ".join(f"{v:.2f}" for v in values) for name, values in runs.items()}
    ratio = py / nat
    print(f"{title}: Python {py:.2f} {unit} ({each['python']}),", end=" ")
    print(f"native {nat:.2f} ({each['native']}): {ratio:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rooms", type=int, default=2_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for spikes in (False, True):
        report(
            f"apply and close{', spike detector' if spikes else ''}, {args.events:,} events over"
            f" {args.rooms:,} rooms (medians of {args.repeat})",
            apply_and_close(args.events, args.rooms, args.repeat, spikes),
            "µs/event",
        )
    report(
        f"a boundary of 26 000 room-windows, close + records + r/ and t/ (medians of {args.repeat})",
        boundary(args.repeat),
        "µs/room-window",
    )


if __name__ == "__main__":
    main()
