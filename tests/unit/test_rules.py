"""Spike-rule overrides as table entries (``streams._rules``): what a control message folds into,
and rules built from whatever the table holds, without stopping the data plane."""

from __future__ import annotations

import pytest

from schemas import RoomStats
from streams._rules import MAX_KEY_CHARS, fold, rules_from_entries
from streams.core import SpikeRuleError
from streams.core._spike_rules import rules_for
from streams.core._spikes import DetectorState, observe

GOOD = {"room/r1/views_per_sec": {"ratio": 4.0}, "category/fashion/orders_per_sec": {"ratio": 3.0}}


def test_a_drift_score_too_large_to_square_is_refused_and_the_largest_taken_runs() -> None:
    """drift_z 1e200 passed the checks and its square raised OverflowError in the detector, inside
    the data plane's checkpoint: the worker stopped at every restart, the override being stored."""
    message = {"scope": "room", "key": "r1", "metric": "views_per_sec", "set": {"drift_z": 1e200}}
    with pytest.raises(SpikeRuleError, match="drift_z"):
        fold(message, {})
    entry, value = fold({**message, "set": {"drift_z": 1e6, "warmup_s": 0}}, {})
    rules = rules_for(rules_from_entries({entry: value}).rules, "r1")
    state = DetectorState("r1")
    for i in range(30):
        ws = 1_700_000_000_000 + i * 10_000
        stats = RoomStats("r1", ws, ws + 10_000, 100 + i % 3, 50, 10, 0, 0, 1, 0.1, 100, 0, 0, 0, 0)
        observe(state, stats, rules, 10_000)


def test_an_entry_todays_checks_refuse_is_left_out_not_raised() -> None:
    """A field renamed since the entry was stored (drift_norm_half_life_s), a value out of range, a
    category that is no string: each is left out, the rest is in force."""
    entries = {
        **GOOD,
        "room/r2/views_per_sec": {"drift_norm_half_life_s": 3_600.0},
        "room/r3/views_per_sec": {"ratio": -1.0},
        "room-category/r1": {"not": "a name"},
        "room-category/r4": "fashion",
    }
    rule_set = rules_from_entries(entries)
    assert rule_set.overrides == 2
    assert dict(rule_set.categories) == {"r4": "fashion"}
    assert rules_for(rule_set.rules, "r1")["views_per_sec"].ratio == 4.0
    assert rules_for(rule_set.rules, "r2")["views_per_sec"] == rule_set.rules.defaults["views_per_sec"]
    assert rules_from_entries(GOOD).overrides == 2  # the fast path: every entry readable


def test_a_message_replaces_an_unreadable_entry_so_it_can_always_be_set_or_unset() -> None:
    table = {"room/r2/views_per_sec": {"drift_norm_half_life_s": 3_600.0}}
    unset = {"scope": "room", "key": "r2", "metric": "views_per_sec", "unset": "*"}
    assert fold(unset, table) == ("room/r2/views_per_sec", None)
    replace = {"scope": "room", "key": "r2", "metric": "views_per_sec", "set": {"ratio": 5.0}}
    assert fold(replace, table) == ("room/r2/views_per_sec", {"ratio": 5.0})


def test_room_category_names_are_bounded_like_override_keys() -> None:
    ok = {"scope": "room-category", "key": "r" * MAX_KEY_CHARS, "category": "c" * MAX_KEY_CHARS}
    assert fold(ok, {}) == (f"room-category/{'r' * MAX_KEY_CHARS}", "c" * MAX_KEY_CHARS)
    for bad in (
        {**ok, "key": "r" * (MAX_KEY_CHARS + 1)},
        {**ok, "category": "c" * 100_000},
        {**ok, "key": ""},
    ):
        with pytest.raises(SpikeRuleError, match="room-category"):
            fold(bad, {})
    assert fold({**ok, "category": None}, {}) == (f"room-category/{'r' * MAX_KEY_CHARS}", None)
