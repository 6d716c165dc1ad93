"""The load test's ground truth computed in several replays per partition, each over a share of the
rooms (``loadtest._truth``), against one replay of everything: the same windows, rollups, sessions."""

from __future__ import annotations

import pytest

from loadtest import _truth, scenarios
from loadtest.traffic import TrafficConfig, TrafficModel

START = 1_700_000_000_000
WINDOW_MS, GRACE_MS = 1_000, 500
# out of order within grace, and every scenario: late events, duplicates, malformed messages, a hot room
CONFIG = TrafficConfig(
    rooms=60, users=600, rate_per_s=1_500, disorder_share=0.2, disorder_ms=300, partitions=3
)


def _truth_of(events_per_replay: int, start: int = START) -> _truth.Truth:
    model = TrafficModel(CONFIG, seed=11)
    backlog = model.phase(
        start, 40.0, scenarios.build(scenarios.NAMES, span_s=40.0, window_ms=WINDOW_MS, grace_ms=GRACE_MS)
    )
    live = model.phase(start + 40_000, 20.0)
    return _truth.compute(
        [backlog, live],
        partitions=CONFIG.partitions,
        window_ms=WINDOW_MS,
        grace_ms=GRACE_MS,
        rollup_windows_ms=(5_000, 20_000),
        session_gap_ms=3_000,
        events_per_replay=events_per_replay,
    )


@pytest.fixture(scope="module")
def whole() -> _truth.Truth:
    return _truth_of(10**9)


@pytest.mark.parametrize("events_per_replay", [2_000, 9_000])
def test_the_truth_in_replays_of_a_share_of_the_rooms_is_the_truth(
    whole: _truth.Truth, events_per_replay: int
) -> None:
    shared = _truth_of(events_per_replay)
    assert len(whole.windows) > 2_000 and len(whole.rollups) > 500 and len(whole.sessions) >= 60
    assert sum(s.late_events for s in whole.windows.values()) > 0  # lateness is the watermark's work
    assert dict(shared.windows.items()) == dict(whole.windows.items())
    assert dict(shared.rollups.items()) == dict(whole.rollups.items())
    assert dict(shared.sessions.items()) == dict(whole.sessions.items())
    assert shared.starts == whole.starts and shared.events == whole.events


def test_event_times_before_the_epoch_replay_as_any_other() -> None:
    """An event time is only an int to the replays: one below zero (disorder at a start of 0) is
    not mistaken for anything else."""
    whole, shared = _truth_of(10**9, start=0), _truth_of(3_000, start=0)
    assert min(ws for _, ws in whole.windows) < 0
    assert dict(shared.windows.items()) == dict(whole.windows.items())
    assert dict(shared.sessions.items()) == dict(whole.sessions.items())
