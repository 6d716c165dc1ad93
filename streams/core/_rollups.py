"""Rollups: room-stats over longer windows (default 1 min and 1 h), folded from the closed base windows.

Each rollup length is a multiple of ``window_ms``, so a base window lies in exactly one rollup
window per length. When the task closes a room's base window it folds the summed counters, the
unique-viewer sketch and the end-of-window concurrent viewers into the room's open rollup window
of each length (``Room.rollups``); a rollup window closes when the watermark passes its end (every
base window in it has closed by then), and its record is built by the same ``room_stats`` mapping
as the base windows: unique viewers are a HyperLogLog union of the base windows' sketches,
concurrent viewers are those at the end of the room's last base window in it, ``orders_per_sec``
is over the rollup's length.

A room with an open rollup window is not forgotten when it goes idle (``room_idle_ms``, shorter
than an hour): its window state is reset and it stays, small, until the rollup has closed. Open
rollups are part of the room's changelog record (``streams.core._state_codec``).
"""

from __future__ import annotations

from typing import Any

from schemas import RoomStats

from ._room import estimate, room_stats


class Rollup:
    """One open rollup window of one room."""

    __slots__ = ("concurrent", "length", "start", "totals", "uniques", "wire")

    def __init__(self, length: int, start: int, totals: list[int]) -> None:
        self.length = length
        self.start = start
        #: counters summed over the folded base windows; never changed in place
        self.totals = totals
        #: unique viewers over the folded base windows (``_room.union_of``)
        self.uniques: Any = None
        #: concurrent viewers at the end of the last folded base window
        self.concurrent = 0
        #: ``uniques`` as last encoded for the changelog (None: not since it changed)
        self.wire: str | None = None

    def record(self, room_id: str) -> RoomStats:
        uniques = estimate(self.uniques)
        return room_stats(room_id, self.start, self.length, self.totals, uniques, self.concurrent)
