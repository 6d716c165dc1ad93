"""How the load-test harness turns a worker's samples into a catch-up rate."""

from __future__ import annotations

import pytest

from loadtest._measure import catch_up_rate
from loadtest.deployment import Sample


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
