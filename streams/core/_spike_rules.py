"""Spike-detection rules: per-metric thresholds, with per-category and per-room overrides.

A :class:`MetricRule` holds every threshold of one metric; :class:`SpikeRules`
holds the defaults for all metrics plus partial overrides keyed by room
category and by room id. :func:`rules_for` resolves the effective rules of one
room (room override over category override over defaults, field by field) and
:func:`apply_override` applies one control-topic message, returning a new
``SpikeRules``. Units: seconds for every duration (so a rule behaves the same
at any window length), the metric's own unit (per second for rates, people for
viewer counts) for volumes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from ..exceptions import LivepulseError

#: Metrics evaluated per room per closed window, in evaluation order.
METRICS: Final[tuple[str, ...]] = (
    "views_per_sec",
    "unique_viewers",
    "concurrent_viewers",
    "orders_per_sec",
    "gmv_per_sec",
    "gift_value_per_sec",
)

_MAX_KEY_CHARS = 128
#: entries of a rules object's per-room and interned caches before they start again. The per-room
#: cache may hold twice its overridden rooms (a room seen under two categories): with a fixed cap
#: below that, more overridden rooms live than the cap cleared it over and over, and every one of
#: them merged its rules again at every evaluation.
_ROOM_CACHE_CAP = 10_000


class SpikeRuleError(LivepulseError, ValueError):
    """A rule value or a rule-override message is invalid (not retriable: fix the message)."""


# name -> (kind, lowest allowed, highest allowed); kinds: "f" float, "i" int, "b" bool, "f?" float or None.
_SPEC: Final[dict[str, tuple[str, float, float]]] = {
    "half_life_s": ("f", 1.0, 1e9),
    "warmup_s": ("f", 0.0, 1e9),
    "min_volume": ("f", 0.0, math.inf),
    "ratio": ("f", 1.0, math.inf),
    "z_threshold": ("f", 0.0, math.inf),
    "confirm_s": ("f", 0.0, 1e6),
    "confirm_miss_s": ("f", 0.0, 1e6),
    "winsor_k": ("f", 0.5, math.inf),
    "resolve_ratio": ("f", 0.0, math.inf),
    "resolve_s": ("f", 0.0, 1e9),
    "resolve_z": ("f", 0.0, 1e6),
    "cooldown_s": ("f", 0.0, 1e9),
    "surge_value": ("f?", 0.0, math.inf),
    "surge_resolve_fraction": ("f", 0.0, 1.0),
    "two_sided": ("b", 0, 1),
    "season_s": ("f", 0.0, 1e8),
    "season_bins": ("i", 1, 1_440),
    "season_half_life_periods": ("f", 0.01, 1e3),
    "season_learns_alerts": ("b", 0, 1),
    "long_season_s": ("f", 0.0, 1e9),
    "long_season_bins": ("i", 1, 10_080),
    "long_season_after_periods": ("f", 0.0, 1e3),
    "drift_z": ("f", 0.0, 1e6),
    "drift_half_life_s": ("f", 1.0, 1e9),
    "slow_half_life_s": ("f", 1.0, 1e10),
    "tail_cap": ("f", 0.0, 1e6),
    "drop_enabled": ("b", 0, 1),
    "drop_ratio": ("f", 0.0, 1.0),
    "drop_hold_ratio": ("f", 0.0, math.inf),
    "drop_min_baseline": ("f", 0.0, math.inf),
    "drop_confirm_s": ("f", 0.0, 1e6),
    "drop_resolve_ratio": ("f", 0.0, math.inf),
}
#: window-counted names of rule version 1 (10 s windows) -> their seconds-based successor.
#: Override messages and stored table entries with the old names keep working.
LEGACY_WINDOW_FIELDS: Final[dict[str, str]] = {
    "half_life_windows": "half_life_s",
    "warmup_windows": "warmup_s",
    "confirm_windows": "confirm_s",
    "resolve_windows": "resolve_s",
    "cooldown_windows": "cooldown_s",
    "drop_confirm_windows": "drop_confirm_s",
}
#: the window length the legacy window-counted fields were defined for
LEGACY_WINDOW_S: Final = 10.0
_DROP_FIELDS: Final = frozenset(name for name in _SPEC if name.startswith("drop_"))


def _canonical(name: str, value: object) -> tuple[str, object]:
    """A legacy window-counted field as its seconds-based successor (counted in 10 s windows)."""
    new = LEGACY_WINDOW_FIELDS.get(name)
    if new is None:
        return name, value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpikeRuleError(f"{name} must be a number, got {value!r}")
    return new, value * LEGACY_WINDOW_S


def _check(name: str, value: object) -> float | int | bool | None:
    """Validate one rule field; returns the value normalised to its kind or raises SpikeRuleError."""
    spec = _SPEC.get(name)
    if spec is None:
        raise SpikeRuleError(f"unknown rule field {name!r}; known: {', '.join(sorted(_SPEC))}")
    kind, low, high = spec
    if kind == "b":
        if not isinstance(value, bool):
            raise SpikeRuleError(f"{name} must be true or false, got {value!r}")
        return value
    if value is None and kind == "f?":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpikeRuleError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or not low <= value <= high:
        raise SpikeRuleError(f"{name} must be within [{low}, {high}], got {value!r}")
    if kind == "i":
        if isinstance(value, float) and not value.is_integer():
            raise SpikeRuleError(f"{name} must be a whole number, got {value!r}")
        return int(value)
    return float(value)


@dataclass(frozen=True, slots=True)
class MetricRule:
    """Thresholds for one metric. Every duration is in seconds, whatever the window length.

    Baseline: per metric a level and a scale, both exponentially weighted with
    half-life ``half_life_s`` (a plain time-weighted running mean during the
    ``warmup_s`` warm-up) and winsorised: a value further than ``winsor_k``
    scales from the expected value moves them as if it were at that distance,
    so neither a spike nor a heavy-tailed outlier drags the baseline. With
    ``season_s`` > 0 (0, off, by default; the room defaults turn it on for
    orders and GMV: one hour in sixty 1-minute bins, for recurring flash-sale
    slots), a room that has been active for a full period also has a seasonal
    term: ``season_bins`` phase bins over the period, each an exponentially
    weighted mean of the residual in that phase (half-life
    ``season_half_life_periods`` periods, i.e. visits of the bin), added to the
    level; a one-sided rule uses only its positive part. Each bin learns the
    raw residual, so a flash-sale slot is routine from its second occurrence;
    with ``season_learns_alerts`` false (``GAUGE_RULE``) a window in which the
    metric alerts teaches the bins only its residual clipped at the winsor band,
    so a one-off spike is not expected again a period later, where it would
    read as a dip. With ``long_season_s``
    > 0 as well (0, off, by default; a week in ``GAUGE_RULE``) a second,
    longer term in ``long_season_bins`` bins (same half-life in its own
    periods) learns beside it, and once the series has been learned for
    ``long_season_after_periods`` long periods it replaces the short term
    whenever its slow mean squared miss (half-life ``slow_half_life_s``,
    measured from the end of its first period) is the smaller of the two: a
    series that lives for weeks can learn its weekly pattern, a short one keeps
    the daily term, and one without a weekly pattern keeps it too.
    Each metric is tested on the scale that fits its noise (see ``_spikes``):
    counts against Poisson counting noise as well as the observed scale, money
    on the square-root scale (compound sums of lognormal amounts), levels as
    they are.

    Spike (``RoomSpike``), after warm-up: a window *meets* the rule when
    ``value >= min_volume`` and ``value >= ratio * expected`` and the test's
    score ``>= z_threshold``. The alert fires once windows meeting the rule
    cover ``confirm_s`` seconds (at least one window), allowing up to
    ``confirm_miss_s`` seconds of windows in between that miss the rule without
    falling below the resolve threshold; ``startsAt`` is the first of them. It
    resolves after ``resolve_s`` seconds of windows below ``resolve_ratio *
    expected`` (or below ``min_volume``, or, with ``resolve_z`` > 0, scoring
    below ``resolve_z``: for a gauge whose ``resolve_ratio`` is 1 a noisy value
    back at its expectation is below it only half the time, so the ratio
    alone would keep the alert firing for days), then cannot fire again for
    ``cooldown_s`` seconds. With ``two_sided`` the mirror rule (``RoomDip``:
    value ``<= expected / ratio`` and score ``<= -z_threshold``) runs as well,
    for gauges where a fall is as telling as a rise.

    Drift (off with ``drift_z`` 0, the room default; on in ``GAUGE_RULE``): a
    second test that also meets the spike (or dip) rule, for changes too slow
    or too small for one window. It compares a fast mean of the de-seasoned
    value (half-life ``drift_half_life_s``) with a slow one (half-life
    ``slow_half_life_s``) and divides their gap by its own root mean
    square on this series (same half-life, learned from ordinary windows only,
    never below what independent noise would give); it meets the rule when the
    ratio is ``>= drift_z`` (``<= -drift_z`` for a dip). Dividing by the gap's
    own spread adapts the threshold to each series' autocorrelation and keeps
    the test the same at any window length. With ``tail_cap`` > 0 (0, off, by
    default) the single-window score is also divided by the root of the mean
    of its own square (half-life ``slow_half_life_s``, each window's square
    capped at ``tail_cap``²) when that exceeds 1, so a series whose residuals are routinely wider than
    its baseline's scale (an unmodelled weekly pattern, recurring outliers)
    raises its own threshold.

    Surge (``RoomSurge``), during warm-up only: fires when ``value >=
    surge_value`` (``None`` disables it) for ``confirm_s``; resolves below
    ``surge_resolve_fraction * surge_value`` or, once warmed up, below
    ``resolve_ratio * expected``. A firing surge suppresses the spike rule of
    the same metric.

    Drop (``OrdersDrop``; ``drop_*`` fields are read on the ``orders_per_sec``
    rule only): fires when for ``drop_confirm_s`` seconds ``value <=
    drop_ratio * expected`` while that baseline is at least ``drop_min_baseline``
    and concurrent viewers stay at or above ``drop_hold_ratio`` times their
    baseline; resolves after ``resolve_s`` seconds in which the value is back to
    ``drop_resolve_ratio * expected`` or the condition no longer holds.

    A resolve threshold never lies past its firing threshold: ``resolve_ratio``
    above ``ratio`` counts as ``ratio``, ``drop_resolve_ratio`` below
    ``drop_ratio`` as ``drop_ratio`` (an override that lowers only ``ratio``
    would otherwise resolve alerts that still meet the rule, and they would fire
    again after each cooldown). An open dip or drop alert whose rule is turned
    off (``two_sided``, ``drop_enabled``) resolves like one whose condition no
    longer holds.
    """

    half_life_s: float = 200.0
    warmup_s: float = 180.0
    min_volume: float = 1.0
    ratio: float = 2.25
    z_threshold: float = 3.5
    confirm_s: float = 20.0
    confirm_miss_s: float = 10.0
    winsor_k: float = 3.0
    resolve_ratio: float = 1.5
    resolve_s: float = 30.0
    resolve_z: float = 0.0
    cooldown_s: float = 120.0
    surge_value: float | None = None
    surge_resolve_fraction: float = 0.5
    two_sided: bool = False
    season_s: float = 0.0
    season_bins: int = 60
    season_half_life_periods: float = 0.5
    season_learns_alerts: bool = True
    long_season_s: float = 0.0
    long_season_bins: int = 168
    long_season_after_periods: float = 2.0
    drift_z: float = 0.0
    drift_half_life_s: float = 3_600.0
    slow_half_life_s: float = 7 * 86_400.0
    tail_cap: float = 0.0
    drop_enabled: bool = False
    drop_ratio: float = 0.2
    drop_hold_ratio: float = 0.7
    drop_min_baseline: float = 1.0
    drop_confirm_s: float = 30.0
    drop_resolve_ratio: float = 0.5

    def __post_init__(self) -> None:
        for name in _SPEC:
            value = _check(name, getattr(self, name))
            if value is not getattr(self, name):
                object.__setattr__(self, name, value)

    def alpha(self, window_s: float) -> float:
        """Weight of one window of ``window_s`` seconds in the baselines (from the half-life)."""
        return 1.0 - math.pow(2.0, -window_s / self.half_life_s)


Override = Mapping[str, float | int | bool | None]
#: key (room id or category) -> metric -> partial rule fields
Overrides = Mapping[str, Mapping[str, Override]]


def default_metric_rules() -> Mapping[str, MetricRule]:
    """Defaults for commerce live rooms, at any window length (money in minor units).

    Volumes are floors below which a room is too small to page anyone; surge
    values are levels that deserve attention even without history.
    """
    return {
        "views_per_sec": MetricRule(min_volume=2.0, surge_value=100.0),
        "unique_viewers": MetricRule(min_volume=30.0, surge_value=5_000.0),
        "concurrent_viewers": MetricRule(min_volume=100.0, surge_value=20_000.0),
        "orders_per_sec": MetricRule(min_volume=1.0, surge_value=20.0, season_s=3_600.0),
        "gmv_per_sec": MetricRule(
            min_volume=20_000.0, z_threshold=4.0, surge_value=1_000_000.0, season_s=3_600.0
        ),
        "gift_value_per_sec": MetricRule(min_volume=5_000.0, z_threshold=4.0, surge_value=200_000.0),
    }


class RuleSet(dict[str, MetricRule]):
    """A resolved rules mapping (metric -> rule) that carries the detector's plans of it, one per
    window length (``_spikes._plan``): a plan lives exactly as long as its rules, however many
    distinct rule sets are live. Treat as immutable, like the rules."""

    __slots__ = ("plans",)

    def __init__(self, rules: Mapping[str, MetricRule]) -> None:
        super().__init__(rules)
        self.plans: dict[int, Any] = {}


def _merge(base: Mapping[str, MetricRule], layer: Mapping[str, Override]) -> RuleSet:
    merged = RuleSet(base)
    for metric, changes in layer.items():
        if changes:
            merged[metric] = replace(merged[metric], **changes)  # type: ignore[arg-type]
    return merged


def _normalise_changes(scope: str, key: object, metric: object, changes: object) -> Override:
    if not isinstance(key, str) or not 0 < len(key) <= _MAX_KEY_CHARS:
        raise SpikeRuleError(f"{scope} key must be a string of 1..{_MAX_KEY_CHARS} characters, got {key!r}")
    if metric not in METRICS:
        raise SpikeRuleError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    if not isinstance(changes, Mapping):
        raise SpikeRuleError(f"override fields must be an object, got {changes!r}")
    normalised: dict[str, float | int | bool | None] = {}
    for raw_name, raw_value in changes.items():
        name, value = _canonical(str(raw_name), raw_value)
        if name in _DROP_FIELDS and metric != "orders_per_sec":
            raise SpikeRuleError(f"{name} applies to orders_per_sec only, not {metric}")
        normalised[name] = _check(name, value)
    return normalised


def _normalise_overrides(scope: str, overrides: Overrides) -> Overrides:
    out: dict[str, Mapping[str, Override]] = {}
    for key, per_metric in overrides.items():
        if not isinstance(per_metric, Mapping):
            raise SpikeRuleError(f"{scope} override {key!r} must map metric -> fields, got {per_metric!r}")
        layer = {
            metric: _normalise_changes(scope, key, metric, changes)
            for metric, changes in per_metric.items()
            if changes
        }
        if layer:
            out[key] = layer
    return out


@dataclass(frozen=True, slots=True)
class SpikeRules:
    """Default rules per metric plus partial overrides per room category and per room id.

    Treat as immutable: :func:`apply_override` returns a new object.
    """

    defaults: Mapping[str, MetricRule] = field(default_factory=default_metric_rules)
    category_overrides: Overrides = field(default_factory=dict)
    room_overrides: Overrides = field(default_factory=dict)
    _by_category: dict[str, Mapping[str, MetricRule]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    _by_room: dict[tuple[str, str | None], Mapping[str, MetricRule]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    #: one mapping per distinct effective rule set: rooms given the same override share it, and the
    #: detector's plans (cached per mapping, ``_spikes._plan``) with it
    _interned: dict[tuple[tuple[str, MetricRule], ...], Mapping[str, MetricRule]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        missing = [m for m in METRICS if not isinstance(self.defaults.get(m), MetricRule)]
        if missing:
            raise SpikeRuleError(f"defaults lack a MetricRule for {', '.join(missing)}")
        object.__setattr__(self, "defaults", RuleSet(self.defaults))
        object.__setattr__(
            self, "category_overrides", _normalise_overrides("category", self.category_overrides)
        )
        object.__setattr__(self, "room_overrides", _normalise_overrides("room", self.room_overrides))
        for category, layer in self.category_overrides.items():
            self._by_category[category] = _merge(self.defaults, layer)


DEFAULT_RULES: Final = SpikeRules()


def rules_for(rules: SpikeRules, room_id: str, category: str | None = None) -> Mapping[str, MetricRule]:
    """Effective rules of one room: room override over category override over defaults.

    Cheap on the hot path: rooms without overrides get a shared precomputed mapping.
    """
    base = rules.defaults if category is None else rules._by_category.get(category, rules.defaults)
    layer = rules.room_overrides.get(room_id)
    if not layer:
        return base
    key = (room_id, category)
    cached = rules._by_room.get(key)
    if cached is None:
        cap = max(_ROOM_CACHE_CAP, 2 * len(rules.room_overrides))
        if len(rules._by_room) >= cap:
            rules._by_room.clear()
        merged = _merge(base, layer)
        content = tuple(sorted(merged.items()))
        cached = rules._interned.get(content)
        if cached is None:
            if len(rules._interned) >= cap:
                rules._interned.clear()
            cached = rules._interned[content] = merged
        rules._by_room[key] = cached
    return cached


def apply_override(rules: SpikeRules, message: Mapping[str, Any]) -> SpikeRules:
    """Apply one control-topic message and return the new rules (``rules`` is unchanged).

    Message shape::

        {"scope": "room" | "category", "key": "<room id or category>",
         "metric": "<one of METRICS>", "set": {"ratio": 4.0, ...}, "unset": ["z_threshold"] | "*"}

    ``set`` adds or replaces fields, ``unset`` removes fields of this override
    (``"*"``: all of them) so the next layer down applies again. At least one of
    the two is required; unknown top-level keys are ignored. Raises
    :class:`SpikeRuleError` for anything malformed.
    """
    if not isinstance(message, Mapping):
        raise SpikeRuleError(f"override message must be an object, got {type(message).__name__}")
    scope = message.get("scope")
    if scope not in ("room", "category"):
        raise SpikeRuleError(f"scope must be 'room' or 'category', got {scope!r}")
    key, metric = message.get("key"), message.get("metric")
    to_set = message.get("set", {})
    to_unset = message.get("unset", [])
    if "set" not in message and "unset" not in message:
        raise SpikeRuleError("override message needs 'set' and/or 'unset'")
    if not isinstance(to_set, Mapping):
        raise SpikeRuleError(f"'set' must be an object, got {to_set!r}")
    if to_unset != "*" and (
        not isinstance(to_unset, list) or not all(isinstance(name, str) for name in to_unset)
    ):
        raise SpikeRuleError(f"'unset' must be a list of field names or '*', got {to_unset!r}")
    normalised = _normalise_changes(scope, key, metric, to_set)
    assert isinstance(key, str) and isinstance(metric, str)  # checked by _normalise_changes
    if to_unset != "*":
        to_unset = [LEGACY_WINDOW_FIELDS.get(name, name) for name in to_unset]
    unknown = [] if to_unset == "*" else [name for name in to_unset if name not in _SPEC]
    if unknown:
        raise SpikeRuleError(f"cannot unset unknown rule fields {unknown}")

    current = rules.room_overrides if scope == "room" else rules.category_overrides
    per_metric = dict(current.get(key, {}))
    changes = {} if to_unset == "*" else dict(per_metric.get(metric, {}))
    for name in () if to_unset == "*" else to_unset:
        changes.pop(name, None)
    changes.update(normalised)
    if changes:
        per_metric[metric] = changes
    else:
        per_metric.pop(metric, None)
    updated = dict(current)
    if per_metric:
        updated[key] = per_metric
    else:
        updated.pop(key, None)
    if scope == "room":
        return SpikeRules(rules.defaults, rules.category_overrides, updated)
    return SpikeRules(rules.defaults, updated, rules.room_overrides)


#: The rule for a gauge of unknown kind and scale (a metric with no volume floor, where a fall is
#: as telling as a rise), at the time scale of minutes-to-days series: the rule evaluated on NAB
#: (``loadtest.anomaly_eval``), tuned on realKnownCause and artificialWithAnomaly only. Not a room
#: default: room metrics use ``default_metric_rules``; an operator gives a metric this rule with a
#: control-topic override setting these fields (README, "Spike alerts").
GAUGE_RULE: Final = MetricRule(
    half_life_s=6 * 3_600.0,
    warmup_s=86_400.0,
    min_volume=0.0,
    ratio=1.0,
    z_threshold=5.0,
    confirm_s=0.0,
    confirm_miss_s=0.0,
    winsor_k=3.0,
    resolve_ratio=1.0,
    resolve_s=3_600.0,
    resolve_z=3.0,
    cooldown_s=86_400.0,
    two_sided=True,
    season_s=86_400.0,
    season_bins=24,
    season_half_life_periods=1.0,
    season_learns_alerts=False,
    long_season_s=7 * 86_400.0,
    long_season_bins=168,
    long_season_after_periods=2.0,
    drift_z=3.0,
    drift_half_life_s=5_400.0,
    slow_half_life_s=7 * 86_400.0,
    tail_cap=5.0,
)
