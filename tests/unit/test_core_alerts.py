"""Spike detection wired into the task: alerts from closed windows, state in the changelog."""

from __future__ import annotations

import orjson

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


def rooms_per_window(windows: int, rooms: dict[str, tuple[int, int]]) -> list[list[tuple[int, ViewerEvent]]]:
    """One batch per 10 s window; ``rooms`` maps a room to (its first window, joins per window)."""
    offset = 0
    batches = []
    for w in range(windows):
        batch = []
        for room_id, (first, n) in rooms.items():
            for i in range(n if w >= first else 0):
                offset += 1
                ts = BASE_MS + w * 10_000 + i * 10_000 // n
                batch.append((offset, ViewerEvent("join", room_id, f"{room_id}-u{w}-{i}", ts)))
        batches.append(sorted(batch, key=lambda item: item[1].ts))
    return batches


def surges(task: TaskAggregator, batches: list[list[tuple[int, ViewerEvent]]]) -> set[tuple[str, str]]:
    """(room, metric) of every RoomSurge fired while ``batches`` are applied."""
    fired = set()
    for batch in batches:
        task.apply(0, batch, now_ms=0)
        fired |= {(e.room_id, e.metric) for e in task.drain_alerts() if e.alertname == "RoomSurge"}
    return fired


def test_rooms_live_when_a_task_starts_from_nothing_raise_no_surge() -> None:
    """A first deployment (or a state reset) sees big rooms that were live before it: none is a new
    room. Rooms from its third window on are, and surge as before."""
    big = 1_500  # 150 views/s against the surge value of 100, and 20 000 concurrent in 14 windows
    batches = rooms_per_window(
        30, {"small": (0, 3), "old": (0, big), "late-in-window": (1, big), "debut": (2, big)}
    )
    fired = surges(TaskAggregator(CFG), batches)
    assert fired == {("debut", "views_per_sec"), ("debut", "concurrent_viewers")}


def test_the_start_of_a_task_state_is_checkpointed_and_restored() -> None:
    """A restored task is not starting from nothing: a room new after the restore surges, as one new
    after the task's first two windows always did."""
    batches = rooms_per_window(30, {"small": (0, 3), "debut": (8, 1_500)})
    first = TaskAggregator(CFG)
    assert surges(first, batches[:6]) == set()
    assert first.watch_start == BASE_MS
    restored = TaskAggregator(CFG)
    restored.restore(first.checkpoint().upserts)
    assert restored.watch_start == BASE_MS
    assert ("debut", "views_per_sec") in surges(restored, batches[6:])
    # a task starting fresh one window before the room's first sees it as live at its start
    assert surges(TaskAggregator(CFG), batches[7:]) == set()


def test_state_from_before_the_start_was_recorded_counts_as_watched_long_ago() -> None:
    from streams.core._state_codec import META_KEY

    batches = rooms_per_window(30, {"small": (0, 3), "debut": (6, 1_500)})
    first = TaskAggregator(CFG)
    surges(first, batches[:6])
    upserts = first.checkpoint().upserts
    meta = orjson.loads(dict(upserts)[META_KEY])
    assert meta[0] == 4 and len(meta) == 8  # an eighth field, which older workers ignore
    old = [(k, orjson.dumps(meta[:7]) if k == META_KEY else v) for k, v in upserts]
    restored = TaskAggregator(CFG)
    restored.restore(old)
    assert restored.watch_start is not None and restored.watch_start < BASE_MS
    assert ("debut", "views_per_sec") in surges(restored, batches[6:])
    # an old task state with no room left but events seen (a quiet partition) started long ago too
    quiet = TaskAggregator(CFG)
    quiet.restore([(META_KEY, orjson.dumps(meta[:7]))])
    assert quiet.watch_start is not None and quiet.watch_start < BASE_MS
    # one that never saw an event starts from its first, like a new one
    fresh = TaskAggregator(CFG)
    fresh.restore([(META_KEY, orjson.dumps([4, -(2**62), -(2**62), [], [], [], [1_000, 10_000]]))])
    assert fresh.watch_start is None
    assert surges(fresh, batches[:8]) == set()
    assert fresh.watch_start == BASE_MS


def test_an_input_starting_with_old_records_does_not_move_the_start_back() -> None:
    """A stale input's hour-old record applied first (a fresh task has no watermark yet, so it is
    in time): the state begins where the other inputs' first records are, and the big rooms live
    there get no surge."""
    stale = [(1, ViewerEvent("join", "stale", "s", BASE_MS - 3_600_000))]
    batches = rooms_per_window(30, {"small": (0, 3), "old": (0, 1_500)})
    task = TaskAggregator(CFG, sources=(0, 2))
    task.apply(2, stale, now_ms=0)
    assert task.watch_start == BASE_MS - 3_600_000
    # alone for 15 s: the other input turns idle and wall time closes the stale room's window
    task.tick(3_000)
    task.tick(15_000)
    assert [s.room_id for s in task.drain()] == ["stale"] and task.drain_alerts() == []
    fired = set()
    for batch in batches:
        task.apply(0, batch, now_ms=20_000)
        task.tick(20_000)  # the stale input silent since: idle, it holds nothing
        fired |= {(e.room_id, e.alertname) for e in task.drain_alerts()}
    assert task.watch_start == BASE_MS
    assert task.counters.windows_emitted > 30 and fired == set()
