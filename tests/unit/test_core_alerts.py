"""Spike detection wired into the task: alerts from closed windows, state in the changelog."""

from __future__ import annotations

from schemas import ViewerEvent
from streams.core import CoreConfig, TaskAggregator

BASE_MS = 1_700_000_000_000
CFG = CoreConfig(room_idle_ms=10**9, dedup_ttl_ms=10**9)


def joins_per_window(profile: list[int]) -> list[list[tuple[int, ViewerEvent]]]:
    """One batch per 10 s window with ``n`` joins spread over it, then the watermark moves on."""
    offset = 0
    batches = []
    for w, n in enumerate(profile):
        batch = []
        for i in range(n):
            offset += 1
            batch.append(
                (offset, ViewerEvent("join", "r", f"u{w}-{i}", BASE_MS + w * 10_000 + i * 10_000 // n))
            )
        batches.append(batch)
    return batches


def run(task: TaskAggregator, batches: list[list[tuple[int, ViewerEvent]]]) -> list[tuple[str, str, int]]:
    out = []
    for batch in batches:
        task.apply(0, batch, now_ms=0)
        out += [(e.status, e.metric, (e.starts_at_ms - BASE_MS) // 10_000) for e in task.drain_alerts()]
    return out


PROFILE = [200] * 40 + [2_000] * 6 + [200] * 30


def test_a_step_up_in_views_fires_once_and_resolves_once() -> None:
    events = run(TaskAggregator(CFG), joins_per_window(PROFILE))
    views = [e for e in events if e[1] == "views_per_sec"]
    assert views == [("firing", "views_per_sec", 40), ("resolved", "views_per_sec", 40)]


def test_closed_windows_are_evaluated_before_a_checkpoint_and_on_drain() -> None:
    """Detection is deferred from the close to drain_alerts/checkpoint; nothing is skipped by it."""
    batches = joins_per_window(PROFILE)
    reference = run(TaskAggregator(CFG), batches)
    task = TaskAggregator(CFG)
    for batch in batches[:43]:  # no drain_alerts: windows close and wait for the detector
        task.apply(0, batch, now_ms=0)
    assert task.rooms["r"].detector is None
    restored = TaskAggregator(CFG)
    restored.restore(task.checkpoint().upserts)  # the checkpoint ran the detector first
    assert restored.rooms["r"].detector is not None and restored.firing_rooms == {"r"}
    before = [(e.status, e.metric, (e.starts_at_ms - BASE_MS) // 10_000) for e in task.drain_alerts()]
    assert before + run(restored, batches[43:]) == reference


def test_detector_state_survives_a_restore_mid_alert() -> None:
    batches = joins_per_window(PROFILE)
    reference = run(TaskAggregator(CFG), batches)
    first = TaskAggregator(CFG)
    before = run(first, batches[:43])  # the alert is firing here
    assert first.firing_rooms == {"r"} and first.firing_alerts()
    restored = TaskAggregator(CFG)
    restored.restore(first.checkpoint().upserts)
    assert restored.firing_rooms == {"r"}
    assert before + run(restored, batches[43:]) == reference
