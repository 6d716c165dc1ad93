"""Batch decoders for the hot path: one loop per batch, no per-message function calls.

Two stages. The native decoders (``schemas/native``, Rust, built by ``pip install -e .``) take
the common case: flat objects of strings (any UTF-8, escaped or not), integers and literals.
They accept a subset of what the strict decoder accepts and hand every other message back
untouched. Those (or every message, when the extension is not built) go through the Python
loops below (``*_py``): each message takes an inlined fast path that accepts exactly what the
single-message decoder accepts; anything else falls to that decoder, which names the reason.
``tests/unit/test_batch_decoders.py`` holds all three to the same verdicts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import orjson

from ._decode import clean_id, decode_gift, decode_order, decode_viewer
from ._limits import DEFAULT_LIMITS, Limits
from ._records import ORDER_STATUSES, VIEWER_TYPES, GiftEvent, Invalid, OrderEvent, ViewerEvent

try:
    from . import _fastdecode  # type: ignore[attr-defined]
except ImportError:  # not built: the Python loops do all the work (slower, same verdicts)
    _fastdecode = None

#: whether the native decoders are in use (the worker logs it at start)
NATIVE: bool = _fastdecode is not None

#: what the batch decoders take: ``(offset, raw)`` pairs, or consumed messages (anything with
#: ``offset`` and ``value``, as aiokafka's ``ConsumerRecord``; a value of None is read as empty)
Items = Sequence[tuple[int, bytes]] | Sequence[Any]
Good = list[tuple[int, ViewerEvent]] | list[tuple[int, OrderEvent]] | list[tuple[int, GiftEvent]]
Bad = list[tuple[int, bytes, Invalid]]

log = logging.getLogger(__name__)

_new = tuple.__new__
_loads = orjson.loads
_KINDS = tuple(sorted(VIEWER_TYPES))
_STATUSES = tuple(sorted(ORDER_STATUSES))
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


def _bounds(now_ms: int, limits: Limits) -> tuple[int, int, int, int]:
    """Message size, id length and event-time bounds, clamped to what the native side takes."""
    lo = min(max(now_ms - limits.max_past_ms, _I64_MIN), _I64_MAX)
    hi = min(max(now_ms + limits.max_future_ms, _I64_MIN), _I64_MAX)
    return min(limits.max_message_bytes, _I64_MAX), min(limits.max_id_len, _I64_MAX), lo, hi


def native_bounds(now_ms: int, limits: Limits) -> tuple[int, int, int, int, int, int]:
    """What the native fast path checks a message against at ``now_ms`` (its size, id length,
    event-time bounds, largest amount and gift count), clamped to 64-bit integers: the native
    room table's fused pass (``NativeRooms.apply_raw``) takes them as the decoders do."""
    max_amount, max_count = min(limits.max_amount_minor, _I64_MAX), min(limits.max_gift_count, _I64_MAX)
    return (*_bounds(now_ms, limits), max_amount, max_count)


def decode_viewer_batch(
    items: Items, now_ms: int, limits: Limits = DEFAULT_LIMITS
) -> tuple[list[tuple[int, ViewerEvent]], Bad]:
    """Decode ``live.viewer`` items (pairs or messages) into good ``(offset, event)`` and bad triples."""
    if _fastdecode is None:
        return decode_viewer_batch_py(items, now_ms, limits)
    max_bytes, max_id, lo, hi = _bounds(now_ms, limits)
    good, rest, at = _fastdecode.viewer_batch(_as_list(items), ViewerEvent, _KINDS, max_bytes, max_id, lo, hi)
    return (good, []) if not rest else _finish(good, rest, at, decode_viewer_batch_py, now_ms, limits)


def decode_order_batch(
    items: Items, now_ms: int, limits: Limits = DEFAULT_LIMITS
) -> tuple[list[tuple[int, OrderEvent]], Bad]:
    """Decode ``live.order`` items."""
    if _fastdecode is None:
        return decode_order_batch_py(items, now_ms, limits)
    max_bytes, max_id, lo, hi = _bounds(now_ms, limits)
    max_amount = min(limits.max_amount_minor, _I64_MAX)
    good, rest, at = _fastdecode.order_batch(
        _as_list(items), OrderEvent, _STATUSES, max_bytes, max_id, lo, hi, max_amount
    )
    return (good, []) if not rest else _finish(good, rest, at, decode_order_batch_py, now_ms, limits)


def decode_gift_batch(
    items: Items, now_ms: int, limits: Limits = DEFAULT_LIMITS
) -> tuple[list[tuple[int, GiftEvent]], Bad]:
    """Decode ``live.gift`` items."""
    if _fastdecode is None:
        return decode_gift_batch_py(items, now_ms, limits)
    max_bytes, max_id, lo, hi = _bounds(now_ms, limits)
    max_amount, max_count = min(limits.max_amount_minor, _I64_MAX), min(limits.max_gift_count, _I64_MAX)
    good, rest, at = _fastdecode.gift_batch(
        _as_list(items), GiftEvent, max_bytes, max_id, lo, hi, max_amount, max_count
    )
    return (good, []) if not rest else _finish(good, rest, at, decode_gift_batch_py, now_ms, limits)


def _as_list(items: Items) -> list[Any]:
    return items if type(items) is list else list(items)


def _pairs(items: Items) -> Sequence[tuple[int, bytes]]:
    """``items`` as ``(offset, raw)`` pairs (consumed messages read as the pipeline reads them)."""
    if not items or (type(items[0]) is tuple and len(items[0]) == 2):
        return items
    messages: Sequence[Any] = items
    return [(msg.offset, msg.value or b"") for msg in messages]


def _finish(
    good: list[Any], rest: list[tuple[int, bytes]], at: list[int], decode: Any, now_ms: int, limits: Limits
) -> Any:
    """Judge the messages the native pass handed back (``rest``) with the Python loop, one at a
    time, and put any it accepts at its place in ``good`` (``at``: positions in ``good``)."""
    bad: Bad = []
    for i in range(len(rest) - 1, -1, -1):  # from the back: the positions before stay valid
        taken, refused = decode(rest[i : i + 1], now_ms, limits)
        if taken:
            good[at[i] : at[i]] = taken
        bad += refused
    bad.reverse()
    return good, bad


def decode_viewer_batch_py(
    items: Items, now_ms: int, limits: Limits = DEFAULT_LIMITS
) -> tuple[list[tuple[int, ViewerEvent]], Bad]:
    """The Python loop: decode ``live.viewer`` items (pairs or messages)."""
    good: list[tuple[int, ViewerEvent]] = []
    bad: Bad = []
    max_bytes, max_id = limits.max_message_bytes, limits.max_id_len
    ts_low, ts_high = now_ms - limits.max_past_ms, now_ms + limits.max_future_ms
    kinds, cls = VIEWER_TYPES, ViewerEvent
    for offset, raw in _pairs(items):
        if len(raw) <= max_bytes:
            try:
                obj = _loads(raw)
                kind, room_id, user_id, ts = obj["type"], obj["room_id"], obj["user_id"], obj["ts"]
            except Exception:  # any failure takes the slow path, which names it
                pass
            else:
                if (
                    type(kind) is str
                    and kind in kinds
                    and type(room_id) is str
                    and 0 < len(room_id) <= max_id
                    and (room_id.isprintable() or clean_id(room_id))
                    and type(user_id) is str
                    and 0 < len(user_id) <= max_id
                    and (user_id.isprintable() or clean_id(user_id))
                    and type(ts) is int
                    and ts_low <= ts <= ts_high
                    and type(obj) is dict
                ):
                    good.append((offset, _new(cls, (kind, room_id, user_id, ts))))
                    continue
        _judge(good, bad, offset, raw, decode_viewer(raw, now_ms, limits))
    return good, bad


def decode_order_batch_py(
    items: Items, now_ms: int, limits: Limits = DEFAULT_LIMITS
) -> tuple[list[tuple[int, OrderEvent]], Bad]:
    """The Python loop: decode ``live.order`` items (pairs or messages)."""
    good: list[tuple[int, OrderEvent]] = []
    bad: Bad = []
    max_bytes, max_id, max_amount = limits.max_message_bytes, limits.max_id_len, limits.max_amount_minor
    ts_low, ts_high = now_ms - limits.max_past_ms, now_ms + limits.max_future_ms
    statuses, cls = ORDER_STATUSES, OrderEvent
    for offset, raw in _pairs(items):
        if len(raw) <= max_bytes:
            try:
                obj = _loads(raw)
                order_id, room_id, user_id, ts = obj["order_id"], obj["room_id"], obj["user_id"], obj["ts"]
                status, amount, currency = obj["status"], obj["amount_minor"], obj["currency"]
            except Exception:  # any failure takes the slow path, which names it
                pass
            else:
                if (
                    type(order_id) is str
                    and 0 < len(order_id) <= max_id
                    and (order_id.isprintable() or clean_id(order_id))
                    and type(room_id) is str
                    and 0 < len(room_id) <= max_id
                    and (room_id.isprintable() or clean_id(room_id))
                    and type(user_id) is str
                    and 0 < len(user_id) <= max_id
                    and (user_id.isprintable() or clean_id(user_id))
                    and type(ts) is int
                    and ts_low <= ts <= ts_high
                    and type(status) is str
                    and status in statuses
                    and type(amount) is int
                    and 0 <= amount <= max_amount
                    and type(currency) is str
                    and len(currency) == 3
                    and currency.isascii()
                    and currency.isalpha()
                    and currency.isupper()
                    and type(obj) is dict
                ):
                    event = _new(cls, (order_id, room_id, user_id, ts, status, amount, currency))
                    good.append((offset, event))
                    continue
        _judge(good, bad, offset, raw, decode_order(raw, now_ms, limits))
    return good, bad


def decode_gift_batch_py(
    items: Items, now_ms: int, limits: Limits = DEFAULT_LIMITS
) -> tuple[list[tuple[int, GiftEvent]], Bad]:
    """The Python loop: decode ``live.gift`` items (pairs or messages)."""
    good: list[tuple[int, GiftEvent]] = []
    bad: Bad = []
    max_bytes, max_id, max_amount = limits.max_message_bytes, limits.max_id_len, limits.max_amount_minor
    max_count = limits.max_gift_count
    ts_low, ts_high = now_ms - limits.max_past_ms, now_ms + limits.max_future_ms
    cls = GiftEvent
    for offset, raw in _pairs(items):
        if len(raw) <= max_bytes:
            try:
                obj = _loads(raw)
                gift_id, room_id, user_id, ts = obj["gift_id"], obj["room_id"], obj["user_id"], obj["ts"]
                count, value = obj["count"], obj["value_minor"]
            except Exception:  # any failure takes the slow path, which names it
                pass
            else:
                if (
                    type(gift_id) is str
                    and 0 < len(gift_id) <= max_id
                    and (gift_id.isprintable() or clean_id(gift_id))
                    and type(room_id) is str
                    and 0 < len(room_id) <= max_id
                    and (room_id.isprintable() or clean_id(room_id))
                    and type(user_id) is str
                    and 0 < len(user_id) <= max_id
                    and (user_id.isprintable() or clean_id(user_id))
                    and type(ts) is int
                    and ts_low <= ts <= ts_high
                    and type(count) is int
                    and 1 <= count <= max_count
                    and type(value) is int
                    and 0 <= value <= max_amount
                    and type(obj) is dict
                ):
                    good.append((offset, _new(cls, (gift_id, room_id, user_id, ts, count, value))))
                    continue
        _judge(good, bad, offset, raw, decode_gift(raw, now_ms, limits))
    return good, bad


def _judge(good: list[Any], bad: Bad, offset: int, raw: bytes, result: object) -> None:
    """File the strict decoder's verdict on a message the inline fast path refused: nearly always
    the reason it is invalid. Should the fast path refuse a valid message (a bug in it), the event
    is taken, as the strict decoder defines what is valid, and the bug is logged: one message must
    not stop the worker at every restart. No bug: JSON that orjson refuses and the strict decoder
    takes (a lone surrogate escape or a huge number, in a field not read)."""
    if type(result) is Invalid:
        bad.append((offset, raw, result))
        return
    try:
        _loads(raw)
    except orjson.JSONDecodeError:
        pass
    else:
        log.error("batch fast path refused a message the strict decoder accepts (a bug): %r", result)
    good.append((offset, result))
