"""Hostile input against the core: an input sending old events, a fast clock, a flood of room ids."""

from __future__ import annotations

from schemas import ViewerEvent
from streams.core import CoreConfig, TaskAggregator

BASE_MS = 1_700_000_000_000  # a multiple of 10 s
W = 10_000
HOUR = 3_600_000


def join(room: str, ts: int) -> ViewerEvent:
    return ViewerEvent("join", room, "u", ts)


def test_an_input_sending_hour_old_events_stops_holding_the_watermark_back() -> None:
    agg = TaskAggregator(CoreConfig(), sources=(0, 1))
    agg.apply(1, [(0, join("old", BASE_MS - HOUR))], BASE_MS)
    for step in range(6):
        now = BASE_MS + step * W
        agg.apply(0, [(step, join("r", now))], now)
        agg.apply(1, [(step + 1, join("old", now - HOUR))], now)
        agg.tick(now, busy=())  # both read up to their log end
    assert agg.trailing_sources == {1}
    assert agg.watermark_ms == BASE_MS + 5 * W - 2_000
    closed = {(s.room_id, s.window_start): s for s in agg.drain()}
    assert [closed[("r", BASE_MS + k * W)].views for k in range(4)] == [1, 1, 1, 1]
    # the trailing input's events count late, none is added; its room's only event in time was
    # an hour old, so the room expired at once and its late events open no room again
    assert agg.counters.late == {1: 5}
    old = [(ws - BASE_MS, s.views, s.late_events) for (room, ws), s in closed.items() if room == "old"]
    assert old == [(-HOUR, 2, 0)]  # the two hour-old joins in time (before any watermark), nothing else
    assert "old" not in agg.rooms


def test_the_last_windows_close_when_the_others_fall_quiet_and_the_trailing_input_keeps_sending() -> None:
    agg = TaskAggregator(CoreConfig(), sources=(0, 1))
    agg.apply(0, [(0, join("r", BASE_MS + 5_000))], BASE_MS + 5_000)
    agg.apply(1, [(0, join("old", BASE_MS - HOUR))], BASE_MS + 5_000)
    agg.tick(BASE_MS + 5_000, busy=())
    for step in range(1, 20):  # source 0 quiet from here on, source 1 keeps sending old events
        now = BASE_MS + 5_000 + step * 1_000
        agg.apply(1, [(step, join("old", now - HOUR))], now)
        agg.tick(now, busy=())
    assert ("r", BASE_MS) in {(s.room_id, s.window_start) for s in agg.drain()}


def test_catch_up_with_every_input_behind_stays_exact() -> None:
    """After downtime both inputs have a backlog (busy): neither is released, however far apart."""
    agg = TaskAggregator(CoreConfig(), sources=(0, 1))
    now = BASE_MS + HOUR
    agg.apply(0, [(k, join("r", BASE_MS + k * W)) for k in range(20)], now)  # read 190 s ahead
    agg.apply(1, [(0, join("r", BASE_MS))], now)
    agg.tick(now, busy=(0, 1))
    assert agg.trailing_sources == frozenset()
    result = agg.apply(1, [(k, join("r", BASE_MS + k * W + 1)) for k in range(1, 20)], now)
    assert (result.applied, result.late) == (19, 0)


def test_an_input_read_to_its_end_behind_a_backlogged_one_is_not_released() -> None:
    """Only the source that trails can be released; a busy one being ahead does not release others
    when the trailing source itself still has a backlog."""
    agg = TaskAggregator(CoreConfig(), sources=(0, 1))
    now = BASE_MS + HOUR
    agg.apply(0, [(0, join("r", BASE_MS + 10 * W))], now)
    agg.apply(1, [(0, join("r", BASE_MS))], now)
    agg.tick(now, busy=(1,))
    assert agg.trailing_sources == frozenset()
    assert agg.watermark_ms == BASE_MS - 2_000


def test_a_producer_clock_seconds_fast_makes_no_honest_event_late() -> None:
    """Views from a producer 8 s fast (within max_future_ms: accepted) beside honest ones, on the
    only input that is not idle. Event time alone would put the watermark 6 s ahead of the wall
    clock, and the honest views that follow (0.5 s old, as they reach the worker) late."""

    def run(lead: int | None) -> TaskAggregator:
        agg = TaskAggregator(CoreConfig(max_watermark_lead_ms=lead), sources=(0, 1))
        agg.apply(1, [(0, join("quiet", BASE_MS))], BASE_MS)  # the other input, then silent
        offset = 0
        for step in range(1, 25):
            now = BASE_MS + step * 1_000
            agg.tick(now, busy=())
            offset += 2
            agg.apply(0, [(offset, join("fast", now + 8_000)), (offset + 1, join("r", now - 500))], now)
        agg.tick(BASE_MS + 40_000, busy=())
        return agg

    capped = run(0)
    assert capped.counters.late == {}
    views = {(s.room_id, s.window_start - BASE_MS): s.views for s in capped.drain()}
    assert views[("r", 0)] == views[("r", W)] == 10  # every honest view of each window
    assert views[("fast", W)] == 10  # the fast producer's views count too, in their own windows
    # The watermark follows the wall clock less grace (plus the idle advance at the last tick).
    assert capped.watermark_ms == BASE_MS + 40_000 - 2_000
    # without the cap (event time alone: the pure core's default), the honest views were late
    uncapped = run(None)
    assert uncapped.counters.late.get(0, 0) > 15


def test_rooms_beyond_the_cap_are_refused_and_reported() -> None:
    agg = TaskAggregator(CoreConfig(max_rooms=2))
    result = agg.apply(0, [(0, join("a", BASE_MS)), (1, join("b", BASE_MS)), (2, join("c", BASE_MS))], 0)
    assert (result.applied, result.overflow) == (2, 1)
    assert agg.take_overflow() == [2] and agg.take_overflow() == []
    result = agg.apply(0, [(3, join("a", BASE_MS + 1)), (4, join("d", BASE_MS + 1))], 0)
    assert (result.applied, result.overflow) == (1, 1)
    assert set(agg.rooms) == {"a", "b"}
    assert agg.counters.overflow == {0: 2}


def test_a_replay_of_old_events_opens_no_room_and_leaves_the_room_cap_to_live_rooms() -> None:
    """A producer re-sends a day of joins for 2 000 rooms, all behind the watermark. They are late,
    counted, and open no room: the cap of 1 000 rooms stays free for live rooms, no room-stats,
    session or rollup record is published for the replayed rooms, nothing is dead-lettered."""
    agg = TaskAggregator(CoreConfig(max_rooms=1_000), sources=(0,))
    agg.apply(0, [(0, join("live", BASE_MS))], BASE_MS)
    agg.apply(0, [(1, join("live", BASE_MS + 5 * W))], BASE_MS)  # the watermark moves on
    day_old = [(2 + i, join(f"old-{i}", BASE_MS - 24 * HOUR + i)) for i in range(2_000)]
    result = agg.apply(0, day_old, BASE_MS)
    assert (result.late, result.overflow, result.applied) == (2_000, 0, 0)
    assert set(agg.rooms) == {"live"}
    assert agg.apply(0, [(3_000, join("fresh", BASE_MS + 5 * W))], BASE_MS).applied == 1
    for step in range(1, 400):  # 66 minutes of live heartbeats close every window
        agg.apply(0, [(3_000 + step, join("live", BASE_MS + 5 * W + step * W))], BASE_MS)
    published = {s.room_id for s in agg.drain()} | {s.room_id for s in agg.drain_sessions()}
    published |= {s.room_id for _, s in agg.drain_rollups()}
    assert published == {"live", "fresh"}
