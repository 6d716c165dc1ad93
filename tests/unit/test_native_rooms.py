"""Native room state, step 1 (``streams/native/src/rooms.rs``): the changelog records of rooms the
Python task wrote are read into native rooms and written again as the Python codec writes them;
the native HLL sketches (Apache DataSketches' Rust crate) are the Python binding's.
"""

from __future__ import annotations

import base64
import random
from dataclasses import replace
from typing import Any

import orjson
import pytest
from datasketches import hll_sketch, hll_union
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import GiftEvent, OrderEvent, ViewerEvent, encode_room_session, encode_room_stats
from streams.core import RANKABLE_METRICS, CoreConfig, TaskAggregator, _fastcore
from streams.core._native_rooms import NativeSpikes, new_table
from streams.core._room import HLL_TYPE, Room
from streams.core._sessions import ENDED
from streams.core._spike_rules import SpikeRules, apply_override
from streams.core._state_codec import encode_room, encode_room_tail
from streams.core._task import NO_TIME
from tests.unit.test_core_changelog import CFG, as_log
from tests.unit.test_core_oracle import SOURCES, make_stream, run

#: the oracle tests' random streams (``make_stream``): seed, length, rooms, disorder, span
STREAMS = {
    "seed": st.integers(0, 2**32),
    "n": st.integers(50, 800),
    "rooms": st.integers(1, 25),
    "disorder_ms": st.sampled_from([0, 1_900, 15_000]),
    "span_ms": st.sampled_from([60_000, 400_000, 1_500_000]),
}


def NativeRooms(cfg: CoreConfig = CFG, *, detect_spikes: bool = False) -> Any:
    """A native table with ``cfg``'s window geometry, sessions and rollups (and the task's spike
    detector, if ``detect_spikes``)."""
    return new_table(cfg, detect_spikes=detect_spikes)


def python_records(room: Room) -> tuple[bytes, bytes | None]:
    """The room's two records as the Python codec writes them, sketches encoded afresh."""
    for holder in [room.session, *(room.rollups or ())]:
        if holder is not None:
            holder.wire = None
    return encode_room(room), encode_room_tail(room)


def estimate(sketch: str | None) -> float | None:
    return None if sketch is None else hll_sketch.deserialize(base64.b64decode(sketch)).get_estimate()


def sketches_as_estimates(head: list, tail: list | None) -> tuple[list, list | None]:
    """A set-mode sketch read back may list its coupons in another order (as Python's does)."""
    head[6] = [[ws, estimate(s)] for ws, s in head[6]]
    if tail is not None:
        if tail[3] is not None:
            tail[3][3] = estimate(tail[3][3])
        for rollup in tail[4] or ():
            rollup[3] = estimate(rollup[3])
    return head, tail


def check_room(native: Any, room: Room) -> bool:
    """Read the room's records natively, write them again: the same records. Returns whether the
    bytes are the same too (they are unless a sketch in set mode lists its coupons differently)."""
    raw, raw_tail = python_records(room)
    assert native.restore_room(raw) == room.room_id
    if raw_tail is not None:
        native.restore_tail(room.room_id, raw_tail)
    again, again_tail = native.encode_room(room.room_id), native.encode_tail(room.room_id)
    assert (again_tail is None) == (raw_tail is None)
    assert sketches_as_estimates(orjson.loads(again), orjson.loads(again_tail or b"null")) == (
        sketches_as_estimates(orjson.loads(raw), orjson.loads(raw_tail or b"null"))
    )
    return (again, again_tail) == (raw, raw_tail)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**STREAMS)
def test_the_records_of_every_room_of_a_random_stream_are_read_and_written_again(
    seed: int, n: int, rooms: int, disorder_ms: int, span_ms: int
) -> None:
    """Rooms at every stage (open windows with buckets and sketches, sessions and rollups with
    unions, detectors, expired and returning rooms), after every batch and tick."""
    rng = random.Random(seed)
    stream = make_stream(rng, n, rooms, span_ms, disorder_ms)
    agg = TaskAggregator(CFG, SOURCES)
    native = NativeRooms()
    i = 0
    while i < len(stream):
        j = min(len(stream), i + rng.randint(1, 120))
        run(agg, stream[i:j], rng)
        if rng.random() < 0.3:
            agg.tick(now_ms=rng.randint(0, 10**7))
        agg.detect()
        for room in agg.rooms.values():
            check_room(native, room)
        i = j


def in_set_mode(raw: bytes | None) -> bool:
    """Whether a record holds a sketch in set mode (its bytes start 0x03: base64 "Aw")."""
    return raw is not None and b'"Aw' in raw


def test_records_without_set_mode_sketches_are_the_same_bytes() -> None:
    """List-mode and HLL-mode sketches serialise byte for byte as the Python binding's (a
    set-mode sketch read back lists its coupons in its own hash order, in Python too)."""
    rng = random.Random(11)
    agg = TaskAggregator(CFG, SOURCES)
    run(agg, make_stream(rng, 3_000, 30, 1_500_000, 1_900), rng)
    agg.detect()
    native = NativeRooms()
    same = [
        check_room(native, room)
        for room in agg.rooms.values()
        if not any(in_set_mode(raw) for raw in python_records(room))
    ]
    assert len(same) > 5 and all(same)


@pytest.mark.parametrize("users", [1, 5, 60, 100, 128, 200, 384, 385, 1_000, 50_000])
def test_a_native_union_is_the_python_union(users: int) -> None:
    """Three windows' sketches of ``users`` viewers each, as restored from their records, folded
    into a session natively and in Python.

    Up to 384 viewers in all (lg k 12) a union holds its coupons (list or set mode) and both
    estimates are exact. A union of sketches in HLL mode has the same registers and estimate. A
    union of list- or set-mode sketches that ends in HLL mode (here 3 x 200 and 3 x 384) has the
    same registers, but its HIP estimate depends on the order coupons were promoted in, which
    differs between the Rust crate (0.6.0) and the C++ library: 603.7274 against 603.7278 and
    1146.81 against 1146.99, well inside the sketch's error (1.6 % at one standard error).
    """
    from streams.core._sessions import Session

    windows = []
    for k in range(3):
        sketch = hll_sketch(12, HLL_TYPE)
        for u in range(users):
            sketch.update(f"w{k}-u{u}")
        windows.append(hll_sketch.deserialize(sketch.serialize_compact()))  # as a restore has them
    room = Room("r")
    room.session = Session(0, [0] * 11)
    room.session.uniques = windows[0]
    native = NativeRooms(CoreConfig())
    raw, raw_tail = python_records(room)
    native.restore_room(raw)
    native.restore_tail("r", raw_tail)
    union = hll_union(12)
    union.update(windows[0])
    for sketch in windows[1:]:
        union.update(sketch)
        native.fold_into_session("r", base64.b64encode(sketch.serialize_compact()).decode(), 12)
    _, session, _ = native.estimates("r")
    written = base64.b64decode(orjson.loads(native.encode_tail("r"))[3][3])
    expected = union.get_result(HLL_TYPE).serialize_compact()
    assert hll_sketch.deserialize(written).get_estimate() == session
    if 3 * users <= 384:
        assert session == union.get_estimate() and round(session) == 3 * users
        assert sorted(written[8:]) == sorted(expected[8:]) or written == expected  # the same coupons
    else:
        assert written[40:] == expected[40:]  # the same registers
        if users > 384:
            assert session == union.get_estimate()
        else:
            assert session == pytest.approx(union.get_estimate(), rel=1e-3)


@pytest.mark.parametrize(
    "record, message",
    [
        (b"[6,", "undecodable"),
        (b'[5,"r",0,-1,[],[],[],[]]', "version"),
        (b'[6,"r",0,-1,[],[[1,[1,2]]],[],[]]', "counters"),
        (b'[6,"r",0,-1,[],[],[[0,"AA=="]],[]]', "insufficient|preamble|data"),
        (b'[6,"r",0,-1,[],[],[[0,"!!!!"]],[]]', "base64"),
        (b'[6,"r","0",-1,[],[],[],[]]', "concurrent"),
    ],
)
def test_a_corrupt_room_record_is_refused(record: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NativeRooms().restore_room(record)


def test_a_tail_record_of_another_room_is_refused() -> None:
    native = NativeRooms()
    native.restore_room(b'[6,"r",0,-1,[],[],[],[]]')
    with pytest.raises(ValueError, match="read for room"):
        native.restore_tail("r", b'[1,"other",null,null,null]')
    with pytest.raises(KeyError):
        native.restore_tail("missing", b'[1,"missing",null,null,null]')
    assert native.encode_tail("r") is None


# -- step 3: the window close ----------------------------------------------------------------


def stats_numbers(stats: Any) -> tuple[Any, ...]:
    """A room-stats record as the native close gives it: start, end, counters, uniques, concurrent."""
    from streams.core._room import N_COUNTERS

    counters = [0] * N_COUNTERS
    (
        counters[0],
        counters[2],
        counters[3],
        counters[4],
        counters[5],
        counters[6],
        counters[7],
        counters[8],
        counters[9],
        counters[10],
    ) = (
        stats.views,
        stats.likes,
        stats.comments,
        stats.orders,
        stats.gmv_minor,
        stats.refunds_minor,
        stats.gifts,
        stats.gift_value_minor,
        stats.late_events,
        stats.shares,
    )
    return (stats.window_start, stats.window_end, counters, stats.unique_viewers, stats.concurrent_viewers)


def session_numbers(record: Any) -> tuple[Any, ...]:
    return (
        record.status == ENDED,
        record.session_start,
        record.session_end,
        record.updated_at,
        record.views,
        record.unique_viewers,
        record.peak_concurrent_viewers,
        record.peak_window_start,
        record.likes,
        record.comments,
        record.shares,
        record.orders,
        record.gmv_minor,
        record.refunds_minor,
        record.gifts,
        record.gift_value_minor,
        record.late_events,
    )


def native_session_numbers(s: tuple[Any, ...]) -> tuple[Any, ...]:
    ended, start, last_end, t, uniques, peak, peak_ws, updated_at = s
    return (
        ended,
        start,
        last_end if ended else None,
        updated_at,
        t[0],
        uniques,
        peak,
        peak_ws,
        t[2],
        t[3],
        t[10],
        t[4],
        t[5],
        t[6],
        t[7],
        t[8],
        t[9],
    )


def published(numbers: tuple[Any, ...]) -> tuple[Any, ...]:
    """Native room-stats numbers as the record publishes them (leaves are not in it)."""
    start, end, counters, uniques, concurrent = numbers
    return (start, end, [0 if i == 1 else c for i, c in enumerate(counters)], uniques, concurrent)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**STREAMS, gap_ms=st.sampled_from([30_000, 1_800_000]))
def test_closing_a_window_natively_yields_what_the_python_task_yields(
    seed: int, n: int, rooms: int, disorder_ms: int, span_ms: int, gap_ms: int
) -> None:
    close_and_compare(seed, n, rooms, disorder_ms, span_ms, gap_ms)


def test_the_comparison_closes_windows() -> None:
    """The comparison above is of closes, not of streams that had none open when checked."""
    assert close_and_compare(3, 2_000, 20, 1_900, 1_500_000, 30_000) > 50


def close_and_compare(seed: int, n: int, rooms: int, disorder_ms: int, span_ms: int, gap_ms: int) -> int:
    """At random points of a random stream the task is checkpointed and restored into a second
    task; every room of it is read natively from its records, then each of its open windows is
    closed, oldest first, both in that task (``_close_room_window``) and natively: the same
    room-stats, closed rollups, session records (ended and live), and the same records after.
    Returns the windows closed."""
    rng = random.Random(seed)
    cfg = replace(CFG, session_gap_ms=gap_ms)
    stream = make_stream(rng, n, rooms, span_ms, disorder_ms)
    agg = TaskAggregator(cfg, SOURCES)
    log: list[tuple[bytes, bytes | None]] = []
    closed = 0
    i = 0
    while i < len(stream):
        j = min(len(stream), i + rng.randint(1, 120))
        run(agg, stream[i:j], rng)
        agg.drain(), agg.drain_rollups(), agg.drain_sessions(), agg.drain_alerts()
        log += as_log(agg.checkpoint())
        i = j
        if rng.random() < 0.6:
            continue
        copy = TaskAggregator(cfg, SOURCES)
        copy.restore(log)
        native, encoding = NativeRooms(cfg), NativeRooms(cfg)  # the second writes the records
        for room in list(copy.rooms.values()):
            raw, raw_tail = python_records(room)
            for table in (native, encoding):
                table.restore_room(raw)
                if raw_tail is not None:
                    table.restore_tail(room.room_id, raw_tail)
            assert native.open_windows(room.room_id) == sorted(room.open_ws)
            for ws in sorted(room.open_ws):
                copy._rollup_outbox.clear(), copy._session_outbox.clear()
                stats = copy._close_room_window(room, ws)
                got, rollups, sessions, _ends = native.close_window(room.room_id, ws)
                assert published(got) == stats_numbers(stats)
                assert [(length, published(numbers)) for length, numbers in rollups] == [
                    (length, stats_numbers(r)) for length, r in copy._rollup_outbox
                ]
                assert [native_session_numbers(s) for s in sessions] == [
                    session_numbers(r) for r in copy._session_outbox
                ]
                record, rollup_records, session_records = encoding.close_window_records(room.room_id, ws)
                assert record == encode_room_stats(stats)
                assert rollup_records == [(length, encode_room_stats(r)) for length, r in copy._rollup_outbox]
                assert session_records == [encode_room_session(r) for r in copy._session_outbox]
                closed += 1
            head, tail = python_records(room)
            assert sketches_as_estimates(
                orjson.loads(native.encode_room(room.room_id)),
                orjson.loads(native.encode_tail(room.room_id) or b"null"),
            ) == sketches_as_estimates(orjson.loads(head), orjson.loads(tail or b"null"))
    return closed


@settings(max_examples=2_000, deadline=None)
@given(x=st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**6), 10**6).map(lambda k: k / 10))
def test_floats_are_written_as_orjson_writes_them(x: float) -> None:
    """The records' one float (orders per second): shortest digits, fixed notation from 1e-5 to
    below 1e16, orjson's exponents (``1e+16``, ``1e-7``), NaN and infinities as null."""
    assert _fastcore.format_float(x) == orjson.dumps(x)


# -- step 2: applying events ---------------------------------------------------------------


def normalized(
    upserts: list[tuple[bytes, bytes]], deletes: list[bytes]
) -> tuple[list[bytes], dict[bytes, Any]]:
    """A checkpoint's records as the two sides can be held to each other: the order rooms are
    written in, and per key its latest value, sketches by estimate (the detector's state as
    it is: its floats compare exactly)."""
    order = [key for key, _ in upserts if key.startswith(b"r/")]
    latest: dict[bytes, bytes | None] = {**dict(upserts), **dict.fromkeys(deletes)}
    out: dict[bytes, Any] = {}
    for key, value in latest.items():
        if key.startswith(b"t/"):
            tail = None if value is None else orjson.loads(value)
            out[key] = sketches_as_estimates([0, 0, 0, 0, 0, 0, [], []], tail)[1]
        elif key.startswith(b"r/"):  # None: the room expired
            out[key] = None if value is None else sketches_as_estimates(orjson.loads(value), None)[0]
        elif key.startswith(b"d/"):
            out[key] = value
    return order, out


def materialized(encoded: Any) -> tuple[Any, ...]:
    """``drain_encoded``'s records, encoded (as the pipeline iterates them)."""
    windows, count, orders, gmv, partials, rollups, sessions = encoded
    return (list(windows), count, orders, gmv, partials, list(rollups), list(sessions))


#: the leaderboard partials' ranking size in the comparisons (small: cut-offs and ties matter)
LEADERBOARD = 3


def detect_both(task: TaskAggregator, seen: NativeSpikes) -> list[Any]:
    """The detector over the windows closed since the last call, in the task and natively (the
    quiet path on native state, the Python detector for the rest): the same alerts (returned),
    the same rooms firing, the same windows evaluated."""
    seen.detect(task._surge_from)
    alerts = task.drain_alerts()
    assert seen.alerts == alerts
    seen.alerts.clear()
    assert seen.firing == task.firing_rooms
    assert seen.evaluated == task.counters.detector_evaluations
    return alerts


def feed_both(
    task: TaskAggregator, seen: NativeSpikes, items: list[Any], source: int, rng: random.Random
) -> list[Any]:
    """One batch to the Python task and to the native table (with the task's watermark limit and
    replay bound): the same counts, the same records in the same order, the same watermark, the
    same rooms expired, the same detector outcome (the alerts drained returned); now and then a
    checkpoint on both, the same records."""
    native = seen.table
    moves = source in task.sources  # else re-routed events: they never move the watermark
    others = task._delivery(source, 0) if moves else NO_TIME
    # the task's state has a start once an input delivered, or an event opened a room
    watching = task.watch_start is not None or (moves and source not in task._src_max)
    replay_until = task._replay_until.get(source, -1)
    emitted = task.counters.windows_emitted
    expected = task.apply(source, items, now_ms=0)
    counts = [0] * 5
    closes = 0
    at = 0
    while True:
        at, counted = native.apply(source, items, at, others, replay_until, moves, watching)
        counts = [a + b for a, b in zip(counts, counted, strict=True)]
        if at >= len(items):
            break
        closes += native.close_due()
        seen.expire(task._surge_from)
    assert counts == [expected.applied, expected.late, expected.duplicate, expected.replayed, 0]
    first = native.take_first_room_ts()
    if not watching:
        assert task.watch_start == (None if first is None else first - first % task.config.window_ms)
    assert native.rooms_expired == task.counters.rooms_expired
    assert closes == task.counters.windows_emitted - emitted
    if rng.random() < 0.5:  # what the closes left as numbers
        windows, rollups, sessions = native.take_closed()
        assert [(room_id, published(numbers)) for room_id, numbers in windows] == [
            (stats.room_id, stats_numbers(stats)) for stats in task.drain()
        ]
        assert [(room_id, length, published(numbers)) for room_id, length, numbers in rollups] == [
            (stats.room_id, length, stats_numbers(stats)) for length, stats in task.drain_rollups()
        ]
        assert [(room_id, native_session_numbers(numbers)) for room_id, numbers in sessions] == [
            (record.room_id, session_numbers(record)) for record in task.drain_sessions()
        ]
    else:  # or as the records the pipeline publishes, byte for byte, and the leaderboard partials
        task_number = rng.randrange(4)
        windows, *rest = native.take_encoded(task_number, LEADERBOARD)
        assert (windows, len(windows), *rest) == materialized(task.drain_encoded(task_number, LEADERBOARD))
    assert native.watermark() == task.watermark_ms
    assert native.progress() == (task._max_ts, task._watermark, list(task._src_max.items()))
    alerts = detect_both(task, seen) if rng.random() < 0.5 else []
    if rng.random() < 0.3:  # a checkpoint: the same rooms' records, in the same order
        alerts += detect_both(task, seen)
        expected_checkpoint = task.checkpoint()
        upserts, deletes = native.checkpoint(list(task._consumed.items()))
        assert normalized(upserts, deletes) == normalized(
            expected_checkpoint.upserts, expected_checkpoint.deletes
        )
    return alerts


def same_rooms(task: TaskAggregator, seen: NativeSpikes) -> None:
    """Every room's r/ record (byte for byte without set-mode sketches), t/ record, detector
    state (byte for byte) and dedup chunks."""
    native = seen.table
    assert sorted(native.room_ids()) == sorted(task.rooms)
    detect_both(task, seen)
    for room in task.rooms.values():
        head, tail = python_records(room)
        native_head, native_tail = native.encode_room(room.room_id), native.encode_tail(room.room_id)
        if not in_set_mode(head):  # list-mode sketches built from the same joins: the same bytes
            assert native_head == head
        key = room.room_id.encode()
        assert normalized([(b"r/" + key, head), (b"t/" + key, tail or b"null")], []) == normalized(
            [(b"r/" + key, native_head), (b"t/" + key, native_tail or b"null")], []
        )
        detector = None if room.detector is None else orjson.dumps(room.detector.to_wire())
        assert native.detector_wire(room.room_id) == detector
        chunks = [(ws, list(keys)) for ws, keys in room.seen_chunks.items()]
        assert native.dedup_chunks(room.room_id) == chunks


def alerting_rules() -> tuple[SpikeRules, dict[str, str]]:
    """Rules the oracle streams alert on, and categories: two rooms of a sensitive category (views
    and GMV), one with the orders drop rule of its own, the rest on the defaults (quiet)."""

    def override(scope: str, key: str, metric: str, **fields: Any) -> dict[str, Any]:
        return {"scope": scope, "key": key, "metric": metric, "set": fields}

    rules = SpikeRules()
    for message in (
        override("category", "hot", "views_per_sec", min_volume=0.1, ratio=1.2, z_threshold=0.5),
        override("category", "hot", "views_per_sec", surge_value=0.4),
        override("category", "hot", "gmv_per_sec", min_volume=100.0, z_threshold=1.0, surge_value=None),
        override("room", "room-2", "orders_per_sec", drop_enabled=True, drop_min_baseline=0.01),
        override("room", "room-2", "orders_per_sec", min_volume=0.05),
    ):
        rules = apply_override(rules, message)
    return rules, {"room-0": "hot", "room-1": "hot"}


def detecting(task: TaskAggregator, cfg: CoreConfig) -> NativeSpikes:
    """``task`` on the alerting rules, and a native table that detects as it does (or does not,
    as the task)."""
    task.rules, task.categories = alerting_rules()
    table = NativeRooms(cfg, detect_spikes=task.detect_spikes)
    seen = NativeSpikes(table, cfg.window_ms)
    seen.set_rules(task.rules, task.categories)
    return seen


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    **{**STREAMS, "n": st.integers(50, 1_500), "disorder_ms": st.sampled_from([0, 1_900, 15_000, 60_000])},
    spikes=st.booleans(),
)
def test_applying_a_stream_natively_gives_the_python_tasks_windows_and_rooms(
    seed: int, n: int, rooms: int, disorder_ms: int, span_ms: int, spikes: bool
) -> None:
    """The same batches (one input each, as a fetch hands them over) to the Python task and to a
    native table: the same counts (applied, late, duplicate), the same room-stats in the same
    order, and after the stream every room's counters, sketches, open windows and dedup chunks.
    (No wall-clock ticks: the watermark moves on events alone. The rollup and session records
    of the closes and of the watermark are compared too, every room's t/ record, and the spike
    detector's alerts and state; halfway, two more rooms join the sensitive category. Without
    the detector too: a room's reset at expiry then depends on the windows it closed alone.)"""
    rng = random.Random(seed)
    cfg = CFG  # rooms expire (and come back) within the stream
    stream = make_stream(rng, n, rooms, span_ms, disorder_ms)
    if rng.random() < 0.3:  # some of input 0's events re-routed here from another task's input
        stream = [(7 if s == 0 and rng.random() < 0.3 else s, offset, event) for s, offset, event in stream]
    task = TaskAggregator(cfg, SOURCES, detect_spikes=spikes)
    seen = detecting(task, cfg)
    i = 0
    while i < len(stream):
        if i >= len(stream) // 2 and "room-3" not in task.categories:  # new categories, new plans
            task.categories = {**task.categories, "room-3": "hot", "room-4": "hot"}
            seen.set_rules(task.rules, task.categories)
        source = stream[i][0]
        j = i
        limit = i + rng.randint(1, 50)
        while j < len(stream) and j < limit and stream[j][0] == source:
            j += 1
        feed_both(task, seen, [(offset, event) for _, offset, event in stream[i:j]], source, rng)
        i = j
    same_rooms(task, seen)


@pytest.mark.parametrize(
    "held, session_gap_ms, dedup_ttl_ms",
    [("gone", 30_000, 60_000), ("session", 120_000, 60_000), ("orders", 30_000, 200_000)],
)
def test_rooms_that_go_quiet_while_alerting_are_resolved_as_they_expire(
    held: str, session_gap_ms: int, dedup_ttl_ms: int
) -> None:
    """Two rooms of the sensitive category surge, then fall silent while another room moves the
    watermark on. The first scan that finds them idle lets them go (their alerts resolved), or
    keeps them while their session lives or their order keys are within the dedup TTL (reset:
    the alerts resolved; they go later). The same alerts and records as the Python task."""
    from tests.unit.test_core_oracle import BASE_MS

    cfg = replace(CFG, session_gap_ms=session_gap_ms, dedup_ttl_ms=dedup_ttl_ms)
    orders = held == "orders"
    task = TaskAggregator(cfg, SOURCES)
    seen = detecting(task, cfg)
    batches: list[tuple[int, list[Any]]] = []
    offsets = {0: 0, 1: 0, 2: 0}

    def send(source: int, event: Any) -> None:
        offsets[source] += 1
        if not batches or batches[-1][0] != source:
            batches.append((source, []))
        batches[-1][1].append((offsets[source], event))

    for block in range(0, 400, 10):  # every input delivers, ten seconds at a time
        for second in range(block, block + 10):
            ts = BASE_MS + second * 1_000
            send(0, ViewerEvent("like", "room-9", "u0", ts))  # a quiet room on the default rules
            if 30 <= second < 90:  # the surge, seen from the third window on
                for room in ("room-0", "room-1"):
                    send(0, ViewerEvent("join", room, f"u{second}", ts))
        for second in range(block, block + 10):
            ts = BASE_MS + second * 1_000
            send(1, OrderEvent(f"o{second}", "room-9", "u1", ts, "paid", 100, "CNY"))
            if orders and 30 <= second < 90 and second % 10 == 0:
                send(1, OrderEvent(f"o{second}", "room-1", "u1", ts, "paid", 100, "CNY"))
        for second in range(block, block + 10):
            send(2, GiftEvent(f"g{second}", "room-9", "u2", BASE_MS + second * 1_000, 1, 10))
    rng = random.Random(1)
    alerts: list[Any] = []
    for source, items in batches:
        for at in range(0, len(items), 40):
            alerts += feed_both(task, seen, items[at : at + 40], source, rng)
        alerts += detect_both(task, seen)
    same_rooms(task, seen)
    fired = [(a.room_id, a.status) for a in alerts if a.room_id in ("room-0", "room-1")]
    assert ("room-0", "firing") in fired and ("room-0", "resolved") in fired
    assert task.counters.rooms_expired == 2 and not {"room-0", "room-1"} & set(task.rooms)


def test_a_window_of_one_kind_of_event_is_on_the_leaderboard_as_in_python() -> None:
    """Rooms whose window holds one kind of event each (every viewer action, every order status,
    a gift): live on the leaderboard, or not, as the Python partials have them."""
    from tests.unit.test_core_oracle import BASE_MS

    task = TaskAggregator(CFG, SOURCES)
    seen = detecting(task, CFG)
    rng = random.Random(1)
    for at in (BASE_MS, BASE_MS + 30_000):  # the second round moves the watermark past the first
        viewers = [
            ViewerEvent(kind, f"{kind}-{at}", "u1", at)
            for kind in ("join", "leave", "heartbeat", "like", "comment", "share")
        ]
        orders = [
            OrderEvent(f"o-{status}", f"{status}-{at}", "u1", at, status, 500, "CNY")
            for status in ("created", "paid", "cancelled", "refunded")
        ]
        gifts = [GiftEvent(f"g-{at}", f"gift-{at}", "u1", at, 1, 10)]
        for source, events in enumerate((viewers, orders, gifts)):
            items = [(at - BASE_MS + i + 1, event) for i, event in enumerate(events)]
            feed_both(task, seen, items, source, rng)
    assert task.counters.windows_emitted == 11


def test_a_rollup_of_a_length_no_longer_configured_is_dropped_and_the_rest_kept() -> None:
    """As the Python restore does: the session and the configured rollups stay."""
    native = NativeRooms(CoreConfig(rollup_windows_ms=(60_000,)))
    native.restore_room(b'[6,"r",0,-1,[],[],[],[]]')
    totals = [1] + [0] * 10
    session = [0, 10_000, totals, None, 1, 0, 10_000]
    rollups = [[3_600_000, 0, totals, None, 1], [60_000, 0, totals, None, 1]]
    native.restore_tail("r", orjson.dumps([1, "r", None, session, rollups]))
    assert orjson.loads(native.encode_tail("r")) == [1, "r", None, session, [rollups[1]]]
    native.restore_tail("r", orjson.dumps([1, "r", None, session, rollups[:1]]))
    assert orjson.loads(native.encode_tail("r")) == [1, "r", None, session, None]


# -- the restore, then more events -----------------------------------------------------------


def native_restore(
    seen: NativeSpikes, log: list[tuple[bytes, bytes | None]], restored: TaskAggregator
) -> None:
    """The task's changelog into the native table as ``restored`` (the Python task) took it: rooms
    in the order it adopted them (those with an alert firing), then their dedup chunks."""
    native = seen.table
    from streams.core._state_codec import compact, decode_dedup_chunk

    live = compact(log)
    records = dict(live.rooms)
    native.restore_progress(restored._max_ts, restored._watermark, list(restored._src_max.items()))
    for room_id in restored.rooms:
        native.restore_room(records[b"r/" + room_id.encode()])
        tail = live.tails.get(room_id.encode())
        if tail is not None:
            native.restore_tail(room_id, tail)
        native.adopt(room_id)
        seen.restored(room_id)
    for key, value in live.chunks:
        room_id, ws, keys = decode_dedup_chunk(key, value)
        native.restore_chunk(room_id, ws, keys)
    native.finish_restore()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**{**STREAMS, "n": st.integers(100, 1_500)}, gap_ms=st.sampled_from([30_000, 1_800_000]))
def test_a_restored_native_table_goes_on_as_the_restored_python_task(
    seed: int, n: int, rooms: int, disorder_ms: int, span_ms: int, gap_ms: int
) -> None:
    """A task runs part of a stream, checkpointing; its changelog is restored into a new Python
    task and into a native table, and the rest of the stream goes to both: the same counts, the
    same records in the same order, and the same rooms at the end (windows, rollups and sessions
    open at the checkpoint close, end or go on; dedup keys from before still count)."""
    rng = random.Random(seed)
    cfg = replace(CFG, session_gap_ms=gap_ms)
    stream = make_stream(rng, n, rooms, span_ms, disorder_ms)
    first = TaskAggregator(cfg, SOURCES)
    first.rules, first.categories = alerting_rules()
    cut = rng.randrange(len(stream))
    log: list[tuple[bytes, bytes | None]] = []
    i = 0
    while i < cut:
        j = min(cut, i + rng.randint(1, 120))
        run(first, stream[i:j], rng)
        log += as_log(first.checkpoint())
        i = j
    restored = TaskAggregator(cfg, SOURCES)
    restored.restore(log)
    restored.drain(), restored.drain_rollups(), restored.drain_sessions()
    seen = detecting(restored, cfg)
    native_restore(seen, log, restored)
    detect_both(restored, seen)
    while i < len(stream):
        source = stream[i][0]
        j = i
        while j < len(stream) and j < i + 50 and stream[j][0] == source:
            j += 1
        feed_both(restored, seen, [(offset, event) for _, offset, event in stream[i:j]], source, rng)
        i = j
    same_rooms(restored, seen)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**STREAMS, sessions_after=st.booleans())
def test_the_native_task_publishes_the_python_tasks_records(
    seed: int, n: int, rooms: int, disorder_ms: int, span_ms: int, sessions_after: bool
) -> None:
    """``NativeTaskAggregator.drain_encoded`` (the records the pipeline publishes, encoded
    natively) against the Python task's, after every batch of a stream; halfway both restart
    from their changelogs, with sessions turned off or not (off: the restore's ended sessions
    are published before the table's records)."""
    from streams.core._native_rooms import NativeTaskAggregator

    rng = random.Random(seed)
    stream = make_stream(rng, n, rooms, span_ms, disorder_ms)
    tasks = [TaskAggregator(CFG, SOURCES), NativeTaskAggregator(CFG, SOURCES)]
    logs: list[list[tuple[bytes, bytes | None]]] = [[], []]
    cut = len(stream) // 2
    i = 0
    while i < len(stream):
        j = min(len(stream), cut if i < cut else len(stream), i + rng.randint(1, 120))
        state = rng.getstate()
        for task in tasks:
            rng.setstate(state)  # the same batches and ticks
            run(task, stream[i:j], rng)
        number = rng.randrange(4)
        python, native = (materialized(task.drain_encoded(number, LEADERBOARD)) for task in tasks)
        assert native == python
        metric, top = rng.choice(sorted(RANKABLE_METRICS)), rng.randint(0, 6)  # last closed windows ranked
        python, native = (task.top_closed(metric, top) for task in tasks)
        assert native == python
        for log, task in zip(logs, tasks, strict=True):
            log += as_log(task.checkpoint())
        if j == cut:
            cfg = replace(CFG, sessions=sessions_after)
            tasks = [TaskAggregator(cfg, SOURCES), NativeTaskAggregator(cfg, SOURCES)]
            for log, task in zip(logs, tasks, strict=True):
                task.restore(log)
        i = j


def test_order_keys_past_a_chunk_repeated_and_forgotten_as_in_python() -> None:
    """A room takes 1 500 orders in one window (its first chunk sealed at 1 024 keys, a second
    opened), then every one of them again, some twice in one batch with one new order, with order ids of
    every length up to a UUID's: the Python task and the native table count the same duplicates
    and hold the same chunks. Past the dedup TTL the keys are forgotten and the orders count
    again."""
    rng = random.Random(7)
    cfg = replace(CFG, dedup_ttl_ms=60_000)
    task = TaskAggregator(cfg, SOURCES, detect_spikes=False)
    seen = detecting(task, cfg)
    ids = [f"{'x' * rng.randint(0, 36)}{i}" for i in range(1_500)]

    def orders(keys: list[str], ts: int, first: int) -> list[Any]:
        return [(first + i, OrderEvent(k, "room-1", "u", ts, "paid", 100, "CNY")) for i, k in enumerate(keys)]

    offset = 0
    for batch in (ids, [*ids[:700], "new-1", *ids[:5], *ids[700:]], ids[::-1]):
        feed_both(task, seen, orders(batch, 1_000, offset), 0, rng)
        offset += len(batch)
    assert task.counters.duplicate[0] == 1_500 + 5 + 1_500
    same_rooms(task, seen)
    assert sorted(len(keys) for _, keys in seen.table.dedup_chunks("room-1")) == [477, 1_024]
    # a window of the room closes with the watermark past the TTL: its keys are forgotten, and
    # the same orders count again
    for ts in (100_000, 200_000):
        for source in SOURCES:  # the watermark is the slowest input's
            feed_both(task, seen, [(offset, ViewerEvent("join", f"room-{source + 1}", "u", ts))], source, rng)
        offset += 1
    assert seen.table.dedup_chunks("room-1") == []
    feed_both(task, seen, orders(ids[:10], 200_500, offset), 0, rng)
    assert task.counters.duplicate[0] == 3_005
    same_rooms(task, seen)


def test_the_per_room_cap_on_order_keys_forgets_as_in_python() -> None:
    """With ``dedup_max_per_room`` at 3, a room's oldest chunks go at its window closes until it
    holds 3 keys or fewer (counted in the set, as Python's ``len(seen)``): the same chunks left,
    and an order of a forgotten chunk counts again in both, one still remembered does not."""
    rng = random.Random(3)
    cfg = replace(CFG, dedup_max_per_room=3)
    task = TaskAggregator(cfg, SOURCES, detect_spikes=False)
    seen = detecting(task, cfg)
    offset = 0
    for w in range(4):  # two orders a window, then every input past the window's end + grace
        ts = 1_000 + w * cfg.window_ms
        pair = [OrderEvent(f"o{w}-{i}", "room-1", "u", ts, "paid", 100, "CNY") for i in range(2)]
        feed_both(task, seen, [(offset + i, e) for i, e in enumerate(pair)], 0, rng)
        offset += 2
        for source in SOURCES:
            later = ts + cfg.window_ms + cfg.grace_ms
            feed_both(task, seen, [(offset, ViewerEvent("join", "room-2", "u", later))], source, rng)
        offset += 1
    same_rooms(task, seen)
    assert sum(len(keys) for _, keys in seen.table.dedup_chunks("room-1")) <= 3
    again = [OrderEvent("o0-0", "room-1", "u", 41_500, "paid", 100, "CNY")]
    again.append(OrderEvent("o3-1", "room-1", "u", 41_500, "paid", 100, "CNY"))
    before = task.counters.duplicate.get(0, 0)
    feed_both(task, seen, [(offset + i, e) for i, e in enumerate(again)], 0, rng)
    assert task.counters.duplicate[0] == before + 1  # o0-0 forgotten, o3-1 still remembered
    same_rooms(task, seen)
