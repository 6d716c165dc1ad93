"""The batch decoders of the hot path (``schemas._batch``) against their strict single-message twins.

Every test runs twice: against the decoders the pipeline uses (the native pass of
``schemas/native`` with the Python loops for what it hands back) and against the Python loops
alone. A batch decoder must give, message for message, exactly what mapping the strict decoder over
the batch gives: the same events (same record type) at the same offsets, the same ``Invalid``
(reason and detail) for the rest, order kept. The cases are the strict decoder's own tables
(``test_schemas``), the load test's malformed corpus and the traffic model's messages, one at a
time and interleaved in one batch; hypothesis adds random and near-valid batches.
"""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadtest.scenarios import _MALFORMED, malformed
from loadtest.traffic import GIFT as GIFT_SOURCE
from loadtest.traffic import ORDER as ORDER_SOURCE
from loadtest.traffic import VIEWER as VIEWER_SOURCE
from loadtest.traffic import TrafficConfig, TrafficModel
from schemas import (
    DEFAULT_LIMITS,
    ORDER_STATUSES,
    VIEWER_TYPES,
    Invalid,
    Limits,
    _batch,
    decode_gift_batch,
    decode_order_batch,
    decode_viewer_batch,
)
from streams.pipeline import Record
from tests.unit.test_schemas import (
    BAD_IDS,
    BAD_TYPE_VALUE,
    BAD_VALUE,
    CAP,
    CONTROL_CHARS,
    GARBAGE,
    GIFT,
    GOOD_IDS,
    ID,
    JSONISH_BYTES,
    NOT_OBJECTS,
    NOW,
    ORDER,
    SCHEMAS,
    UNICODE_IDS,
    VIEWER,
    WRONG_TYPES,
    Schema,
    enc,
    json_value,
    limits_st,
    near_valid_message,
    padded,
    valid_event,
    value_reason,
    with_,
    with_literal,
    without,
)

LIM = DEFAULT_LIMITS
BatchDecoder = Callable[[Sequence[tuple[int, bytes]], int, Limits], tuple[list[Any], list[Any]]]
BATCH: dict[str, dict[str, BatchDecoder]] = {
    "native": {"viewer": decode_viewer_batch, "order": decode_order_batch, "gift": decode_gift_batch},
    "python": {
        "viewer": _batch.decode_viewer_batch_py,
        "order": _batch.decode_order_batch_py,
        "gift": _batch.decode_gift_batch_py,
    },
}
IMPLS = list(BATCH)
impls = pytest.mark.parametrize("impl", IMPLS)
BY_SOURCE = {VIEWER_SOURCE: VIEWER, ORDER_SOURCE: ORDER, GIFT_SOURCE: GIFT}


@dataclass(frozen=True)
class Case:
    """One message for one input, judged at ``now`` under ``limits``."""

    name: str
    schema: Schema
    raw: bytes
    now: int = NOW
    limits: Limits = LIM


def strict_batch(
    schema: Schema, items: Sequence[tuple[int, bytes]], now: int, limits: Limits
) -> tuple[list[tuple[int, Any]], list[tuple[int, bytes, Invalid]]]:
    """The reference: the strict decoder mapped over the batch."""
    good, bad = [], []
    for offset, raw in items:
        out = schema.decode(raw, now, limits)
        if type(out) is Invalid:
            bad.append((offset, raw, out))
        else:
            good.append((offset, out))
    return good, bad


def assert_batch_is_strict(
    impl: str, schema: Schema, items: Sequence[tuple[int, bytes]], now: int = NOW, limits: Limits = LIM
) -> None:
    got = BATCH[impl][schema.name](items, now, limits)
    want = strict_batch(schema, items, now, limits)
    assert got == want
    # NamedTuple equality is tuple equality: the record types must match too.
    assert [type(ev) for _, ev in got[0]] == [schema.record] * len(got[0])
    assert all(type(inv) is Invalid for _, _, inv in got[1])


# -- the corpus ---------------------------------------------------------------------------------


def _id_fields(schema: Schema) -> list[str]:
    return [name for name, kind in schema.fields if kind == ID]


def _amounts(schema: Schema) -> list[tuple[str, str]]:
    return [(name, kind) for name, kind in schema.fields if kind in ("amount", "count")]


def _cases_for(s: Schema) -> list[Case]:
    """Every valid shape and every reason code of ``test_schemas``, for one input."""
    c: list[tuple[str, Any]] = [("valid", s.valid)]
    c += [(f"extra-{k}", {**s.valid, k: v}) for k, v in [("v", 2), ("meta", {"a": [1, None]}), ("", "")]]
    c += [("deep-extra", enc(s.valid)[:-1] + b',"x":' + b"[" * 500 + b"]" * 500 + b"}")]
    items = list(s.valid.items())
    c += [(f"rotated-{i}", dict(items[i:] + items[:i])) for i in range(1, len(items))]
    c += [("whitespace", b" \n\t" + enc(s.valid).replace(b",", b" ,\r\n ") + b"\n ")]
    c += [(f"max-bytes-{d}", padded(s, LIM.max_message_bytes + d)) for d in (0, 1)]
    c += [(f"size-{i}", raw) for i, raw in enumerate([b"x" * 9000, b"[" * 8193, b"\xff" * 10_000])]
    c += [(f"garbage-{k}", raw) for k, raw in GARBAGE.items()]
    c += [(f"truncated-{n}", enc(s.valid)[:n]) for n in range(len(enc(s.valid)))]
    c += [(f"not-object-{k}", raw) for k, raw in NOT_OBJECTS.items()]
    c += [("empty-object", b"{}"), ("upper-first", without(s, s.names[0]) | {s.names[0].upper(): 1})]
    for name, kind in s.fields:
        c += [(f"missing-{name}", without(s, name)), (f"null-{name}", with_(s, **{name: None}))]
        c += [(f"type-{name}-{v!r}", with_(s, **{name: v})) for v in WRONG_TYPES[kind]]
        c += [(f"value-{name}", with_(s, **{name: BAD_VALUE[kind]}))]
    for lit in (b"1.0", b"-0.0", b"18446744073709551616", b"18446744073709551615", b"-9223372036854775808"):
        c += [(f"ts-literal-{lit!r}", with_literal(s, "ts", lit))]
        c += [(f"{name}-literal-{lit!r}", with_literal(s, name, lit)) for name, _ in _amounts(s)]
    for name in _id_fields(s):
        c += [(f"{name}-{k}", with_(s, **{name: v})) for k, v in (GOOD_IDS | BAD_IDS).items()]
        c += [(f"{name}-ctl-{ctl!r}", with_(s, **{name: f"ok{ctl}id"})) for ctl in CONTROL_CHARS]
        c += [(f"{name}-rtl-override", with_(s, **{name: "r\u202eevil"}))]  # not printable, not control
    c += [(f"unicode-{u}", with_(s, **{n: u + n for n in _id_fields(s)})) for u in UNICODE_IDS]
    c += _native_grammar(s)
    c += [("surrogates-128", with_literal(s, "room_id", b'"' + b"\\ud83d\\ude00" * 128 + b'"'))]
    c += [("surrogates-129", with_literal(s, "room_id", b'"' + b"\\ud83d\\ude00" * 129 + b'"'))]
    for name, kind in _amounts(s):
        high = CAP if kind == "amount" else LIM.max_gift_count
        low = 0 if kind == "amount" else 1
        c += [
            (f"{name}={v}", with_(s, **{name: v})) for v in (low - 1, low, low + 1, high, high + 1, 2**63 - 1)
        ]
    skews = [NOW - LIM.max_past_ms - 1, NOW - LIM.max_past_ms, NOW + LIM.max_future_ms]
    c += [(f"ts={ts}", with_(s, ts=ts)) for ts in [*skews, NOW + LIM.max_future_ms + 1, 0, -1, NOW // 1000]]
    for i, j in itertools.combinations(range(len(s.fields)), 2):
        (a, ka), (b, kb) = s.fields[i], s.fields[j]
        c += [(f"types-{a}+{b}", with_(s, **{a: BAD_TYPE_VALUE[ka], b: BAD_TYPE_VALUE[kb]}))]
        c += [(f"values-{a}+{b}", with_(s, **{a: BAD_VALUE[ka], b: BAD_VALUE[kb]}))]
        c += [(f"value-type-{a}+{b}", with_(s, **{a: BAD_VALUE[ka], b: BAD_TYPE_VALUE[kb]}))]
        c += [(f"missing-{b}-bad-{a}", without(s, b) | {a: BAD_TYPE_VALUE[ka]})]
    c += [("all-bad-types", {name: BAD_TYPE_VALUE[kind] for name, kind in s.fields})]
    if s is VIEWER:
        c += [(f"type-{k}", with_(s, type=k)) for k in [*sorted(VIEWER_TYPES), "JOIN", " join", "paid"]]
    if s is ORDER:
        c += [(f"status-{k}", with_(s, status=k)) for k in [*sorted(ORDER_STATUSES), "PAID", "shipped"]]
        currencies = ["USD", "ZZZ", "usd", "US", "USDX", "€€€", "U5D", "ÀBC", "\uff35\uff33\uff24", "US\n"]
        c += [(f"currency-{v!r}", with_(s, currency=v)) for v in currencies]
    cases = [Case(name, s, raw if isinstance(raw, bytes) else enc(raw)) for name, raw in c]
    # Bounds are the caller's: the batch decoders must use the limits and the clock passed in.
    tight = Limits(max_id_len=3, max_amount_minor=500, max_gift_count=2, max_past_ms=0, max_future_ms=0)
    cases += [Case(f"tight-{case.name}", s, case.raw, limits=tight) for case in cases[:1]]
    for name in _id_fields(s):
        cases += [
            Case(f"tight-{name}-{v}", s, enc(with_(s, **{name: v})), limits=tight) for v in ("abc", "abcd")
        ]
    for name, _ in _amounts(s):
        cases += [
            Case(f"tight-{name}-{v}", s, enc(with_(s, **{name: v})), limits=tight) for v in (2, 3, 500, 501)
        ]
    for d in (-1, 0, 1):
        cases += [Case(f"tight-ts{d:+}", s, enc(with_(s, ts=NOW + d)), limits=tight)]
        cases += [Case(f"now{d:+}", s, enc(s.valid), now=NOW + LIM.max_past_ms + d)]
    small = Limits(max_message_bytes=len(enc(s.valid)))
    cases += [
        Case("small-fits", s, enc(s.valid), limits=small),
        Case("small-over", s, enc(s.valid) + b" ", limits=small),
    ]
    return cases


#: raw JSON values for an id field, a number field and an unknown field: where the native pass's
#: grammar (printable ASCII without escapes, integers of at most 18 digits) has its edges
ID_LITERALS = [b'"\\u0041bc"', b'"a\\/b"', b'"a\\"b"', b'"a\x7fb"', b'"\xc3\xa9t\xc3\xa9"', b'"a b"']
ID_LITERALS += [b'"a\\%cc"' % e for e in b"bfnrt0x"]  # control escapes, and escapes JSON has not
ID_LITERALS += [b'"\\ud83d\\ude00"', b'"\\ud83d\\ud83d"', b'"\\ud83d"', b'"\\ude00"', b'"\\ud83dx"']
ID_LITERALS += [b'"\\u00e9\\u0085"', b'"\\u0"', b'"\\u00g1"', b'"\xed\xa0\xbd"', b'"\xc0\xaf"', b'"\xe9"']
INT_LITERALS = [b"-0", b"0", b"00", b"0123", b"1e3", b"1E3", b"10.5", b"-1", b"+1"]
INT_LITERALS += [b"999999999999999999", b"1000000000000000000", b"-999999999999999999"]
EXTRA_LITERALS = {"true": b"true", "false": b"false", "null": b"null", "float": b"1.5", "exp": b"-2E-3"}
EXTRA_LITERALS |= {"neg": b"-7", "big": b"1234567890" * 3, "tru": b"tru", "nul": b"nul", "nan": b"NaN"}
EXTRA_LITERALS |= {"str-esc": b'"\\n"', "empty-arr": b"[]", "obj": b"{}", "lead0": b"01"}


def _native_grammar(s: Schema) -> list[tuple[str, bytes]]:
    """Shapes at the edges of the native pass's subset: duplicates, escaped keys, number forms,
    DEL and non-ASCII text, literals, broken separators."""
    raw = enc(s.valid)
    body = raw[1:-1]

    def escaped(name: str) -> bytes:
        return b'"' + name.encode().replace(b"_", b"\\u005f") + b'"'

    c = [("duplicate-first-same", b"{" + body + b"," + body.split(b",")[0] + b"}")]
    c += [(f"duplicate-{name}-other", b"{" + body + b',"' + name.encode() + b'":"zz"}') for name in s.names]
    c += [("duplicate-extra", b"{" + body + b',"x":1,"x":"y"}')]
    for name in s.names:
        c += [(f"escaped-key-{name}", raw.replace(f'"{name}"'.encode(), escaped(name)))]
        c += [(f"escaped-key-dup-{name}", b"{" + body + b"," + escaped(name) + b':"zz"}')]
    for name in _id_fields(s):
        c += [(f"{name}-literal-{lit!r}", with_literal(s, name, lit)) for lit in ID_LITERALS]
    for lit in INT_LITERALS:
        c += [(f"ts-literal-{lit!r}", with_literal(s, "ts", lit))]
        c += [(f"{name}-literal-{lit!r}", with_literal(s, name, lit)) for name, _ in _amounts(s)]
    for form, tail in (("frac", b".0"), ("exp", b"e0"), ("space", b" ")):
        c += [(f"ts-literal-now-{form}", with_literal(s, "ts", str(NOW).encode() + tail))]
    for k, extra in EXTRA_LITERALS.items():
        c += [(f"extra-literal-{k}", b"{" + body + b',"x":' + extra + b"}")]
        c += [(f"extra-literal-first-{k}", b'{"x":' + extra + b"," + body + b"}")]
    c += [("trailing-comma", b"{" + body + b",}"), ("leading-comma", b"{," + body + b"}")]
    c += [("missing-comma", b"{" + body.replace(b",", b" ", 1) + b"}")]
    c += [("missing-colon", b"{" + body.replace(b":", b" ", 1) + b"}")]
    c += [("trailing-garbage", raw + b"x"), ("two-objects", raw + raw)]
    c += [("bom", b"\xef\xbb\xbf" + raw), ("nul-after", raw + b"\x00"), ("formfeed", b"\x0c" + raw)]
    c += [("unquoted-key", raw.replace(b'"' + s.names[0].encode() + b'"', s.names[0].encode()))]
    return c


def _corpus_cases() -> list[Case]:
    """The load test's malformed corpus (``loadtest.scenarios``), one message of each kind."""
    out = []
    for i in range(len(_MALFORMED)):
        source, raw, reason = malformed(i, "r7", NOW)
        out.append(Case(f"malformed-{i}-{reason}", BY_SOURCE[source], raw))
    return out


def _traffic_cases(per_input: int = 60) -> list[Case]:
    """Real messages of the traffic model (every status an order goes through, gifts of every size)."""
    model = TrafficModel(TrafficConfig(rooms=50, rate_per_s=2_000), seed=3)
    phase = model.phase(NOW - 60_000, 30.0)
    taken: Counter[int] = Counter()
    out = []
    for source, _, _, raw, _, _ in phase.messages.wire():
        if taken[source] < per_input:
            taken[source] += 1
            out.append(Case(f"traffic-{source}-{taken[source]}", BY_SOURCE[source], raw))
    return out


CASES = [case for s in SCHEMAS for case in _cases_for(s)] + _corpus_cases() + _traffic_cases()


def cases_of(schema: Schema, *, now: int = NOW, limits: Limits = LIM) -> list[Case]:
    return [c for c in CASES if c.schema is schema and c.now == now and c.limits == limits]


# -- the corpus covers what it must --------------------------------------------------------------


def reason_codes(schema: Schema) -> set[str]:
    """Every reason code the strict decoder can give for this input."""
    codes = {"oversized", "invalid_json", "not_an_object"}
    for name, kind in schema.fields:
        codes |= {f"missing_field:{name}", f"bad_type:{name}", value_reason(name, kind)}
        if kind == ID:
            codes.add(f"control_chars:{name}")
    return codes


@pytest.mark.parametrize("schema", SCHEMAS, ids=[s.name for s in SCHEMAS])
def test_the_cases_reach_every_reason_code_and_accept_many_shapes(schema: Schema) -> None:
    outs = [schema.decode(c.raw, c.now, c.limits) for c in CASES if c.schema is schema]
    assert {out.reason for out in outs if type(out) is Invalid} == reason_codes(schema)
    assert sum(type(out) is schema.record for out in outs) >= 60
    if schema is ORDER:
        assert {o.status for o in outs if type(o) is schema.record} == ORDER_STATUSES


# -- one message at a time ----------------------------------------------------------------------


@impls
@pytest.mark.parametrize("case", CASES, ids=[f"{c.schema.name}-{c.name}" for c in CASES])
def test_each_message_alone_gets_the_strict_verdict(impl: str, case: Case) -> None:
    assert_batch_is_strict(impl, case.schema, [(41, case.raw)], case.now, case.limits)


# -- batches ------------------------------------------------------------------------------------


@impls
@pytest.mark.parametrize("schema", SCHEMAS, ids=[s.name for s in SCHEMAS])
def test_empty_batch(impl: str, schema: Schema) -> None:
    assert BATCH[impl][schema.name]([], NOW, LIM) == ([], [])


@impls
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("schema", SCHEMAS, ids=[s.name for s in SCHEMAS])
def test_mixed_batch_keeps_offsets_and_order(impl: str, schema: Schema, seed: int) -> None:
    """Every case of the input in one batch, good and bad shuffled together, offsets with gaps."""
    rng = random.Random(seed)
    raws = [c.raw for c in cases_of(schema)]
    rng.shuffle(raws)
    offsets = sorted(rng.sample(range(10 * len(raws)), len(raws)))
    items = list(zip(offsets, raws, strict=True))
    assert_batch_is_strict(impl, schema, items)
    good, bad = BATCH[impl][schema.name](items, NOW, LIM)
    assert good and bad
    assert sorted([o for o, _ in good] + [o for o, _, _ in bad]) == offsets


@impls
@pytest.mark.parametrize("schema", SCHEMAS, ids=[s.name for s in SCHEMAS])
def test_same_message_repeated_and_runs_of_bad(impl: str, schema: Schema) -> None:
    bad = next(c.raw for c in cases_of(schema) if c.name == "garbage-empty")
    items = [(0, bad), (1, bad), (2, enc(schema.valid)), (3, enc(schema.valid)), (4, bad), (9, bad)]
    assert_batch_is_strict(impl, schema, items)
    assert_batch_is_strict(impl, schema, [(i, bad) for i in range(50)])
    assert_batch_is_strict(impl, schema, [(i, enc(schema.valid)) for i in range(50)])


# -- property: random batches --------------------------------------------------------------------

schema_st = st.sampled_from(SCHEMAS)
message_st = st.one_of(
    st.binary(max_size=120),
    st.lists(st.sampled_from(list(JSONISH_BYTES)), max_size=60).map(bytes),
    json_value.map(enc),
    st.dictionaries(st.sampled_from(["type", "room_id", "ts", "count", "x"]), json_value, max_size=6).map(
        enc
    ),
)


@impls
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    schema=schema_st,
    limits=limits_st,
    now=st.one_of(st.just(NOW), st.integers(-(2**62), 2**62)),
)
def test_random_batches_equal_the_strict_decoder_mapped(
    impl: str, data: st.DataObject, schema: Schema, limits: Limits, now: int
) -> None:
    one = st.one_of(
        message_st,
        near_valid_message(schema, limits),
        valid_event(schema).map(lambda fields_raw: fields_raw[1]),
        # the same written by Python's json: every non-ASCII character as a \u escape
        valid_event(schema).map(lambda fields_raw: json.dumps(json.loads(fields_raw[1])).encode()),
    )
    raws = data.draw(st.lists(one, max_size=12))
    offsets = sorted(data.draw(st.sets(st.integers(0, 2**40), min_size=len(raws), max_size=len(raws))))
    assert_batch_is_strict(impl, schema, list(zip(offsets, raws, strict=True)), now, limits)


# -- the native pass takes the common case ------------------------------------------------------


def test_the_native_decoders_are_built() -> None:
    """``make test`` builds them (``pip install -e .``); the worker must not run without them unseen."""
    assert _batch.NATIVE


@pytest.mark.parametrize("schema", SCHEMAS, ids=[s.name for s in SCHEMAS])
def test_the_native_pass_takes_honest_traffic_whole(schema: Schema) -> None:
    """The traffic model's messages and the valid shapes above never fall to the Python loops:
    otherwise the native pass could hand everything back and every test above would still pass."""
    assert _batch._fastdecode is not None
    shapes = ("traffic-", "valid", "rotated-", "whitespace")
    honest = [c.raw for c in cases_of(schema) if c.name.startswith(shapes)]
    honest += [enc(with_(schema, **{n: "Room-42_x.y:z" for n in _id_fields(schema)}))]
    # other producers' ways of writing the same: raw UTF-8 (orjson, Jackson), \u escapes with
    # surrogate pairs (Python's json), escaped slashes (PHP)
    text = with_(schema, **{n: f"直播-{n}-été-😀" for n in _id_fields(schema)})
    honest += [enc(text), json.dumps(text).encode(), json.dumps(text, ensure_ascii=False).encode()]
    honest += [enc(with_(schema, **{n: "a/b" for n in _id_fields(schema)})).replace(b"/", b"\\/")]
    assert len(honest) >= 10
    items = list(enumerate(honest))
    bounds = _batch._bounds(NOW, LIM)
    native, amount, count = _batch._fastdecode, LIM.max_amount_minor, LIM.max_gift_count
    if schema is VIEWER:
        good, rest, at = native.viewer_batch(items, schema.record, _batch._KINDS, *bounds)
    elif schema is ORDER:
        good, rest, at = native.order_batch(items, schema.record, _batch._STATUSES, *bounds, amount)
    else:
        good, rest, at = native.gift_batch(items, schema.record, *bounds, amount, count)
    assert rest == at == []
    assert good == strict_batch(schema, items, NOW, LIM)[0]


def test_the_native_pass_refuses_a_record_type_it_cannot_build() -> None:
    native = _batch._fastdecode
    assert native is not None

    class WithDict(tuple):  # type: ignore[type-arg]  # a tuple subclass with a __dict__
        pass

    for cls in (WithDict, list, dict):
        with pytest.raises(TypeError):
            native.viewer_batch([], cls, _batch._KINDS, 100, 10, 0, 1)


#: what a mutation inserts or writes over: JSON structure, escapes (surrogate halves among them),
#: UTF-8 fragments, controls, literals and required keys
MUTATIONS = [b'"', b"\\", b"{", b"}", b",", b":", b" ", b"u", b"0", b"9", b"-", b".", b"e", b"d8", b"1"]
MUTATIONS += [b"\\ud83d", b"\\ude00", b"\\u00", b"\\n", b"\\/", b"\xc3", b"\xa9", b"\xe7\x94\xa8", b"\x00"]
MUTATIONS += [b"\x7f", b"\xc2\x85", b"n", b"true", b"null", b"[", b"]", b'"ts"', b'"room_id"']


@pytest.mark.parametrize("schema", SCHEMAS, ids=[s.name for s in SCHEMAS])
def test_mutated_messages_get_the_strict_verdict(schema: Schema) -> None:
    """Valid messages as three producers write them, each with 1-4 random edits: the decoders
    the pipeline uses give the strict decoder's verdict on every one."""
    rng = random.Random(schema.name)
    text = with_(schema, **{n: f"{n}-用户-é" for n in _id_fields(schema)})
    writings = [enc(text), json.dumps(text).encode(), json.dumps(text, ensure_ascii=False, indent=1).encode()]
    items = []
    for offset in range(6_000):
        raw = bytearray(rng.choice(writings))
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(raw))
            edit = rng.random()
            if edit < 0.4:
                raw[i:i] = rng.choice(MUTATIONS)
            elif edit < 0.7:
                del raw[i]
            else:
                raw[i : i + 1] = rng.choice(MUTATIONS)
        items.append((offset, bytes(raw)))
    assert_batch_is_strict("native", schema, items)
    good, _ = BATCH["native"][schema.name](items, NOW, LIM)
    assert len(good) > 300  # the edits leave many valid: both verdicts are exercised


def test_a_valid_message_the_fast_path_refused_is_taken_and_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Were the inline fast path to refuse a valid message (a bug), the strict decoder's verdict
    stands: the event is taken and the bug logged, instead of an exception that would stop the
    worker at the same message after every restart."""
    from schemas._batch import _judge
    from schemas._records import Invalid, ViewerEvent

    good: list[Any] = []
    bad: list[Any] = []
    event = ViewerEvent("join", "r", "u", 1)
    _judge(good, bad, 7, b"{}", event)
    invalid = Invalid("missing_field", "no room_id")
    _judge(good, bad, 8, b"{}", invalid)
    assert (good, bad) == ([(7, event)], [(8, b"{}", invalid)])
    assert "fast path refused a message the strict decoder accepts" in caplog.text


#: JSON (RFC 8259) that orjson refuses: what a JavaScript producer writes for a text cut inside an
#: emoji (JSON.stringify escapes the lone half), numbers beyond a double
REFUSED_BY_ORJSON = {
    "lone-high-surrogate": b'"cut \\ud83d"',
    "lone-low-surrogate": b'"\\ude00 cut"',
    "1e400": b"1e400",
    "minus-1e999": b"-1e999",
    "400-digit-int": b"9" * 400,
    "nested": b'{"title": ["\\ud800", 1e400]}',
}


@impls
@pytest.mark.parametrize("schema", SCHEMAS, ids=[s.name for s in SCHEMAS])
@pytest.mark.parametrize("literal", list(REFUSED_BY_ORJSON.values()), ids=list(REFUSED_BY_ORJSON))
def test_json_orjson_refuses_in_a_field_not_read_loses_no_event(
    impl: str, schema: Schema, literal: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """An extra field is ignored whatever JSON it holds: the event is taken, by every decoder, and
    no decoder bug is logged."""
    raw = with_literal(schema, "comment", literal)
    assert len(raw) <= LIM.max_message_bytes
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)  # the case is one orjson refuses
    expected = schema.record(**{name: schema.valid[name] for name in schema.names})
    assert schema.decode(raw, NOW, LIM) == expected
    assert BATCH[impl][schema.name]([(5, raw)], NOW, LIM) == ([(5, expected)], [])
    assert "a bug" not in caplog.text


@impls
@pytest.mark.parametrize("schema", SCHEMAS, ids=[s.name for s in SCHEMAS])
def test_json_orjson_refuses_in_a_field_read_stays_invalid_json(impl: str, schema: Schema) -> None:
    """In a field livepulse reads, the same values stay ``invalid_json`` (no id with a lone
    surrogate, which no output could encode; no infinite number), also beside an extra field that
    sends the message to the fallback parser (an object or array there is ``bad_type``, as
    always); NaN stays invalid anywhere."""
    extra = b'"\\ud83d"'
    for name in schema.names:
        for case, literal in REFUSED_BY_ORJSON.items():
            raw = with_literal(schema, name, literal)
            want = f"bad_type:{name}" if case == "nested" else "invalid_json"
            for message in (raw, raw[:-1] + b', "comment": ' + extra + b"}"):
                verdict = schema.decode(message, NOW, LIM)
                assert type(verdict) is Invalid and verdict.reason == want, (name, message)
                assert_batch_is_strict(impl, schema, [(0, message)])
    # the reason orjson gives stays: an integer beyond 64 bits is a float to it (bad_type)
    for huge in (b"18446744073709551616", b"-9223372036854775809"):
        raw = with_literal(schema, "ts", huge)
        for message in (raw, raw[:-1] + b', "comment": ' + extra + b"}"):
            assert schema.decode(message, NOW, LIM).reason == "bad_type:ts"  # type: ignore[union-attr]
            assert_batch_is_strict(impl, schema, [(0, message)])
    # cut short after such a value: still not JSON
    cut = with_literal(schema, "comment", extra)[:-1]
    assert schema.decode(cut, NOW, LIM).reason == "invalid_json"  # type: ignore[union-attr]
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"9" * 5000):
        raw = with_literal(schema, "comment", literal)
        assert schema.decode(raw, NOW, LIM).reason == "invalid_json"  # type: ignore[union-attr]
        assert_batch_is_strict(impl, schema, [(0, raw)])


@impls
@pytest.mark.parametrize("schema", SCHEMAS, ids=[s.name for s in SCHEMAS])
def test_consumed_messages_decode_as_their_offset_and_value_pairs(impl: str, schema: Schema) -> None:
    """The pipeline hands the decoders the messages as read (``offset`` and ``value``, a value of
    None read as empty): the verdicts are those of the pairs, and what the native pass hands back
    to the Python loop is a pair too."""
    raws: list[bytes | None] = [c.raw for c in cases_of(schema)] + [None]
    messages = [Record(7 + 3 * i, b"k", raw) for i, raw in enumerate(raws)]
    pairs = [(m.offset, m.value or b"") for m in messages]
    got = BATCH[impl][schema.name](messages, NOW, LIM)
    assert got == BATCH[impl][schema.name](pairs, NOW, LIM)
    good, bad = got
    assert good and bad and bad[-1][:2] == (messages[-1].offset, b"")
