"""The input decoders, ``Limits`` and output codecs of ``schemas`` against DESIGN "Events in".

Hand-picked, parametrized cases pin every reason code and every boundary; hypothesis
checks that no input makes a decoder raise, that the decoders agree with a brute-force
oracle written straight from the spec, and that valid events round-trip field for field.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from schemas import (
    DEFAULT_LIMITS,
    DLQ_RAW_CAP_BYTES,
    ORDER_STATUSES,
    ROOM_STATS_FIELDS,
    VIEWER_TYPES,
    DeadLetter,
    GiftEvent,
    Invalid,
    Limits,
    OrderEvent,
    RoomStats,
    ViewerEvent,
    dead_letter,
    decode_dead_letter,
    decode_gift,
    decode_order,
    decode_room_stats,
    decode_viewer,
    encode_dead_letter,
    encode_room_stats,
)
from schemas._jsonschema import event_schema

NOW = 1_700_000_000_000
LIM = DEFAULT_LIMITS
CAP = LIM.max_amount_minor

# Field kinds, named after what the spec says about each field.
ID, TS, VTYPE, STATUS, AMOUNT, COUNT, CURRENCY = "id", "ts", "vtype", "status", "amount", "count", "currency"


@dataclass(frozen=True)
class Schema:
    name: str
    decode: Callable[..., Any]
    record: type
    fields: tuple[tuple[str, str], ...]  # (name, kind) in schema order
    valid: dict[str, Any]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.fields)


VIEWER = Schema(
    "viewer",
    decode_viewer,
    ViewerEvent,
    (("type", VTYPE), ("room_id", ID), ("user_id", ID), ("ts", TS)),
    {"type": "join", "room_id": "r1", "user_id": "u1", "ts": NOW},
)
ORDER = Schema(
    "order",
    decode_order,
    OrderEvent,
    (
        ("order_id", ID),
        ("room_id", ID),
        ("user_id", ID),
        ("ts", TS),
        ("status", STATUS),
        ("amount_minor", AMOUNT),
        ("currency", CURRENCY),
    ),
    {
        "order_id": "o1",
        "room_id": "r1",
        "user_id": "u1",
        "ts": NOW,
        "status": "paid",
        "amount_minor": 1999,
        "currency": "CNY",
    },
)
GIFT = Schema(
    "gift",
    decode_gift,
    GiftEvent,
    (
        ("gift_id", ID),
        ("room_id", ID),
        ("user_id", ID),
        ("ts", TS),
        ("count", COUNT),
        ("value_minor", AMOUNT),
    ),
    {"gift_id": "g1", "room_id": "r1", "user_id": "u1", "ts": NOW, "count": 3, "value_minor": 300},
)
SCHEMAS = [VIEWER, ORDER, GIFT]
SCHEMA_IDS = [s.name for s in SCHEMAS]
SCHEMA_FIELDS = [(s, name, kind) for s in SCHEMAS for name, kind in s.fields]
SCHEMA_FIELD_IDS = [f"{s.name}.{name}" for s, name, _ in SCHEMA_FIELDS]

REASON_RE = re.compile(
    r"oversized|invalid_json|not_an_object|ts_skew"
    r"|(missing_field|bad_type|out_of_range|unknown_enum|bad_format|control_chars):[a-z_]+"
)


def enc(obj: Any) -> bytes:
    return orjson.dumps(obj)


def with_(schema: Schema, **changes: Any) -> dict[str, Any]:
    return {**schema.valid, **changes}


def without(schema: Schema, *names: str) -> dict[str, Any]:
    return {k: v for k, v in schema.valid.items() if k not in names}


def with_literal(schema: Schema, name: str, literal: bytes) -> bytes:
    """The valid message with ``name`` set to a raw JSON literal orjson would not write itself."""
    raw = enc(with_(schema, **{name: "@@literal@@"}))
    assert raw.count(b'"@@literal@@"') == 1
    return raw.replace(b'"@@literal@@"', literal)


# Every message of this corpus also goes through the JSON Schema generated for producers
# (schemas/json/), which must give the decoder's verdict, except where a schema cannot speak:
# the byte size, ts relative to the clock, and integers written as floats (1.0).
SCHEMA_BLIND = frozenset({"oversized", "ts_skew"})
SCHEMA_CHECKED = {"accepted": 0, "rejected": 0, "blind": 0}


@functools.cache
def json_schema(kind: str, limits: Limits) -> Draft202012Validator:
    schema = event_schema(kind, limits)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def assert_json_schema_agrees(schema: Schema, raw: bytes, out: Any, limits: Limits) -> None:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        assert type(out) is Invalid  # not JSON at all: nothing for a schema to judge
        return
    errors = [e.message for e in json_schema(schema.name, limits).iter_errors(doc)]
    if type(out) is not Invalid:
        assert not errors, f"decoder accepted {raw[:200]!r}, the JSON Schema rejects it: {errors}"
        SCHEMA_CHECKED["accepted"] += 1
        return
    field = out.reason.partition(":")[2]
    value = doc.get(field) if isinstance(doc, dict) else None
    if out.reason in SCHEMA_BLIND or (
        out.reason.startswith("bad_type:") and type(value) is float and value.is_integer()
    ):
        SCHEMA_CHECKED["blind"] += 1
        return
    assert errors, f"decoder rejected {raw[:200]!r} ({out.reason}), the JSON Schema accepts it"
    SCHEMA_CHECKED["rejected"] += 1


def decode(schema: Schema, raw: bytes, now: int = NOW, limits: Limits = LIM) -> Any:
    """The strict decoder's verdict, checked against the JSON Schema's."""
    out = schema.decode(raw, now, limits)
    assert_json_schema_agrees(schema, raw, out, limits)
    return out


def run(schema: Schema, msg: Any, now: int = NOW, limits: Limits = LIM) -> Any:
    raw = msg if isinstance(msg, bytes) else enc(msg)
    return decode(schema, raw, now, limits)


def reason(schema: Schema, msg: Any, now: int = NOW, limits: Limits = LIM) -> str:
    out = run(schema, msg, now, limits)
    assert type(out) is Invalid, f"expected Invalid, decoded {out!r}"
    assert REASON_RE.fullmatch(out.reason), out.reason
    assert isinstance(out.detail, str) and out.detail
    return out.reason


def accepted(schema: Schema, msg: dict[str, Any], now: int = NOW, limits: Limits = LIM) -> None:
    out = run(schema, msg, now, limits)
    assert type(out) is schema.record, f"expected a {schema.record.__name__}, got {out!r}"
    assert out == schema.record(**{name: msg[name] for name in schema.names})


# ---------------------------------------------------------------------------------------------
# The happy path
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schema", SCHEMAS, ids=SCHEMA_IDS)
def test_valid_message_decodes_to_the_record(schema: Schema) -> None:
    out = run(schema, schema.valid)
    assert type(out) is schema.record
    assert out == schema.record(**schema.valid)
    assert out._fields == schema.names


@pytest.mark.parametrize("kind", sorted(VIEWER_TYPES))
def test_every_viewer_type_is_accepted(kind: str) -> None:
    accepted(VIEWER, with_(VIEWER, type=kind))


@pytest.mark.parametrize("status", sorted(ORDER_STATUSES))
def test_every_order_status_is_accepted(status: str) -> None:
    accepted(ORDER, with_(ORDER, status=status))


def test_enum_sets_match_the_design() -> None:
    assert frozenset({"join", "leave", "heartbeat", "like", "comment", "share"}) == VIEWER_TYPES
    assert frozenset({"created", "paid", "cancelled", "refunded"}) == ORDER_STATUSES


@pytest.mark.parametrize("schema", SCHEMAS, ids=SCHEMA_IDS)
@pytest.mark.parametrize(
    "extra",
    [
        {"v": 2},
        {"Type": "bogus", "ROOM_ID": 5},  # keys are case-sensitive: these are just unknown
        {"meta": {"nested": [1, 2, {"x": None}], "f": 1.5, "b": True}},
        {"nulls": None, "big": 2**64 - 1, "huge": 2**63, "float": -0.0},
        {"deep": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]},
        {"": "", "ü": "ß", "😀": ["漢字"]},
        {f"k{i}": i for i in range(200)},
    ],
    ids=["version", "case", "nested", "odd-values", "deep", "unicode-keys", "many"],
)
def test_unknown_extra_fields_are_ignored(schema: Schema, extra: dict[str, Any]) -> None:
    msg = {**schema.valid, **extra}
    out = run(schema, msg)
    assert out == schema.record(**schema.valid)


def test_extra_field_nested_500_deep_is_ignored() -> None:
    raw = enc(VIEWER.valid)[:-1] + b',"x":' + b"[" * 500 + b"]" * 500 + b"}"
    assert run(VIEWER, raw) == ViewerEvent(**VIEWER.valid)


@pytest.mark.parametrize("schema", SCHEMAS, ids=SCHEMA_IDS)
def test_field_order_in_the_json_does_not_matter(schema: Schema) -> None:
    items = list(schema.valid.items())
    orders = [items[::-1]] + [items[i:] + items[:i] for i in range(1, len(items))]
    if len(items) <= 6:
        orders += [list(p) for p in itertools.permutations(items)]
    for order in orders:
        raw = enc(dict(order))
        assert list(orjson.loads(raw)) == [k for k, _ in order]  # the wire order really differs
        assert run(schema, raw) == schema.record(**schema.valid)


def test_whitespace_around_and_inside_the_document_is_fine() -> None:
    raw = b' \n\t{ "type" : "like" ,\r\n "room_id":"r", "user_id" : "u", "ts" :%d }\n ' % NOW
    assert run(VIEWER, raw) == ViewerEvent("like", "r", "u", NOW)


UNICODE_IDS = [
    "直播间-123",
    "用户🎁",
    "😀",
    "👨‍👩‍👧‍👦",  # a ZWJ family: one glyph, seven code points
    "e\u0301",  # combining accent
    "مرحبا",  # right-to-left
    'a"b\\c/d',
    "\U0010ffff",
]


@pytest.mark.parametrize("schema", SCHEMAS, ids=SCHEMA_IDS)
@pytest.mark.parametrize("uid", UNICODE_IDS)
def test_unicode_ids_decode_exactly(schema: Schema, uid: str) -> None:
    msg = with_(schema, **{name: uid + name for name, kind in schema.fields if kind == ID})
    accepted(schema, msg)


CONTROL_CHARS = ["\u0000", "\n", "\u001b[31m", "\u007f", "\u0085", "\u009f"]


@pytest.mark.parametrize("schema", SCHEMAS, ids=SCHEMA_IDS)
@pytest.mark.parametrize("ctl", CONTROL_CHARS)
def test_ids_with_control_characters_are_rejected_by_field(schema: Schema, ctl: str) -> None:
    """Legal JSON (escaped) but never an honest id: it could forge a log line or an alert's text."""
    for name, kind in schema.fields:
        if kind == ID:
            assert reason(schema, with_(schema, **{name: f"ok{ctl}id"})) == f"control_chars:{name}"


def test_escaped_surrogate_pair_is_one_character() -> None:
    raw = with_literal(VIEWER, "room_id", b'"' + b"\\ud83d\\ude00" * 128 + b'"')
    out = run(VIEWER, raw)
    assert type(out) is ViewerEvent
    assert out.room_id == "😀" * 128
    raw = with_literal(VIEWER, "room_id", b'"' + b"\\ud83d\\ude00" * 129 + b'"')
    assert reason(VIEWER, raw) == "out_of_range:room_id"


# ---------------------------------------------------------------------------------------------
# oversized / invalid_json / not_an_object
# ---------------------------------------------------------------------------------------------


def padded(schema: Schema, size: int) -> bytes:
    """The valid message padded with an unknown field to exactly ``size`` bytes."""
    base = enc({**schema.valid, "pad": ""})
    raw = enc({**schema.valid, "pad": "x" * (size - len(base))})
    assert len(raw) == size
    return raw


@pytest.mark.parametrize("schema", SCHEMAS, ids=SCHEMA_IDS)
def test_message_of_exactly_max_bytes_is_accepted_one_more_is_oversized(schema: Schema) -> None:
    assert run(schema, padded(schema, LIM.max_message_bytes)) == schema.record(**schema.valid)
    assert reason(schema, padded(schema, LIM.max_message_bytes + 1)) == "oversized"


@pytest.mark.parametrize("schema", SCHEMAS, ids=SCHEMA_IDS)
def test_size_is_counted_in_bytes_not_characters(schema: Schema) -> None:
    ok = enc(schema.valid)
    limits = Limits(max_message_bytes=len(ok) + 3)
    assert run(schema, ok, limits=limits) == schema.record(**schema.valid)
    # Swapping an id's last ASCII char for two CJK chars adds 1 character but 5 bytes (2 x 3 - 1).
    first_id = next(name for name, kind in schema.fields if kind == ID)
    grown = enc(with_(schema, **{first_id: schema.valid[first_id][:-1] + "漢字"}))
    assert len(grown) == len(ok) + 5
    assert reason(schema, grown, limits=limits) == "oversized"


@pytest.mark.parametrize("schema", SCHEMAS, ids=SCHEMA_IDS)
@pytest.mark.parametrize(
    "raw",
    [b"x" * 9000, b"[" * 8193, b"\xff" * 10_000, b" " * 8193],
    ids=["garbage", "brackets", "non-utf8", "spaces"],
)
def test_size_is_checked_before_parsing(schema: Schema, raw: bytes) -> None:
    assert reason(schema, raw) == "oversized"


def test_oversized_uses_the_limits_passed_in() -> None:
    raw = enc(VIEWER.valid)
    assert reason(VIEWER, raw, limits=Limits(max_message_bytes=len(raw) - 1)) == "oversized"
    assert run(VIEWER, raw, limits=Limits(max_message_bytes=len(raw))) == ViewerEvent(**VIEWER.valid)


GARBAGE = {
    "empty": b"",
    "whitespace": b"   \n",
    "open-brace": b"{",
    "close-brace": b"}",
    "unterminated-string": b'{"type": "join',
    "missing-value": b'{"type": }',
    "missing-colon": b'{"type" "join"}',
    "trailing-comma": b'{"type": "join",}',
    "single-quotes": b"{'type': 'join'}",
    "bare-key": b"{type: 1}",
    "trailing-garbage": b'{"a": 1}x',
    "two-documents": b"{}{}",
    "NaN": b"NaN",
    "nan-value": b'{"ts": NaN}',
    "Infinity-value": b'{"ts": Infinity}',
    "minus-Infinity": b'{"ts": -Infinity}',
    "nan-lower": b"nan",
    "None": b"None",
    "True-python": b"True",
    "1e400": b'{"ts": 1e400}',
    "400-digit-int": b'{"ts": ' + b"9" * 400 + b"}",
    "leading-zero": b'{"ts": 0123}',
    "hex": b'{"ts": 0x10}',
    "plus-sign": b'{"ts": +1}',
    "dot-only": b'{"ts": .5}',
    "comment": b'// hi\n{"a": 1}',
    "lone-surrogate-escape": b'{"room_id": "\\ud800"}',
    "bad-escape": b'{"room_id": "\\x41"}',
    "raw-control-char": b'{"room_id": "a\x01b"}',
    "invalid-utf8": b'{"room_id": "\xff\xfe"}',
    "overlong-utf8": b'{"room_id": "\xc0\xaf"}',
    "utf16": '{"a": 1}'.encode("utf-16"),
    "bom": b"\xef\xbb\xbf{}",
    "nul": b"\x00",
    "deep-array-2000": b"[" * 2000 + b"]" * 2000,
    "deep-object-value-2000": b'{"a":' + b"[" * 2000 + b"]" * 2000 + b"}",
    "deep-objects-1500": b'{"":' * 1500 + b"1" + b"}" * 1500,
    "unbalanced-deep": b"[" * 3000,
}


@pytest.mark.parametrize("schema", SCHEMAS, ids=SCHEMA_IDS)
@pytest.mark.parametrize("raw", list(GARBAGE.values()), ids=list(GARBAGE))
def test_invalid_json(schema: Schema, raw: bytes) -> None:
    assert len(raw) <= LIM.max_message_bytes
    assert reason(schema, raw) == "invalid_json"


@pytest.mark.parametrize("schema", SCHEMAS, ids=SCHEMA_IDS)
def test_every_truncation_of_a_valid_message_is_invalid_json(schema: Schema) -> None:
    raw = enc(schema.valid)
    for cut in range(len(raw)):
        assert reason(schema, raw[:cut]) == "invalid_json", raw[:cut]


NOT_OBJECTS = {
    "empty-array": b"[]",
    "array-of-object": b'[{"type": "join", "room_id": "r", "user_id": "u", "ts": 1}]',
    "string": b'"join"',
    "empty-string": b'""',
    "int": b"42",
    "negative": b"-1",
    "float": b"1.5",
    "u64-max": b"18446744073709551615",
    "beyond-u64": b"18446744073709551616",
    "null": b"null",
    "true": b"true",
    "false": b"false",
    "nested-array-500": b"[" * 500 + b"]" * 500,
}


@pytest.mark.parametrize("schema", SCHEMAS, ids=SCHEMA_IDS)
@pytest.mark.parametrize("raw", list(NOT_OBJECTS.values()), ids=list(NOT_OBJECTS))
def test_not_an_object(schema: Schema, raw: bytes) -> None:
    assert reason(schema, raw) == "not_an_object"


# ---------------------------------------------------------------------------------------------
# missing_field / bad_type
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("schema", "name", "kind"), SCHEMA_FIELDS, ids=SCHEMA_FIELD_IDS)
def test_missing_field(schema: Schema, name: str, kind: str) -> None:
    assert reason(schema, without(schema, name)) == f"missing_field:{name}"


@pytest.mark.parametrize("schema", SCHEMAS, ids=SCHEMA_IDS)
def test_empty_object_reports_the_first_field_missing(schema: Schema) -> None:
    assert reason(schema, {}) == f"missing_field:{schema.names[0]}"
    assert reason(schema, b"{}") == f"missing_field:{schema.names[0]}"


@pytest.mark.parametrize("schema", SCHEMAS, ids=SCHEMA_IDS)
def test_field_names_are_case_sensitive(schema: Schema) -> None:
    first = schema.names[0]
    msg = without(schema, first) | {first.upper(): schema.valid[first]}
    assert reason(schema, msg) == f"missing_field:{first}"


@pytest.mark.parametrize(("schema", "name", "kind"), SCHEMA_FIELDS, ids=SCHEMA_FIELD_IDS)
def test_null_is_present_but_bad_type(schema: Schema, name: str, kind: str) -> None:
    assert reason(schema, with_(schema, **{name: None})) == f"bad_type:{name}"


WRONG_TYPES: dict[str, list[Any]] = {
    ID: [1, 0, -1, 1.5, True, False, ["r1"], {"id": "r1"}, []],
    TS: [True, False, float(NOW), NOW + 0.5, str(NOW), [NOW], {"ms": NOW}, "now"],
    VTYPE: [1, True, ["join"], {"type": "join"}, 0.0],
    STATUS: [1, True, ["paid"], {"status": "paid"}, 0.0],
    AMOUNT: ["100", "1999", 1.0, 100.5, 0.0, -0.0, True, False, [100], {"minor": 1}],
    COUNT: ["3", 3.0, 1.0, True, False, [3], {"n": 3}],
    CURRENCY: [840, 0, True, ["USD"], {"code": "USD"}, 1.5],
}


def wrong_type_cases() -> list[Any]:
    return [
        pytest.param(s, name, value, id=f"{s.name}.{name}={value!r}")
        for s, name, kind in SCHEMA_FIELDS
        for value in WRONG_TYPES[kind]
    ]


@pytest.mark.parametrize(("schema", "name", "value"), wrong_type_cases())
def test_bad_type(schema: Schema, name: str, value: Any) -> None:
    assert reason(schema, with_(schema, **{name: value})) == f"bad_type:{name}"


@pytest.mark.parametrize("schema", SCHEMAS, ids=SCHEMA_IDS)
def test_true_is_not_a_timestamp(schema: Schema) -> None:
    # bool is an int subclass in Python; JSON true must still be rejected, even with now_ms=1.
    assert reason(schema, with_(schema, ts=True), now=1) == "bad_type:ts"
    assert reason(schema, with_(schema, ts=False), now=0) == "bad_type:ts"


def test_true_is_not_a_count_of_one() -> None:
    assert reason(GIFT, with_(GIFT, count=True)) == "bad_type:count"
    assert reason(GIFT, with_(GIFT, value_minor=False)) == "bad_type:value_minor"
    assert reason(ORDER, with_(ORDER, amount_minor=False)) == "bad_type:amount_minor"


@pytest.mark.parametrize("schema", SCHEMAS, ids=SCHEMA_IDS)
@pytest.mark.parametrize("literal", [b"1.0", b"1e3", b"1700000000000.0", b"1.7e12", b"-0.0"])
def test_float_literals_are_not_timestamps(schema: Schema, literal: bytes) -> None:
    assert reason(schema, with_literal(schema, "ts", literal)) == "bad_type:ts"


# orjson parses integers outside [-2**63, 2**64 - 1] as floats rather than failing, so an
# over-wide integer in a typed field is a bad_type (never accepted, never a crash).
@pytest.mark.parametrize("schema", SCHEMAS, ids=SCHEMA_IDS)
@pytest.mark.parametrize("literal", [b"18446744073709551616", b"-9223372036854775809", b"1" * 30])
def test_integers_wider_than_64_bit_are_rejected(schema: Schema, literal: bytes) -> None:
    assert reason(schema, with_literal(schema, "ts", literal)) == "bad_type:ts"
    for name, kind in schema.fields:
        if kind in (AMOUNT, COUNT):
            assert reason(schema, with_literal(schema, name, literal)) == f"bad_type:{name}"


@pytest.mark.parametrize("schema", SCHEMAS, ids=SCHEMA_IDS)
def test_integers_at_the_64_bit_edges_are_range_checked(schema: Schema) -> None:
    for literal in (b"18446744073709551615", b"9223372036854775807", b"-9223372036854775808"):
        assert reason(schema, with_literal(schema, "ts", literal)) == "ts_skew"
        for name, kind in schema.fields:
            if kind in (AMOUNT, COUNT):
                assert reason(schema, with_literal(schema, name, literal)) == f"out_of_range:{name}"


# ---------------------------------------------------------------------------------------------
# out_of_range
# ---------------------------------------------------------------------------------------------

ID_FIELDS = [(s, name) for s, name, kind in SCHEMA_FIELDS if kind == ID]
ID_FIELD_IDS = [f"{s.name}.{name}" for s, name in ID_FIELDS]

GOOD_IDS = {
    "one-char": "x",
    "128-ascii": "x" * 128,
    "128-cjk": "漢" * 128,  # 384 UTF-8 bytes: length is in characters
    "128-emoji": "😀" * 128,  # 512 UTF-8 bytes, 256 UTF-16 units
    "127-plus-combining": "x" * 127 + "\u0301",
    "space": " ",
}
BAD_IDS = {
    "empty": "",
    "129-ascii": "x" * 129,
    "129-cjk": "漢" * 129,
    "129-emoji": "😀" * 129,
    "1000": "y" * 1000,
}


@pytest.mark.parametrize(("schema", "name"), ID_FIELDS, ids=ID_FIELD_IDS)
@pytest.mark.parametrize("value", list(GOOD_IDS.values()), ids=list(GOOD_IDS))
def test_id_lengths_accepted(schema: Schema, name: str, value: str) -> None:
    accepted(schema, with_(schema, **{name: value}))


@pytest.mark.parametrize(("schema", "name"), ID_FIELDS, ids=ID_FIELD_IDS)
@pytest.mark.parametrize("value", list(BAD_IDS.values()), ids=list(BAD_IDS))
def test_id_lengths_out_of_range(schema: Schema, name: str, value: str) -> None:
    assert reason(schema, with_(schema, **{name: value})) == f"out_of_range:{name}"


@pytest.mark.parametrize(("schema", "name"), ID_FIELDS, ids=ID_FIELD_IDS)
def test_id_length_follows_the_limits(schema: Schema, name: str) -> None:
    limits = Limits(max_id_len=3)
    accepted(schema, with_(schema, **{name: "abc"}), limits=limits)
    assert reason(schema, with_(schema, **{name: "abcd"}), limits=limits) == f"out_of_range:{name}"


def int_range_cases() -> list[Any]:
    cases = []
    for s, name, kind in SCHEMA_FIELDS:
        if kind == AMOUNT:
            good, bad = [0, 1, CAP - 1, CAP], [-1, -(2**63), CAP + 1, 2**63 - 1]
        elif kind == COUNT:
            good, bad = [1, 2, LIM.max_gift_count], [0, -1, LIM.max_gift_count + 1, 2**62]
        else:
            continue
        cases += [pytest.param(s, name, v, True, id=f"{s.name}.{name}={v}-ok") for v in good]
        cases += [pytest.param(s, name, v, False, id=f"{s.name}.{name}={v}-bad") for v in bad]
    return cases


@pytest.mark.parametrize(("schema", "name", "value", "ok"), int_range_cases())
def test_integer_bounds(schema: Schema, name: str, value: int, ok: bool) -> None:
    msg = with_(schema, **{name: value})
    if ok:
        accepted(schema, msg)
    else:
        assert reason(schema, msg) == f"out_of_range:{name}"


def test_amount_caps_follow_the_limits() -> None:
    limits = Limits(max_amount_minor=500, max_gift_count=2)
    accepted(ORDER, with_(ORDER, amount_minor=500), limits=limits)
    assert reason(ORDER, with_(ORDER, amount_minor=501), limits=limits) == "out_of_range:amount_minor"
    accepted(GIFT, with_(GIFT, count=2, value_minor=500), limits=limits)
    assert reason(GIFT, with_(GIFT, count=3), limits=limits) == "out_of_range:count"
    assert reason(GIFT, with_(GIFT, count=1, value_minor=501), limits=limits) == "out_of_range:value_minor"


# ---------------------------------------------------------------------------------------------
# unknown_enum / bad_format
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "JOIN",
        "Join",
        "",
        " join",
        "join ",
        "joined",
        "purchase",
        "paid",
        "\uff4a\uff4f\uff49\uff4e",  # fullwidth "join"
        "j" * 1000,
    ],
)
def test_unknown_viewer_type(value: str) -> None:
    assert reason(VIEWER, with_(VIEWER, type=value)) == "unknown_enum:type"


@pytest.mark.parametrize("value", ["PAID", "Paid", "", "paid\n", "shipped", "canceled", "join", "x" * 1000])
def test_unknown_order_status(value: str) -> None:
    assert reason(ORDER, with_(ORDER, status=value)) == "unknown_enum:status"


@pytest.mark.parametrize("value", ["USD", "CNY", "EUR", "JPY", "XAU", "ZZZ"])
def test_currency_accepted(value: str) -> None:
    accepted(ORDER, with_(ORDER, currency=value))


@pytest.mark.parametrize(
    "value",
    [
        "usd",
        "Usd",
        "uSD",
        "US",
        "USDX",
        "€€€",
        "",
        "U",
        "U5D",
        "123",
        "US ",
        " US",
        "U-D",
        "ÀBC",
        "\uff35\uff33\uff24",  # fullwidth USD: isupper/isalpha but not ASCII
        "\u0391\u0392\u0393",  # Greek capitals
        "US\n",
        "USD" * 100,
    ],
)
def test_currency_bad_format(value: str) -> None:
    assert reason(ORDER, with_(ORDER, currency=value)) == "bad_format:currency"


# ---------------------------------------------------------------------------------------------
# ts_skew
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schema", SCHEMAS, ids=SCHEMA_IDS)
@pytest.mark.parametrize(
    ("ts", "ok"),
    [
        (NOW, True),
        (NOW - LIM.max_past_ms, True),
        (NOW - LIM.max_past_ms - 1, False),
        (NOW + LIM.max_future_ms, True),
        (NOW + LIM.max_future_ms + 1, False),
        (NOW - 1, True),
        (NOW + 1, True),
        (0, False),
        (-1, False),
        (NOW // 1000, False),  # seconds, not milliseconds
        (NOW * 1000, False),  # microseconds
    ],
)
def test_ts_skew_bounds_are_inclusive(schema: Schema, ts: int, ok: bool) -> None:
    msg = with_(schema, ts=ts)
    if ok:
        accepted(schema, msg)
    else:
        assert reason(schema, msg) == "ts_skew"


@pytest.mark.parametrize("schema", SCHEMAS, ids=SCHEMA_IDS)
def test_zero_skew_accepts_only_now(schema: Schema) -> None:
    limits = Limits(max_past_ms=0, max_future_ms=0)
    accepted(schema, with_(schema, ts=NOW), limits=limits)
    assert reason(schema, with_(schema, ts=NOW - 1), limits=limits) == "ts_skew"
    assert reason(schema, with_(schema, ts=NOW + 1), limits=limits) == "ts_skew"


@pytest.mark.parametrize("schema", SCHEMAS, ids=SCHEMA_IDS)
def test_skew_is_measured_from_the_now_passed_in(schema: Schema) -> None:
    ts = schema.valid["ts"]
    assert run(schema, schema.valid, now=ts + LIM.max_past_ms) == schema.record(**schema.valid)
    assert reason(schema, schema.valid, now=ts + LIM.max_past_ms + 1) == "ts_skew"
    assert run(schema, schema.valid, now=ts - LIM.max_future_ms) == schema.record(**schema.valid)
    assert reason(schema, schema.valid, now=ts - LIM.max_future_ms - 1) == "ts_skew"


# ---------------------------------------------------------------------------------------------
# Which fault is reported when several are present
# ---------------------------------------------------------------------------------------------

# A value per kind that fails the type check, and one that passes it but fails the value check.
BAD_TYPE_VALUE = {ID: 7, TS: "x", VTYPE: 7, STATUS: 7, AMOUNT: "x", COUNT: "x", CURRENCY: 7}
BAD_VALUE = {ID: "", TS: 0, VTYPE: "nope", STATUS: "nope", AMOUNT: -1, COUNT: 0, CURRENCY: "usd"}


def value_reason(name: str, kind: str) -> str:
    return {
        ID: f"out_of_range:{name}",
        TS: "ts_skew",
        VTYPE: "unknown_enum:type",
        STATUS: "unknown_enum:status",
        AMOUNT: f"out_of_range:{name}",
        COUNT: f"out_of_range:{name}",
        CURRENCY: "bad_format:currency",
    }[kind]


def field_pairs() -> list[Any]:
    return [
        pytest.param(s, i, j, id=f"{s.name}.{s.names[i]}+{s.names[j]}")
        for s in SCHEMAS
        for i, j in itertools.combinations(range(len(s.fields)), 2)
    ]


@pytest.mark.parametrize(("schema", "i", "j"), field_pairs())
def test_first_bad_field_in_schema_order_is_reported(schema: Schema, i: int, j: int) -> None:
    (a, ka), (b, kb) = schema.fields[i], schema.fields[j]
    both_type = with_(schema, **{a: BAD_TYPE_VALUE[ka], b: BAD_TYPE_VALUE[kb]})
    assert reason(schema, both_type) == f"bad_type:{a}"
    both_value = with_(schema, **{a: BAD_VALUE[ka], b: BAD_VALUE[kb]})
    assert reason(schema, both_value) == value_reason(a, ka)
    # The earlier field wins even when the later one's fault is a "worse" kind.
    value_then_type = with_(schema, **{a: BAD_VALUE[ka], b: BAD_TYPE_VALUE[kb]})
    assert reason(schema, value_then_type) == value_reason(a, ka)
    type_then_value = with_(schema, **{a: BAD_TYPE_VALUE[ka], b: BAD_VALUE[kb]})
    assert reason(schema, type_then_value) == f"bad_type:{a}"
    # Two missing fields: the earlier one is named.
    assert reason(schema, without(schema, a, b)) == f"missing_field:{a}"


@pytest.mark.parametrize(("schema", "i", "j"), field_pairs())
def test_presence_of_every_field_is_checked_before_any_value(schema: Schema, i: int, j: int) -> None:
    # The decoders check that all fields are present before checking any field's type or
    # bounds, so a missing later field outranks a malformed earlier one.
    (a, ka), (b, _) = schema.fields[i], schema.fields[j]
    msg = without(schema, b) | {a: BAD_TYPE_VALUE[ka]}
    assert reason(schema, msg) == f"missing_field:{b}"


def test_all_fields_wrong_reports_the_first() -> None:
    for schema in SCHEMAS:
        msg = {name: BAD_TYPE_VALUE[kind] for name, kind in schema.fields}
        assert reason(schema, msg) == f"bad_type:{schema.names[0]}"
        msg = {name: BAD_VALUE[kind] for name, kind in schema.fields}
        assert reason(schema, msg) == value_reason(*schema.fields[0])


@pytest.mark.parametrize("schema", SCHEMAS, ids=SCHEMA_IDS)
def test_the_same_message_always_gets_the_same_reason(schema: Schema) -> None:
    msg = {name: BAD_VALUE[kind] for name, kind in reversed(schema.fields)}
    raw = enc(msg)
    assert len({decode(schema, raw, NOW) for _ in range(5)}) == 1


# ---------------------------------------------------------------------------------------------
# Invalid.reason_class
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("oversized", "oversized"),
        ("invalid_json", "invalid_json"),
        ("not_an_object", "not_an_object"),
        ("ts_skew", "ts_skew"),
        ("missing_field:ts", "missing_field"),
        ("missing_field:order_id", "missing_field"),
        ("bad_type:amount_minor", "bad_type"),
        ("out_of_range:room_id", "out_of_range"),
        ("unknown_enum:status", "unknown_enum"),
        ("bad_format:currency", "bad_format"),
        ("a:b:c", "a"),
    ],
)
def test_reason_class_strips_the_field(code: str, cls: str) -> None:
    assert Invalid(code, "detail").reason_class == cls


@pytest.mark.parametrize(("schema", "name", "kind"), SCHEMA_FIELDS, ids=SCHEMA_FIELD_IDS)
def test_reason_class_of_decoder_output_is_bounded(schema: Schema, name: str, kind: str) -> None:
    classes = {
        run(schema, without(schema, name)).reason_class,
        run(schema, with_(schema, **{name: BAD_TYPE_VALUE[kind]})).reason_class,
        run(schema, with_(schema, **{name: BAD_VALUE[kind]})).reason_class,
    }
    assert classes <= {"missing_field", "bad_type", "out_of_range", "unknown_enum", "bad_format", "ts_skew"}
    assert all(":" not in c for c in classes)


# ---------------------------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------------------------

CAPS = ("max_message_bytes", "max_id_len", "max_amount_minor", "max_gift_count")


@pytest.mark.parametrize("name", CAPS)
@pytest.mark.parametrize("value", [0, -1, -(10**12)])
def test_limits_reject_non_positive_caps(name: str, value: int) -> None:
    with pytest.raises(ValueError, match=name):
        Limits(**{name: value})


@pytest.mark.parametrize("name", ["max_past_ms", "max_future_ms"])
@pytest.mark.parametrize("value", [-1, -(10**12)])
def test_limits_reject_negative_skew(name: str, value: int) -> None:
    with pytest.raises(ValueError, match="skew"):
        Limits(**{name: value})


def test_limits_accept_minimal_values() -> None:
    limits = Limits(
        max_message_bytes=1,
        max_id_len=1,
        max_amount_minor=1,
        max_gift_count=1,
        max_past_ms=0,
        max_future_ms=0,
    )
    assert limits.max_past_ms == 0


def test_default_limits_match_the_design() -> None:
    assert Limits() == DEFAULT_LIMITS
    assert DEFAULT_LIMITS.max_id_len == 128
    assert DEFAULT_LIMITS.max_future_ms < DEFAULT_LIMITS.max_past_ms  # the future bound is the tight one


def test_limits_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_LIMITS.max_id_len = 1  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# RoomStats codec
# ---------------------------------------------------------------------------------------------

STATS = RoomStats(
    room_id="直播间-1",
    window_start=NOW,
    window_end=NOW + 10_000,
    views=120,
    unique_viewers=80,
    concurrent_viewers=55,
    likes=300,
    comments=41,
    orders=9,
    orders_per_sec=0.9,
    gmv_minor=123_456,
    refunds_minor=1_999,
    gifts=4,
    gift_value_minor=5_000,
    late_events=2,
    shares=7,
)


def test_room_stats_round_trip() -> None:
    raw = encode_room_stats(STATS)
    assert decode_room_stats(raw) == STATS
    assert list(orjson.loads(raw)) == list(ROOM_STATS_FIELDS)  # the field order is the wire order
    assert tuple(f.name for f in dataclasses.fields(RoomStats)) == ROOM_STATS_FIELDS


def test_room_stats_decode_ignores_extra_fields() -> None:
    obj = orjson.loads(encode_room_stats(STATS)) | {"schema_version": 2}
    assert decode_room_stats(orjson.dumps(obj)) == STATS


def test_room_stats_decode_missing_field_raises() -> None:
    obj = orjson.loads(encode_room_stats(STATS))
    del obj["late_events"]
    with pytest.raises(KeyError):
        decode_room_stats(orjson.dumps(obj))


def test_a_room_stats_record_from_before_shares_decodes_with_none() -> None:
    obj = orjson.loads(encode_room_stats(STATS))
    del obj["shares"]
    assert decode_room_stats(orjson.dumps(obj)) == dataclasses.replace(STATS, shares=0)


SAFE_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)  # no lone surrogates
I64 = st.integers(-(2**63), 2**63 - 1)
FINITE = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=150, deadline=None)
@given(
    st.builds(
        RoomStats,
        room_id=SAFE_TEXT,
        window_start=I64,
        window_end=I64,
        views=I64,
        unique_viewers=I64,
        concurrent_viewers=I64,
        likes=I64,
        comments=I64,
        orders=I64,
        orders_per_sec=FINITE,
        gmv_minor=I64,
        refunds_minor=I64,
        gifts=I64,
        gift_value_minor=I64,
        late_events=I64,
        shares=I64,
    )
)
def test_room_stats_round_trip_property(stats: RoomStats) -> None:
    back = decode_room_stats(encode_room_stats(stats))
    assert back == stats
    assert type(back.orders_per_sec) is float


# ---------------------------------------------------------------------------------------------
# DeadLetter
# ---------------------------------------------------------------------------------------------

BAD = Invalid("bad_type:ts", "ts must be integer milliseconds, got str")


def make_letter(raw: bytes | None, key: bytes | None = b"room-1", **kw: Any) -> DeadLetter:
    return dead_letter(BAD, topic="live.viewer", partition=3, offset=42, key=key, raw=raw, now_ms=NOW, **kw)


def kept_bytes(letter: DeadLetter) -> bytes:
    return base64.b64decode(letter.raw_b64, validate=True)


def test_dead_letter_records_where_and_why() -> None:
    raw = b'{"type":"join","ts":"x"}'
    letter = make_letter(raw)
    assert letter == DeadLetter(
        reason="bad_type:ts",
        error=BAD.detail,
        topic="live.viewer",
        partition=3,
        offset=42,
        key="room-1",
        raw_b64=base64.b64encode(raw).decode("ascii"),
        raw_len=len(raw),
        truncated=False,
        dead_lettered_at_ms=NOW,
    )
    assert kept_bytes(letter) == raw


@pytest.mark.parametrize(
    ("size", "truncated"),
    [
        (0, False),
        (1, False),
        (DLQ_RAW_CAP_BYTES - 1, False),
        (DLQ_RAW_CAP_BYTES, False),
        (DLQ_RAW_CAP_BYTES + 1, True),
        (3 * DLQ_RAW_CAP_BYTES, True),
    ],
)
def test_dead_letter_truncates_raw_at_the_cap(size: int, truncated: bool) -> None:
    raw = bytes(i % 251 for i in range(size))
    letter = make_letter(raw)
    assert letter.raw_len == size
    assert letter.truncated is truncated
    assert kept_bytes(letter) == raw[:DLQ_RAW_CAP_BYTES]


@pytest.mark.parametrize("cap", [0, 1, 5, 100])
def test_dead_letter_custom_cap(cap: int) -> None:
    raw = b"0123456789" * 3
    letter = make_letter(raw, raw_cap=cap)
    assert kept_bytes(letter) == raw[:cap]
    assert letter.raw_len == len(raw)
    assert letter.truncated is (cap < len(raw))


@pytest.mark.parametrize("raw", [None, b""])
def test_dead_letter_without_raw_bytes(raw: bytes | None) -> None:
    letter = make_letter(raw)
    assert (letter.raw_b64, letter.raw_len, letter.truncated) == ("", 0, False)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (None, None),
        (b"", ""),
        (b"room-1", "room-1"),
        ("直播间".encode(), "直播间"),
        (b"\xff\xfeab", "\ufffd\ufffdab"),  # invalid UTF-8 is replaced, never raised
        (b"k" * 300, "k" * 256),  # capped at 256 bytes
    ],
    ids=["none", "empty", "ascii", "cjk", "invalid-utf8", "long"],
)
def test_dead_letter_key(key: bytes | None, expected: str | None) -> None:
    letter = make_letter(b"{}", key=key)
    assert letter.key == expected
    assert decode_dead_letter(encode_dead_letter(letter)) == letter


def test_dead_letter_key_cut_inside_a_character_is_replaced_not_raised() -> None:
    key = b"k" * 255 + "漢".encode()  # the 256-byte cap splits the 3-byte character
    letter = make_letter(b"{}", key=key)
    assert letter.key is not None and letter.key.startswith("k" * 255) and letter.key[255:] in ("\ufffd", "")
    decode_dead_letter(encode_dead_letter(letter))


def test_dead_letter_error_is_capped() -> None:
    letter = dead_letter(
        Invalid("invalid_json", "e" * 5_000), topic="t", partition=0, offset=0, key=None, raw=b"x", now_ms=0
    )
    assert letter.error == "e" * 1_000


def test_dead_letter_round_trip_and_wire_shape() -> None:
    letter = make_letter(b"\x00\xff" * 3_000, key=None)
    raw = encode_dead_letter(letter)
    assert decode_dead_letter(raw) == letter
    obj = orjson.loads(raw)
    assert list(obj) == [f.name for f in dataclasses.fields(DeadLetter)]
    assert obj["key"] is None and obj["truncated"] is True and obj["raw_len"] == 6_000


@pytest.mark.parametrize("schema", SCHEMAS, ids=SCHEMA_IDS)
@pytest.mark.parametrize(
    "raw",
    [b"", b"\xff", b"[]", b"{}", b"[" * 2000 + b"]" * 2000, b"x" * 20_000, b'{"type": "\xc0"}'],
    ids=["empty", "ff", "array", "empty-object", "deep", "oversized", "bad-utf8"],
)
def test_every_rejection_can_be_dead_lettered(schema: Schema, raw: bytes) -> None:
    out = decode(schema, raw, NOW)
    assert type(out) is Invalid
    topic = f"live.{schema.name}"
    letter = dead_letter(out, topic=topic, partition=0, offset=7, key=b"r1", raw=raw, now_ms=NOW)
    back = decode_dead_letter(encode_dead_letter(letter))
    assert back == letter
    assert back.reason == out.reason
    assert kept_bytes(back) == raw[:DLQ_RAW_CAP_BYTES]


@settings(max_examples=150, deadline=None)
@given(
    raw=st.one_of(st.none(), st.binary(max_size=300)),
    key=st.one_of(st.none(), st.binary(max_size=300)),
    cap=st.integers(0, 320),
    detail=SAFE_TEXT,
    partition=st.integers(0, 2**31 - 1),
    offset=I64,
)
def test_dead_letter_property(
    raw: bytes | None, key: bytes | None, cap: int, detail: str, partition: int, offset: int
) -> None:
    letter = dead_letter(
        Invalid("ts_skew", detail),
        topic="live.gift",
        partition=partition,
        offset=offset,
        key=key,
        raw=raw,
        now_ms=NOW,
        raw_cap=cap,
    )
    data = raw or b""
    assert kept_bytes(letter) == data[:cap]
    assert letter.raw_len == len(data)
    assert letter.truncated is (len(data) > cap)
    assert (letter.key is None) is (key is None)
    assert decode_dead_letter(encode_dead_letter(letter)) == letter


# ---------------------------------------------------------------------------------------------
# Properties: never raise, agree with the oracle, valid events round-trip
# ---------------------------------------------------------------------------------------------

CURRENCY_RE = re.compile(r"[A-Z]{3}")


def oracle(schema: Schema, raw: bytes, now: int, limits: Limits) -> Any:
    """The expected outcome, from the spec, checked the slow obvious way."""
    if len(raw) > limits.max_message_bytes:
        return "oversized"
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "invalid_json"
    if not isinstance(obj, dict):
        return "not_an_object"
    for name in schema.names:
        if name not in obj:
            return f"missing_field:{name}"
    for name, kind in schema.fields:
        v = obj[name]
        wants_str = kind in (ID, VTYPE, STATUS, CURRENCY)
        is_int = isinstance(v, int) and not isinstance(v, bool)
        if (wants_str and not isinstance(v, str)) or (not wants_str and not is_int):
            return f"bad_type:{name}"
        if kind == ID and not 1 <= len(v) <= limits.max_id_len:
            return f"out_of_range:{name}"
        if kind == ID and any(c <= "\x1f" or "\x7f" <= c <= "\x9f" for c in v):
            return f"control_chars:{name}"
        if kind == TS and not now - limits.max_past_ms <= v <= now + limits.max_future_ms:
            return "ts_skew"
        if kind == VTYPE and v not in ("join", "leave", "heartbeat", "like", "comment", "share"):
            return "unknown_enum:type"
        if kind == STATUS and v not in ("created", "paid", "cancelled", "refunded"):
            return "unknown_enum:status"
        if kind == AMOUNT and not 0 <= v <= limits.max_amount_minor:
            return f"out_of_range:{name}"
        if kind == COUNT and not 1 <= v <= limits.max_gift_count:
            return f"out_of_range:{name}"
        if kind == CURRENCY and not CURRENCY_RE.fullmatch(v):
            return "bad_format:currency"
    return schema.record(*(obj[name] for name in schema.names))


def check_against_oracle(schema: Schema, raw: bytes, now: int = NOW, limits: Limits = LIM) -> None:
    out = decode(schema, raw, now, limits)
    expected = oracle(schema, raw, now, limits)
    if isinstance(expected, str):
        assert type(out) is Invalid, (raw, out)
        assert out.reason == expected, (raw, out)
        assert isinstance(out.detail, str)
    else:
        assert type(out) is schema.record, (raw, out)
        assert out == expected


schema_st = st.sampled_from(SCHEMAS)
limits_st = st.one_of(
    st.just(DEFAULT_LIMITS),
    st.builds(
        Limits,
        max_message_bytes=st.sampled_from([8_192, 8_192, 8_192, 8_192, 8_192, 1, 100, 200]),
        max_id_len=st.integers(1, 6),
        max_amount_minor=st.integers(1, 50),
        max_gift_count=st.integers(1, 5),
        max_past_ms=st.integers(0, 40),
        max_future_ms=st.integers(0, 40),
    ),
)
json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),  # what orjson round-trips as int
    st.integers(-60, 60),
    FINITE,
    st.text(alphabet=st.characters(codec="utf-8"), max_size=8),
    st.sampled_from(["", "join", "paid", "USD", "r1", "\u0000", "😀", "漢字"]),
)
KEY = st.one_of(
    st.text(alphabet="abtyspoid_", max_size=8),
    st.sampled_from(["type", "room_id", "user_id", "ts", "count", "status", "currency", "", "😀", "Ts"]),
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEY, inner, max_size=4)),
    max_leaves=6,
)


def inside(low: int, high: int) -> st.SearchStrategy[int]:
    """Integers in ``[low, high]``, with both (inclusive) edges drawn often."""
    return st.one_of(st.sampled_from([low, high]), st.integers(low, high))


def valid_value(kind: str, limits: Limits) -> st.SearchStrategy[Any]:
    past, future = NOW - limits.max_past_ms, NOW + limits.max_future_ms
    return {
        ID: st.one_of(
            st.text(alphabet="ab漢😀", min_size=1, max_size=limits.max_id_len),
            st.sampled_from(["x", "漢" * limits.max_id_len, "😀" * limits.max_id_len]),
        ),
        TS: inside(past, future),
        VTYPE: st.sampled_from(sorted(VIEWER_TYPES)),
        STATUS: st.sampled_from(sorted(ORDER_STATUSES)),
        AMOUNT: inside(0, limits.max_amount_minor),
        COUNT: inside(1, limits.max_gift_count),
        CURRENCY: st.sampled_from(["USD", "CNY", "JPY", "ZZZ"]),
    }[kind]


_MISSING, _ANY_JSON = object(), object()


def broken_values(kind: str, limits: Limits) -> list[Any]:
    """Values just outside a bound or of the wrong type, plus "leave it out" and "any JSON at all"."""
    past, future = NOW - limits.max_past_ms, NOW + limits.max_future_ms
    over = limits.max_id_len + 1
    targeted = {
        ID: ["", "x" * over, "😀" * over, 7, True, None],
        TS: [past - 1, future + 1, 0, float(NOW), True, False, str(NOW), None],
        VTYPE: ["JOIN", "", "paid", 1, True, None],
        STATUS: ["PAID", "", "join", 1, True, None],
        AMOUNT: [-1, limits.max_amount_minor + 1, 1.0, "5", True, False, None],
        COUNT: [0, -1, limits.max_gift_count + 1, 1.0, "1", True, False, None],
        CURRENCY: ["usd", "US", "USDX", "€€€", "", "A1C", "ÀBC", "\uff35\uff33\uff24", 840, None],
    }[kind]
    return [*targeted, _MISSING, _ANY_JSON]


@st.composite
def near_valid_message(draw: st.DrawFn, schema: Schema, limits: Limits) -> bytes:
    """A valid message with a few fields broken (missing, just out of bounds, ill-typed)."""
    fields = {name: draw(valid_value(kind, limits)) for name, kind in schema.fields}
    n_broken = draw(st.sampled_from([0, 1, 1, 1, 2, 3]))
    broken = st.lists(st.sampled_from(schema.names), min_size=n_broken, max_size=n_broken, unique=True)
    for name in draw(broken):
        value = draw(st.sampled_from(broken_values(dict(schema.fields)[name], limits)))
        fields[name] = draw(json_value) if value is _ANY_JSON else value
    fields = {k: v for k, v in fields.items() if v is not _MISSING}
    extras = draw(st.dictionaries(KEY, json_scalar, max_size=3))
    items = draw(st.permutations(list((extras | fields).items())))
    return enc(dict(items))


@settings(max_examples=300, deadline=None)
@given(schema=schema_st, raw=st.binary(max_size=200), limits=limits_st, now=st.integers(-(2**63), 2**63))
def test_random_bytes_never_raise(schema: Schema, raw: bytes, limits: Limits, now: int) -> None:
    out = decode(schema, raw, now, limits)
    assert type(out) in (Invalid, schema.record)
    check_against_oracle(schema, raw, now, limits)


JSONISH_BYTES = b'{}[]":,0123456789.-eE tfnrul\\ab'


@settings(max_examples=200, deadline=None)
@given(schema=schema_st, raw=st.lists(st.sampled_from(list(JSONISH_BYTES)), max_size=60))
def test_json_shaped_noise_never_raises(schema: Schema, raw: list[int]) -> None:
    check_against_oracle(schema, bytes(raw))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=schema_st, doc=json_value, limits=limits_st)
def test_random_json_documents_never_raise(schema: Schema, doc: Any, limits: Limits) -> None:
    check_against_oracle(schema, enc(doc), NOW, limits)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema=schema_st, obj=st.dictionaries(KEY, json_value, max_size=6))
def test_random_json_objects_never_raise(schema: Schema, obj: dict[str, Any]) -> None:
    check_against_oracle(schema, enc(obj))


@pytest.mark.parametrize("schema", SCHEMAS, ids=SCHEMA_IDS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), limits=limits_st)
def test_near_valid_messages_match_the_oracle(schema: Schema, data: st.DataObject, limits: Limits) -> None:
    raw = data.draw(near_valid_message(schema, limits))
    check_against_oracle(schema, raw, NOW, limits)


ID_TEXT = st.text(  # any UTF-8 but control characters (those are control_chars:<field>)
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cc",)), min_size=1, max_size=LIM.max_id_len
)
VALID_KIND: dict[str, st.SearchStrategy[Any]] = {
    ID: ID_TEXT,
    TS: st.integers(NOW - LIM.max_past_ms, NOW + LIM.max_future_ms),
    VTYPE: st.sampled_from(sorted(VIEWER_TYPES)),
    STATUS: st.sampled_from(sorted(ORDER_STATUSES)),
    AMOUNT: st.integers(0, CAP),
    COUNT: st.integers(1, LIM.max_gift_count),
    CURRENCY: st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=3, max_size=3),
}


@st.composite
def valid_event(draw: st.DrawFn, schema: Schema) -> tuple[dict[str, Any], bytes]:
    fields = {name: draw(VALID_KIND[kind]) for name, kind in schema.fields}
    extras = draw(st.dictionaries(KEY, json_scalar, max_size=3))
    items = draw(st.permutations(list((extras | fields).items())))  # fields win over same-named extras
    return fields, enc(dict(items))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), schema=schema_st)
def test_valid_events_decode_to_their_fields(data: st.DataObject, schema: Schema) -> None:
    fields, raw = data.draw(valid_event(schema))
    assert len(raw) <= LIM.max_message_bytes
    out = decode(schema, raw, NOW)
    assert type(out) is schema.record, out
    assert out == schema.record(**fields)
    assert out._asdict() == fields
