"""Spike rules: defaults, override precedence, control-topic messages and their validation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from schemas import RoomStats
from streams.core import DetectorState, observe
from streams.core._spike_rules import (
    DEFAULT_RULES,
    METRICS,
    MetricRule,
    SpikeRuleError,
    SpikeRules,
    apply_override,
    rules_for,
)
from streams.exceptions import LivepulseError


def override(scope: str, key: str, metric: str, **fields: Any) -> dict[str, Any]:
    return {"scope": scope, "key": key, "metric": metric, "set": fields}


def test_defaults_cover_every_metric_and_are_shared() -> None:
    rules = rules_for(DEFAULT_RULES, "any-room", "any-category")
    assert set(rules) == set(METRICS)
    assert rules is rules_for(DEFAULT_RULES, "another-room")  # no per-room allocation without overrides
    assert all(not r.drop_enabled for r in rules.values())
    assert 0 < rules["views_per_sec"].alpha(10.0) < rules["views_per_sec"].alpha(60.0) < 1


def test_override_precedence_room_over_category_over_default() -> None:
    rules = DEFAULT_RULES
    rules = apply_override(rules, override("category", "beauty", "views_per_sec", ratio=4.0, z_threshold=5.0))
    rules = apply_override(rules, override("room", "r-1", "views_per_sec", ratio=6.0))
    default = DEFAULT_RULES.defaults["views_per_sec"]

    both = rules_for(rules, "r-1", "beauty")["views_per_sec"]
    assert (both.ratio, both.z_threshold, both.min_volume) == (6.0, 5.0, default.min_volume)

    room_only = rules_for(rules, "r-1", "games")["views_per_sec"]
    assert (room_only.ratio, room_only.z_threshold) == (6.0, default.z_threshold)

    category_only = rules_for(rules, "r-2", "beauty")["views_per_sec"]
    assert (category_only.ratio, category_only.z_threshold) == (4.0, 5.0)

    assert rules_for(rules, "r-2", None)["views_per_sec"] == default
    # other metrics untouched
    assert rules_for(rules, "r-1", "beauty")["orders_per_sec"] == DEFAULT_RULES.defaults["orders_per_sec"]


def test_apply_override_returns_a_new_object() -> None:
    before = SpikeRules()
    after = apply_override(before, override("room", "r-1", "orders_per_sec", drop_enabled=True))
    assert before.room_overrides == {} and after is not before
    assert rules_for(after, "r-1")["orders_per_sec"].drop_enabled
    assert not rules_for(before, "r-1")["orders_per_sec"].drop_enabled


def test_set_merges_and_unset_falls_back() -> None:
    rules = apply_override(DEFAULT_RULES, override("room", "r-1", "gmv_per_sec", ratio=3.0, min_volume=10))
    rules = apply_override(rules, override("room", "r-1", "gmv_per_sec", z_threshold=6))
    gmv = rules_for(rules, "r-1")["gmv_per_sec"]
    assert (gmv.ratio, gmv.min_volume, gmv.z_threshold) == (3.0, 10.0, 6.0)
    assert isinstance(gmv.min_volume, float)  # ints from JSON are normalised

    rules = apply_override(
        rules, {"scope": "room", "key": "r-1", "metric": "gmv_per_sec", "unset": ["ratio"]}
    )
    gmv = rules_for(rules, "r-1")["gmv_per_sec"]
    assert gmv.ratio == DEFAULT_RULES.defaults["gmv_per_sec"].ratio and gmv.min_volume == 10.0

    rules = apply_override(rules, {"scope": "room", "key": "r-1", "metric": "gmv_per_sec", "unset": "*"})
    assert rules.room_overrides == {}
    assert rules_for(rules, "r-1") is rules.defaults


def test_surge_can_be_disabled_with_null() -> None:
    rules = apply_override(DEFAULT_RULES, override("category", "c", "views_per_sec", surge_value=None))
    assert rules_for(rules, "r", "c")["views_per_sec"].surge_value is None


@pytest.mark.parametrize(
    "message",
    [
        "not a dict",
        {},
        {"scope": "tenant", "key": "r", "metric": "views_per_sec", "set": {"ratio": 3}},
        {"scope": "room", "key": "", "metric": "views_per_sec", "set": {"ratio": 3}},
        {"scope": "room", "key": "x" * 129, "metric": "views_per_sec", "set": {"ratio": 3}},
        {"scope": "room", "key": 7, "metric": "views_per_sec", "set": {"ratio": 3}},
        {"scope": "room", "key": "r", "metric": "likes_per_sec", "set": {"ratio": 3}},
        {"scope": "room", "key": "r", "metric": "views_per_sec"},
        {"scope": "room", "key": "r", "metric": "views_per_sec", "set": [1]},
        {"scope": "room", "key": "r", "metric": "views_per_sec", "set": {"ratoi": 3}},
        {"scope": "room", "key": "r", "metric": "views_per_sec", "set": {"ratio": "3"}},
        {"scope": "room", "key": "r", "metric": "views_per_sec", "set": {"ratio": True}},
        {"scope": "room", "key": "r", "metric": "views_per_sec", "set": {"ratio": 0.5}},
        {"scope": "room", "key": "r", "metric": "views_per_sec", "set": {"ratio": float("nan")}},
        {"scope": "room", "key": "r", "metric": "views_per_sec", "set": {"half_life_windows": 0}},
        {"scope": "room", "key": "r", "metric": "views_per_sec", "set": {"confirm_s": -1}},
        {"scope": "room", "key": "r", "metric": "views_per_sec", "set": {"drop_enabled": True}},
        {"scope": "room", "key": "r", "metric": "orders_per_sec", "set": {"drop_enabled": 1}},
        {"scope": "room", "key": "r", "metric": "orders_per_sec", "set": {"ratio": None}},
        {"scope": "room", "key": "r", "metric": "views_per_sec", "unset": ["nope"]},
        {"scope": "room", "key": "r", "metric": "views_per_sec", "unset": "ratio"},
    ],
)
def test_bad_override_messages_raise_a_clear_value_error(message: Any) -> None:
    with pytest.raises(SpikeRuleError) as info:
        apply_override(DEFAULT_RULES, message)
    assert isinstance(info.value, ValueError) and isinstance(info.value, LivepulseError)
    assert not info.value.retriable and str(info.value)


def test_rules_validate_on_construction() -> None:
    with pytest.raises(SpikeRuleError):
        MetricRule(ratio=0.9)
    with pytest.raises(SpikeRuleError):
        SpikeRules(defaults={"views_per_sec": MetricRule()})
    with pytest.raises(SpikeRuleError):
        SpikeRules(room_overrides={"r": {"views_per_sec": {"ratio": -1}}})
    built = SpikeRules(category_overrides={"c": {"views_per_sec": {"ratio": 4}}})
    assert rules_for(built, "r", "c")["views_per_sec"].ratio == 4.0


def test_legacy_window_counted_fields_become_seconds_of_10_s_windows() -> None:
    rules = apply_override(DEFAULT_RULES, override("room", "r", "views_per_sec", cooldown_windows=30))
    rule = rules_for(rules, "r")["views_per_sec"]
    assert rule.cooldown_s == 300.0 and isinstance(rule.cooldown_s, float)
    assert rules.room_overrides == {"r": {"views_per_sec": {"cooldown_s": 300.0}}}
    unset = {"scope": "room", "key": "r", "metric": "views_per_sec", "unset": ["cooldown_windows"]}
    assert apply_override(rules, unset).room_overrides == {}


def test_whole_counts_accept_integral_floats() -> None:
    rules = apply_override(DEFAULT_RULES, override("room", "r", "views_per_sec", season_bins=24.0))
    bins = rules_for(rules, "r")["views_per_sec"].season_bins
    assert bins == 24 and isinstance(bins, int)


def test_drift_and_tail_are_off_for_rooms_and_on_for_the_gauge_rule() -> None:
    from streams.core._spike_rules import GAUGE_RULE

    for rule in DEFAULT_RULES.defaults.values():
        assert rule.drift_z == 0.0 and rule.tail_cap == 0.0  # rooms keep the quiet fast path
    assert GAUGE_RULE.drift_z > 0 and GAUGE_RULE.tail_cap > 0
    assert GAUGE_RULE.drift_half_life_s < GAUGE_RULE.slow_half_life_s
    for bad in ({"drift_z": -1.0}, {"drift_half_life_s": 0.0}, {"tail_cap": -2.0}):
        with pytest.raises(SpikeRuleError):
            MetricRule(**bad)  # type: ignore[arg-type]
    rules = apply_override(DEFAULT_RULES, override("room", "r-1", "concurrent_viewers", drift_z=3.0))
    assert rules_for(rules, "r-1")["concurrent_viewers"].drift_z == 3.0


def test_the_long_seasonal_term_is_off_for_rooms_and_a_week_for_the_gauge_rule() -> None:
    from streams.core._spike_rules import GAUGE_RULE

    for rule in DEFAULT_RULES.defaults.values():
        assert rule.long_season_s == 0.0  # room state keeps its size
    assert GAUGE_RULE.long_season_s == 7 * GAUGE_RULE.season_s and GAUGE_RULE.long_season_bins == 168
    for bad in ({"long_season_s": -1.0}, {"long_season_bins": 0}, {"long_season_bins": 2.5}):
        with pytest.raises(SpikeRuleError):
            MetricRule(**bad)  # type: ignore[arg-type]
    rules = apply_override(DEFAULT_RULES, override("room", "r-1", "concurrent_viewers", long_season_bins=84))
    assert rules_for(rules, "r-1")["concurrent_viewers"].long_season_bins == 84


def test_resolving_by_score_and_learning_alerts_are_room_defaults_and_off_in_the_gauge_rule() -> None:
    from streams.core._spike_rules import GAUGE_RULE

    for rule in DEFAULT_RULES.defaults.values():
        assert rule.resolve_z == 0.0 and rule.season_learns_alerts  # rooms: unchanged behaviour
    assert 0 < GAUGE_RULE.resolve_z < GAUGE_RULE.z_threshold and not GAUGE_RULE.season_learns_alerts
    for bad in ({"resolve_z": -1.0}, {"resolve_z": float("nan")}, {"season_learns_alerts": 0}):
        with pytest.raises(SpikeRuleError):
            MetricRule(**bad)  # type: ignore[arg-type]
    for changes in ({"season_learns_alerts": "false"}, {"resolve_z": True}):
        with pytest.raises(SpikeRuleError):
            apply_override(DEFAULT_RULES, override("room", "r-1", "concurrent_viewers", **changes))
    rules = apply_override(
        DEFAULT_RULES,
        override("room", "r-1", "concurrent_viewers", resolve_z=2.5, season_learns_alerts=False),
    )
    rule = rules_for(rules, "r-1")["concurrent_viewers"]
    assert rule.resolve_z == 2.5 and rule.season_learns_alerts is False


def test_the_readme_override_gives_a_metric_the_gauge_rule() -> None:
    """README, "Spike alerts": the control-topic message that selects GAUGE_RULE for a metric."""
    import json
    from pathlib import Path

    from streams.core._spike_rules import GAUGE_RULE

    readme = Path(__file__).resolve().parents[2] / "README.md"
    (line,) = [line for line in readme.read_text().splitlines() if '"drift_z"' in line]
    rules = apply_override(DEFAULT_RULES, json.loads(line))
    assert rules_for(rules, "room-1", "sensors")["concurrent_viewers"] == GAUGE_RULE


def test_rooms_given_the_same_override_share_one_rules_mapping_and_one_detector_plan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Thousands of rooms overridden alike (a VIP tier's floor) hold one effective mapping, and the
    detector builds one plan for it."""
    from streams.core import _spikes

    room_overrides = {
        f"vip-{i}": {"views_per_sec": {"min_volume": 50.0 if i % 2 else 80.0}} for i in range(6_000)
    }
    rules = SpikeRules(room_overrides=room_overrides)
    mappings = {id(rules_for(rules, f"vip-{i}")) for i in range(6_000)}
    assert len(mappings) == 2
    assert rules_for(rules, "vip-1")["views_per_sec"].min_volume == 50.0
    assert rules_for(rules, "vip-2")["views_per_sec"].min_volume == 80.0
    assert rules_for(rules, "vip-2", "beauty") is rules_for(rules, "vip-4", "beauty")
    builds = _count_plan_builds(monkeypatch)
    for _ in range(2):
        for i in range(6_000):
            _spikes._plan(rules_for(rules, f"vip-{i}"), 10_000)
    assert builds() == 2


def test_more_distinct_rule_sets_than_the_plan_cache_held_build_each_plan_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """6 000 rooms, each with a floor of its own, through the detector window after window: each
    rule set's plan is built once. The plans were in one cache of 4 096 that was cleared when
    full, so with more rule sets live every room rebuilt its plan at every window."""

    n = 6_000
    rules = SpikeRules(
        room_overrides={f"r{i}": {"views_per_sec": {"min_volume": 100.0 + i}} for i in range(n)}
    )
    states = {f"r{i}": DetectorState(f"r{i}") for i in range(n)}
    builds = _count_plan_builds(monkeypatch)
    for w in range(3):
        start = 1_700_000_000_000 + w * 10_000
        for room, state in states.items():
            stats = RoomStats(room, start, start + 10_000, 5, 3, 2, 0, 0, 0, 0.0, 0, 0, 0, 0, 0, 0)
            assert observe(state, stats, rules_for(rules, room), 10_000) == []
    assert builds() == n
    assert all(s.last_window_end == 1_700_000_030_000 for s in states.values())


def _count_plan_builds(monkeypatch: pytest.MonkeyPatch) -> Callable[[], int]:
    from streams.core import _spikes

    built = 0
    plan = _spikes._Plan

    def counting(*args: Any) -> Any:
        nonlocal built
        built += 1
        return plan(*args)

    monkeypatch.setattr(_spikes, "_Plan", counting)
    _spikes._PLANS.clear()
    return lambda: built


def test_more_overridden_rooms_than_the_cache_cap_merge_their_rules_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """12 000 rooms with overrides of their own, evaluated window after window: each merges its
    rules once. With the cache's fixed cap of 10 000 it was cleared every 10 000 rooms, and every
    room merged again at every evaluation."""
    from streams.core import _spike_rules

    n = 12_000
    rules = SpikeRules(
        room_overrides={f"r{i}": {"views_per_sec": {"min_volume": float(i)}} for i in range(n)}
    )
    merges = 0
    merge = _spike_rules._merge

    def counting(*args: Any) -> Any:
        nonlocal merges
        merges += 1
        return merge(*args)

    monkeypatch.setattr(_spike_rules, "_merge", counting)
    for _ in range(3):
        for i in range(n):
            assert rules_for(rules, f"r{i}")["views_per_sec"].min_volume == float(i)
    assert merges == n


def test_more_distinct_overrides_than_the_cache_cap_are_resolved_to_one_rule_set_each() -> None:
    """12 000 distinct room overrides, each given to two rooms: the two rooms share one resolved
    rule set (and so one set of detector plans). With the interning cache's fixed cap of 10 000
    it was cleared at the 10 001st, and the second room of the first 10 000 got a copy."""
    n = 12_000
    layers = [{"views_per_sec": {"min_volume": float(i)}} for i in range(n)]
    rules = SpikeRules(
        room_overrides={f"r{i}": layers[i] for i in range(n)} | {f"s{i}": layers[i] for i in range(n)}
    )
    first = [rules_for(rules, f"r{i}") for i in range(n)]
    assert all(rules_for(rules, f"s{i}") is first[i] for i in range(n))
