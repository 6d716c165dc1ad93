"""The room-state changelog format: every record kind, its key layout and its versions.

A task's changelog partition holds five kinds of records, all orjson:

* ``r/<room id>`` -> a room: ``[version, room_id, concurrent, last_ts, offsets, buckets,
  uniques, open_ws, detector, session, rollups]``, where ``session`` is ``[start, last_end,
  totals, unique-viewer sketch (base64, or null), peak, peak_ws, updated_at]`` or null and
  ``rollups`` the open rollup windows ``[[length, start, totals, sketch, concurrent], ...]`` or null;
* ``d/<window start>/<room id>`` -> one dedup chunk: the order keys of that window;
* ``m/task`` -> the task metadata: ``[version, max_ts, watermark, source_max, senders, offsets,
  geometry, watch_start]``;
* ``l/merge`` -> the leaderboard merge's state (task 0 only).

A tombstone (value ``None``) deletes a key; restore keeps the last write per key. Decoders read
every version ever written and raise :class:`StateError` on anything else, which the task turns
into a quarantined record. ``streams.core._task`` decides what to write and what to restore;
``streams._changelog`` moves the bytes to and from Kafka.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
from datasketches import hll_sketch

from ..exceptions import StateError
from ._leaderboard import LeaderboardMerge
from ._rollups import Rollup
from ._room import DEFAULT_LG_K, EMPTY, HLL_TYPE, N_COUNTERS, Room, as_sketch, order_key
from ._sessions import Session
from ._spikes import DetectorState

ROOM_KEY_PREFIX = b"r/"
DEDUP_KEY_PREFIX = b"d/"
META_KEY = b"m/task"

#: 1: counters, uniques, offsets, dedup; 2: + spike detector state; 3: dedup in chunk records;
#: 4: + the shares counter; 5: + the broadcast session and the open rollup windows
ROOM_FORMAT_VERSION = 5
#: counters per bucket in each room version: a migration pads older buckets with zeros
_COUNTERS_IN = {1: 10, 2: 10, 3: 10, 4: N_COUNTERS, 5: N_COUNTERS}

#: 1: event times; 2: + per-source event times; 3: + sender frontiers and input offsets;
#: 4: + the window geometry (bucket_ms, window_ms) the state was cut with, and optionally (a field
#: older workers ignore, so a rolling update either way keeps the metadata) the window the task's
#: state began at (``TaskAggregator.watch_start``)
META_FORMAT_VERSION = 4


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Changelog writes for one checkpoint: upserts (key, value) and tombstone keys."""

    upserts: list[tuple[bytes, bytes]]
    deletes: list[bytes]


class TaskMeta(NamedTuple):
    """A task's progress as checkpointed: event times, sender frontiers, input offsets."""

    max_ts: int
    watermark: int
    #: source -> newest event time
    source_max: dict[int, int]
    #: sender -> published frontier (None: idle)
    senders: dict[int, int | None]
    #: source -> next offset to read
    offsets: dict[int, int]
    #: (bucket_ms, window_ms) of the settings that wrote it (None: a version before 4)
    geometry: tuple[int, int] | None = None
    #: the window the task's state began at (None: no event yet, or not recorded)
    watch_start: int | None = None


class Records(NamedTuple):
    """A changelog partition compacted (last write per key, tombstones applied), by record kind."""

    meta: bytes | None
    rooms: list[tuple[bytes, bytes]]
    chunks: list[tuple[bytes, bytes]]


def room_key(room_id: str) -> bytes:
    return ROOM_KEY_PREFIX + room_id.encode()


def dedup_key(room_id: str, ws: int) -> bytes:
    """Changelog key of one dedup chunk: ``d/<window start>/<room id>``."""
    return b"%s%d/%s" % (DEDUP_KEY_PREFIX, ws, room_id.encode())


def compact(records: Iterable[tuple[bytes, bytes | None]]) -> Records:
    """Changelog records in log order -> the live ones by kind (keys of no known kind are ignored)."""
    latest: dict[bytes, bytes | None] = {}
    for key, value in records:
        latest[key] = value
    meta = latest.pop(META_KEY, None)
    rooms: list[tuple[bytes, bytes]] = []
    chunks: list[tuple[bytes, bytes]] = []
    for key, value in latest.items():
        if value is None:
            continue
        if key.startswith(ROOM_KEY_PREFIX):
            rooms.append((key, value))
        elif key.startswith(DEDUP_KEY_PREFIX):
            chunks.append((key, value))
    return Records(meta, rooms, chunks)


# -- rooms ----------------------------------------------------------------------------------


def encode_room(room: Room) -> bytes:
    """Serialise a room for the changelog (current version)."""
    buckets = [[bucket, *counters] for bucket, counters in room.buckets.items()]
    uniques = [
        [ws, base64.b64encode(sketch.serialize_compact()).decode()] for ws, sketch in room.uniques.items()
    ]
    session, rollups = room.session, room.rollups
    # a window's sketch may be held by the session and the rollups at once: encoded once
    encoded: dict[int, str] = {}
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
            None
            if session is None
            else [
                session.start,
                session.last_end,
                session.totals,
                _held_wire(session, encoded),
                session.peak,
                session.peak_ws,
                session.updated_at,
            ],
            None
            if rollups is None
            else [
                [r.length, r.start, r.totals, _held_wire(r, encoded), r.concurrent]
                for r in rollups
                if r is not None
            ],
        ]
    )


def _held_wire(holder: Session | Rollup, encoded: dict[int, str]) -> str | None:
    """Unique viewers of a session or rollup (``_room.union_of``) as a base64 compact sketch; kept
    on the holder until they change, and encoded once for holders sharing them."""
    wire = holder.wire
    if wire is None:
        held = holder.uniques
        if held is None:
            return None
        wire = encoded.get(id(held))
        if wire is None:
            wire = encoded[id(held)] = base64.b64encode(as_sketch(held).serialize_compact()).decode()
        holder.wire = wire
    return wire


def decode_room(raw: bytes, window_ms: int = 10_000) -> Room:
    """Rebuild a room from any version of its changelog encoding.

    ``window_ms`` places the dedup memory of v1/v2 records into window chunks.
    """
    try:
        obj = orjson.loads(raw)
        version = obj[0]
    except (orjson.JSONDecodeError, IndexError, TypeError, KeyError) as exc:
        raise StateError(f"undecodable room state: {exc}") from exc
    if type(version) is not int or version not in _COUNTERS_IN:
        raise StateError(f"room state version {version!r} is not supported (max {ROOM_FORMAT_VERSION})")
    try:
        if version >= 3:  # dedup memory in chunk records
            room = _decode_v1([*obj[:8], []], window_ms)
            detector = obj[8]
        else:
            room = _decode_v1(obj[:9], window_ms)
            detector = obj[9] if version == 2 else None
        if detector is not None:
            room.detector = DetectorState.from_wire(detector)
        if version >= 5:
            _decode_session_and_rollups(room, obj[9], obj[10])
        written = _COUNTERS_IN[version]
        for counters in room.buckets.values():
            if len(counters) != written:
                raise ValueError(f"a bucket of {len(counters)} counters, not {written}")
            if written < N_COUNTERS:  # counters added since that version start at zero
                counters.extend([0] * (N_COUNTERS - written))
        return room
    except (ValueError, TypeError, IndexError, RuntimeError) as exc:
        raise StateError(f"corrupt room state v{version}: {exc}") from exc


def _decode_session_and_rollups(room: Room, session: Any, rollups: Any) -> None:
    if session is not None:
        start, last_end, totals, sketch, peak, peak_ws, updated_at = session
        room.session = decoded = Session(int(start), _check_counters(totals))
        decoded.last_end, decoded.uniques = int(last_end), _decode_held(sketch)
        decoded.peak, decoded.peak_ws, decoded.updated_at = int(peak), int(peak_ws), int(updated_at)
    if rollups:
        room.rollups = []
        for length, start, totals, sketch, concurrent in rollups:
            rollup = Rollup(int(length), int(start), _check_counters(totals))
            rollup.uniques, rollup.concurrent = _decode_held(sketch), int(concurrent)
            room.rollups.append(rollup)


def _decode_held(sketch: Any) -> Any:
    if sketch is None:
        return None
    if type(sketch) is not str:
        raise ValueError("a unique-viewer sketch is a base64 string")
    return hll_sketch.deserialize(base64.b64decode(sketch, validate=True))


def _check_counters(totals: Any) -> list[int]:
    if not isinstance(totals, list) or len(totals) != N_COUNTERS or not all(type(c) is int for c in totals):
        raise ValueError(f"{N_COUNTERS} integer counters expected")
    return totals


def decode_room_record(key: bytes, value: bytes, window_ms: int) -> Room:
    """A room record, checked against its key (a room under another room's key is corrupt)."""
    room = decode_room(value, window_ms)
    if room.room_id.encode() != key[len(ROOM_KEY_PREFIX) :]:
        raise StateError(f"changelog key {key!r} holds room {room.room_id!r}")
    return room


def _decode_v1(obj: list[Any], window_ms: int) -> Room:
    _, room_id, concurrent, last_ts, offsets, buckets, uniques, open_ws, seen = obj
    room = Room(room_id)
    room.concurrent = concurrent
    room.last_ts = last_ts
    room.offsets = {source: offset for source, offset in offsets}
    # an idle room's empty containers are the shared ones (``_room.EMPTY``)
    room.buckets = {bucket: counters for bucket, *counters in buckets} or EMPTY
    room.uniques = {ws: _decode_uniques(users) for ws, users in uniques} or EMPTY
    room.open_ws = list(open_ws) or ()
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


# -- dedup chunks ---------------------------------------------------------------------------


def encode_dedup_chunk(keys: list[str]) -> bytes:
    return orjson.dumps(keys)


def decode_dedup_chunk(key: bytes, value: bytes) -> tuple[str, int, list[str]]:
    """``(room_id, window start, order keys)`` of a dedup chunk record."""
    try:
        ws_text, room_id = key[len(DEDUP_KEY_PREFIX) :].decode().split("/", 1)
        ws, keys = int(ws_text), orjson.loads(value)
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise StateError(f"undecodable dedup chunk {key!r}: {exc}") from exc
    if not isinstance(keys, list) or not all(type(k) is str for k in keys):
        raise StateError(f"dedup chunk {key!r} is not a list of keys")
    return room_id, ws, keys


# -- task metadata --------------------------------------------------------------------------


def encode_meta(meta: TaskMeta) -> bytes:
    return orjson.dumps(
        [
            META_FORMAT_VERSION,
            meta.max_ts,
            meta.watermark,
            list(meta.source_max.items()),
            list(meta.senders.items()),
            list(meta.offsets.items()),
            list(meta.geometry) if meta.geometry is not None else None,
            meta.watch_start,
        ]
    )


def decode_meta(raw: bytes) -> TaskMeta:
    """Task metadata of any version (v1 had no per-source event times, v2 no senders or offsets)."""
    try:
        version, max_ts, watermark, *rest = orjson.loads(raw)
        if version not in (1, 2, 3, 4):
            raise StateError(f"task metadata version {version!r} is not supported")
        # v1 had no per-source event times: the restored task waits for every source again.
        source_max = rest[0] if version >= 2 else []
        senders = rest[1] if version >= 3 else []
        offsets = rest[2] if version >= 3 else []
        geometry = rest[3] if version >= 4 else None
        watch_start = rest[4] if len(rest) > 4 else None
        return TaskMeta(
            int(max_ts),
            int(watermark),
            {int(source): int(ts) for source, ts in source_max},
            {int(s): None if f is None else int(f) for s, f in senders},
            {int(source): int(offset) for source, offset in offsets},
            None if geometry is None else (int(geometry[0]), int(geometry[1])),
            None if watch_start is None else int(watch_start),
        )
    except (orjson.JSONDecodeError, ValueError, TypeError, IndexError) as exc:
        raise StateError(f"undecodable task metadata: {exc}") from exc


# -- leaderboard merge (task 0's changelog only) ---------------------------------------------

#: the merge stage's state record; ``compact`` ignores it (no room or dedup prefix)
LEADERBOARD_KEY = b"l/merge"
#: 1: progress per task, pending windows, final frontier, latest record, partials offset, late count
LEADERBOARD_FORMAT_VERSION = 1


def encode_leaderboard(merge: LeaderboardMerge) -> bytes:
    return orjson.dumps([LEADERBOARD_FORMAT_VERSION, *merge.snapshot()])


def decode_leaderboard(raw: bytes, merge: LeaderboardMerge) -> None:
    """Load a merge state record of any version into ``merge``; :class:`StateError` if undecodable."""
    try:
        version, *snapshot = orjson.loads(raw)
        if version != 1:
            raise StateError(f"leaderboard state version {version!r} is not supported")
        merge.load(snapshot)
    except (orjson.JSONDecodeError, ValueError, TypeError, KeyError) as exc:
        raise StateError(f"undecodable leaderboard state: {exc}") from exc


def latest_leaderboard(records: Iterable[tuple[bytes, bytes | None]]) -> bytes | None:
    """The live merge state record among changelog records in log order."""
    latest = None
    for key, value in records:
        if key == LEADERBOARD_KEY:
            latest = value
    return latest
