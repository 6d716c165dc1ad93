"""The room-state changelog format: every record kind, its key layout and its versions.

A task's changelog partition holds five kinds of records, all orjson:

* ``r/<room id>`` -> a room's counters: ``[version, room_id, concurrent, last_ts, offsets,
  buckets, uniques, open_ws]``, buckets as ``[[bucket, counters], ...]``;
* ``t/<room id>`` -> what a room folds from its closed windows, rewritten only when a window
  closes (or an expiry resets it): ``[version, room_id, detector, session, rollups]``, where
  ``session`` is ``[start, last_end, totals, unique-viewer sketch (base64, or null), peak, peak_ws,
  updated_at]`` or null and ``rollups`` the open rollup windows ``[[length, start, totals, sketch,
  concurrent], ...]`` or null. A room with none of the three has no such record;
* ``d/<window start>/<room id>`` -> one dedup chunk: the order keys of that window;
* ``m/task`` -> the task metadata: ``[version, max_ts, watermark, source_max, senders, offsets,
  geometry, watch_start]``;
* ``l/merge`` -> the leaderboard merge's state (task 0 only).

Room records up to version 5 held both parts in one ``r/`` record; they still decode, and a
``t/`` record next to one is older than it and ignored. Splitting them made the checkpoint of a
room that only took events (most checkpoints between window closes) a third of the bytes and
of the encoding time: the detector's floats and the sketches of sessions and rollups are most
of a room's record, and they change only when a window closes.

A tombstone (value ``None``) deletes a key; restore keeps the last write per key. Decoders read
every version ever written and raise :class:`StateError` on anything else, which the task turns
into a quarantined record. ``streams.core._task`` decides what to write and what to restore;
``streams._changelog`` moves the bytes to and from Kafka.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
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
TAIL_KEY_PREFIX = b"t/"
DEDUP_KEY_PREFIX = b"d/"
META_KEY = b"m/task"

#: 1: counters, uniques, offsets, dedup; 2: + spike detector state; 3: dedup in chunk records;
#: 4: + the shares counter; 5: + the broadcast session and the open rollup windows; 6: detector,
#: session and rollups in a record of their own (``t/``), buckets as [bucket, counters] pairs
ROOM_FORMAT_VERSION = 6
#: counters per bucket in each room version: a migration pads older buckets with zeros
_COUNTERS_IN = {1: 10, 2: 10, 3: 10, 4: N_COUNTERS, 5: N_COUNTERS, 6: N_COUNTERS}
#: 1: detector, session, rollups (the fields room versions 2-5 ended with)
TAIL_FORMAT_VERSION = 1
#: the last room version with the detector, session and rollups in the room's record
WHOLE_ROOM_VERSION = 5

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
    #: room id (bytes, as in the key) -> its ``t/`` record
    tails: dict[bytes, bytes]


def room_key(room_id: str) -> bytes:
    return ROOM_KEY_PREFIX + room_id.encode()


def tail_key(room_id: str) -> bytes:
    return TAIL_KEY_PREFIX + room_id.encode()


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
    tails: dict[bytes, bytes] = {}
    for key, value in latest.items():
        if value is None:
            continue
        if key.startswith(ROOM_KEY_PREFIX):
            rooms.append((key, value))
        elif key.startswith(DEDUP_KEY_PREFIX):
            chunks.append((key, value))
        elif key.startswith(TAIL_KEY_PREFIX):
            tails[key[len(TAIL_KEY_PREFIX) :]] = value
    return Records(meta, rooms, chunks, tails)


# -- rooms ----------------------------------------------------------------------------------


def encode_room(room: Room) -> bytes:
    """A room's ``r/`` record (current version): its counters, sketches and open windows."""
    return orjson.dumps(_room_fields(room, ROOM_FORMAT_VERSION, list(room.buckets.items())))


def encode_room_tail(room: Room) -> bytes | None:
    """A room's ``t/`` record: its detector, session and open rollups (None: it has none)."""
    if room.detector is None and room.session is None and room.rollups is None:
        return None
    return orjson.dumps([TAIL_FORMAT_VERSION, room.room_id, *_tail_fields(room)])


def encode_room_whole(room: Room) -> bytes:
    """A room as one ``r/`` record of version 5, its detector, session and rollups in it: what
    workers before version 6 read (``CoreConfig.state_format`` 5, a rolling upgrade's first step)."""
    buckets = [[bucket, *counters] for bucket, counters in room.buckets.items()]
    return orjson.dumps([*_room_fields(room, WHOLE_ROOM_VERSION, buckets), *_tail_fields(room)])


def _room_fields(room: Room, version: int, buckets: list[Any]) -> list[Any]:
    """The fields an ``r/`` record of ``version`` starts with (``buckets`` as it writes them)."""
    uniques = [
        [ws, base64.b64encode(sketch.serialize_compact()).decode()] for ws, sketch in room.uniques.items()
    ]
    return [
        version,
        room.room_id,
        room.concurrent,
        room.last_ts,
        list(room.offsets.items()),
        buckets,
        uniques,
        room.open_ws,
    ]


def _tail_fields(room: Room) -> tuple[Any, Any, Any]:
    """``[detector, session, rollups]`` as a room's records hold them."""
    session, rollups = room.session, room.rollups
    # a window's sketch may be held by the session and the rollups at once: encoded once
    encoded: dict[int, str] = {}
    return (
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
    """Rebuild a room from any version of its ``r/`` record (from version 6 on, without its
    detector, session and rollups: ``decode_room_tail`` adds them).

    ``window_ms`` places the dedup memory of v1/v2 records into window chunks.
    """
    return _decode_room(raw, window_ms)[0]


def _decode_room(raw: bytes, window_ms: int) -> tuple[Room, int]:
    try:
        obj = orjson.loads(raw)
        version = obj[0]
    except (orjson.JSONDecodeError, IndexError, TypeError, KeyError) as exc:
        raise StateError(f"undecodable room state: {exc}") from exc
    if type(version) is not int or version not in _COUNTERS_IN:
        raise StateError(f"room state version {version!r} is not supported (max {ROOM_FORMAT_VERSION})")
    try:
        if version >= 6:
            if len(obj) != 8:
                raise ValueError(f"{len(obj)} fields, not 8")
            room = _decode_v1([*obj[:5], [], obj[6], obj[7], []], window_ms)
            if type(obj[5]) is not list:
                raise ValueError("buckets are a list of [bucket, counters] pairs")
            room.buckets = dict(obj[5]) or EMPTY
            if not all(type(bucket) is int for bucket in room.buckets):
                raise ValueError("a bucket number is not an integer")
            detector = None
        elif version >= 3:  # dedup memory in chunk records
            room = _decode_v1([*obj[:8], []], window_ms)
            detector = obj[8]
        else:
            room = _decode_v1(obj[:9], window_ms)
            detector = obj[9] if version == 2 else None
        if detector is not None:
            room.detector = DetectorState.from_wire(detector)
        if version == 5:
            _decode_session_and_rollups(room, obj[9], obj[10])
        if type(room.room_id) is not str:
            raise ValueError(f"room id {room.room_id!r} is not a string")
        written = _COUNTERS_IN[version]
        for counters in room.buckets.values():
            if type(counters) is not list or len(counters) != written:
                raise ValueError(f"a bucket of {len(counters)} counters, not {written}")
            if written < N_COUNTERS:  # counters added since that version start at zero
                counters.extend([0] * (N_COUNTERS - written))
        return room, version
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


def decode_room_record(key: bytes, value: bytes, window_ms: int) -> tuple[Room, int]:
    """A room record checked against its key (a room under another room's key is corrupt), and
    the record's version (from 6 on, its ``t/`` record goes with it)."""
    room, version = _decode_room(value, window_ms)
    if room.room_id.encode() != key[len(ROOM_KEY_PREFIX) :]:
        raise StateError(f"changelog key {key!r} holds room {room.room_id!r}")
    return room, version


def room_state(records: Mapping[bytes, bytes | None], room_id: str, window_ms: int = 10_000) -> Room:
    """Room ``room_id`` as the changelog records ``records`` (key -> latest value) hold it: its
    ``r/`` record with, from version 6 on, its ``t/`` record. For tools and tests; the restore
    reads a whole partition (``TaskAggregator.restore``)."""
    raw = records[room_key(room_id)]
    if raw is None:
        raise KeyError(room_id)
    room, version = decode_room_record(room_key(room_id), raw, window_ms)
    tail = records.get(tail_key(room_id))
    if version >= 6 and tail is not None:
        decode_room_tail(tail_key(room_id), tail, room)
    return room


def decode_room_tail(key: bytes, value: bytes, room: Room) -> None:
    """Add a ``t/`` record (under ``key``) to ``room``, decoded from an ``r/`` record of version 6
    or later; :class:`StateError` if it is corrupt or another room's."""
    try:
        obj = orjson.loads(value)
        version = obj[0]
    except (orjson.JSONDecodeError, IndexError, TypeError, KeyError) as exc:
        raise StateError(f"undecodable room tail {key!r}: {exc}") from exc
    if type(version) is not int or version != TAIL_FORMAT_VERSION:
        raise StateError(f"room tail version {version!r} is not supported (max {TAIL_FORMAT_VERSION})")
    try:
        _, room_id, detector, session, rollups = obj
        if room_id != room.room_id or key[len(TAIL_KEY_PREFIX) :] != room_id.encode():
            raise ValueError(f"record {room_id!r} under {key!r}, read for room {room.room_id!r}")
        decoded = Room(room.room_id)  # decoded whole before any of it goes into the room
        if detector is not None:
            decoded.detector = DetectorState.from_wire(detector)
        _decode_session_and_rollups(decoded, session, rollups)
    except (ValueError, TypeError, IndexError, RuntimeError, AttributeError) as exc:
        raise StateError(f"corrupt room tail {key!r}: {exc}") from exc
    room.detector, room.session, room.rollups = decoded.detector, decoded.session, decoded.rollups


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
