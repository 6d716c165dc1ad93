"""Broadcast sessions: a room's activity between event-time silences of ``session_gap_ms``.

Sessions are built from closed windows, never from single events, so they cost nothing on the
per-event path: when the task closes a room's window it hands the window's first and last active
bucket, summed counters, unique-viewer sketch and end-of-window concurrent viewers to
:meth:`Sessions.fold`. A window whose first active bucket starts ``session_gap_ms`` or more after
the end of the session's last active bucket ends that session and starts a new one (the gap is at
least one window, so no window holds a gap). A late event is activity at the watermark where it is
charged, as in room-stats.

A session ends when the watermark reaches the first window end at or after its last active
bucket's end plus the gap (its *due* time) and the room has no open window that could still extend
it. Sessions are kept apart from the rooms' window state, keyed by room id: a room is forgotten
after ``room_idle_ms`` of silence, well before its session can end. A session is one small record:
a counter list, a few integers and a HyperLogLog union that stays in DataSketches' list (sparse)
mode while the session has few viewers.

The changelog encoding of a session is ``streams.core._state_codec``.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import add
from typing import Any

from datasketches import hll_union

from schemas import RoomSession

from ._room import (
    COMMENTS,
    GIFT_VALUE,
    GIFTS,
    GMV,
    JOINS,
    LATE,
    LIKES,
    N_COUNTERS,
    ORDERS,
    REFUNDS,
    SHARES,
)

LIVE, ENDED = "live", "ended"


def bucket_span(
    buckets: dict[int, list[int]], first: int, end: int, bucket_ms: int
) -> tuple[int, int] | None:
    """(start of the first, end of the last) active bucket of ``first <= bucket < end``, in ms."""
    if len(buckets) <= end - first:
        numbers = [b for b in buckets if first <= b < end]
    else:
        numbers = [b for b in range(first, end) if b in buckets]
    if not numbers:
        return None
    return min(numbers) * bucket_ms, (max(numbers) + 1) * bucket_ms


class Session:
    """The running totals of a room's current session."""

    __slots__ = ("due", "last_end", "peak", "peak_ws", "room_id", "start", "totals", "union", "updated_at")

    def __init__(self, room_id: str, start: int) -> None:
        self.room_id = room_id
        #: start of the first active bucket (ms)
        self.start = start
        #: end of the last active bucket (ms)
        self.last_end = start
        #: counters summed over the session's windows (layout of ``_room``)
        self.totals = [0] * N_COUNTERS
        #: unique viewers over the session (None until a window with viewers)
        self.union: Any = None
        self.peak = -1
        self.peak_ws = start
        self.updated_at = start
        #: the due slot (a window end) the session is indexed under, or None
        self.due: int | None = None

    def unique_viewers(self) -> int:
        return 0 if self.union is None else round(self.union.get_estimate())

    def record(self, status: str) -> RoomSession:
        """The published record of the session: the one mapping from its counters."""
        t = self.totals
        return RoomSession(
            self.room_id,
            self.start,
            self.last_end if status == ENDED else None,
            status,
            t[JOINS],
            self.unique_viewers(),
            max(self.peak, 0),
            self.peak_ws,
            t[LIKES],
            t[COMMENTS],
            t[SHARES],
            t[ORDERS],
            t[GMV],
            t[REFUNDS],
            t[GIFTS],
            t[GIFT_VALUE],
            t[LATE],
            self.updated_at,
        )


class Sessions:
    """Every current session of one task, the index of their due times, and an outbox."""

    def __init__(self, gap_ms: int, window_ms: int, lg_k: int) -> None:
        self.gap_ms = gap_ms
        self.window_ms = window_ms
        self.lg_k = lg_k
        self.by_room: dict[str, Session] = {}
        #: due slot (a window end) -> room ids whose session may end when the watermark reaches it
        self.due: dict[int, dict[str, None]] = {}
        #: room ids whose session changed (upsert) or ended without a successor (delete)
        self.dirty: set[str] = set()
        self.outbox: list[RoomSession] = []

    def due_slot(self, session: Session) -> int:
        """The first window end at or after the session's last active bucket end plus the gap."""
        due = session.last_end + self.gap_ms
        return -(-due // self.window_ms) * self.window_ms

    def next_due(self) -> int | None:
        return min(self.due) if self.due else None

    def fold(
        self,
        room_id: str,
        ws: int,
        span: tuple[int, int] | None,
        total: list[int],
        sketch: Any,
        concurrent: int,
    ) -> None:
        """Add one closed window of a room; ``span`` is (start of its first, end of its last)
        active bucket in ms, None if the window held no bucket."""
        session = self.by_room.get(room_id)
        if span is not None and (session is None or span[0] - session.last_end >= self.gap_ms):
            if session is not None:
                self._end(session)
            session = self.by_room[room_id] = Session(room_id, span[0])
        if session is None:
            return  # nothing active and no session: nothing to count
        if span is not None and span[1] > session.last_end:
            session.last_end = span[1]
        session.totals = list(map(add, session.totals, total))
        if sketch is not None:
            if session.union is None:
                session.union = hll_union(self.lg_k)
            session.union.update(sketch)
        if concurrent > session.peak:
            session.peak, session.peak_ws = concurrent, ws
        session.updated_at = ws + self.window_ms
        self._index(session)
        self.dirty.add(room_id)
        self.outbox.append(session.record(LIVE))

    def end_due(self, watermark: int, oldest_open: Callable[[str], int | None]) -> None:
        """End the sessions due at or before ``watermark``; ``oldest_open`` gives a room's oldest
        open window start, if any (such a window may still extend the session: its close
        decides)."""
        due = self.due
        while due:
            slot = min(due)
            if slot > watermark:
                return
            for room_id in due.pop(slot):
                session = self.by_room[room_id]
                session.due = None
                oldest = oldest_open(room_id)
                if oldest is not None and oldest < session.last_end + self.gap_ms:
                    continue  # that window's close extends or ends it
                del self.by_room[room_id]
                self.dirty.add(room_id)
                self._end(session)

    def _end(self, session: Session) -> None:
        self._unindex(session)
        session.updated_at = self.due_slot(session)
        self.outbox.append(session.record(ENDED))

    def _index(self, session: Session) -> None:
        slot = self.due_slot(session)
        if session.due == slot:
            return
        self._unindex(session)
        session.due = slot
        members = self.due.get(slot)
        if members is None:
            members = self.due[slot] = {}
        members[session.room_id] = None

    def _unindex(self, session: Session) -> None:
        if session.due is None:
            return
        members = self.due.get(session.due)
        if members is not None:
            members.pop(session.room_id, None)
            if not members:
                del self.due[session.due]
        session.due = None

    def adopt(self, session: Session) -> None:
        """Take a restored session into the index."""
        self.by_room[session.room_id] = session
        self._index(session)

    def drain(self) -> list[RoomSession]:
        out, self.outbox = self.outbox, []
        return out
