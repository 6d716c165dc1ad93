"""The changelog format (streams.core._state_codec): every record kind round-trips, every older
version still decodes, and anything else is a StateError (quarantined by the task)."""

from __future__ import annotations

import orjson
import pytest

from schemas import OrderEvent, ViewerEvent
from streams.core import CoreConfig, TaskAggregator
from streams.core._room import N_COUNTERS, SHARES, Room
from streams.core._state_codec import (
    META_KEY,
    ROOM_FORMAT_VERSION,
    TaskMeta,
    compact,
    decode_dedup_chunk,
    decode_meta,
    decode_room,
    decode_room_record,
    decode_room_tail,
    dedup_key,
    encode_dedup_chunk,
    encode_meta,
    encode_room,
    encode_room_tail,
    room_key,
    tail_key,
)
from streams.exceptions import StateError

BASE_MS = 1_700_000_000_000
W = 10_000
CFG = CoreConfig(window_ms=W, room_idle_ms=10**9, dedup_ttl_ms=10**9)


def lived_room() -> Room:
    """A room with everything a room can hold: buckets, sketches, offsets, detector, open window."""
    agg = TaskAggregator(CFG)
    for k in range(3):
        ts = BASE_MS + k * W
        agg.apply(0, [(2 * k + 1, ViewerEvent("join", "r", f"u{k}", ts))], now_ms=0)
        agg.apply(1, [(k + 1, OrderEvent(f"o{k}", "r", "u", ts, "paid", 990, "CNY"))], now_ms=0)
    agg.checkpoint()  # stamps offsets, runs the detector
    room = agg.rooms["r"]
    assert room.buckets and room.uniques and room.offsets and room.open_ws and room.detector
    return room


def same_state(a: Room, b: Room) -> bool:
    return (
        (a.room_id, a.concurrent, a.last_ts, a.offsets, a.buckets, a.open_ws)
        == (b.room_id, b.concurrent, b.last_ts, b.offsets, b.buckets, b.open_ws)
        and {ws: s.get_estimate() for ws, s in a.uniques.items()}
        == {ws: s.get_estimate() for ws, s in b.uniques.items()}
        and (a.detector is None) == (b.detector is None)
        and (a.detector is None or a.detector.to_wire() == b.detector.to_wire())  # type: ignore[union-attr]
    )


def test_a_room_round_trips() -> None:
    room = lived_room()
    raw = encode_room(room)
    assert orjson.loads(raw)[0] == ROOM_FORMAT_VERSION
    back, version = decode_room_record(room_key("r"), raw, W)
    assert version == ROOM_FORMAT_VERSION
    assert back.detector is None  # it travels in the room's t/ record
    tail = encode_room_tail(room)
    assert tail is not None
    decode_room_tail(tail_key("r"), tail, back)
    assert same_state(back, room)
    assert not back.seen  # the dedup memory travels in chunk records


def test_a_room_with_no_detector_session_or_rollups_has_no_tail_record() -> None:
    room = Room("r")
    room.concurrent = 3
    assert encode_room_tail(room) is None
    assert same_state(decode_room(encode_room(room), W), room)


@pytest.mark.parametrize(
    "value",
    [
        b"{",  # not JSON
        orjson.dumps([2, "r", None, None, None]),  # a version from the future
        orjson.dumps([True, "r", None, None, None]),  # not a version
        orjson.dumps([1.0, "r", None, None, None]),
        orjson.dumps([1, "other", None, None, None]),  # another room's
        orjson.dumps([1, "r", None, None]),  # a field missing
        orjson.dumps([1, "r", [99], None, None]),  # a detector of no known version
        orjson.dumps([1, "r", None, [0, 1000, [0, 0], None, 0, 0, 0], None]),  # session counters missing
        orjson.dumps([1, "r", None, None, [[60_000, 0, [0] * N_COUNTERS, 5, 0]]]),  # sketch not a string
    ],
)
def test_an_undecodable_tail_record_is_a_state_error_and_leaves_the_room_as_it_was(value: bytes) -> None:
    room = decode_room(encode_room(lived_room()), W)
    with pytest.raises(StateError):
        decode_room_tail(tail_key("r"), value, room)
    assert room.detector is None and room.session is None and room.rollups is None


def test_a_room_under_another_rooms_key_is_corrupt() -> None:
    with pytest.raises(StateError, match="holds room"):
        decode_room_record(room_key("other"), encode_room(lived_room()), W)


BUCKET_V1_TO_V3 = [BASE_MS // 1000, 2, 1, 3, 4, 1, 990, 0, 5, 50, 1]  # bucket number + 10 counters


@pytest.mark.parametrize(
    ("version", "record"),
    [
        (1, [1, "r", 3, BASE_MS, [[0, 7]], [BUCKET_V1_TO_V3], [[BASE_MS, ["a", "b"]]], [BASE_MS], []]),
        (2, [2, "r", 3, BASE_MS, [[0, 7]], [BUCKET_V1_TO_V3], [[BASE_MS, ["a", "b"]]], [BASE_MS], [], None]),
        (3, [3, "r", 3, BASE_MS, [[0, 7]], [BUCKET_V1_TO_V3], [[BASE_MS, ["a", "b"]]], [BASE_MS], None]),
    ],
)
def test_older_room_versions_decode(version: int, record: list[object]) -> None:
    room = decode_room(orjson.dumps(record), W)
    assert (room.room_id, room.concurrent, room.offsets, room.open_ws) == ("r", 3, {0: 7}, [BASE_MS])
    counters = room.buckets[BASE_MS // 1000]
    assert len(counters) == N_COUNTERS and counters[:10] == BUCKET_V1_TO_V3[1:]
    assert counters[SHARES] == 0  # v4 added shares: older buckets start them at zero
    assert room.unique_count(BASE_MS) == 2  # early encodings kept small windows' user ids
    assert same_state(decode_room(encode_room(room), W), room)  # and re-encode as the current version


def test_a_version_2_detector_decodes() -> None:
    room = lived_room()
    assert room.detector is not None
    v2 = [2, "r", 0, BASE_MS, [], [], [], [], [], room.detector.to_wire()]
    back = decode_room(orjson.dumps(v2), W)
    assert back.detector is not None and back.detector.to_wire() == room.detector.to_wire()


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00not json",
        b"{}",
        b"[]",
        orjson.dumps([99, "r"]),  # a version this code does not know
        orjson.dumps([ROOM_FORMAT_VERSION, "r"]),  # truncated
        orjson.dumps([6, "r", 0, 0, [[0]], [], [], []]),  # a bad offset pair
        orjson.dumps([5, "r", 0, 0, [[0]], [], [], [], None, None, None]),
        orjson.dumps([1, "r", 0, 0, [], [], [], [], [["o1", "paid"]]]),  # a bad v1 order
        orjson.dumps([[ROOM_FORMAT_VERSION], "r"]),  # not a version
        orjson.dumps([6, "r", 0, 0, [], [[1, [2, 3]]], [], []]),  # a short bucket
        orjson.dumps([6, "r", 0, 0, [], [[1, 2, 3]], [], []]),  # a bucket not a pair
        orjson.dumps([6, "r", 0, 0, [], [[1, "abcdefghijk"]], [], []]),  # counters not a list
        orjson.dumps([6, "r", 0, 0, [], {"5": [0] * N_COUNTERS}, [], []]),  # buckets not pairs
        orjson.dumps([6, "r", 0, 0, [], [["5", [0] * N_COUNTERS]], [], []]),  # a bucket number not an int
        orjson.dumps([6, 5, 0, 0, [], [], [], []]),  # a room id not a string
        orjson.dumps([6, "r", 0, 0, [], [], [], [], None]),  # a v5 record's fields under v6
        orjson.dumps([5, "r", 0, 0, [], [[1, 2, 3]], [], [], None, None, None]),  # a short bucket
        orjson.dumps([3, "r", 0, 0, [], [[1, *range(11)]], [], [], None]),  # v3 had 10 counters
        # no buckets, sketches or open windows is an empty list, never null, 0 or false
        orjson.dumps([6, "r", 0, 0, [], None, [], []]),
        orjson.dumps([6, "r", 0, 0, [], [], 0, []]),
        orjson.dumps([6, "r", 0, 0, [], [], [], False]),
        orjson.dumps([5, "r", 0, 0, [], None, [], [], None, None, None]),
        orjson.dumps([5, "r", 0, 0, [], [], 0, [], None, None, None]),
        orjson.dumps([5, "r", 0, 0, [], [], [], False, None, None, None]),
    ],
)
def test_garbage_rooms_are_state_errors(raw: bytes) -> None:
    with pytest.raises(StateError):
        decode_room(raw, W)


def test_dedup_chunks_round_trip() -> None:
    key, value = dedup_key("房间/1", BASE_MS), encode_dedup_chunk(["paid:o1", "created:o2"])
    assert key == b"d/%d/" % BASE_MS + "房间/1".encode()
    assert decode_dedup_chunk(key, value) == ("房间/1", BASE_MS, ["paid:o1", "created:o2"])


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (b"d/notanumber/r", b"[]"),
        (b"d/1000", b"[]"),  # no room id
        (b"d/1000/r", b"not json"),
        (b"d/1000/r", b'{"not": "a list"}'),
        (b"d/1000/r", b"[1, 2]"),
    ],
)
def test_garbage_dedup_chunks_are_state_errors(key: bytes, value: bytes) -> None:
    with pytest.raises(StateError):
        decode_dedup_chunk(key, value)


def test_task_metadata_round_trips() -> None:
    meta = TaskMeta(
        BASE_MS,
        BASE_MS - 2_000,
        {0: BASE_MS, 1: BASE_MS - 5},
        {1: BASE_MS, 2: None},
        {0: 8, 3: 41},
        (1_000, 10_000),
        BASE_MS - 60_000,
    )
    assert decode_meta(encode_meta(meta)) == meta
    assert decode_meta(encode_meta(meta._replace(watch_start=None))).watch_start is None


@pytest.mark.parametrize(
    ("record", "meta"),
    [
        ([1, BASE_MS, BASE_MS - 2_000], TaskMeta(BASE_MS, BASE_MS - 2_000, {}, {}, {})),
        ([2, BASE_MS, 0, [[0, BASE_MS]]], TaskMeta(BASE_MS, 0, {0: BASE_MS}, {}, {})),
        ([3, 5, 3, [[2, 5]], [[1, None]], [[2, 9]]], TaskMeta(5, 3, {2: 5}, {1: None}, {2: 9})),
        ([4, 5, 3, [], [], [], [500, 5_000]], TaskMeta(5, 3, {}, {}, {}, (500, 5_000))),
        ([4, 5, 3, [], [], [], [500, 5_000], 0], TaskMeta(5, 3, {}, {}, {}, (500, 5_000), 0)),
        ([4, 5, 3, [], [], [], [500, 5_000], None], TaskMeta(5, 3, {}, {}, {}, (500, 5_000))),
    ],
)
def test_every_task_metadata_version_decodes(record: list[object], meta: TaskMeta) -> None:
    assert decode_meta(orjson.dumps(record)) == meta


@pytest.mark.parametrize(
    "raw", [b"not json", b"[3, 1]", b"[4, 1, 2, [], [], []]", b'[3, 1, 2, [["x", 1]], [], []]']
)
def test_garbage_task_metadata_is_a_state_error(raw: bytes) -> None:
    with pytest.raises(StateError):
        decode_meta(raw)


def test_compact_keeps_the_last_write_per_key_and_applies_tombstones() -> None:
    records = [
        (room_key("a"), b"a1"),
        (META_KEY, b"m1"),
        (dedup_key("a", 0), b"c1"),
        (room_key("b"), b"b1"),
        (room_key("a"), b"a2"),
        (room_key("b"), None),  # expired
        (b"x/unknown", b"?"),
        (META_KEY, b"m2"),
    ]
    live = compact(records)
    assert live.meta == b"m2"
    assert live.rooms == [(room_key("a"), b"a2")]
    assert live.chunks == [(dedup_key("a", 0), b"c1")]


def test_a_checkpoint_restores_into_an_equal_task() -> None:
    agg = TaskAggregator(CFG)
    agg.apply(0, [(1, ViewerEvent("join", "r", "u", BASE_MS))], now_ms=0)
    agg.apply(1, [(1, OrderEvent("o1", "r", "u", BASE_MS, "paid", 990, "CNY"))], now_ms=0)
    restored = TaskAggregator(CFG)
    assert restored.restore(agg.checkpoint({0: 2, 1: 2}).upserts) == 1
    assert not restored.quarantined
    assert same_state(restored.rooms["r"], agg.rooms["r"])
    assert restored.rooms["r"].seen == {"paid:o1"}
    assert restored.restored_offsets == {0: 2, 1: 2}
