"""Broadcast sessions of the task aggregator against the brute-force oracle, and across a restore."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import TypeVar

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadtest.oracle import expected_sessions
from schemas import Event, RoomSession, ViewerEvent
from streams.core import CoreConfig, TaskAggregator, room_view
from streams.core._state_codec import decode_room, room_state
from streams.exceptions import ConfigError
from tests.records import assert_records_match
from tests.unit.test_core_oracle import BASE_MS, SOURCES, make_stream, run

CFG = CoreConfig(
    bucket_ms=1_000,
    window_ms=10_000,
    grace_ms=2_000,
    room_idle_ms=20_000,  # rooms expire well inside a session: the session must outlive them
    dedup_ttl_ms=10**9,
    session_gap_ms=30_000,
)
#: the oracle does not model room expiry (it resets concurrent viewers): compared without it
NO_EXPIRY = dataclasses.replace(CFG, room_idle_ms=10**9)
T = TypeVar("T")


def latest(records: list[RoomSession]) -> dict[tuple[str, int], RoomSession]:
    """The compacted view of a session topic: last record per key."""
    out: dict[tuple[str, int], RoomSession] = {}
    for record in records:
        out[(record.room_id, record.session_start)] = record
    return out


def feed_chunks(
    agg: TaskAggregator, stream: list[tuple[int, int, Event]], seed: int, drain: Callable[[], list[T]]
) -> list[T]:
    """Feed the stream in random chunks (each in random batches), draining ``drain`` after each."""
    out: list[T] = []
    rng = random.Random(seed)
    i = 0
    while i < len(stream):
        j = min(len(stream), i + rng.randint(1, 80))
        run(agg, stream[i:j], rng)
        out.extend(drain())
        i = j
    return out


def feed(agg: TaskAggregator, stream: list[tuple[int, int, Event]], seed: int) -> list[RoomSession]:
    return feed_chunks(agg, stream, seed, agg.drain_sessions)


def settle(agg: TaskAggregator, now_ms: int) -> list[RoomSession]:
    """Wall time releases the idle sources: the watermark moves to newest + now - grace."""
    agg.tick(now_ms=now_ms)
    agg.drain()
    return agg.drain_sessions()


def assert_sessions_match(
    got: dict[tuple[str, int], RoomSession], want: dict[tuple[str, int], RoomSession]
) -> None:
    assert_records_match(got, want)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    n=st.integers(1, 600),
    rooms=st.integers(1, 20),
    disorder_ms=st.sampled_from([0, 1_900, 4_000, 15_000]),
    span_ms=st.sampled_from([20_000, 400_000, 2_000_000]),
    end=st.sampled_from(["live", "ended"]),
)
def test_sessions_equal_oracle(
    seed: int, n: int, rooms: int, disorder_ms: int, span_ms: int, end: str
) -> None:
    stream = make_stream(random.Random(seed), n, rooms, span_ms, disorder_ms)
    agg = TaskAggregator(NO_EXPIRY, SOURCES)
    records = feed(agg, stream, seed)
    # "live": every window closes but the last sessions have not been silent for the gap yet
    records += settle(agg, 15_000 if end == "live" else 10**6)
    want = expected_sessions(
        stream,
        window_ms=CFG.window_ms,
        grace_ms=CFG.grace_ms,
        bucket_ms=CFG.bucket_ms,
        gap_ms=CFG.session_gap_ms,
        sources=SOURCES,
        final_watermark_ms=agg.watermark_ms,
    )
    assert_sessions_match(latest(records), want)
    if end == "ended":
        assert all(s.status == "ended" for s in want.values())
        assert all(room.session is None for room in agg.rooms.values())  # nothing left behind


def test_each_session_ends_once_and_its_state_is_deleted() -> None:
    agg = TaskAggregator(dataclasses.replace(CFG, session_gap_ms=60_000), SOURCES)
    t = BASE_MS
    agg.apply(
        0, [(1, ViewerEvent("join", "r", "a", t)), (2, ViewerEvent("join", "r", "b", t + 1_500))], now_ms=0
    )
    agg.apply(0, [(3, ViewerEvent("like", "r", "a", t + 25_000))], now_ms=0)
    records = settle(agg, 15_000)  # watermark newest + 13 s: both windows close
    assert [r.status for r in records] == ["live", "live"]
    key = b"r/r"
    assert room_state(dict(agg.checkpoint().upserts), "r").session is not None  # in the room's records
    # another room moves the watermark past r's idle time: r's window state is reset, its session stays
    agg.apply(0, [(4, ViewerEvent("heartbeat", "o", "x", t + 52_000))], now_ms=15_000)
    settle(agg, 25_000)
    kept = agg.rooms["r"]
    assert (list(kept.open_ws), dict(kept.buckets), kept.last_closed) == ([], {}, None)
    assert kept.session is not None
    assert room_view(agg, "r")["session"]["status"] == "live"  # type: ignore[index]
    # more than the gap of silence: a second session, and the first one ends
    agg.apply(0, [(5, ViewerEvent("join", "r", "c", t + 150_000))], now_ms=10**6)
    records = [r for r in settle(agg, 10**6 + 15_000) if r.room_id == "r"]
    assert [r.status for r in records] == ["ended", "live"]
    ended = records[0]
    assert (ended.session_start, ended.session_end, ended.updated_at) == (t, t + 26_000, t + 90_000)
    assert (ended.views, ended.unique_viewers, ended.likes, ended.peak_concurrent_viewers) == (2, 2, 1, 2)
    assert records[1].session_start == t + 150_000 and records[1].session_end is None
    session = room_state(dict(agg.checkpoint().upserts), "r").session
    assert session is not None and session.start == t + 150_000  # the new session
    records = [r for r in settle(agg, 10**8) if r.room_id == "r"]
    assert [r.status for r in records] == ["ended"]
    # the session ended and the hour's rollup closed: nothing keeps the silent room any longer
    deletes = agg.checkpoint().deletes
    assert "r" not in agg.rooms and key in deletes and b"t/r" in deletes
    assert settle(agg, 10**9) == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), n=st.integers(20, 500), cut=st.floats(0.0, 1.0))
def test_restore_mid_session_gives_the_same_sessions(seed: int, n: int, cut: float) -> None:
    stream = make_stream(random.Random(seed), n, rooms=10, span_ms=300_000, disorder_ms=3_000)
    # Without room expiry: its scan times are not checkpointed, so an expiry (which resets concurrent
    # viewers) may fall elsewhere after a restore; sessions outliving rooms are tested above.
    clean = TaskAggregator(NO_EXPIRY, SOURCES)
    reference = feed(clean, stream, seed) + settle(clean, 10**6)

    k = int(cut * len(stream))
    crashed = TaskAggregator(NO_EXPIRY, SOURCES)
    before = feed(crashed, stream[:k], seed + 1)
    changelog = list(crashed.checkpoint().upserts)
    feed(crashed, stream[k : k + 40], seed + 2)  # lost in the crash
    restored = TaskAggregator(NO_EXPIRY, SOURCES)
    restored.restore(changelog)
    after = feed(restored, stream[k:], seed + 3) + settle(restored, 10**6) + settle(restored, 2 * 10**6)
    assert latest(before + after) == latest(reference)
    ended = [(r.room_id, r.session_start) for r in before + after if r.status == "ended"]
    assert len(ended) == len(set(ended))  # each session ends once, a restore in between or not


def test_session_gap_shorter_than_a_window_is_refused() -> None:
    with pytest.raises(ConfigError):
        CoreConfig(window_ms=10_000, session_gap_ms=5_000)


def _room_record(session: object, rollups: object) -> bytes:
    room = [5, "r", 0, BASE_MS, [], [], [], [], None]
    return orjson.dumps([*room, session, rollups])


ZEROS = [0] * 11


@pytest.mark.parametrize(
    "value",
    [
        _room_record([0, 1000, [0, 0], None, 0, 0, 0], None),  # session counters missing
        _room_record([0, 1000, ZEROS, "%%%", 0, 0, 0], None),  # not a sketch
        _room_record([0, 1000, ZEROS, None, 0, 0], None),  # a session field missing
        _room_record(None, [[60_000, 0, ZEROS, 5, 0]]),  # a rollup's sketch not a string
        _room_record(None, [[60_000, 0, [0.5] * 11, None, 0]]),  # counters not integers
    ],
)
def test_a_room_record_with_an_undecodable_session_or_rollup_is_quarantined(value: bytes) -> None:
    assert decode_room(_room_record(None, None)).room_id == "r"  # the same record, sound, decodes
    agg = TaskAggregator(CFG, SOURCES)
    t = BASE_MS
    agg.apply(0, [(1, ViewerEvent("join", "ok", "a", t))], now_ms=0)
    settle(agg, 15_000)
    good = agg.checkpoint().upserts
    restored = TaskAggregator(CFG, SOURCES)
    restored.restore([*good, (b"r/r", value)])
    assert [q[0] for q in restored.quarantined] == [b"r/r"]
    assert restored.rooms["ok"].session is not None and "r" not in restored.rooms


def test_sessions_can_be_switched_off() -> None:
    agg = TaskAggregator(dataclasses.replace(CFG, sessions=False), SOURCES)
    agg.apply(0, [(1, ViewerEvent("join", "r", "a", BASE_MS))], now_ms=0)
    agg.tick(now_ms=15_000)
    assert len(agg.drain()) == 1  # the window closed
    assert agg.drain_sessions() == [] and agg.rooms["r"].session is None
