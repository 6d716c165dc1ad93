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

The changelog encoding is ``[version, ...]`` as orjson; ``decode_room`` reads
every version ever written.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
from datasketches import hll_sketch, tgt_hll_type

from ..exceptions import StateError
from ._spikes import DetectorState

# Counter layout of one bucket.
JOINS, LEAVES, LIKES, COMMENTS, ORDERS, GMV, REFUNDS, GIFTS, GIFT_VALUE, LATE = range(10)
N_COUNTERS = 10

#: 1: counters, uniques, offsets, dedup; 2: + spike detector state
ROOM_FORMAT_VERSION = 2

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
        #: (order_id, status) -> event time, for duplicate detection
        self.seen: dict[tuple[str, str], int] = {}
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

    def pop_unique_count(self, ws: int) -> int:
        count = self.unique_count(ws)
        self.uniques.pop(ws, None)
        return count

    def sum_buckets(self, buckets: range) -> list[int]:
        """Sum the counters of the given bucket numbers."""
        total = [0] * N_COUNTERS
        store = self.buckets
        for bucket in buckets:
            counters = store.get(bucket)
            if counters is not None:
                for i in range(N_COUNTERS):
                    total[i] += counters[i]
        return total

    def release_buckets(self, buckets: range) -> None:
        store = self.buckets
        for bucket in buckets:
            store.pop(bucket, None)


def encode_room(room: Room) -> bytes:
    """Serialise a room for the changelog (current version)."""
    buckets = [[bucket, *counters] for bucket, counters in room.buckets.items()]
    uniques = [
        [ws, base64.b64encode(sketch.serialize_compact()).decode()] for ws, sketch in room.uniques.items()
    ]
    seen = [[order_id, status, ts] for (order_id, status), ts in room.seen.items()]
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
            seen,
            None if room.detector is None else room.detector.to_wire(),
        ]
    )


def decode_room(raw: bytes) -> Room:
    """Rebuild a room from any version of its changelog encoding."""
    try:
        obj = orjson.loads(raw)
        version = obj[0]
    except (orjson.JSONDecodeError, IndexError, TypeError, KeyError) as exc:
        raise StateError(f"undecodable room state: {exc}") from exc
    if version not in (1, 2):
        raise StateError(f"room state version {version!r} is not supported (max {ROOM_FORMAT_VERSION})")
    try:
        room = _decode_v1(obj[:9])
        if version >= 2 and obj[9] is not None:
            room.detector = DetectorState.from_wire(obj[9])
        return room
    except (ValueError, TypeError, IndexError) as exc:
        raise StateError(f"corrupt room state v{version}: {exc}") from exc


def _decode_v1(obj: list[Any]) -> Room:
    _, room_id, concurrent, last_ts, offsets, buckets, uniques, open_ws, seen = obj
    room = Room(room_id)
    room.concurrent = concurrent
    room.last_ts = last_ts
    room.offsets = {source: offset for source, offset in offsets}
    room.buckets = {bucket: counters for bucket, *counters in buckets}
    room.uniques = {ws: _decode_uniques(users) for ws, users in uniques}
    room.open_ws = list(open_ws)
    room.seen = {(order_id, status): ts for order_id, status, ts in seen}
    return room


def _decode_uniques(users: str | list[str]) -> Any:
    """A window's sketch; early encodings stored small windows as the list of user ids."""
    if isinstance(users, str):
        return hll_sketch.deserialize(base64.b64decode(users))
    sketch = hll_sketch(DEFAULT_LG_K, HLL_TYPE)
    for user in users:
        sketch.update(user)
    return sketch
