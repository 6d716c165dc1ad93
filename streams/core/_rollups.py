"""Rollups: room-stats over longer windows (default 1 min and 1 h), folded from the closed base windows.

Each rollup length is a multiple of ``window_ms``, so a base window lies in exactly one rollup
window per length. When the task closes a room's base window it hands the summed counters, the
unique-viewer sketch and the end-of-window concurrent viewers to :meth:`Rollups.fold`; a rollup
window closes when the watermark passes its end (every base window in it has closed by then),
and its record is built by the same ``room_stats`` mapping as the base windows: unique viewers
are a HyperLogLog union of the base windows' sketches, concurrent viewers are those at the end
of the room's last base window in it, ``orders_per_sec`` is over the rollup's length.

Open rollup windows are kept apart from the rooms (a room's window state is forgotten after
``room_idle_ms``, sooner than an hour). The changelog encoding is ``streams.core._state_codec``.
"""

from __future__ import annotations

from operator import add
from typing import Any

from datasketches import hll_union

from schemas import RoomStats

from ._room import N_COUNTERS, room_stats


class Rollup:
    """One open rollup window of one room."""

    __slots__ = ("concurrent", "room_id", "start", "totals", "union")

    def __init__(self, room_id: str, start: int) -> None:
        self.room_id = room_id
        self.start = start
        self.totals = [0] * N_COUNTERS
        #: unique viewers over the folded base windows (None until one had viewers)
        self.union: Any = None
        #: concurrent viewers at the end of the last folded base window
        self.concurrent = 0

    def record(self, length_ms: int) -> RoomStats:
        uniques = 0 if self.union is None else round(self.union.get_estimate())
        return room_stats(self.room_id, self.start, length_ms, self.totals, uniques, self.concurrent)


class Rollups:
    """Every open rollup window of one task, per length, with the index of their ends and an outbox."""

    def __init__(self, lengths_ms: tuple[int, ...], lg_k: int) -> None:
        self.lengths_ms = lengths_ms
        self.lg_k = lg_k
        #: length -> room id -> its open rollup window
        self.open: dict[int, dict[str, Rollup]] = {length: {} for length in lengths_ms}
        #: window end -> (length, room id) of the rollups ending there
        self.by_end: dict[int, dict[tuple[int, str], None]] = {}
        #: (length, room id) changed since the last checkpoint (upsert) or closed (delete)
        self.dirty: set[tuple[int, str]] = set()
        #: (length, record) closed since the last drain, in closing order
        self.outbox: list[tuple[int, RoomStats]] = []

    def next_end(self) -> int | None:
        return min(self.by_end) if self.by_end else None

    def fold(self, room_id: str, ws: int, total: list[int], sketch: Any, concurrent: int) -> None:
        """Add one closed base window ``[ws, ws + window_ms)`` of a room to its rollup windows."""
        for length, rooms in self.open.items():
            start = ws - ws % length
            rollup = rooms.get(room_id)
            if rollup is not None and rollup.start != start:
                # an older rollup due in the same close as this window: every base window in it is in
                self._close(length, rollup)
                rollup = None
            if rollup is None:
                rollup = rooms[room_id] = Rollup(room_id, start)
                self._index(length, rollup)
            rollup.totals = list(map(add, rollup.totals, total))
            if sketch is not None:
                if rollup.union is None:
                    rollup.union = hll_union(self.lg_k)
                rollup.union.update(sketch)
            rollup.concurrent = concurrent
            self.dirty.add((length, room_id))

    def close_due(self, watermark: int) -> None:
        """Close every rollup window whose end is at or before ``watermark``, oldest first."""
        by_end = self.by_end
        while by_end:
            end = min(by_end)
            if end > watermark:
                return
            for length, room_id in list(by_end[end]):
                self._close(length, self.open[length][room_id])

    def adopt(self, length: int, rollup: Rollup) -> None:
        """Take a restored rollup window into the index (a length no longer configured is dropped)."""
        rooms = self.open.get(length)
        if rooms is None:
            return
        rooms[rollup.room_id] = rollup
        self._index(length, rollup)

    def drain(self) -> list[tuple[int, RoomStats]]:
        out, self.outbox = self.outbox, []
        return out

    def _close(self, length: int, rollup: Rollup) -> None:
        room_id = rollup.room_id
        del self.open[length][room_id]
        end = rollup.start + length
        members = self.by_end[end]
        del members[(length, room_id)]
        if not members:
            del self.by_end[end]
        self.dirty.add((length, room_id))
        self.outbox.append((length, rollup.record(length)))

    def _index(self, length: int, rollup: Rollup) -> None:
        end = rollup.start + length
        members = self.by_end.get(end)
        if members is None:
            members = self.by_end[end] = {}
        members[(length, rollup.room_id)] = None
