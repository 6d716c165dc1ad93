"""Watermark alignment: which inputs a task asks the runtime not to read for now."""

from __future__ import annotations

from dataclasses import replace

from schemas import ViewerEvent
from streams.core import CoreConfig, TaskAggregator

BASE_MS = 1_700_000_000_000
CFG = CoreConfig(max_source_drift_ms=30_000)


def feed(agg: TaskAggregator, source: int, ts: int, offset: int = 1) -> None:
    agg.apply(source, [(offset, ViewerEvent("join", "r", "u", ts))], now_ms=0)


def test_an_input_ahead_of_the_slowest_by_more_than_the_drift_is_held() -> None:
    agg = TaskAggregator(CFG, sources=(0, 1, 2))
    feed(agg, 0, BASE_MS)
    feed(agg, 1, BASE_MS + 30_000)  # exactly the drift: still read
    feed(agg, 2, BASE_MS + 30_001)
    assert agg.sources_to_hold() == {2}


def test_a_held_input_is_read_again_only_within_half_the_drift() -> None:
    agg = TaskAggregator(CFG, sources=(0, 1))
    feed(agg, 0, BASE_MS)
    feed(agg, 1, BASE_MS + 40_000)
    held = agg.sources_to_hold()
    assert held == {1}
    feed(agg, 0, BASE_MS + 20_000, offset=2)  # 20 s behind: within the drift, not within half
    assert agg.sources_to_hold(held) == {1}
    assert agg.sources_to_hold() == set()  # an input not held yet would be read
    feed(agg, 0, BASE_MS + 25_000, offset=3)
    assert agg.sources_to_hold(held) == set()


def test_the_slowest_input_is_never_held() -> None:
    agg = TaskAggregator(CFG, sources=(0, 1))
    feed(agg, 0, BASE_MS + 500_000)
    feed(agg, 1, BASE_MS)
    assert agg.sources_to_hold({0, 1}) == {0}


def test_a_lagging_sender_holds_back_every_input_of_a_task_ahead_of_it() -> None:
    """The watermark waits for the slowest task that re-routes here; so does the reading."""
    agg = TaskAggregator(CFG, sources=(0, 1), senders=(2, 3))
    feed(agg, 0, BASE_MS + 100_000)
    feed(agg, 1, BASE_MS + 90_000)
    agg.sender_progress(2, BASE_MS + 95_000)
    agg.sender_progress(3, BASE_MS)
    assert agg.sources_to_hold() == {0, 1}
    agg.sender_progress(3, None)  # an idle sender no longer holds the watermark, nor the reading
    assert agg.sources_to_hold() == set()


def test_before_every_sender_published_the_task_aligns_its_own_inputs() -> None:
    agg = TaskAggregator(CFG, sources=(0, 1), senders=(2,))
    feed(agg, 0, BASE_MS)
    feed(agg, 1, BASE_MS + 60_000)
    assert agg.sources_to_hold() == {1}


def test_before_a_sender_published_nothing_is_read_past_the_drift_after_the_first_window() -> None:
    """The watermark cannot move before then: each event read would stay open."""
    agg = TaskAggregator(CFG, sources=(0, 1), senders=(2,))
    feed(agg, 0, BASE_MS + 1_000)
    feed(agg, 1, BASE_MS + 5_000)
    assert agg.watch_start == BASE_MS
    feed(agg, 0, BASE_MS + 29_000, offset=2)
    feed(agg, 1, BASE_MS + 30_000, offset=2)
    assert agg.sources_to_hold() == set()
    feed(agg, 0, BASE_MS + 31_000, offset=3)
    feed(agg, 1, BASE_MS + 41_000, offset=3)
    assert agg.sources_to_hold() == {0, 1}  # the slowest input too
    agg.sender_progress(2, BASE_MS + 25_000)
    assert agg.sources_to_hold({0, 1}) == {1}  # then the sender's frontier holds the reading


def test_nothing_is_held_until_every_input_delivered_or_with_alignment_off() -> None:
    agg = TaskAggregator(CFG, sources=(0, 1))
    feed(agg, 1, BASE_MS + 60_000)  # input 0 has sent nothing: its events may be anywhere
    assert agg.sources_to_hold() == set()
    off = TaskAggregator(replace(CFG, max_source_drift_ms=0), sources=(0, 1))
    feed(off, 0, BASE_MS)
    feed(off, 1, BASE_MS + 600_000)
    assert off.sources_to_hold() == set()


def test_an_idle_input_does_not_hold_the_others() -> None:
    agg = TaskAggregator(CFG, sources=(0, 1))
    feed(agg, 0, BASE_MS)
    feed(agg, 1, BASE_MS + 60_000)
    agg.tick(now_ms=CFG.idle_partition_ms, busy=(1,))  # input 0 caught up and silent: idle
    assert agg.sources_to_hold() == set()
