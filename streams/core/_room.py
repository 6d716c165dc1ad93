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
changed (their own changelog records, see ``streams.core._task``) and a chunk
is forgotten whole once its window is older than the dedup TTL. So the cost
and size of a room's changelog records do not grow with the orders it has
seen in the last ten minutes.

The changelog encoding is ``[version, ...]`` as orjson; ``decode_room`` reads
every version ever written (v1/v2 carried the dedup memory inside the room
record; it is moved into chunks on decode).
"""

from __future__ import annotations

import base64
from operator import add
from typing import Any

import orjson
from datasketches import hll_sketch, tgt_hll_type

from ..exceptions import StateError
from ._spikes import DetectorState

# Counter layout of one bucket.
JOINS, LEAVES, LIKES, COMMENTS, ORDERS, GMV, REFUNDS, GIFTS, GIFT_VALUE, LATE = range(10)
N_COUNTERS = 10

#: 1: counters, uniques, offsets, dedup; 2: + spike detector state; 3: dedup in chunk records
ROOM_FORMAT_VERSION = 3

HLL_TYPE = tgt_hll_type.HLL_8
DEFAULT_LG_K = 12


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
        "room_id",
        "seen",
        "seen_chunks",
        "seen_dirty",
        "seen_gone",
        "uniques",
    )

    def __init__(self, room_id: str) -> None:
        self.room_id = room_id
        #: bucket number -> counters (layout: JOINS..LATE), for buckets of open windows
        self.buckets: dict[int, list[int]] = {}
        #: concurrent viewers as of the end of the last closed window
        self.concurrent = 0
        #: start of the newest window with activity (or a late event's watermark), for expiry
        self.last_ts = -1
        #: input source -> offset up to which the room holds every event (set at checkpoints)
        self.offsets: dict[int, int] = {}
        #: window start -> user ids (exact) or a HyperLogLog sketch, per open window
        self.uniques: dict[int, Any] = {}  # window start -> hll_sketch (untyped extension)
        #: starts of windows with activity that have not been emitted yet
        self.open_ws: list[int] = []
        #: the window this room was last registered for (fast-path check)
        self.reg_ws = -1
        #: "<status>:<order_id>" of every order event remembered, for duplicate detection
        self.seen: set[str] = set()
        #: window start -> the keys of ``seen`` whose event time falls in that window
        self.seen_chunks: dict[int, list[str]] = {}
        #: chunks changed since the last checkpoint, and chunks forgotten since then
        self.seen_dirty: set[int] = set()
        self.seen_gone: list[int] = []
        self.dirty = False
        self.last_closed: Any = None
        #: spike baselines and alert lifecycle, created at the room's first closed window
        self.detector: DetectorState | None = None

    def counters(self, bucket: int) -> list[int]:
        """The counters of ``bucket``, created at zero if new."""
        counters = self.buckets.get(bucket)
        if counters is None:
            counters = self.buckets[bucket] = [0] * N_COUNTERS
        return counters

    def sketch(self, ws: int, lg_k: int) -> Any:
        """The unique-viewer sketch of window ``ws``, created empty if new."""
        sketch = self.uniques.get(ws)
        if sketch is None:
            sketch = self.uniques[ws] = hll_sketch(lg_k, HLL_TYPE)
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

    def take_window(self, first: int, end: int) -> list[int]:
        """Sum and drop the counters of buckets ``first <= bucket < end`` (one window)."""
        store = self.buckets
        if len(store) == 1:  # the usual sparse room: one active bucket
            for bucket in store:
                if first <= bucket < end:
                    return store.pop(bucket)
            return [0] * N_COUNTERS
        if len(store) <= end - first:
            numbers = [b for b in store if first <= b < end]
        else:
            numbers = [b for b in range(first, end) if b in store]
        if not numbers:
            return [0] * N_COUNTERS
        total = store.pop(numbers[0])  # popped: the window owns it now
        for bucket in numbers[1:]:
            total = list(map(add, total, store.pop(bucket)))
        return total

    def remember(self, key: str, ws: int) -> None:
        """Add an order key to the dedup memory, in the chunk of window ``ws``."""
        self.seen.add(key)
        chunk = self.seen_chunks.get(ws)
        if chunk is None:
            chunk = self.seen_chunks[ws] = []
        chunk.append(key)
        self.seen_dirty.add(ws)

    def forget_chunks_before(self, cutoff_ws: int, cap: int) -> None:
        """Forget chunks of windows starting before ``cutoff_ws``, then the oldest beyond ``cap`` keys."""
        chunks = self.seen_chunks
        while chunks:
            oldest = min(chunks)
            if oldest >= cutoff_ws and len(self.seen) <= cap:
                return
            self.seen.difference_update(chunks.pop(oldest))
            self.seen_dirty.discard(oldest)
            self.seen_gone.append(oldest)


def encode_room(room: Room) -> bytes:
    """Serialise a room for the changelog (current version)."""
    buckets = [[bucket, *counters] for bucket, counters in room.buckets.items()]
    uniques = [
        [ws, base64.b64encode(sketch.serialize_compact()).decode()] for ws, sketch in room.uniques.items()
    ]
    return orjson.dumps(
        [
            ROOM_FORMAT_VERSION,
            room.room_id,
            room.concurrent,
            room.last_ts,
            list(room.offsets.items()),
            buckets,
            uniques,
            room.open_ws,
            None if room.detector is None else room.detector.to_wire(),
        ]
    )


def order_key(order_id: str, status: str) -> str:
    """Dedup key of an order event (a status never holds ':', so the key is unambiguous)."""
    return status + ":" + order_id


def decode_room(raw: bytes, window_ms: int = 10_000) -> Room:
    """Rebuild a room from any version of its changelog encoding.

    ``window_ms`` places the dedup memory of v1/v2 records into window chunks.
    """
    try:
        obj = orjson.loads(raw)
        version = obj[0]
    except (orjson.JSONDecodeError, IndexError, TypeError, KeyError) as exc:
        raise StateError(f"undecodable room state: {exc}") from exc
    if version not in (1, 2, 3):
        raise StateError(f"room state version {version!r} is not supported (max {ROOM_FORMAT_VERSION})")
    try:
        if version == 3:
            room = _decode_v1([*obj[:8], []], window_ms)
            detector = obj[8]
        else:
            room = _decode_v1(obj[:9], window_ms)
            detector = obj[9] if version == 2 else None
        if detector is not None:
            room.detector = DetectorState.from_wire(detector)
        return room
    except (ValueError, TypeError, IndexError) as exc:
        raise StateError(f"corrupt room state v{version}: {exc}") from exc


def _decode_v1(obj: list[Any], window_ms: int) -> Room:
    _, room_id, concurrent, last_ts, offsets, buckets, uniques, open_ws, seen = obj
    room = Room(room_id)
    room.concurrent = concurrent
    room.last_ts = last_ts
    room.offsets = {source: offset for source, offset in offsets}
    room.buckets = {bucket: counters for bucket, *counters in buckets}
    room.uniques = {ws: _decode_uniques(users) for ws, users in uniques}
    room.open_ws = list(open_ws)
    for order_id, status, ts in seen:  # v1/v2: moved into chunks, written as such at the next checkpoint
        room.remember(order_key(order_id, status), ts - ts % window_ms)
    return room


def _decode_uniques(users: str | list[str]) -> Any:
    """A window's sketch; early encodings stored small windows as the list of user ids."""
    if isinstance(users, str):
        return hll_sketch.deserialize(base64.b64decode(users))
    sketch = hll_sketch(DEFAULT_LG_K, HLL_TYPE)
    for user in users:
        sketch.update(user)
    return sketch
