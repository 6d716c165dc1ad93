"""Broadcast sessions: a room's activity between event-time silences of ``session_gap_ms``.

Sessions are folded from closed windows, never from single events, so they cost nothing on the
per-event path: when the task closes a room's window it folds the window's first and last active
bucket, summed counters, unique-viewer sketch and end-of-window concurrent viewers into the
room's :class:`Session` (``Room.session``). A window whose first active bucket starts
``session_gap_ms`` or more after the end of the session's last active bucket ends that session
and starts a new one (the gap is at least one window, so no window holds a gap). A late event is
activity at the watermark where it is charged, as in room-stats.

A session ends when the watermark reaches the first window end at or after its last active
bucket's end plus the gap (its *due* time) and the room has no open window that could still extend
it. A room whose session is live is not forgotten when it goes idle (``room_idle_ms``): its window
state is reset and it stays, small, until the session has ended. The session is part of the room's
changelog record (``streams.core._state_codec``), so a checkpoint writes one record per changed
room, session included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from schemas import RoomSession

from ._room import (
    COMMENTS,
    GIFT_VALUE,
    GIFTS,
    GMV,
    JOINS,
    LATE,
    LIKES,
    ORDERS,
    REFUNDS,
    SHARES,
    estimate,
)

LIVE, ENDED = "live", "ended"


class Session:
    """The running totals of a room's current session."""

    __slots__ = ("due", "last_end", "peak", "peak_ws", "start", "totals", "uniques", "updated_at", "wire")

    def __init__(self, start: int, totals: list[int]) -> None:
        #: start of the first active bucket (ms)
        self.start = start
        #: end of the last active bucket (ms)
        self.last_end = start
        #: counters summed over the session's windows (layout of ``_room``); never changed in place
        self.totals = totals
        #: unique viewers over the session (``_room.union_of``)
        self.uniques: Any = None
        self.peak = -1
        self.peak_ws = start
        self.updated_at = start
        #: the due slot (a window end) the session is indexed under, or None
        self.due: int | None = None
        #: ``uniques`` as last encoded for the changelog (None: not since it changed)
        self.wire: str | None = None

    def record(self, room_id: str, status: str) -> RoomSession:
        """The published record of the session."""
        return session_record(
            room_id,
            status,
            self.start,
            self.last_end,
            self.totals,
            estimate(self.uniques),
            self.peak,
            self.peak_ws,
            self.updated_at,
        )


def session_record(
    room_id: str,
    status: str,
    start: int,
    last_end: int,
    totals: Sequence[int],
    unique_viewers: int,
    peak: int,
    peak_ws: int,
    updated_at: int,
) -> RoomSession:
    """The published record of a session from its numbers: the one mapping, for the Python rooms
    (``Session.record``) and the native table's sessions alike."""
    t = totals
    return RoomSession(
        room_id,
        start,
        last_end if status == ENDED else None,
        status,
        t[JOINS],
        unique_viewers,
        max(peak, 0),
        peak_ws,
        t[LIKES],
        t[COMMENTS],
        t[SHARES],
        t[ORDERS],
        t[GMV],
        t[REFUNDS],
        t[GIFTS],
        t[GIFT_VALUE],
        t[LATE],
        updated_at,
    )


def due_slot(last_end: int, gap_ms: int, window_ms: int) -> int:
    """The first window end at or after ``last_end + gap_ms``: when a silent session ends."""
    return -(-(last_end + gap_ms) // window_ms) * window_ms
