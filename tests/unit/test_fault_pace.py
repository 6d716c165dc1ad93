"""The fault suite's hostile traffic is stamped from the honest traffic's pace, not from the wall
clock alone: a sender behind the wall clock (a loaded machine) must not let the flood lead it."""

from __future__ import annotations

import time

from loadtest.faults import Pace


def test_before_any_honest_message_the_pace_is_the_wall_clock() -> None:
    wall = int(time.time() * 1000)
    assert abs(Pace().now_ms() - wall) < 1_000


def test_a_sender_behind_the_wall_clock_holds_the_pace_back_and_is_reported() -> None:
    pace = Pace()
    behind = int(time.time() * 1000) - 4_000
    pace.sent(behind)
    assert pace.now_ms() == behind
    assert 3.9 < pace.behind_s < 10


def test_a_sender_on_time_leaves_the_wall_clock() -> None:
    pace = Pace()
    pace.sent(int(time.time() * 1000) + 60_000)  # sent ahead of its time: the wall clock rules
    assert pace.now_ms() <= int(time.time() * 1000)
    assert pace.behind_s <= 0
