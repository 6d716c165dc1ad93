"""Rollup windows (room-stats over longer windows) against the brute-force oracle, and across a restore."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadtest.oracle import expected_rollups
from schemas import Event, OrderEvent, RoomStats, ViewerEvent
from streams.core import CoreConfig, TaskAggregator
from streams.core._state_codec import room_state
from streams.exceptions import ConfigError
from tests.records import assert_records_match
from tests.unit.test_core_oracle import SOURCES, make_stream
from tests.unit.test_core_sessions import feed_chunks

CFG = CoreConfig(
    bucket_ms=1_000,
    window_ms=10_000,
    grace_ms=2_000,
    room_idle_ms=10**9,  # the oracle does not model room expiry (it resets concurrent viewers)
    dedup_ttl_ms=10**9,
    rollup_windows_ms=(30_000, 60_000),
)


def feed(agg: TaskAggregator, stream: list[tuple[int, int, Event]], seed: int) -> list[tuple[int, RoomStats]]:
    return feed_chunks(agg, stream, seed, agg.drain_rollups)


def finish(agg: TaskAggregator, now_ms: int = 10**9) -> list[tuple[int, RoomStats]]:
    agg.tick(now_ms=now_ms)
    agg.tick(now_ms=2 * now_ms)
    agg.drain()
    return agg.drain_rollups()


def oracle(stream: list[tuple[int, int, Event]], cfg: CoreConfig) -> dict[tuple[int, str, int], RoomStats]:
    """The brute-force rollups of ``stream`` under ``cfg``'s window, grace and lengths."""
    return expected_rollups(
        stream,
        window_ms=cfg.window_ms,
        grace_ms=cfg.grace_ms,
        lengths_ms=cfg.rollup_windows_ms,
        sources=SOURCES,
    )


def keyed(records: list[tuple[int, RoomStats]]) -> dict[tuple[int, str, int], RoomStats]:
    out: dict[tuple[int, str, int], RoomStats] = {}
    for length, stats in records:
        key = (length, stats.room_id, stats.window_start)
        assert key not in out, f"{key} closed twice"
        out[key] = stats
    return out


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    n=st.integers(1, 600),
    rooms=st.integers(1, 20),
    disorder_ms=st.sampled_from([0, 1_900, 4_000, 15_000]),
    span_ms=st.sampled_from([20_000, 200_000, 1_000_000]),
    sessions=st.sampled_from([None, 20_000, 1_800_000]),
)
def test_rollups_equal_oracle(
    seed: int, n: int, rooms: int, disorder_ms: int, span_ms: int, sessions: int | None
) -> None:
    """With sessions off, or on with a gap short enough that rooms start new ones inside a rollup
    window (the rollups share the session's sketch while they fold the same windows)."""
    stream = make_stream(random.Random(seed), n, rooms, span_ms, disorder_ms)
    cfg = replace(CFG, sessions=False) if sessions is None else replace(CFG, session_gap_ms=sessions)
    agg = TaskAggregator(cfg, SOURCES)
    got = keyed(feed(agg, stream, seed) + finish(agg))
    assert_records_match(got, oracle(stream, cfg))
    assert all(room.rollups is None for room in agg.rooms.values())  # every rollup closed


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), n=st.integers(20, 500), cut=st.floats(0.0, 1.0))
def test_restore_mid_rollup_gives_the_same_rollups(seed: int, n: int, cut: float) -> None:
    stream = make_stream(random.Random(seed), n, rooms=10, span_ms=300_000, disorder_ms=3_000)
    clean = TaskAggregator(CFG, SOURCES)
    reference = keyed(feed(clean, stream, seed) + finish(clean))

    k = int(cut * len(stream))
    crashed = TaskAggregator(CFG, SOURCES)
    before = feed(crashed, stream[:k], seed + 1)
    changelog = list(crashed.checkpoint().upserts)
    feed(crashed, stream[k : k + 40], seed + 2)  # lost in the crash
    restored = TaskAggregator(CFG, SOURCES)
    restored.restore(changelog)
    after = feed(restored, stream[k:], seed + 3) + finish(restored)
    assert keyed(before + after) == reference
    assert len(before + after) == len(reference)  # none closed twice (the restore drops what was due)


VIEWER, ORDER = SOURCES[:2]
#: a minute boundary, so the order's window and the viewers' are in one 1 min rollup window
T0 = 1_700_000_040_000


@pytest.mark.parametrize("sessions", [False, True])
def test_a_rollup_opened_by_a_window_without_viewers_counts_the_unique_viewers_after_it(
    sessions: bool,
) -> None:
    """A room's first window of a rollup holds only an order (no sketch); viewers come in the
    next windows, and with sessions on after a gap that starts a new session. The rollup dropped
    every later window's sketch: 0 (or 1) unique viewers for 6 views."""
    cfg = replace(CFG, sessions=sessions, session_gap_ms=20_000)
    agg = TaskAggregator(cfg, SOURCES)
    order = OrderEvent("o1", "r", "buyer", T0 + 1_000, "paid", 1_500, "CNY")
    joins = [ViewerEvent("join", "r", f"u{i}", T0 + 31_000 + 3_000 * i) for i in range(6)]
    stream: list[tuple[int, int, Event]] = [(ORDER, 0, order)]
    stream += [(VIEWER, i, join) for i, join in enumerate(joins)]
    got = keyed(feed(agg, stream, 1) + finish(agg))
    (minute,) = [stats for (length, _, _), stats in got.items() if length == 60_000]
    assert (minute.views, minute.unique_viewers, minute.orders) == (6, 6, 1)
    assert_records_match(got, oracle(stream, cfg))


def test_closed_rollups_leave_no_changelog_state() -> None:
    stream = make_stream(random.Random(7), 200, rooms=5, span_ms=100_000, disorder_ms=0)
    agg = TaskAggregator(CFG, SOURCES)
    feed(agg, stream, 7)
    first = agg.checkpoint()
    records = dict(first.upserts)
    rooms = [room_state(records, k[2:].decode()) for k in records if k.startswith(b"r/")]
    assert any(room.rollups for room in rooms)  # open rollups are in their room's records
    finish(agg)
    second = agg.checkpoint()
    log: list[tuple[bytes, bytes | None]] = [
        *first.upserts,
        *second.upserts,
        *((k, None) for k in second.deletes),
    ]
    restored = TaskAggregator(CFG, SOURCES)
    restored.restore(log)
    assert all(room.rollups is None for room in restored.rooms.values())
    assert restored.drain_rollups() == [] and finish(restored) == []  # nothing closes twice


@pytest.mark.parametrize("lengths", [(15_000,), (10_000,), (60_000, 60_000)])
def test_rollup_lengths_must_be_multiples_of_the_window(lengths: tuple[int, ...]) -> None:
    with pytest.raises(ConfigError):
        CoreConfig(window_ms=10_000, rollup_windows_ms=lengths)
