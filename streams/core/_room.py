"""Per-room state: event-time buckets, open-window unique viewers, dedup memory.

A room keeps the counters of its open buckets (``ts // bucket_ms``) in a dict
keyed by bucket number; the task sums and drops a window's buckets when the
watermark passes its end. Buckets are keyed, not a fixed ring, because the
watermark follows the slowest input: a topic read ahead of the others may
write buckets far past the oldest open window.

Unique viewers per open window are a HyperLogLog sketch (Apache DataSketches).
A small sketch is in DataSketches' list mode, which keeps 4-byte coupons and is
exact in practice: a sketch of 16 users takes ~330 bytes where a Python set of
their ids takes ~1 800.

Dedup memory is a set of ``"<status>:<order_id>"`` keys, kept in chunks by
the window of the event's time: a checkpoint writes only the chunks that
changed (their own changelog records, see ``streams.core._state_codec``) and a chunk
is forgotten whole once its window is older than the dedup TTL. So the cost
and size of a room's changelog records do not grow with the orders it has
seen in the last ten minutes.

A room's changelog encoding, in every version, is ``streams.core._state_codec``.
"""

from __future__ import annotations

from operator import add
from types import MappingProxyType
from typing import Any, cast

from datasketches import hll_sketch, hll_union, tgt_hll_type

from schemas import RoomStats

from ._spikes import DetectorState

# Counter layout of one bucket (a new counter is appended: see _state_codec's migrations).
JOINS, LEAVES, LIKES, COMMENTS, ORDERS, GMV, REFUNDS, GIFTS, GIFT_VALUE, LATE, SHARES = range(11)
N_COUNTERS = 11


def room_stats(
    room_id: str, ws: int, window_ms: int, total: list[int], unique_viewers: int, concurrent: int
) -> RoomStats:
    """The room-stats record of window ``[ws, ws + window_ms)`` from its summed counters.

    The one mapping from the counter layout to the published record: the window close and the
    query view of a partial window both use it.
    """
    return RoomStats(
        room_id,
        ws,
        ws + window_ms,
        total[JOINS],
        unique_viewers,
        concurrent,
        total[LIKES],
        total[COMMENTS],
        total[ORDERS],
        total[ORDERS] / (window_ms / 1_000),
        total[GMV],
        total[REFUNDS],
        total[GIFTS],
        total[GIFT_VALUE],
        total[LATE],
        total[SHARES],
    )


HLL_TYPE = tgt_hll_type.HLL_8
DEFAULT_LG_K = 12


def union_of(held: Any, sketch: Any, lg_k: int) -> Any:
    """Unique viewers of ``held`` (None, a closed window's sketch, or a union) and ``sketch`` (None or
    a closed window's sketch): a union only once there are two sketches. Sketches are never
    changed after their window closes, so one can be held by a session and its rollups at once."""
    if sketch is None:
        return held
    if held is None:
        return sketch
    if type(held) is not hll_union:
        union = hll_union(lg_k)
        union.update(held)
        held = union
    held.update(sketch)
    return held


def estimate(held: Any) -> int:
    """The unique-viewer estimate of ``held`` (see ``union_of``)."""
    return 0 if held is None else round(held.get_estimate())


def as_sketch(held: Any) -> Any:
    """``held`` as a sketch (for serialisation)."""
    return held.get_result(HLL_TYPE) if type(held) is hll_union else held


#: order keys per dedup chunk. A chunk is one changelog record, rewritten at every checkpoint that
#: adds to it, so it must stay well below the broker's record limit (``message.max.bytes``, 1 MiB by
#: default) however hot the room: a flash sale of 1 250 orders/s fills one window with 25 000 keys
#: (created + paid), 1.1 MB in one record. 1 024 keys of up to 138 characters are at most ~570 KB
#: even if every character took 4 bytes, and ~40-140 KB in practice.
CHUNK_KEYS = 1_024

#: the dedup memory of a room that has seen no order yet: one shared empty set (an empty set is
#: 216 bytes, and most rooms of a viewer flood or a quiet platform never see an order)
_NO_KEYS: frozenset[str] = frozenset()
NO_WINDOWS: frozenset[int] = frozenset()

#: what a room holds while it has no bucket, sketch or dedup chunk: one shared read-only mapping
#: (an empty dict is 64 bytes; idle rooms are most of a platform's rooms). Writers give the room a
#: dict of its own first (``own``); reading it is reading an empty dict.
EMPTY: dict[Any, Any] = cast(dict[Any, Any], MappingProxyType({}))


def own(mapping: dict[Any, Any]) -> dict[Any, Any]:
    """``mapping``, or a new dict in place of ``EMPTY``."""
    return mapping if type(mapping) is dict else {}


class Room:
    """Mutable state of one live room inside one task."""

    __slots__ = (
        "buckets",
        "concurrent",
        "detector",
        "dirty",
        "last_closed",
        "last_ts",
        "offsets",
        "open_ws",
        "reg_ws",
        "rollups",
        "room_id",
        "seen",
        "seen_chunks",
        "seen_dirty",
        "seen_gone",
        "session",
        "tail_dirty",
        "uniques",
    )

    def __init__(self, room_id: str) -> None:
        self.room_id = room_id
        #: bucket number -> counters (layout: JOINS..LATE), for buckets of open windows
        self.buckets: dict[int, list[int]] = EMPTY
        #: concurrent viewers as of the end of the last closed window
        self.concurrent = 0
        #: start of the newest window with activity (or a late event's watermark), for expiry
        self.last_ts = -1
        #: input source -> offset up to which the room holds every event (set at checkpoints).
        #: Never changed in place: rooms written by one checkpoint share one dict.
        self.offsets: dict[int, int] = EMPTY
        #: window start -> user ids (exact) or a HyperLogLog sketch, per open window
        self.uniques: dict[int, Any] = EMPTY  # window start -> hll_sketch (untyped extension)
        #: starts of windows with activity that have not been emitted yet (``()``: none)
        self.open_ws: list[int] | tuple[()] = ()
        #: the window this room was last registered for (fast-path check)
        self.reg_ws = -1
        #: "<status>:<order_id>" of every order event remembered, for duplicate detection
        self.seen: set[str] | frozenset[str] = _NO_KEYS
        #: window start -> the keys of ``seen`` whose event time falls in that window
        self.seen_chunks: dict[int, list[str]] = EMPTY
        #: chunks changed since the last checkpoint, and chunks forgotten since then (``()``: none)
        self.seen_dirty: set[int] | frozenset[int] = NO_WINDOWS
        self.seen_gone: list[int] | tuple[()] = ()
        self.dirty = False
        #: detector, session or rollups changed since the last checkpoint (their own record, ``t/``)
        self.tail_dirty = False
        self.last_closed: Any = None
        #: spike baselines and alert lifecycle, created at the room's first closed window
        self.detector: DetectorState | None = None
        #: the room's current broadcast session (``streams.core._sessions``), folded from its windows
        self.session: Any = None
        #: its open rollup windows by position in ``CoreConfig.rollup_windows_ms`` (None: none open)
        self.rollups: list[Any] | None = None

    def counters(self, bucket: int) -> list[int]:
        """The counters of ``bucket``, created at zero if new."""
        counters = self.buckets.get(bucket)
        if counters is None:
            self.buckets = store = own(self.buckets)
            counters = store[bucket] = [0] * N_COUNTERS
        return counters

    def sketch(self, ws: int, lg_k: int) -> Any:
        """The unique-viewer sketch of window ``ws``, created empty if new."""
        sketch = self.uniques.get(ws)
        if sketch is None:
            self.uniques = store = own(self.uniques)
            sketch = store[ws] = hll_sketch(lg_k, HLL_TYPE)
        return sketch

    def unique_count(self, ws: int) -> int:
        sketch = self.uniques.get(ws)
        return 0 if sketch is None else round(sketch.get_estimate())

    def sum_buckets(self, buckets: range) -> list[int]:
        """Sum the counters of the given bucket numbers (leaves them in place)."""
        total = [0] * N_COUNTERS
        store = self.buckets
        for bucket in buckets:
            counters = store.get(bucket)
            if counters is not None:
                total = list(map(add, total, counters))
        return total

    def take_window(self, first: int, end: int) -> tuple[list[int], int, int]:
        """Sum and drop the counters of buckets ``first <= bucket < end`` (one window); with the
        numbers of its first and last active bucket (-1, -1 if it had none)."""
        store = self.buckets
        if len(store) == 1:  # the usual sparse room: one active bucket
            for bucket in store:
                if first <= bucket < end:
                    return store.pop(bucket), bucket, bucket
            return [0] * N_COUNTERS, -1, -1
        if len(store) <= end - first:
            numbers = [b for b in store if first <= b < end]
        else:
            numbers = [b for b in range(first, end) if b in store]
        if not numbers:
            return [0] * N_COUNTERS, -1, -1
        total = store.pop(numbers[0])  # popped: the window owns it now
        for bucket in numbers[1:]:
            total = list(map(add, total, store.pop(bucket)))
        return total, min(numbers), max(numbers)

    def remember(self, key: str, ws: int) -> None:
        """Add an order key to the dedup memory, in the open chunk of window ``ws`` (chunk id ``ws``).

        A full open chunk (``CHUNK_KEYS``) is sealed first: moved to the first free id above ``ws``
        (``ws + 1``, ``ws + 2``, ...), which only makes it outlive the window by as many
        milliseconds at expiry, and the open chunk starts again empty. An id forgotten since the
        last checkpoint (``seen_gone``: the cap forgets open windows' chunks too) and used again is
        written by that checkpoint, not deleted after.
        """
        seen = self.seen
        if isinstance(seen, frozenset):  # the first order: the room gets a set of its own
            seen = self.seen = set()
        seen.add(key)
        dirty = self.seen_dirty
        if isinstance(dirty, frozenset):
            dirty = self.seen_dirty = set()
        chunks = self.seen_chunks = own(self.seen_chunks)
        chunk = chunks.get(ws)
        if chunk is None:
            chunk = chunks[ws] = []
            self._unforget(ws)
        elif len(chunk) >= CHUNK_KEYS:
            sealed = ws + 1
            while sealed in chunks:
                sealed += 1
            chunks[sealed] = chunk
            dirty.add(sealed)
            self._unforget(sealed)
            chunk = chunks[ws] = []
        chunk.append(key)
        dirty.add(ws)

    def _unforget(self, chunk_id: int) -> None:
        """A chunk id in use again: written by the next checkpoint, not deleted (``remember``)."""
        if chunk_id in self.seen_gone:
            self.seen_gone.remove(chunk_id)  # type: ignore[union-attr]  # (a list once not empty)

    def restore_chunk(self, ws: int, keys: list[str]) -> None:
        """Take a dedup chunk read back from the changelog."""
        self.seen_chunks = own(self.seen_chunks)
        self.seen_chunks[ws] = keys
        if isinstance(self.seen, frozenset):
            self.seen = set()
        self.seen.update(keys)

    def forget_chunks_before(self, cutoff_ws: int, cap: int) -> None:
        """Forget chunks of windows starting before ``cutoff_ws``, then the oldest beyond ``cap`` keys."""
        chunks = self.seen_chunks
        while chunks:
            oldest = min(chunks)
            if oldest >= cutoff_ws and len(self.seen) <= cap:
                return
            keys = chunks.pop(oldest)
            if isinstance(self.seen, set):
                self.seen.difference_update(keys)
            if isinstance(self.seen_dirty, set):
                self.seen_dirty.discard(oldest)
            if isinstance(self.seen_gone, tuple):
                self.seen_gone = []
            self.seen_gone.append(oldest)


def order_key(order_id: str, status: str) -> str:
    """Dedup key of an order event (a status never holds ':', so the key is unambiguous)."""
    return status + ":" + order_id
