"""Strict, cheap decoding of input messages: bytes in, a record or an ``Invalid`` out.

Nothing here raises on bad input; a reason code comes back instead, so the
data plane can dead-letter the message and keep going. Checks run in a fixed
order (size, JSON, object, fields in schema order: presence, type, bounds) so
the same bad message always gets the same reason.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

from ._limits import DEFAULT_LIMITS, Limits
from ._records import (
    ORDER_STATUSES,
    VIEWER_TYPES,
    GiftEvent,
    Invalid,
    OrderEvent,
    ViewerEvent,
)

_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError

#: C0 and C1 control characters (and DEL): never part of an honest id, and they can forge lines
#: or terminal escapes wherever an id is shown (logs, alert text)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def clean_id(value: str) -> bool:
    """True if ``value`` has no control character (``isprintable`` first: the fast, usual answer)."""
    return value.isprintable() or _CONTROL.search(value) is None


def _parse(raw: bytes, limits: Limits) -> dict[str, Any] | Invalid:
    if len(raw) > limits.max_message_bytes:
        return Invalid("oversized", f"{len(raw)} bytes > {limits.max_message_bytes}")
    try:
        obj = _loads(raw)
    except _JSONDecodeError as exc:
        obj = _parse_refused(raw) if _REFUSED.search(exc.msg) else None
        if obj is None:
            return Invalid("invalid_json", str(exc))
    if type(obj) is not dict:
        return Invalid("not_an_object", f"top-level JSON is {type(obj).__name__}")
    return obj


def _parse_refused(raw: bytes) -> dict[str, Any] | None:
    """An object orjson refused that is JSON (RFC 8259) all the same, where the cause is in a field
    no topic reads: a lone surrogate escape (``"\\ud83d"``: JavaScript's ``JSON.stringify``
    writes one for a text cut inside an emoji) or a number beyond a double (``1e400``). Only
    messages orjson refused for one of those come here (``_REFUSED``). None otherwise: not JSON,
    ``NaN``/``Infinity``, too deep, not an object, or a field read holding such a value (that
    stays ``invalid_json``, as orjson has it). A field read gets what orjson gives: an integer
    beyond 64 bits as a float."""
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):  # (ValueError: over 4 300 digits too)
        return None
    if type(obj) is not dict:
        return None
    for name in _READ_FIELDS.intersection(obj):
        value = obj[name]
        if type(value) is str:
            if not _utf8(value):
                return None
        elif type(value) is float:
            if not math.isfinite(value):
                return None
        elif type(value) is int and not _I64_MIN <= value < _U64_END:
            try:
                obj[name] = float(value)  # as orjson reads it: bad_type, not out_of_range
            except OverflowError:  # beyond a double
                return None
    return obj


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _utf8(value: str) -> bool:
    """Whether ``value`` encodes to UTF-8 (no lone surrogate)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _missing(obj: dict[str, Any], fields: tuple[str, ...]) -> Invalid:
    for name in fields:
        if name not in obj:
            return Invalid(f"missing_field:{name}", f"field {name!r} is required")
    raise AssertionError("no field missing")  # pragma: no cover


def _check_id(name: str, value: object, limits: Limits) -> Invalid | None:
    if type(value) is not str:
        return Invalid(f"bad_type:{name}", f"{name} must be a string, got {type(value).__name__}")
    if not 0 < len(value) <= limits.max_id_len:
        return Invalid(f"out_of_range:{name}", f"{name} length {len(value)} not in 1..{limits.max_id_len}")
    if not clean_id(value):
        return Invalid(f"control_chars:{name}", f"{name} {value[:32]!r} contains control characters")
    return None


def _check_ts(ts: object, now_ms: int, limits: Limits) -> Invalid | None:
    if type(ts) is not int:
        return Invalid("bad_type:ts", f"ts must be integer milliseconds, got {type(ts).__name__}")
    if ts < now_ms - limits.max_past_ms or ts > now_ms + limits.max_future_ms:
        return Invalid("ts_skew", f"ts {ts} is {ts - now_ms} ms from now ({now_ms})")
    return None


def _check_int(name: str, value: object, low: int, high: int) -> Invalid | None:
    if type(value) is not int:
        return Invalid(f"bad_type:{name}", f"{name} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        return Invalid(f"out_of_range:{name}", f"{name} {value} not in {low}..{high}")
    return None


def _check_enum(name: str, value: object, allowed: frozenset[str]) -> Invalid | None:
    if type(value) is not str:
        return Invalid(f"bad_type:{name}", f"{name} must be a string, got {type(value).__name__}")
    if value not in allowed:
        return Invalid(f"unknown_enum:{name}", f"{name} {value[:32]!r} not in {sorted(allowed)}")
    return None


def _check_currency(value: object) -> Invalid | None:
    if type(value) is not str:
        return Invalid("bad_type:currency", f"currency must be a string, got {type(value).__name__}")
    if not (len(value) == 3 and value.isascii() and value.isalpha() and value.isupper()):
        return Invalid("bad_format:currency", f"currency {value[:16]!r} is not an ISO 4217 code")
    return None


def _first(*checks: Invalid | None) -> Invalid | None:
    for check in checks:
        if check is not None:
            return check
    return None


_VIEWER_FIELDS = ("type", "room_id", "user_id", "ts")
_ORDER_FIELDS = ("order_id", "room_id", "user_id", "ts", "status", "amount_minor", "currency")
_GIFT_FIELDS = ("gift_id", "room_id", "user_id", "ts", "count", "value_minor")
_READ_FIELDS = frozenset(_VIEWER_FIELDS + _ORDER_FIELDS + _GIFT_FIELDS)
_I64_MIN, _U64_END = -(2**63), 2**64
#: orjson's reasons for refusing what is JSON all the same (see ``_parse_refused``)
_REFUSED = re.compile("surrogate|infinity")


def decode_viewer(raw: bytes, now_ms: int, limits: Limits = DEFAULT_LIMITS) -> ViewerEvent | Invalid:
    """Decode one ``live.viewer`` message."""
    obj = _parse(raw, limits)
    if type(obj) is Invalid:
        return obj
    assert type(obj) is dict
    try:
        kind, room_id, user_id, ts = obj["type"], obj["room_id"], obj["user_id"], obj["ts"]
    except KeyError:
        return _missing(obj, _VIEWER_FIELDS)
    # Fast path: everything well-formed. The slow path below names the first fault.
    if (
        type(kind) is str
        and kind in VIEWER_TYPES
        and type(room_id) is str
        and 0 < len(room_id) <= limits.max_id_len
        and clean_id(room_id)
        and type(user_id) is str
        and 0 < len(user_id) <= limits.max_id_len
        and clean_id(user_id)
        and type(ts) is int
        and now_ms - limits.max_past_ms <= ts <= now_ms + limits.max_future_ms
    ):
        return ViewerEvent(kind, room_id, user_id, ts)
    fault = _first(
        _check_enum("type", kind, VIEWER_TYPES),
        _check_id("room_id", room_id, limits),
        _check_id("user_id", user_id, limits),
        _check_ts(ts, now_ms, limits),
    )
    assert fault is not None
    return fault


def decode_order(raw: bytes, now_ms: int, limits: Limits = DEFAULT_LIMITS) -> OrderEvent | Invalid:
    """Decode one ``live.order`` message."""
    obj = _parse(raw, limits)
    if type(obj) is Invalid:
        return obj
    assert type(obj) is dict
    try:
        order_id, room_id, user_id, ts = obj["order_id"], obj["room_id"], obj["user_id"], obj["ts"]
        status, amount, currency = obj["status"], obj["amount_minor"], obj["currency"]
    except KeyError:
        return _missing(obj, _ORDER_FIELDS)
    fault = _first(
        _check_id("order_id", order_id, limits),
        _check_id("room_id", room_id, limits),
        _check_id("user_id", user_id, limits),
        _check_ts(ts, now_ms, limits),
        _check_enum("status", status, ORDER_STATUSES),
        _check_int("amount_minor", amount, 0, limits.max_amount_minor),
        _check_currency(currency),
    )
    if fault is not None:
        return fault
    return OrderEvent(order_id, room_id, user_id, ts, status, amount, currency)


def decode_gift(raw: bytes, now_ms: int, limits: Limits = DEFAULT_LIMITS) -> GiftEvent | Invalid:
    """Decode one ``live.gift`` message."""
    obj = _parse(raw, limits)
    if type(obj) is Invalid:
        return obj
    assert type(obj) is dict
    try:
        gift_id, room_id, user_id, ts = obj["gift_id"], obj["room_id"], obj["user_id"], obj["ts"]
        count, value = obj["count"], obj["value_minor"]
    except KeyError:
        return _missing(obj, _GIFT_FIELDS)
    fault = _first(
        _check_id("gift_id", gift_id, limits),
        _check_id("room_id", room_id, limits),
        _check_id("user_id", user_id, limits),
        _check_ts(ts, now_ms, limits),
        _check_int("count", count, 1, limits.max_gift_count),
        _check_int("value_minor", value, 0, limits.max_amount_minor),
    )
    if fault is not None:
        return fault
    return GiftEvent(gift_id, room_id, user_id, ts, count, value)
