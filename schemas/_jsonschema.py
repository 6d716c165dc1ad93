"""JSON Schema (draft 2020-12) of the input events and the outputs, for upstream producers and
downstream consumers; ``python -m schemas`` writes them to ``schemas/json/``.

Built from the definitions the strict decoders use: the field order of ``_decode`` (which is
also the order faults are reported in), the enum sets of ``_records``, the bounds of ``Limits``,
and the record types' annotations. ``tests/unit/test_schemas.py`` runs every message of the
decoder corpus through both and requires the same verdict. What a schema cannot say:

- ``ts`` must lie within ``max_past_ms`` / ``max_future_ms`` of the worker's clock (``ts_skew``);
- a message is at most ``max_message_bytes`` bytes of UTF-8 (``oversized``);
- integers must be written as integers: JSON Schema counts ``1.0`` as an integer, the decoders
  (like Java's and Go's JSON integer types) do not (``bad_type:<field>``).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, NamedTuple, get_type_hints

from ._decode import _GIFT_FIELDS, _ORDER_FIELDS, _VIEWER_FIELDS
from ._limits import DEFAULT_LIMITS, Limits
from ._outputs import DeadLetter, RoomSession, RoomStats
from ._records import ORDER_STATUSES, VIEWER_TYPES, GiftEvent, OrderEvent, ViewerEvent

DIALECT = "https://json-schema.org/draft/2020-12/schema"
BASE_ID = "urn:livepulse:schema:"

_EVENTS: dict[str, tuple[type[NamedTuple], tuple[str, ...], str]] = {
    "viewer": (ViewerEvent, _VIEWER_FIELDS, "live.viewer"),
    "order": (OrderEvent, _ORDER_FIELDS, "live.order"),
    "gift": (GiftEvent, _GIFT_FIELDS, "live.gift"),
}
EVENT_KINDS: tuple[str, ...] = tuple(_EVENTS)


def _field(name: str, annotation: object, limits: Limits) -> dict[str, Any]:
    """One input field's schema: what ``_decode``'s check for it accepts."""
    if name == "type":
        return {"type": "string", "enum": sorted(VIEWER_TYPES)}
    if name == "status":
        return {"type": "string", "enum": sorted(ORDER_STATUSES)}
    if name == "currency":
        # Exactly three ASCII capitals (length pinned too: a pattern's $ tolerates a trailing newline).
        return {"type": "string", "minLength": 3, "maxLength": 3, "pattern": "^[A-Z][A-Z][A-Z]$"}
    if name == "ts":
        return {
            "type": "integer",
            "description": "event time, integer milliseconds since the epoch; rejected (ts_skew) "
            f"when more than {limits.max_past_ms} ms before or {limits.max_future_ms} ms after "
            "the worker's clock",
        }
    if name in ("amount_minor", "value_minor"):
        return {"type": "integer", "minimum": 0, "maximum": limits.max_amount_minor}
    if name == "count":
        return {"type": "integer", "minimum": 1, "maximum": limits.max_gift_count}
    if annotation is str:  # the ids
        # no C0/C1 control character anywhere (control_chars:<field>)
        return {
            "type": "string",
            "minLength": 1,
            "maxLength": limits.max_id_len,
            "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$",
        }
    raise AssertionError(f"no schema rule for input field {name}: {annotation}")  # pragma: no cover


def event_schema(kind: str, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """The schema of one input topic's messages (``viewer``, ``order``, ``gift``)."""
    record, order, topic = _EVENTS[kind]
    annotations = get_type_hints(record)
    assert set(order) == set(annotations), f"{record.__name__} and the decoder disagree on fields"
    return {
        "$schema": DIALECT,
        "$id": f"{BASE_ID}{kind}-event",
        "title": record.__name__,
        "description": f"One message of {topic}: UTF-8 JSON, at most {limits.max_message_bytes} bytes, "
        "Kafka key = room_id. Unknown extra fields are ignored.",
        "type": "object",
        "required": list(order),
        "properties": {name: _field(name, annotations[name], limits) for name in order},
        "additionalProperties": True,
    }


_JSON_TYPES: dict[str, dict[str, Any]] = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "str | None": {"type": ["string", "null"]},
    "int | None": {"type": ["integer", "null"]},
}


def _record_schema(record: type, name: str, title: str, description: str) -> dict[str, Any]:
    props = {f.name: dict(_JSON_TYPES[str(f.type)]) for f in fields(record)}
    return {
        "$schema": DIALECT,
        "$id": f"{BASE_ID}{name}",
        "title": title,
        "description": description,
        "type": "object",
        "required": list(props),
        "properties": props,
    }


def room_stats_schema() -> dict[str, Any]:
    schema = _record_schema(
        RoomStats,
        "room-stats",
        "RoomStats",
        "One record of live.room-stats: one room's closed window [window_start, window_end) in ms "
        "since the epoch; (room_id, window_start) identifies it (a replay repeats the same record).",
    )
    return _counts_and_room(schema, "orders_per_sec")


def room_session_schema() -> dict[str, Any]:
    schema = _record_schema(
        RoomSession,
        "room-session",
        "RoomSession",
        "One record of live.room-sessions (compacted, key <room_id>:<session_start>): a room's "
        "broadcast session so far (status live, session_end null) or once ended.",
    )
    schema["properties"]["status"]["enum"] = ["live", "ended"]
    return _counts_and_room(schema, "session_end")


def _counts_and_room(schema: dict[str, Any], *also: str) -> dict[str, Any]:
    """An output record's integers (and the fields ``also``) are >= 0, its room id not empty."""
    for name, prop in schema["properties"].items():
        if prop["type"] == "integer" or name in also:
            prop["minimum"] = 0
    schema["properties"]["room_id"]["minLength"] = 1
    return schema


def leaderboard_schema() -> dict[str, Any]:
    """``live.leaderboard``'s records (``streams.core._leaderboard.leaderboard_record``)."""
    count = {"type": "integer", "minimum": 0}

    def ranking(value: str) -> dict[str, Any]:
        entry = {
            "type": "object",
            "required": ["rank", "room_id", value],
            "properties": {
                "rank": {"type": "integer", "minimum": 1},
                "room_id": {"type": "string"},
                value: count,
            },
            "additionalProperties": False,
        }
        return {"type": "array", "items": entry}

    totals = ("events", "rooms_live", "gmv_minor", "orders")
    return {
        "$schema": DIALECT,
        "$id": f"{BASE_ID}leaderboard",
        "title": "Leaderboard",
        "description": "One record of live.leaderboard (key = window_start): the platform's top rooms "
        "by GMV and by views in one closed window, by value descending then room_id, and the "
        "window's totals over its live rooms. missing_tasks: published without those tasks' rooms "
        "(the merge state outgrew its record).",
        "type": "object",
        "required": ["window_start", "window_end", "size", "top_gmv", "top_views", *totals],
        "properties": {
            "window_start": count,
            "window_end": count,
            "size": {"type": "integer", "minimum": 1},
            "top_gmv": ranking("gmv_minor"),
            "top_views": ranking("views"),
            **dict.fromkeys(totals, count),
            "missing_tasks": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
        },
    }


def dead_letter_schema() -> dict[str, Any]:
    schema = _record_schema(
        DeadLetter,
        "dead-letter",
        "DeadLetter",
        "One record of live.dlq: why an input message was rejected (reason code), where it came "
        "from, and its raw bytes (base64, truncated to a cap).",
    )
    schema["properties"]["reason"]["pattern"] = (
        "^(oversized|invalid_json|not_an_object|ts_skew|room_cap|unsupported_currency|state_undecodable"
        "|(missing_field|bad_type|out_of_range|unknown_enum|bad_format|control_chars):[a-z_]+)$"
    )
    schema["properties"]["raw_b64"]["contentEncoding"] = "base64"
    return schema


def alert_schema() -> dict[str, Any]:
    """``live.alerts``: an Alertmanager API v2 alert plus ``status`` and ``fingerprint``."""
    text = {"type": "string"}
    when = {"type": "string", "format": "date-time"}
    return {
        "$schema": DIALECT,
        "$id": f"{BASE_ID}alert",
        "title": "RoomAlert",
        "description": "One record of live.alerts (key = fingerprint). Firing alerts are re-sent "
        "periodically, resolved ones once; POST labels/annotations/startsAt/endsAt to Alertmanager as is.",
        "type": "object",
        "required": ["labels", "annotations", "startsAt", "status", "fingerprint"],
        "properties": {
            "labels": {
                "type": "object",
                "required": ["alertname", "room_id", "metric", "severity"],
                "additionalProperties": text,
            },
            "annotations": {
                "type": "object",
                "required": ["summary", "value", "baseline", "ratio", "zscore"],
                "additionalProperties": text,
            },
            "startsAt": when,
            "endsAt": when,
            "status": {"type": "string", "enum": ["firing", "resolved"]},
            "fingerprint": {"type": "string", "pattern": "^[0-9a-f]{16,64}$"},
        },
    }


def all_schemas() -> dict[str, dict[str, Any]]:
    """File name -> schema, as written to ``schemas/json/``."""
    out = {f"{kind}-event.json": event_schema(kind) for kind in EVENT_KINDS}
    out["room-stats.json"] = room_stats_schema()
    out["room-session.json"] = room_session_schema()
    out["leaderboard.json"] = leaderboard_schema()
    out["dead-letter.json"] = dead_letter_schema()
    out["alert.json"] = alert_schema()
    return out
