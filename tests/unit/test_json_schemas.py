"""The committed JSON Schema files (schemas/json/) are current, valid JSON Schema, and describe
what the real encoders write. Input schemas vs the decoders: see ``decode`` in test_schemas.py."""

from __future__ import annotations

import json
import sys

import orjson
import pytest
from jsonschema import Draft202012Validator, FormatChecker

from schemas import Invalid, RoomStats, dead_letter, encode_dead_letter, encode_room_stats
from schemas.__main__ import OUT, rendered
from schemas._jsonschema import all_schemas
from streams.core._alerts import AlertEvent, to_alertmanager


def validator(name: str) -> Draft202012Validator:
    schema = json.loads((OUT / name).read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FormatChecker())


@pytest.mark.parametrize("path", sorted(rendered()), ids=lambda p: p.name)
def test_committed_schema_is_current(path: object) -> None:
    assert path.read_text() == rendered()[path], "stale: run `python -m schemas`"  # type: ignore[attr-defined]


def test_every_schema_is_valid_json_schema() -> None:
    for name in all_schemas():
        validator(name)


def test_room_stats_records_match_their_schema() -> None:
    stats = RoomStats("room-1", 1_000, 11_000, 3, 2, 1, 4, 5, 2, 0.2, 3_998, 0, 3, 300, 1)
    v = validator("room-stats.json")
    v.validate(orjson.loads(encode_room_stats(stats)))
    assert not v.is_valid({**orjson.loads(encode_room_stats(stats)), "views": -1})


@pytest.mark.parametrize("reason", ["invalid_json", "missing_field:ts", "ts_skew", "bad_format:currency"])
def test_dead_letters_match_their_schema(reason: str) -> None:
    letter = dead_letter(
        Invalid(reason, "detail"),
        topic="live.order",
        partition=3,
        offset=42,
        key=b"room-1",
        raw=b"x" * 5_000,
        now_ms=1_700_000_000_000,
    )
    validator("dead-letter.json").validate(orjson.loads(encode_dead_letter(letter)))


@pytest.mark.parametrize("ends_at_ms", [None, 1_700_000_030_000])
def test_alert_records_match_their_schema(ends_at_ms: int | None) -> None:
    event = AlertEvent(
        "room-1",
        "RoomSpike",
        "views_per_sec",
        "warning",
        "firing" if ends_at_ms is None else "resolved",
        1_700_000_000_000,
        ends_at_ms,
        1_700_000_020_000,
        120.0,
        10.0,
        8.5,
    )
    record = to_alertmanager(event, expires_after_ms=240_000)
    validator("alert.json").validate(json.loads(json.dumps(record)))


def test_schema_generator_check_mode_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    from schemas.__main__ import main

    monkeypatch.setattr(sys, "argv", ["schemas", "--check"])
    assert main() == 0
