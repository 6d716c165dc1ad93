"""How the load-test harness turns a worker's samples into a catch-up rate, and arrivals into
event latencies."""

from __future__ import annotations

import pytest

from loadtest._measure import SenderLag, catch_up_rate, event_latencies, event_latencies_each
from loadtest.deployment import Sample
from loadtest.traffic import encode
from schemas import ViewerEvent


def sample(t: float, cpu_s: float, consumed: float, windows: float) -> Sample:
    return Sample(t=t, cpu_s=cpu_s, rss=0, consumed=consumed, windows=windows)


def test_the_rate_counts_the_cpu_until_the_last_window_closed() -> None:
    """The backlog's 1 000 messages are read at t=10, but half the windows close only by t=12 (a
    burst at the end): that CPU is part of the backlog's cost; the wall rate is the read rate. The
    worker's own topics (leaderboard partials) go on adding to the consumed count."""
    samples = [
        sample(0, 1.0, 0, 0),  # ready, nothing read yet: the start
        sample(1, 2.0, 100, 0),
        sample(10, 9.0, 1_000, 50),
        sample(12, 11.0, 1_004, 100),
        sample(20, 11.2, 1_009, 100),  # settled: idle ticks and scrapes are not counted
    ]
    rate = catch_up_rate(samples, total=1_000)
    assert (rate.messages, rate.cpu_s, rate.wall_s) == (1_000, 10.0, 10)


def test_without_an_idle_sample_the_first_one_is_the_start() -> None:
    samples = [sample(5, 3.0, 200, 0), sample(7, 5.0, 600, 9), sample(9, 5.1, 600, 9)]
    rate = catch_up_rate(samples, total=600)
    assert (rate.messages, rate.cpu_s, rate.wall_s) == (400, 2.0, 2)
    assert rate.per_cpu_s == pytest.approx(200)


def test_sender_lag_is_that_of_the_quantum_holding_the_event_time() -> None:
    lag = SenderLag([(1_050, 0.0), (1_100, 0.4), (1_150, 2.0)])
    assert lag.at(1_000) == 0.0 and lag.at(1_049) == 0.0
    assert lag.at(1_050) == 0.4 and lag.at(1_099) == 0.4
    assert lag.at(1_100) == 2.0
    assert lag.at(5_000) == 2.0  # after the last quantum: its lag
    assert SenderLag([]).at(1_000) == 0.0
    assert lag.values() == [0.0, 0.4, 2.0]


def test_adjusted_latency_takes_off_the_lag_where_the_window_could_close() -> None:
    """Window [0, 10 s), grace 2 s: the window can close once event time 12 s is sent; a sender 3 s
    late there delays the window by 3 s whatever it did at the event's own time."""
    events = [ViewerEvent("join", "r1", "u1", 1_000), ViewerEvent("join", "r1", "u2", 9_000)]
    messages = [(0, 0, b"r1", encode(ev), ev.ts, ev) for ev in events]
    arrivals = {("r1", 0): 16.0}
    lag = SenderLag([(12_000, 0.5), (12_050, 3.0), (12_100, 9.0)])
    plain, missing = event_latencies(messages, arrivals, 10_000, 2_000)
    adjusted, _ = event_latencies(messages, arrivals, 10_000, 2_000, lag)
    assert missing == 0
    assert list(plain) == [7.0, 15.0]
    assert list(adjusted) == [4.0, 12.0]


def test_latencies_of_several_targets_in_one_pass_equal_each_alone() -> None:
    events = [
        ViewerEvent("join", "r1", "u1", 1_000),
        ViewerEvent("join", "r2", "u2", 9_000),
        ViewerEvent("join", "r1", "u3", 14_000),
        ViewerEvent("join", "r1", "u4", 3_000),  # late: 11 s behind its partition's newest
    ]
    messages = [(0, 0, b"k", encode(ev), ev.ts, ev) for ev in events]
    arrivals = {("r1", 0): 16.0, ("r2", 0): 17.5, ("r1", 10_000): 25.0}
    produced = {("r1", 0): 15.0, ("r1", 10_000): 24.0}  # r2's window never queued
    lag = SenderLag([(12_000, 0.5), (22_000, 1.5)])
    targets = [(arrivals, None), (produced, None), (arrivals, lag), (produced, lag)]
    together = event_latencies_each(messages, targets, 10_000, 2_000)
    alone = [event_latencies(messages, a, 10_000, 2_000, g) for a, g in targets]
    assert together == alone
    assert [(list(values), missing) for values, missing in together[:2]] == [
        ([8.5, 11.0, 15.0], 0),
        ([10.0, 14.0], 1),
    ]
