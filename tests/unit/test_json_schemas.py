"""The committed JSON Schema files (schemas/json/) are current, valid JSON Schema, and describe
what the real encoders write. Input schemas vs the decoders: see ``decode`` in test_schemas.py."""

from __future__ import annotations

import json
import sys

import orjson
import pytest
from jsonschema import Draft202012Validator, FormatChecker

from schemas import (
    Invalid,
    RoomStats,
    ViewerEvent,
    dead_letter,
    encode_dead_letter,
    encode_room_session,
    encode_room_stats,
)
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


def test_session_records_match_their_schema() -> None:
    """Records of a real room's session, live and once ended, from the task that publishes them."""
    from streams.core import CoreConfig, TaskAggregator

    cfg = CoreConfig(bucket_ms=1_000, window_ms=10_000, grace_ms=2_000, session_gap_ms=20_000)
    agg = TaskAggregator(cfg, (0, 1, 2))
    t0 = 1_700_000_000_000
    joins = [(i, ViewerEvent("join", "room-1", f"u{i}", t0 + 1_000 * i)) for i in range(15)]
    agg.apply(0, joins, t0)
    agg.tick(now_ms=10**13)
    agg.tick(now_ms=2 * 10**13)
    sessions = agg.drain_sessions()
    assert {s.status for s in sessions} == {"live", "ended"}
    v = validator("room-session.json")
    for session in sessions:
        v.validate(orjson.loads(encode_room_session(session)))
    assert not v.is_valid({**orjson.loads(encode_room_session(sessions[-1])), "status": "over"})


@pytest.mark.parametrize("missing", [False, True])
def test_leaderboard_records_match_their_schema(missing: bool) -> None:
    """Records of the real merge: complete, or published without a task (``missing_tasks``)."""
    from streams.core import LeaderboardMerge, leaderboard_partials, leaderboard_progress

    merge = LeaderboardMerge(2, 3)
    stats = [RoomStats(f"r{i}", 0, 10_000, i, i, 1, 0, 0, i, 0.1, 100 * i, 0, 0, 0, 0) for i in range(5)]
    for item in leaderboard_partials(0, stats, 3):
        merge.add(item)
    merge.add(leaderboard_progress(0, 10_000))
    if missing:
        (record,) = [merge.take_oldest_incomplete()]
        assert record["missing_tasks"] == [1]
    else:
        merge.add(leaderboard_progress(1, 10_000))
        (record,) = merge.take_final()
    v = validator("leaderboard.json")
    v.validate(json.loads(json.dumps(record)))
    assert not v.is_valid({**record, "top_gmv": [{"rank": 0, "room_id": "r", "gmv_minor": 1}]})
