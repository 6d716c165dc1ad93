"""The changelog holds the live state at every checkpoint: a task restored from it has every room
the live one has, record for record (``r/``, ``t/`` for its detector, session and rollups, which a
checkpoint rewrites only when they changed, and ``d/`` for its order-dedup memory)."""

from __future__ import annotations

import base64
import random
from dataclasses import replace
from typing import Any

import orjson
import pytest
from datasketches import hll_sketch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import OrderEvent, ViewerEvent
from streams.core import CoreConfig, TaskAggregator
from streams.core._state_codec import Checkpoint, encode_room, encode_room_tail
from streams.exceptions import ConfigError
from streams.settings import settings_from_env
from tests.unit.test_core_oracle import SOURCES, make_stream, run

CFG = CoreConfig(
    bucket_ms=1_000,
    window_ms=10_000,
    grace_ms=2_000,
    room_idle_ms=60_000,  # rooms expire (and come back) within the stream
    dedup_ttl_ms=120_000,
    session_gap_ms=30_000,
    rollup_windows_ms=(30_000, 60_000),
)


def state_of(agg: TaskAggregator) -> dict[str, tuple[Any, ...]]:
    """Each room's two records, decoded, a sketch as its estimate (a set-mode sketch rebuilt from
    its bytes may list the same coupons in another order than the union it was taken from), and
    its dedup memory by chunk."""
    out: dict[str, tuple[Any, ...]] = {}
    for room_id, room in agg.rooms.items():
        head = orjson.loads(encode_room(room))
        head[6] = [[ws, estimate(sketch)] for ws, sketch in head[6]]
        raw_tail = encode_room_tail(room)
        tail = None if raw_tail is None else orjson.loads(raw_tail)
        if tail is not None and tail[3] is not None:
            tail[3][3] = estimate(tail[3][3])
        for rollup in () if tail is None else tail[4] or ():
            rollup[3] = estimate(rollup[3])
        chunks = {ws: list(keys) for ws, keys in room.seen_chunks.items()}
        out[room_id] = (head, tail, sorted(room.seen), chunks)
    return out


def as_log(checkpoint: Checkpoint) -> list[tuple[bytes, bytes | None]]:
    """A checkpoint's records as the changelog holds them: upserts, then tombstones."""
    return [*checkpoint.upserts, *((key, None) for key in checkpoint.deletes)]


def estimate(sketch: str | None) -> float | None:
    return None if sketch is None else hll_sketch.deserialize(base64.b64decode(sketch)).get_estimate()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    n=st.integers(50, 800),
    rooms=st.integers(1, 25),
    disorder_ms=st.sampled_from([0, 1_900, 15_000]),
    span_ms=st.sampled_from([60_000, 400_000, 1_500_000]),
    formats=st.sampled_from([(6,), (5,), (5, 6)]),
    dedup_cap=st.sampled_from([100_000, 3]),
)
def test_a_restore_at_any_checkpoint_has_the_live_state(
    seed: int, n: int, rooms: int, disorder_ms: int, span_ms: int, formats: tuple[int, ...], dedup_cap: int
) -> None:
    """Each checkpoint is restored into a new task, which half the time goes on in place of the
    live one (what a crash or a rebalance does), writing the state format it was given: with
    ``(5, 6)`` each task writes either, as workers do during a rolling upgrade. A dedup cap of 3
    keys per room forgets chunks while windows are open, and the room opens them again."""
    rng = random.Random(seed)
    stream = make_stream(rng, n, rooms, span_ms, disorder_ms)
    cfg = replace(CFG, dedup_max_per_room=dedup_cap)
    agg = TaskAggregator(replace(cfg, state_format=rng.choice(formats)), SOURCES)
    log: list[tuple[bytes, bytes | None]] = []
    i = 0
    while i < len(stream):
        j = min(len(stream), i + rng.randint(1, 120))
        run(agg, stream[i:j], rng)
        if rng.random() < 0.3:  # wall time releases idle sources: windows, rollups, sessions close
            agg.tick(now_ms=rng.randint(0, 10**7))
        agg.drain(), agg.drain_rollups(), agg.drain_sessions(), agg.drain_alerts()
        checkpoint = agg.checkpoint()
        log += as_log(checkpoint)
        restored = TaskAggregator(replace(cfg, state_format=rng.choice(formats)), SOURCES)
        restored.restore(log)
        assert restored.quarantined == []
        assert state_of(restored) == state_of(agg)
        if rng.random() < 0.5:
            agg = restored
        i = j


BASE_MS = 1_700_000_000_000


def lived(room_id: str = "r") -> tuple[TaskAggregator, list[tuple[bytes, bytes | None]]]:
    """A task whose room closed windows (a detector, a session, open rollups), and its changelog."""
    agg = TaskAggregator(CFG, SOURCES)
    for k in range(3):
        agg.apply(0, [(k + 1, ViewerEvent("join", room_id, f"u{k}", BASE_MS + k * 10_000))], now_ms=0)
    agg.tick(now_ms=13_000)  # the wall clock releases the watermark to the newest event + 11 s
    checkpoint = agg.checkpoint()
    room = agg.rooms[room_id]
    assert room.detector is not None and room.session is not None and room.rollups is not None
    return agg, [*as_log(checkpoint)]


def as_version_5(agg: TaskAggregator, room_id: str) -> bytes:
    """The room's state as a worker before the t/ record wrote it: one record."""
    room = agg.rooms[room_id]
    head = orjson.loads(encode_room(room))
    tail = orjson.loads(encode_room_tail(room) or b"null")
    buckets = [[bucket, *counters] for bucket, counters in head[5]]
    return orjson.dumps([5, *head[1:5], buckets, *head[6:8], *tail[2:]])


def test_a_room_of_a_version_5_record_writes_its_tail_with_its_next_record() -> None:
    agg, log = lived()
    # an earlier worker took the room over and wrote it whole; the t/ record beside it is older
    log = [*log, (b"r/r", as_version_5(agg, "r"))]
    restored = TaskAggregator(CFG, SOURCES)
    restored.restore(log)
    assert restored.quarantined == [] and state_of(restored) == state_of(agg)
    written = dict(restored.checkpoint().upserts)  # at once, over the older t/ record
    assert orjson.loads(written[b"r/r"])[0] == 6 and b"t/r" in written
    again = TaskAggregator(CFG, SOURCES)
    again.restore([*log, *written.items()])
    assert state_of(again) == state_of(restored)


def test_a_room_of_a_version_5_record_without_a_tail_record_writes_one_with_its_next_record() -> None:
    agg, log = lived()
    restored = TaskAggregator(CFG, SOURCES)
    restored.restore([(k, v) for k, v in log if k != b"t/r"] + [(b"r/r", as_version_5(agg, "r"))])
    assert state_of(restored) == state_of(agg)
    assert b"r/r" not in dict(restored.checkpoint().upserts)  # nothing changed, nothing written
    restored.apply(0, [(9, ViewerEvent("like", "r", "u1", BASE_MS + 40_000))], now_ms=13_000)
    written = restored.checkpoint().upserts
    again = TaskAggregator(CFG, SOURCES)
    again.restore([*log, (b"r/r", as_version_5(agg, "r")), *written])
    assert {k for k, _ in written} >= {b"r/r", b"t/r"} and state_of(again) == state_of(restored)


def test_a_tail_record_of_no_room_is_deleted() -> None:
    _, log = lived()
    restored = TaskAggregator(CFG, SOURCES)
    restored.restore([*log, (b"r/r", b"{not json")])
    assert [key for key, _, _ in restored.quarantined] == [b"r/r"] and "r" not in restored.rooms
    assert b"t/r" in restored.checkpoint().deletes  # it would be another room's history if it came back


def test_a_room_back_after_its_record_was_quarantined_keeps_the_tail_it_writes() -> None:
    _, log = lived()
    restored = TaskAggregator(CFG, SOURCES)
    restored.restore([*log, (b"r/r", b"{not json")])
    for k in range(4):  # the room comes back and closes a window before the next checkpoint
        restored.apply(0, [(20 + k, ViewerEvent("join", "r", f"v{k}", BASE_MS + 40_000 + k * 5_000))], 13_000)
    restored.tick(now_ms=30_000)
    checkpoint = restored.checkpoint()
    assert b"t/r" in dict(checkpoint.upserts) and b"t/r" not in checkpoint.deletes
    again = TaskAggregator(CFG, SOURCES)
    again.restore([*log, (b"r/r", None), *as_log(checkpoint)])
    assert state_of(again) == state_of(restored) and again.rooms["r"].session is not None


def test_a_corrupt_tail_record_is_quarantined_and_the_room_goes_on_without_it() -> None:
    agg, log = lived()
    log.append((b"t/r", orjson.dumps([1, "r", [99], None, None])))
    restored = TaskAggregator(CFG, SOURCES)
    restored.restore(log)
    assert [key for key, _, _ in restored.quarantined] == [b"t/r"]
    room = restored.rooms["r"]
    assert room.detector is None and room.session is None and room.rollups is None
    assert orjson.loads(encode_room(room)) == orjson.loads(encode_room(agg.rooms["r"]))
    log.append((b"t/r", None))  # the quarantine deletes it
    for k in range(4):  # the room closes a window again: it has a detector and a session again
        restored.apply(0, [(20 + k, ViewerEvent("join", "r", f"v{k}", BASE_MS + 40_000 + k * 5_000))], 13_000)
    restored.tick(now_ms=30_000)
    checkpoint = restored.checkpoint()
    again = TaskAggregator(CFG, SOURCES)
    again.restore([*log, *as_log(checkpoint)])
    assert again.rooms["r"].detector is not None and state_of(again) == state_of(restored)


def test_a_tail_key_of_no_room_id_is_deleted() -> None:
    _, log = lived()
    restored = TaskAggregator(CFG, SOURCES)
    restored.restore([*log, (b"t/\xff\xfe", b"junk")])  # not UTF-8: no room can have that id
    assert restored.quarantined == [] and b"t/\xff\xfe" in restored.checkpoint().deletes


def test_format_5_writes_one_record_per_room_as_workers_before_format_6_read_it() -> None:
    agg, log = lived()
    whole = TaskAggregator(replace(CFG, state_format=5), SOURCES)
    whole.restore(log)
    assert state_of(whole) == state_of(agg)
    whole.apply(0, [(9, ViewerEvent("join", "r", "u9", BASE_MS + 40_000))], now_ms=13_000)
    whole.tick(now_ms=30_000)
    checkpoint = whole.checkpoint()
    written = dict(checkpoint.upserts)
    record = orjson.loads(written[b"r/r"])
    assert record[0] == 5 and len(record) == 11 and record[8] is not None  # the detector in it
    assert not any(key.startswith(b"t/") for key in written) and b"t/r" not in checkpoint.deletes
    # a format-6 worker takes it over: the older t/ record beside it is not read
    new = TaskAggregator(CFG, SOURCES)
    new.restore([*log, *as_log(checkpoint)])
    assert state_of(new) == state_of(whole)


def test_a_state_format_other_than_5_or_6_is_refused() -> None:
    with pytest.raises(ConfigError, match="state_format"):
        CoreConfig(state_format=4)
    assert settings_from_env({"LIVEPULSE_STATE_FORMAT": "5"}).core.state_format == 5


def test_write_checkpoint_hands_over_the_records_checkpoint_gathers_in_their_order() -> None:
    """Streamed (the data plane's path) or gathered, a checkpoint is the same records, upserts
    first: a tombstone never comes before a write of its key."""
    rng = random.Random(5)
    stream = make_stream(rng, 600, 12, 400_000, 1_900)
    gathered, streamed = TaskAggregator(CFG, SOURCES), TaskAggregator(CFG, SOURCES)
    for i in range(0, len(stream), 60):
        for agg in (gathered, streamed):
            run(agg, stream[i : i + 60], random.Random(i))
            agg.tick(now_ms=i * 1_000)
        checkpoint = gathered.checkpoint({0: i})
        records: list[tuple[bytes, bytes | None]] = []
        count = streamed.write_checkpoint(lambda key, value, into=records: into.append((key, value)), {0: i})
        assert records == [*as_log(checkpoint)]
        assert count == len(records) and records[len(checkpoint.upserts) - 1][0] == b"m/task"


def order(order_id: str, ts: int) -> OrderEvent:
    return OrderEvent(order_id, "r", "u", ts, "paid", 100, "CNY")


def test_a_dedup_chunk_the_cap_forgot_and_the_room_opened_again_is_kept() -> None:
    """The cap forgets the open window's chunk with the closed one's; an order in that window
    opens it again before the checkpoint, which must write it and not delete it after."""
    cfg = replace(CFG, dedup_max_per_room=2)
    agg = TaskAggregator(cfg, (0,))  # one input: its events alone move the watermark
    events = [order("o1", BASE_MS + 1_000), order("o2", BASE_MS + 10_500), order("o3", BASE_MS + 10_600)]
    events += [order("o4", BASE_MS + 10_700), ViewerEvent("join", "r", "u1", BASE_MS + 12_100)]
    events.append(order("o5", BASE_MS + 12_200))  # after the close that forgot both chunks
    agg.apply(0, list(enumerate(events, 1)), now_ms=0)
    assert agg.counters.windows_emitted == 1  # the close forgot both chunks, then o5 came
    checkpoint = agg.checkpoint()
    written = {key for key, _ in checkpoint.upserts if key.startswith(b"d/")}
    assert written and not written & set(checkpoint.deletes)
    restored = TaskAggregator(cfg, (0,))
    restored.restore([*as_log(checkpoint)])
    assert state_of(restored) == state_of(agg)
    retry = [(9, order("o5", BASE_MS + 12_300))]  # a producer's retry of o5
    assert restored.apply(0, retry, now_ms=0).duplicate == agg.apply(0, retry, now_ms=0).duplicate == 1


def test_the_dedup_chunks_of_a_quarantined_room_are_deleted() -> None:
    """A room whose record cannot be read starts again; its old order keys must not come back
    with a later restore (the live task would count an order the restored one calls a retry)."""
    first = TaskAggregator(CFG, SOURCES)
    first.apply(0, [(1, order("o1", BASE_MS + 1_000))], now_ms=0)
    written = first.checkpoint().upserts
    old_chunk = next(key for key, _ in written if key.startswith(b"d/"))
    log = [*written, (b"r/r", b"{not json")]
    live = TaskAggregator(CFG, SOURCES)
    live.restore(log)
    assert [key for key, _, _ in live.quarantined] == [b"r/r"]
    log.append((b"r/r", None))  # the quarantine's delete
    live.apply(0, [(2, order("o2", BASE_MS + 21_000))], now_ms=0)  # the room comes back
    checkpoint = live.checkpoint()
    assert old_chunk in checkpoint.deletes
    again = TaskAggregator(CFG, SOURCES)
    again.restore([*log, *as_log(checkpoint)])
    assert state_of(again) == state_of(live)
    retry = [(3, order("o1", BASE_MS + 22_000))]
    assert again.apply(0, retry, now_ms=0).applied == live.apply(0, retry, now_ms=0).applied == 1


def test_a_quarantined_room_back_in_the_same_window_keeps_the_chunk_it_writes() -> None:
    first = TaskAggregator(CFG, SOURCES)
    first.apply(0, [(1, order("o1", BASE_MS + 1_000))], now_ms=0)
    log = [*first.checkpoint().upserts, (b"r/r", b"{not json")]
    live = TaskAggregator(CFG, SOURCES)
    live.restore(log)
    live.apply(0, [(2, order("o2", BASE_MS + 2_000))], now_ms=0)  # the same window: the same chunk id
    checkpoint = live.checkpoint()
    chunks = {key for key, _ in checkpoint.upserts if key.startswith(b"d/")}
    assert chunks and not chunks & set(checkpoint.deletes)
    again = TaskAggregator(CFG, SOURCES)
    again.restore([*log, (b"r/r", None), *as_log(checkpoint)])
    assert state_of(again) == state_of(live) and again.rooms["r"].seen == {"paid:o2"}


def test_a_session_dropped_because_sessions_were_turned_off_stays_gone() -> None:
    _, log = lived()
    off = TaskAggregator(replace(CFG, sessions=False), SOURCES)
    off.restore(log)
    assert off.rooms["r"].session is None
    checkpoint = off.checkpoint()  # the room is not otherwise changed: its t/ record is rewritten
    assert b"t/r" in dict(checkpoint.upserts)
    on = TaskAggregator(CFG, SOURCES)
    on.restore([*log, *as_log(checkpoint)])
    assert on.rooms["r"].session is None


def test_a_rollup_of_a_length_no_longer_configured_stays_gone() -> None:
    _, log = lived()
    fewer = TaskAggregator(replace(CFG, rollup_windows_ms=(30_000,)), SOURCES)
    fewer.restore(log)
    checkpoint = fewer.checkpoint()
    assert b"t/r" in dict(checkpoint.upserts)
    again = TaskAggregator(CFG, SOURCES)
    again.restore([*log, *as_log(checkpoint)])
    lengths = {rollup.length for rollup in again.rooms["r"].rollups or () if rollup is not None}
    assert 60_000 not in lengths
