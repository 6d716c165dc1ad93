"""Read-only views over task state for the runtime's HTTP endpoints."""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import Any

from schemas import ROOM_SESSION_FIELDS, ROOM_STATS_FIELDS, RoomStats

from ._room import JOINS, LEAVES, Room, room_stats
from ._sessions import LIVE
from ._task import TaskAggregator
from ._windows import bucket_range, window_start

#: metrics a caller may rank rooms by (numeric room-stats fields)
RANKABLE_METRICS: frozenset[str] = frozenset(ROOM_STATS_FIELDS) - {"room_id", "window_start", "window_end"}


def room_view(task: TaskAggregator, room_id: str) -> dict[str, Any] | None:
    """The room's last closed window, its current partial window and its live broadcast session (as
    of its last closed window), or None if unknown. A room silent for ``room_idle_ms`` has no window
    state left but is kept, with its session, until the session has ended."""
    room = task.rooms.get(room_id)
    if room is None:
        return None
    last: RoomStats | None = room.last_closed
    record = None if room.session is None else room.session.record(room_id, LIVE)
    return {
        "room_id": room_id,
        "last_closed": None if last is None else _as_dict(last),
        "current": _partial_window(task, room),
        "session": None if record is None else {name: getattr(record, name) for name in ROOM_SESSION_FIELDS},
    }


def _partial_window(task: TaskAggregator, room: Room) -> dict[str, Any] | None:
    newest = task.max_event_ts_ms
    if newest is None or not room.open_ws:
        return None
    cfg = task.config
    ws = window_start(newest, cfg.window_ms)
    total = room.sum_buckets(bucket_range(ws, ws + cfg.window_ms, cfg.bucket_ms))
    joins = leaves = 0
    for open_ws in room.open_ws:
        window = room.sum_buckets(bucket_range(open_ws, open_ws + cfg.window_ms, cfg.bucket_ms))
        joins += window[JOINS]
        leaves += window[LEAVES]
    concurrent = max(0, room.concurrent + joins - leaves)
    stats = room_stats(room.room_id, ws, cfg.window_ms, total, room.unique_count(ws), concurrent)
    view = _as_dict(stats)
    del view["room_id"]
    return {"window_start": ws, "window_end": ws + cfg.window_ms, "complete": False, **view}


def top_rooms(tasks: Iterable[TaskAggregator], metric: str, n: int) -> list[RoomStats]:
    """The ``n`` rooms with the highest ``metric`` in their last closed window, across tasks."""
    if metric not in RANKABLE_METRICS:
        raise ValueError(f"unknown metric {metric!r}; one of {sorted(RANKABLE_METRICS)}")
    closed = (stats for task in tasks for stats in task.top_closed(metric, n))
    return heapq.nlargest(n, closed, key=lambda stats: (getattr(stats, metric), stats.room_id))


def _as_dict(stats: RoomStats) -> dict[str, Any]:
    return {name: getattr(stats, name) for name in ROOM_STATS_FIELDS}
