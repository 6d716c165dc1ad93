"""The platform leaderboard: per-task partials and their global merge (pure, no I/O).

Two stages, as a shuffle to one partition:

* each task, at every window close, turns its closed windows into one *partial* per window
  (:func:`leaderboard_partials`): its own top ``n`` rooms by GMV and by views, and its totals. At every
  checkpoint it adds a *progress* mark: its watermark, "every window ending at or before this is
  closed here" — which also covers windows in which the task had no room at all;
* the merge (:class:`LeaderboardMerge`, run by the owner of task 0) folds partials and progress
  marks from every task and finalises a window once every task's progress reached its end.

Exactness: rooms are partitioned (each lives in exactly one task), so the top ``n`` of the union
of all rooms is the top ``n`` of the union of the per-task top ``n`` lists. Ranking is by value
descending, then ``room_id`` ascending (:func:`rank_rooms`), everywhere: partials, merge and the
load test's oracle. Rooms whose value is 0 are not ranked.

Totals: ``rooms_live`` counts the rooms whose window shows any activity (:func:`is_live`: not
only late events); ``events`` the window's engagement events as room-stats reports them: views
(joins) + likes + comments + shares + paid orders + gifts (items). A window with no live room has
no leaderboard record.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from operator import attrgetter, itemgetter
from typing import Any

from schemas import RoomStats

#: the two rankings: record field -> room-stats attribute
RANKINGS = (("top_gmv", "gmv_minor"), ("top_views", "views"))
#: platform totals, in the order partials carry them
TOTALS = ("events", "rooms_live", "gmv_minor", "orders")

Ranked = list[tuple[str, int]]


def rank_rooms(entries: Iterable[tuple[str, int]], n: int) -> Ranked:
    """The top ``n`` of ``(room_id, value)`` by value desc, room_id asc; zero values left out."""
    return sorted((e for e in entries if e[1] > 0), key=lambda e: (-e[1], e[0]))[:n]


def rank_group(group: Sequence[RoomStats], attr: str, n: int) -> Ranked:
    """``rank_rooms`` of ``(room_id, <attr>)`` over ``group``, without sorting all of it.

    A task's boundary ranks every room it closed (26 000 at 100 000 rooms), twice: this finds the
    ``n``-th largest value from the values alone (a sort of ints), then orders only the rooms
    above it and takes the smallest ids among those tied at it (value desc, room_id asc, like
    ``rank_rooms``)."""
    values = list(map(attrgetter(attr), group))
    ranked = [v for v in values if v > 0]
    if not ranked or n < 1:
        return []
    if len(ranked) > n:
        ranked.sort(reverse=True)
        cut = ranked[n - 1]
    else:
        cut = 1
    above = [(s.room_id, v) for s, v in zip(group, values, strict=True) if v > cut]
    tied = [s.room_id for s, v in zip(group, values, strict=True) if v == cut]
    above.sort(key=_ROOM)
    above.sort(key=_VALUE, reverse=True)  # stable: equal values stay in room_id order
    room_ids = heapq.nsmallest(n - len(above), tied)
    return above + [(room_id, cut) for room_id in room_ids]


_ROOM, _VALUE = itemgetter(0), itemgetter(1)


def is_live(s: RoomStats) -> bool:
    """Whether a room's window counts on the leaderboard: any activity besides late events and
    the concurrent-viewer level (a window that only reports late events is not a live room)."""
    return bool(
        s.views or s.unique_viewers or s.likes or s.comments or s.shares or s.orders or s.gmv_minor
    ) or bool(s.refunds_minor or s.gifts or s.gift_value_minor)


def window_totals(stats: Iterable[RoomStats]) -> list[int]:
    """``[events, rooms_live, gmv_minor, orders]`` of some room-stats records."""
    events = rooms = gmv = orders = 0
    for s in stats:
        events += s.views + s.likes + s.comments + s.shares + s.orders + s.gifts
        rooms += 1
        gmv += s.gmv_minor
        orders += s.orders
    return [events, rooms, gmv, orders]


def leaderboard_partials(task: int, closed: Sequence[RoomStats], n: int) -> list[dict[str, Any]]:
    """One partial per window among ``closed`` (a task's closed windows) with a live room
    (:func:`is_live`), oldest window first."""
    by_window: dict[int, list[RoomStats]] = {}
    for stats in closed:
        if is_live(stats):
            by_window.setdefault(stats.window_start, []).append(stats)
    out = []
    for ws in sorted(by_window):
        group = by_window[ws]
        out.append(
            {
                "kind": "partial",
                "task": task,
                "window_start": ws,
                "window_end": group[0].window_end,
                **{name: rank_group(group, attr, n) for name, attr in RANKINGS},
                "totals": window_totals(group),
            }
        )
    return out


def leaderboard_progress(task: int, closed_before_ms: int) -> dict[str, Any]:
    """The mark "task ``task`` closed every window ending at or before ``closed_before_ms``"."""
    return {"kind": "progress", "task": task, "closed_before": closed_before_ms}


def leaderboard_record(
    ws: int, we: int, n: int, top: dict[str, Ranked], totals: Sequence[int]
) -> dict[str, Any]:
    """The published record of one final window."""
    record: dict[str, Any] = {"window_start": ws, "window_end": we, "size": n}
    for name, attr in RANKINGS:
        record[name] = [
            {"rank": i, "room_id": room_id, attr: value} for i, (room_id, value) in enumerate(top[name], 1)
        ]
    record.update(zip(TOTALS, totals, strict=True))
    return record


class _Pending:
    """A window not yet final: the candidates and totals gathered from the tasks so far."""

    __slots__ = ("top", "totals", "we")

    def __init__(self, we: int) -> None:
        self.we = we
        self.top: dict[str, Ranked] = {name: [] for name, _ in RANKINGS}
        self.totals = [0] * len(TOTALS)


class LeaderboardMerge:
    """The global stage: folds every task's partials and progress, finalises complete windows.

    A window is final once every task ``0 .. tasks-1`` has reported progress at or past its end;
    final windows come out in window order, each once. A partial for a window already final
    (no current version writes one: a task's progress never passes a window it has not closed)
    is counted in ``late_partials`` and dropped, so a published record never changes.
    """

    def __init__(self, tasks: int, n: int) -> None:
        self.tasks = tasks
        self.n = n
        #: task -> its latest progress mark
        self.progress: dict[int, int] = {}
        self.pending: dict[int, _Pending] = {}
        #: every window ending at or before this is final (published or empty)
        self.final_before: int | None = None
        #: the last published record
        self.latest: dict[str, Any] | None = None
        #: next offset to read of the partials topic
        self.next_offset: int | None = None
        self.late_partials = 0
        self.dirty = False

    def add(self, item: dict[str, Any]) -> None:
        """Fold one partial or progress mark (made by :func:`leaderboard_partials` or
        :func:`leaderboard_progress`)."""
        self.dirty = True
        task = item["task"]
        if item["kind"] == "progress":
            if item["closed_before"] > self.progress.get(task, item["closed_before"] - 1):
                self.progress[task] = item["closed_before"]
            return
        ws, we = item["window_start"], item["window_end"]
        if self.final_before is not None and we <= self.final_before:
            self.late_partials += 1
            return
        pending = self.pending.get(ws)
        if pending is None:
            pending = self.pending[ws] = _Pending(we)
        for name, _ in RANKINGS:
            pending.top[name] = rank_rooms([*pending.top[name], *map(tuple, item[name])], self.n)
        pending.totals = [a + b for a, b in zip(pending.totals, item["totals"], strict=True)]

    def complete_before(self) -> int | None:
        """Every task closed every window ending at or before this (None: some task not heard of)."""
        if any(task not in self.progress for task in range(self.tasks)):
            return None
        return min(self.progress[task] for task in range(self.tasks))

    def take_final(self) -> list[dict[str, Any]]:
        """The records of the windows that became final, oldest first."""
        done = self.complete_before()
        if done is None:
            return []
        out = []
        for ws in sorted(self.pending):
            pending = self.pending[ws]
            if pending.we > done:
                break
            del self.pending[ws]
            out.append(leaderboard_record(ws, pending.we, self.n, pending.top, pending.totals))
        if self.final_before is None or done > self.final_before:
            self.final_before = done
            self.dirty = True
        if out:
            self.latest = out[-1]
        return out

    def take_oldest_incomplete(self) -> dict[str, Any]:
        """The record of the oldest pending window as it stands, naming the tasks it misses
        (``missing_tasks``), made final: their partials for it will count in ``late_partials``.

        Only for a merge state grown too large for its changelog record (a task whose progress
        stayed behind for long): publishing part of a window beats failing at every restart.
        """
        ws = min(self.pending)
        pending = self.pending.pop(ws)
        record = leaderboard_record(ws, pending.we, self.n, pending.top, pending.totals)
        record["missing_tasks"] = self.missing_tasks(pending.we)
        if self.final_before is None or pending.we > self.final_before:
            self.final_before = pending.we
        self.latest = record
        self.dirty = True
        return record

    def missing_tasks(self, we: int) -> list[int]:
        """The tasks whose progress has not reached ``we`` (a window's end) yet."""
        return [task for task in range(self.tasks) if self.progress.get(task, we - 1) < we]

    # -- state (encoded by streams.core._state_codec) ---------------------------------------

    def snapshot(self) -> list[Any]:
        pending = [
            [ws, p.we, p.top["top_gmv"], p.top["top_views"], p.totals] for ws, p in self.pending.items()
        ]
        progress = sorted(self.progress.items())
        return [progress, pending, self.final_before, self.latest, self.next_offset, self.late_partials]

    def load(self, snapshot: Sequence[Any]) -> None:
        progress, pending, self.final_before, self.latest, self.next_offset, self.late_partials = snapshot
        self.progress = {int(task): int(mark) for task, mark in progress}
        self.pending = {}
        for ws, we, top_gmv, top_views, totals in pending:
            p = self.pending[ws] = _Pending(we)
            p.top = {"top_gmv": [tuple(e) for e in top_gmv], "top_views": [tuple(e) for e in top_views]}
            p.totals = list(totals)
        self.dirty = False
