"""Per-room spike detector: robust seasonal baselines, noise-aware tests and the alert lifecycle.

Pure: fed one closed window (:class:`schemas.RoomStats`) at a time per room,
it returns the alert transitions of that window. Time comes only from the
window bounds, and every duration of the rules is in seconds, so a replay, a
restart from :meth:`DetectorState.to_wire` or another window length yields the
same alerts (within one window).

Baseline, per metric, on the metric's test scale (see below): a level and a
variance, exponentially weighted by time (weight ``1 - 2^(-window_s /
half_life_s)``; a time-weighted running mean during warm-up) and winsorised (a
residual beyond ``winsor_k`` scales counts as that many scales, so a spike or a
whale order barely moves them). Once a room leaves the quiet fast path (some
metric reached a floor) it also learns a seasonal term: per phase bin of
``season_s`` an exponentially weighted mean of the residual, used in the
expected value once a full period has been learned (recurring flash-sale slots
stop alerting from their second occurrence on). A rule may add a longer term
(a week for ``GAUGE_RULE``) that replaces it on series that have lived long
enough and whose long term has lately predicted them better.

Gauge rules (``GAUGE_RULE``; off in the room defaults, which keep the quiet fast
path) add a drift test: a fast mean of the de-seasoned value against a slow one,
their gap divided by its own root mean square on the series, so slow ramps and
lasting shifts that no single window shows still meet the rule; and a
tail-adapted single-window score (divided by the root of the slow mean of its
own capped square when above 1).

Tests, per metric kind: counts (views/s, unique viewers, orders/s) must be
significant both against the observed scale and against Poisson counting noise
on the square-root scale (a small count's tail is far heavier than a Gaussian
with the same variance); money (GMV/s, gift value/s) is tested on the
square-root scale (Box-Cox with lambda 1/2), which tames the heavy right tail of
compound sums of lognormal amounts (one whale order) yet stays defined and
smooth at zero, where sparse rooms often are; levels (concurrent viewers) as
they are.

Per (metric, alertname) an alert slot moves idle -> pending (rule met for less
than ``confirm_s``) -> firing -> (``resolve_s`` below the lower threshold)
resolved -> cooldown (``cooldown_s``) -> idle.

A missing window is a window without activity: flow metrics are 0 and
concurrent viewers keep their last value. Up to ``max_gap_s`` of such windows
are replayed; a longer silence starts a new session: firing alerts resolve at
the end of the replayed span and the baselines restart their warm-up. Synthetic
windows are no evidence for the drop rule: it neither fires nor holds on them.
For a sampled series (``observe_values(..., skip_gaps=True)``, the NAB harness)
a missing window is one without a reading instead: nothing is learned or
tested, the warm-up does not advance, cooldowns do.
"""

from __future__ import annotations

import base64
import binascii
import math
import sys
from array import array
from collections.abc import Mapping, Sequence
from operator import ge
from typing import Any, Final

from schemas import RoomStats

from ..exceptions import StateError
from ._alerts import (
    ALERT_DIP,
    ALERT_DROP,
    ALERT_SPIKE,
    ALERT_SURGE,
    FIRING,
    RESOLVED,
    AlertEvent,
    severity_for,
)
from ._spike_rules import LEGACY_WINDOW_S, METRICS, MetricRule, RuleSet

try:
    from . import _fastcore  # type: ignore[attr-defined]
except ImportError:  # not built: the Python detector takes every window (slower, same states)
    _fastcore = None

#: whether the native quiet path (``streams/native``) is built
NATIVE: bool = _fastcore is not None
#: the longest max_gap_s (in ms) the native quiet path takes (a 64-bit int on its side)
_NATIVE_GAP_MS: Final = 2.0**62

#: 1: durations in windows, plain EWMA; 2: durations in ms, test scales, seasonal term, tests in alerts;
#: 3: per metric the drift test's means and normaliser and the score's tail (absent unless a rule
#: enables either)
SPIKE_STATE_VERSION: Final = 3
#: silence replayed as zero-activity windows before a room restarts its warm-up
DEFAULT_MAX_GAP_S: Final = 600.0

_N = len(METRICS)
# Test scale per metric: counts per window ("rate" metrics are per second), levels, money (sqrt).
_RATE, _COUNT, _LEVEL, _MONEY = range(4)
_KIND_OF: Final = {
    "views_per_sec": _RATE,
    "unique_viewers": _COUNT,
    "concurrent_viewers": _LEVEL,
    "orders_per_sec": _RATE,
    "gmv_per_sec": _MONEY,
    "gift_value_per_sec": _MONEY,
}
_KINDS = tuple(_KIND_OF[metric] for metric in METRICS)
_SQRT = tuple(kind == _MONEY for kind in _KINDS)
#: names of the tests in alert annotations, per kind
TEST_NAMES: Final = {
    _RATE: "poisson-sqrt+robust-z",
    _COUNT: "poisson-sqrt+robust-z",
    _LEVEL: "robust-z",
    _MONEY: "sqrt-robust-z",
}
TEST_SURGE: Final = "absolute-level"
TEST_DROP: Final = "drop-ratio"
TEST_DRIFT: Final = "ewma-drift"
_CONCURRENT = METRICS.index("concurrent_viewers")
_ORDERS = METRICS.index("orders_per_sec")
#: the RoomStats field of each metric, and whether it is per second of the window (``metric_values``)
_FIELDS: Final = (
    ("views", True),
    ("unique_viewers", False),
    ("concurrent_viewers", False),
    ("orders_per_sec", False),
    ("gmv_minor", True),
    ("gift_value_minor", True),
)
#: per metric in DetectorState.drift: fast mean, slow mean, mean square of their gap, tail of z
_DRIFT_SLOTS = 4
_Z_CAP = 1e9  # keeps z finite (JSON has no inf) when the baseline has no variance yet
_STD_EPS = 1e-12
#: winsorising band never narrower than this fraction of the level, so a flat series can still move
_WINSOR_REL_FLOOR = 0.1
_PENDING, _FIRING, _COOLDOWN = 0, 1, 2
_ALERTNAMES = (ALERT_SPIKE, ALERT_SURGE, ALERT_DROP, ALERT_DIP)


class _Alert:
    """Lifecycle of one (metric, alertname) of one room; absent from the state when idle."""

    __slots__ = ("baseline", "basis", "count", "phase", "severity", "started_ms", "test", "value", "zscore")

    def __init__(self, phase: int, started_ms: int, count: int = 0, severity: str = "") -> None:
        self.phase = phase
        #: start of the first window that met the rule
        self.started_ms = started_ms
        #: pending: ms met so far; firing: ms below the lower threshold; cooldown: ms left
        self.count = count
        self.severity = severity
        self.value = 0.0
        #: expected value (raw scale) and test score of the latest window
        self.baseline = 0.0
        self.zscore = 0.0
        #: which test and which baseline fired the alert (fixed when it fires)
        self.test = ""
        self.basis = ""


class DetectorState:
    """Spike-detector state of one room: baselines per metric and live alert slots.

    ``to_wire()`` gives a JSON-able list (embed it in the room changelog record);
    ``DetectorState.from_wire`` restores it exactly (and reads version 1).
    """

    __slots__ = (
        "alerts",
        "baselines",
        "drift",
        "history_ms",
        "last_concurrent",
        "last_window_end",
        "room_id",
        "season",
        "season_since_ms",
    )

    def __init__(self, room_id: str) -> None:
        self.room_id = room_id
        #: end of the last window observed (exclusive), None before the first
        self.last_window_end: int | None = None
        #: event time behind the baselines (real and replayed windows)
        self.history_ms = 0
        #: concurrent viewers of the last window, carried through missing windows
        self.last_concurrent = 0.0
        #: level and variance per metric on its test scale, interleaved in METRICS order
        self.baselines = array("d", [0.0]) * (2 * _N)
        #: seasonal residual per metric and phase bin, float32 (allocated when the room first leaves
        #: the quiet path; on the wire as base64 of its bytes, little-endian: 4 bytes a bin)
        self.season: array[float] | None = None
        #: end of the window at which the seasonal term started learning
        self.season_since_ms = 0
        #: per metric, in METRICS order: the drift test's fast mean, slow mean and mean square of
        #: their gap, and the slow mean of the squared score (tail); allocated when a rule with
        #: ``drift_z`` or ``tail_cap`` > 0 first evaluates a window
        self.drift: array[float] | None = None
        self.alerts: dict[tuple[str, str], _Alert] | None = None

    def baseline(self, metric: str) -> tuple[float, float]:
        """(level, standard deviation) of one metric's baseline, on its test scale (sqrt for money)."""
        i = 2 * METRICS.index(metric)
        return self.baselines[i], math.sqrt(self.baselines[i + 1])

    def to_wire(self) -> list[Any]:
        alerts = [[metric, name, *_slot_fields(a)] for (metric, name), a in (self.alerts or {}).items()]
        return [
            SPIKE_STATE_VERSION,
            self.room_id,
            self.last_window_end,
            self.history_ms,
            self.last_concurrent,
            self.baselines.tolist(),
            alerts,
            None if self.season is None else [self.season_since_ms, _season_to_text(self.season)],
            None if self.drift is None else self.drift.tolist(),
        ]

    @classmethod
    def from_wire(cls, wire: Sequence[Any], *, legacy_window_ms: int | None = None) -> DetectorState:
        """Inverse of :meth:`to_wire`; raises :class:`StateError` on anything it cannot read.

        Version 1 counted history and alert timers in windows: they are converted with
        ``legacy_window_ms`` (default 10 s, the only length version 1 was tuned for), and its
        plain-scale money baselines restart their warm-up (version 2 keeps them on sqrt scale).
        Version 2 had no drift test: its chart starts from zero.
        """
        try:
            version = wire[0]
            if version == 1:
                return _from_wire_v1(wire, legacy_window_ms or int(LEGACY_WINDOW_S * 1_000))
            if version not in (2, SPIKE_STATE_VERSION):
                raise StateError(f"spike detector state version {version!r} is not {SPIKE_STATE_VERSION}")
            if version == 2:
                _, room_id, last_end, history_ms, last_concurrent, baselines, alerts, season = wire
                drift = None
            else:
                _, room_id, last_end, history_ms, last_concurrent, baselines, alerts, season, drift = wire
            state = _restore(room_id, last_end, history_ms, last_concurrent, baselines)
            for item in alerts:
                metric, name, phase, started, count, severity, value, base, zscore, test, basis = item
                slot = _slot(state, metric, name, phase, started, count, severity)
                slot.value, slot.baseline, slot.zscore = float(value), float(base), float(zscore)
                slot.test, slot.basis = str(test), str(basis)
            if season is not None:
                since, text = season
                state.season_since_ms = int(since)
                state.season = _season_from_text(text)
            if drift is not None:
                if len(drift) != _DRIFT_SLOTS * _N:
                    raise StateError(
                        f"spike detector state has {len(drift)} drift values, not {_DRIFT_SLOTS * _N}"
                    )
                state.drift = array("d", (float(v) for v in drift))
        except StateError:
            raise
        except (TypeError, ValueError, IndexError) as exc:
            raise StateError(f"spike detector state is malformed: {exc}") from exc
        return state


def _season_to_text(season: array[float]) -> str:
    if sys.byteorder != "little":
        season = array("f", season)
        season.byteswap()
    return base64.b64encode(season.tobytes()).decode("ascii")


def _season_from_text(text: object) -> array[float]:
    if not isinstance(text, str):
        raise StateError(f"spike detector seasonal term must be base64 text, got {type(text).__name__}")
    season = array("f")
    try:
        season.frombytes(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error) as exc:
        raise StateError(f"spike detector seasonal term is malformed: {exc}") from exc
    if sys.byteorder != "little":
        season.byteswap()
    return season


def _slot_fields(a: _Alert) -> list[Any]:
    return [a.phase, a.started_ms, a.count, a.severity, a.value, a.baseline, a.zscore, a.test, a.basis]


def _restore(
    room_id: object, last_end: object, history_ms: object, last_concurrent: object, baselines: Any
) -> DetectorState:
    state = DetectorState(str(room_id))
    state.last_window_end = None if last_end is None else int(last_end)  # type: ignore[call-overload]
    state.history_ms = int(history_ms)  # type: ignore[call-overload]
    state.last_concurrent = float(last_concurrent)  # type: ignore[arg-type]
    if len(baselines) != 2 * _N:
        raise StateError(f"spike detector state has {len(baselines)} baseline values, not {2 * _N}")
    state.baselines = array("d", (float(v) for v in baselines))
    return state


def _slot(
    state: DetectorState,
    metric: object,
    name: object,
    phase: object,
    started: Any,
    count: Any,
    severity: object,
) -> _Alert:
    if metric not in METRICS or name not in _ALERTNAMES or phase not in (0, 1, 2):
        raise StateError(f"spike detector state has a bad alert slot {metric!r}/{name!r}")
    if state.alerts is None:
        state.alerts = {}
    slot = _Alert(int(phase), int(started), int(count), str(severity))
    state.alerts[(str(metric), str(name))] = slot
    return slot


def _from_wire_v1(wire: Sequence[Any], window_ms: int) -> DetectorState:
    _, room_id, last_end, windows, last_concurrent, baselines, alerts = wire
    state = _restore(room_id, last_end, int(windows) * window_ms, last_concurrent, baselines)
    if any(_SQRT):
        # v1 kept money on the plain scale: restart the warm-up rather than mix scales
        state.history_ms = 0
    for metric, name, phase, started, count, severity, value, base, zscore in alerts:
        slot = _slot(state, metric, name, phase, started, count, severity)
        # v1 counted windows met (pending), below (firing) or left (cooldown)
        slot.count = int(count) * window_ms
        slot.value, slot.baseline, slot.zscore = float(value), float(base), float(zscore)
    return state


def _clip(x: float, band: float) -> float:
    return band if x > band else (-band if x < -band else x)


def _zscore(delta: float, std: float) -> float:
    if std > _STD_EPS:
        return max(-_Z_CAP, min(_Z_CAP, delta / std))
    return 0.0 if delta == 0 else math.copysign(_Z_CAP, delta)


def _advance(
    state: DetectorState,
    events: list[AlertEvent],
    key: tuple[str, str],
    met: bool,
    below: bool,
    timing: tuple[int, int, int, int],
    at: tuple[int, int, float, float, float, str, str],
) -> None:
    """Move one alert slot through its lifecycle for one window.

    ``met``: the firing rule holds this window; ``below``: the value is past the
    lower (resolve) threshold; ``timing``: confirm, confirm-miss, resolve and
    cooldown durations in ms; ``at``: window start, window end, value, expected,
    score, test, baseline description.
    """
    alerts = state.alerts
    slot = alerts.get(key) if alerts else None
    if slot is None:
        if not met:
            return
        slot = _Alert(_PENDING, at[0])
        if alerts is None:
            alerts = state.alerts = {}
        alerts[key] = slot
    assert alerts is not None
    window_start, window_end, value, expected, score, test, basis = at
    span = window_end - window_start
    if slot.phase == _COOLDOWN:
        slot.count -= span
        if slot.count <= 0:
            del alerts[key]
        return
    if slot.phase == _PENDING:
        if not met:
            # Tolerate windows that miss the rule but stay above the lower threshold:
            # a real 3x step measured with noise does not clear 3x in every window.
            missed = window_end - slot.started_ms - slot.count
            if below or missed > timing[1]:
                del alerts[key]
            return
        slot.count += span
        if slot.count < timing[0]:
            return
        slot.phase, slot.count = _FIRING, 0
        slot.severity = severity_for(key[1], value, expected)
        slot.value, slot.baseline, slot.zscore = value, expected, score
        slot.test, slot.basis = test, basis
        events.append(_event(state.room_id, key, slot, FIRING, None, window_end))
        return
    slot.value, slot.baseline, slot.zscore = value, expected, score
    if not below:
        slot.count = 0
        return
    slot.count += span
    if slot.count >= timing[2]:
        events.append(_event(state.room_id, key, slot, RESOLVED, window_end, window_end))
        if timing[3] > 0:
            slot.phase, slot.count = _COOLDOWN, timing[3]
        else:
            del alerts[key]


def _event(
    room_id: str, key: tuple[str, str], slot: _Alert, status: str, ends_at: int | None, window_end: int
) -> AlertEvent:
    return AlertEvent(
        room_id=room_id,
        alertname=key[1],
        metric=key[0],
        severity=slot.severity,
        status=status,
        starts_at_ms=slot.started_ms,
        ends_at_ms=ends_at,
        window_end_ms=window_end,
        value=slot.value,
        baseline=slot.baseline,
        zscore=slot.zscore,
        test=slot.test,
        basis=slot.basis,
    )


def _in_alert(alerts: dict[tuple[str, str], _Alert] | None, metric: str) -> bool:
    if not alerts:
        return False
    for name in _ALERTNAMES:
        slot = alerts.get((metric, name))
        if slot is not None and slot.phase != _COOLDOWN:
            return True
    return False


def _expected_raw(level: float, var: float, root: bool) -> float:
    """Expected value on the raw scale: the level, or for sqrt-scale money E[X] = E[sqrt X]^2 + Var."""
    if not root:
        return level
    return level * level + var


def _step(
    state: DetectorState,
    values: Sequence[float],
    window: tuple[int, int],
    rules: Mapping[str, MetricRule],
    synthetic: bool,
    events: list[AlertEvent],
    surge_from: int | None = None,
) -> None:
    """Evaluate every metric against its pre-window baseline, then fold the window into the baselines.

    The surge rule is for baselines that began at or after ``surge_from`` (None: any).
    """
    if state.alerts is None and state.season is None and _fold_quiet(state, values, window, rules):
        return
    plan = _plan(rules, window[1] - window[0])
    history = state.history_ms
    b = state.baselines
    span = window[1] - window[0]
    seconds = span / 1_000
    season = state.season
    if season is None and plan.season_total:
        season = state.season = array("f", [0.0]) * plan.season_total
        state.season_since_ms = window[0]
    elif season is not None and len(season) != plan.season_total:  # the rules' seasons changed
        season = state.season = array("f", [0.0]) * plan.season_total if plan.season_total else None
        state.season_since_ms = window[0]
    learned = window[0] - state.season_since_ms
    concurrent_level = b[2 * _CONCURRENT]
    for i, metric in enumerate(METRICS):
        rule = rules[metric]
        x = values[i]
        kind = _KINDS[i]
        root = kind == _MONEY
        y = math.sqrt(x) if root and x > 0.0 else (0.0 if root else x)
        level, var = b[2 * i], b[2 * i + 1]
        s_index = -1
        s_term = 0.0
        basis = plan.basis[i]
        l_index = -1
        if season is not None and plan.season_ms[i]:
            period = plan.season_ms[i]
            s_index = plan.season_offsets[i] + (window[0] % period) * rule.season_bins // period
            long_period = plan.long_season_ms[i]
            use_long = False
            if long_period:
                offset = plan.long_season_offsets[i]
                l_index = offset + (window[0] % long_period) * rule.long_season_bins // long_period
                errors = offset + rule.long_season_bins
                use_long = learned >= plan.long_season_after_ms[i] and season[errors + 1] < season[errors]
            if use_long:
                # A series that has lived long enough (weeks) uses its long term in place of the
                # short one (the long period's bins hold the short cycle too: a day in a week) when
                # the long term has predicted it better lately.
                s_term = season[l_index]
                basis = plan.long_season_basis[i]
            elif learned >= period - period // rule.season_bins:  # the bin's last visit was learned
                s_term = season[s_index]
                basis = plan.season_basis[i]
            if s_term < 0.0 and not rule.two_sided:
                # A one-sided rule only lets the season raise its expectation: a trough learned
                # from a one-off fall (a ramp's lagging level, a spike's aftermath) must not
                # turn an ordinary value an hour later into a spike.
                s_term = 0.0
        center = level + s_term
        std = math.sqrt(var)
        expected = _expected_raw(center, var, root)
        z = _zscore(y - center, std)
        if kind in (_RATE, _COUNT):
            # Counting noise: also require significance on the square-root (variance-stabilised)
            # scale, where Poisson counts have unit variance.
            c = seconds if kind == _RATE else 1.0
            zp = 2.0 * (math.sqrt(max(x, 0.0) * c) - math.sqrt(max(expected, 0.0) * c))
            z = min(z, zp) if z >= 0 else max(z, zp)
        warmed = history >= plan.warmup_ms[i]
        drift_up = drift_down = False
        dz = 0.0
        beta = plan.drift_alphas[i]
        tail_cap = plan.tail_caps[i]
        if beta or tail_cap:
            if state.drift is None:
                state.drift = array("d", [0.0]) * (_DRIFT_SLOTS * _N)
            d = state.drift
            j = _DRIFT_SLOTS * i
            gamma = plan.slow_alphas[i]
            if tail_cap and warmed:
                # The single-window score adapts to the series' own tail: z is divided by the root
                # of the slow mean of its (capped) square, when that exceeds 1.
                tail = d[j + 3]
                if tail > 1.0:
                    z /= math.sqrt(tail)
                d[j + 3] = tail + gamma * (min(z * z * max(tail, 1.0), tail_cap) - tail)
        if beta:
            # Drift: a fast mean of the de-seasoned value against a slow one, divided by the root of
            # their squared difference's slow mean on this series (which learns from ordinary
            # values only, once warmed up), never below what independent noise would give.
            u = y - s_term
            if history == 0:
                d[j] = d[j + 1] = u
            # during warm-up both means start as running means (so neither starts from one value)
            warm = span / (history + span)
            fast = d[j] + (beta if warmed or beta > warm else warm) * (u - d[j])
            slow = d[j + 1]
            gap = fast - slow
            norm = max(d[j + 2], plan.drift_null_vars[i] * var)
            dz = _zscore(gap, math.sqrt(norm))
            d[j] = fast
            if warmed:
                if dz >= rule.drift_z:
                    drift_up = True
                elif dz <= -rule.drift_z:
                    drift_down = rule.two_sided
                if drift_up or drift_down:
                    gap = math.copysign(rule.drift_z * math.sqrt(norm), gap)
                d[j + 1] = slow + gamma * gap
                d[j + 2] = norm + gamma * (min(gap * gap, norm * rule.drift_z * rule.drift_z) - norm)
            else:
                d[j + 1] = slow + max(gamma, warm) * (u - slow)
                d[j + 2] += max(gamma, warm) * (gap * gap - d[j + 2])
        spike = warmed and x >= rule.min_volume and x >= rule.ratio * expected and z >= rule.z_threshold
        surge_at = rule.surge_value
        surge = (
            not warmed
            and surge_at is not None
            and x >= surge_at
            and (surge_from is None or window[0] - history >= surge_from)
        )
        timing = plan.timing[i]
        resolve_z = plan.resolve_zs[i]
        resolve_ratio = plan.resolve_ratios[i]
        at = (window[0], window[1], x, expected, z, plan.tests[i], basis)
        drift_at = at
        drift_up = drift_up and x >= rule.min_volume and not spike
        if drift_up or drift_down:
            drift_at = (*at[:4], dz, TEST_DRIFT, basis)
        drop = False
        dip = False
        alerts = state.alerts
        # An open slot of a rule turned off since (rules reloaded, the room's category changed)
        # resolves like one whose rule no longer holds: left alone, it would fire for good.
        if i == _ORDERS and (rule.drop_enabled or (alerts and (metric, ALERT_DROP) in alerts)):
            active = (
                rule.drop_enabled
                and warmed
                and not synthetic
                and expected >= rule.drop_min_baseline
                and values[_CONCURRENT] >= rule.drop_hold_ratio * concurrent_level
            )
            drop = active and x <= rule.drop_ratio * expected
            if drop or (alerts and (metric, ALERT_DROP) in alerts):
                recovered = not active or x >= plan.drop_resolve_ratio * expected
                drop_at = (*at[:5], TEST_DROP, basis)
                _advance(state, events, (metric, ALERT_DROP), drop, recovered, plan.drop_timing, drop_at)
        if rule.two_sided:
            dip = warmed and x * rule.ratio <= expected and z <= -rule.z_threshold
            if drift_down and not dip:
                at_dip, dip = drift_at, True
            else:
                at_dip = at
            if dip or (alerts and (metric, ALERT_DIP) in alerts):
                recovered = x * resolve_ratio > expected or (z > -resolve_z and not dip)
                _advance(state, events, (metric, ALERT_DIP), dip, recovered, timing, at_dip)
        elif alerts and (metric, ALERT_DIP) in alerts:
            _advance(state, events, (metric, ALERT_DIP), False, True, timing, at)
        if drift_up:
            spike, at = True, drift_at
        if spike or surge or state.alerts:
            surge_over = (
                surge_at is None
                or x < rule.surge_resolve_fraction * surge_at
                or (warmed and x < resolve_ratio * expected)
            )
            surge_at_ = (*at[:5], TEST_SURGE, "none (new room)")
            _advance(state, events, (metric, ALERT_SURGE), surge, surge_over, timing, surge_at_)
            surge_slot = state.alerts.get((metric, ALERT_SURGE)) if state.alerts else None
            surging = surge_slot is not None and surge_slot.phase == _FIRING
            spike_over = x < resolve_ratio * expected or x < rule.min_volume or (z < resolve_z and not spike)
            _advance(state, events, (metric, ALERT_SPIKE), spike and not surging, spike_over, timing, at)
        # Fold into the baseline: time-weighted running mean and variance during warm-up, EWMA
        # after. The residual is winsorised at winsor_k scales; while the metric meets a rule or
        # has an alert pending or firing, the level moves by at most alpha x that band and the
        # variance not at all, so a spike barely moves its own baseline while a lasting change
        # of level is still absorbed, slowly. The seasonal term learns the residual of its bin.
        diff = y - center
        alpha = plan.alphas[i]
        alerting = False
        if not warmed:
            warm = span / (history + span)
            if warm > alpha:
                alpha = warm
        elif spike or drop or dip or x >= rule.min_volume or _in_alert(state.alerts, metric):
            floor = _WINSOR_REL_FLOOR * (abs(center) if root else max(abs(center), rule.min_volume))
            band = max(rule.winsor_k * std, floor)
            if diff > band:
                diff = band
            elif diff < -band:
                diff = -band
            alerting = spike or drop or dip or _in_alert(state.alerts, metric)
        if alerting:
            b[2 * i] = level + alpha * diff
        else:
            incr = alpha * diff
            b[2 * i] = level + incr
            b[2 * i + 1] = (1.0 - alpha) * (var + diff * incr)
        if s_index >= 0 and season is not None:
            # The seasonal terms learn the raw residual of their bin (a flash-sale slot in full),
            # or, without season_learns_alerts, while the metric alerts the residual clipped at
            # its winsor band (so a one-off spike does not come back as a dip a period later).
            short_miss = y - level - season[s_index]
            clip = alerting and not rule.season_learns_alerts
            season[s_index] += plan.season_alphas[i] * (_clip(short_miss, band) if clip else short_miss)
            if l_index >= 0:
                long_miss = y - level - season[l_index]
                season[l_index] += plan.long_season_alphas[i] * (
                    _clip(long_miss, band) if clip else long_miss
                )
                if learned >= plan.long_season_ms[i]:
                    # Once every long bin has been visited, each term's slow mean squared miss.
                    errors = plan.long_season_offsets[i] + rule.long_season_bins
                    gamma = plan.slow_alphas[i]
                    season[errors] += gamma * (short_miss * short_miss - season[errors])
                    season[errors + 1] += gamma * (long_miss * long_miss - season[errors + 1])
    if state.alerts is not None and not state.alerts:
        state.alerts = None
    state.history_ms = history + span
    state.last_window_end = window[1]
    state.last_concurrent = values[_CONCURRENT]


class _Plan:
    """The numbers of a rules mapping at one window length, in METRICS order."""

    __slots__ = (
        "alphas",
        "basis",
        "drift_alphas",
        "drift_null_vars",
        "drop_floor",
        "drop_resolve_ratio",
        "drop_timing",
        "floors",
        "long_season_after_ms",
        "long_season_alphas",
        "long_season_basis",
        "long_season_ms",
        "long_season_offsets",
        "loud",
        "max_warmup_ms",
        "quiet",
        "resolve_ratios",
        "resolve_zs",
        "season_alphas",
        "season_basis",
        "season_ms",
        "season_offsets",
        "season_total",
        "slow_alphas",
        "tail_caps",
        "tests",
        "timing",
        "warmup_ms",
    )

    def __init__(self, rules: Mapping[str, MetricRule], window_ms: int) -> None:
        ordered = [rules[metric] for metric in METRICS]
        window_s = window_ms / 1_000
        #: a value at or above its floor might meet the spike or surge rule
        self.floors = tuple(
            r.min_volume if r.surge_value is None else min(r.min_volume, r.surge_value) for r in ordered
        )
        #: a two-sided rule can fire at any value, the drift test and the tail learn from every
        #: window: no quiet fast path
        self.loud = any(r.two_sided or r.drift_z > 0 or r.tail_cap > 0 for r in ordered)
        self.alphas = tuple(r.alpha(window_s) for r in ordered)
        self.warmup_ms = tuple(round(r.warmup_s * 1_000) for r in ordered)
        self.max_warmup_ms = max(self.warmup_ms)
        self.timing = tuple(
            (
                max(window_ms, round(r.confirm_s * 1_000)),
                round(r.confirm_miss_s * 1_000),
                max(window_ms, round(r.resolve_s * 1_000)),
                round(r.cooldown_s * 1_000),
            )
            for r in ordered
        )
        #: a window meeting neither test resolves by its score below this (above minus it for a
        #: dip); -inf with resolve_z 0, the room default: only the value resolves an alert
        self.resolve_zs = tuple(r.resolve_z if r.resolve_z > 0.0 else -math.inf for r in ordered)
        #: the resolve thresholds, never past the firing ones: a rule made more sensitive (its
        #: ratio lowered below the resolve ratio) would otherwise resolve alerts that still meet
        #: it, and they would fire again after the cooldown, over and over
        self.resolve_ratios = tuple(min(r.resolve_ratio, r.ratio) for r in ordered)
        orders = ordered[_ORDERS]
        self.drop_timing = (
            max(window_ms, round(orders.drop_confirm_s * 1_000)),
            round(orders.confirm_miss_s * 1_000),
            max(window_ms, round(orders.resolve_s * 1_000)),
            round(orders.cooldown_s * 1_000),
        )
        #: an orders baseline at or above this might meet the drop rule (None: drop disabled)
        self.drop_floor = orders.drop_min_baseline if orders.drop_enabled else None
        self.drop_resolve_ratio = max(orders.drop_resolve_ratio, orders.drop_ratio)
        # A seasonal bin is visited for period/bins seconds per period; its weight per window
        # gives the bin's estimate a half-life of season_half_life_periods visits, whatever
        # the window length.
        self.season_ms = tuple(round(r.season_s * 1_000) for r in ordered)
        offsets, total = [], 0
        for r, period in zip(ordered, self.season_ms, strict=True):
            offsets.append(total)
            total += r.season_bins if period else 0
        self.season_offsets = tuple(offsets)
        self.long_season_ms = tuple(
            round(r.long_season_s * 1_000) if period else 0
            for r, period in zip(ordered, self.season_ms, strict=True)
        )
        self.long_season_after_ms = tuple(
            round(long * r.long_season_after_periods)
            for r, long in zip(ordered, self.long_season_ms, strict=True)
        )
        long_offsets = []
        for r, long in zip(ordered, self.long_season_ms, strict=True):
            long_offsets.append(total)
            # the bins, then the slow mean squared miss of the short and of the long term
            total += r.long_season_bins + 2 if long else 0
        self.long_season_offsets = tuple(long_offsets)
        self.season_total = total
        self.long_season_alphas = tuple(
            1.0 - 2.0 ** (-window_ms * r.long_season_bins / (long * r.season_half_life_periods))
            if long
            else 0.0
            for r, long in zip(ordered, self.long_season_ms, strict=True)
        )
        self.season_alphas = tuple(
            1.0 - 2.0 ** (-window_ms * r.season_bins / (period * r.season_half_life_periods))
            if period
            else 0.0
            for r, period in zip(ordered, self.season_ms, strict=True)
        )
        # Drift chart weights (0: test off) and the chart's variance for independent unit residuals,
        # beta / (2 - beta), the floor of its normaliser.
        self.drift_alphas = tuple(
            1.0 - 2.0 ** (-window_s / r.drift_half_life_s) if r.drift_z > 0 else 0.0 for r in ordered
        )
        self.slow_alphas = tuple(1.0 - 2.0 ** (-window_s / r.slow_half_life_s) for r in ordered)
        self.drift_null_vars = tuple(beta / (2.0 - beta) for beta in self.drift_alphas)
        self.tail_caps = tuple(r.tail_cap**2 for r in ordered)
        self.tests = tuple(TEST_NAMES[kind] for kind in _KINDS)
        self.basis = tuple(
            f"winsorised EWMA{' of sqrt' if root else ''}, half-life {r.half_life_s:g} s"
            for r, root in zip(ordered, _SQRT, strict=True)
        )
        self.season_basis = tuple(
            f"{basis} + seasonal term ({r.season_s:g} s in {r.season_bins} bins)"
            for basis, r in zip(self.basis, ordered, strict=True)
        )
        self.long_season_basis = tuple(
            f"{basis} + seasonal term ({r.long_season_s:g} s in {r.long_season_bins} bins)"
            for basis, r in zip(self.basis, ordered, strict=True)
        )
        #: the native path's copy of these numbers (None: not built, or no quiet path)
        self.quiet = _quiet_plan(self, ordered)


def _quiet_plan(plan: _Plan, ordered: Sequence[MetricRule]) -> Any:
    """``plan``'s numbers for the native path (``_fastcore.observe_quiet``), or None when it is
    not built, the rules are loud (two-sided, drift, tail: no quiet path), a number it compares
    or multiplies is no float (Python compares an int exactly) or a bin count no int."""
    if _fastcore is None or plan.loud:
        return None
    drop = plan.drop_floor
    surges = [r.surge_value for r in ordered]
    tests = [(r.min_volume, r.ratio, r.z_threshold, r.winsor_k) for r in ordered]
    numbers = (*plan.floors, drop or 0.0, *(x for test in tests for x in test), *(x or 0.0 for x in surges))
    bins = [(r.season_bins, r.long_season_bins) for r in ordered]
    if any(float(x) != x for x in numbers) or any(type(n) is not int or n < 1 for pair in bins for n in pair):
        return None
    seasons = [
        (
            period,
            plan.season_offsets[i],
            bins[i][0] if period else 0,
            long,
            plan.long_season_offsets[i],
            bins[i][1] if long else 0,
            plan.long_season_after_ms[i],
        )
        for i, (period, long) in enumerate(zip(plan.season_ms, plan.long_season_ms, strict=True))
    ]
    return _fastcore.QuietPlan(
        [float(f) for f in plan.floors],
        list(plan.alphas),
        list(plan.warmup_ms),
        list(_SQRT),
        None if drop is None else float(drop),
        _CONCURRENT,
        _ORDERS,
        [name for name, _ in _FIELDS],
        [per_second for _, per_second in _FIELDS],
        [
            (kind, *map(float, test), None if surge is None else float(surge))
            for kind, test, surge in zip(_KINDS, tests, surges, strict=True)
        ],
        seasons,
        list(zip(plan.season_alphas, plan.long_season_alphas, plan.slow_alphas, strict=True)),
        plan.season_total,
    )


#: plans of rules mappings that are no RuleSet (a caller's own dict), by identity
_PLANS: dict[tuple[int, int], tuple[Mapping[str, MetricRule], _Plan]] = {}
_PLAN_CACHE_CAP = 4_096


def _plan(rules: Mapping[str, MetricRule], window_ms: int) -> _Plan:
    """The plan of a rules mapping at a window length. A :class:`RuleSet` (what ``rules_for``
    returns) keeps its own; rooms share a few of them (one per distinct effective rule set)."""
    if type(rules) is RuleSet:
        cached: _Plan | None = rules.plans.get(window_ms)
        if cached is None:
            cached = rules.plans[window_ms] = _Plan(rules, window_ms)
        return cached
    key = (id(rules), window_ms)
    hit = _PLANS.get(key)
    if hit is not None and hit[0] is rules:
        return hit[1]
    if len(_PLANS) >= _PLAN_CACHE_CAP:
        _PLANS.clear()
    plan = _Plan(rules, window_ms)
    _PLANS[key] = (rules, plan)  # holding the mapping keeps its id from being reused
    return plan


def _is_quiet(plan: _Plan, values: Sequence[float], baselines: array[float]) -> bool:
    """No rule can trigger on ``values`` (given no alert slot is open)."""
    if plan.loud or any(map(ge, values, plan.floors)):
        return False
    drop_floor = plan.drop_floor
    return drop_floor is None or baselines[2 * _ORDERS] < drop_floor


def _fold_quiet(
    state: DetectorState, values: Sequence[float], window: tuple[int, int], rules: Mapping[str, MetricRule]
) -> bool:
    """Fast path of :func:`_step` for a window that cannot trigger any rule; False if it might.

    With no alert slot open and no seasonal term, a metric below its ``min_volume`` and
    ``surge_value`` can neither spike nor surge, and a drop needs a baseline of at least
    ``drop_min_baseline``; then only the baseline fold remains, computed exactly as in
    ``_step``. Most windows of small rooms take this path.
    """
    span = window[1] - window[0]
    plan = _plan(rules, span)
    b = state.baselines
    if not _is_quiet(plan, values, b):
        return False
    history = state.history_ms
    warm = span / (history + span)
    i = 0
    for x, alpha, warmup, root in zip(values, plan.alphas, plan.warmup_ms, _SQRT, strict=True):
        if root:
            x = math.sqrt(x) if x > 0.0 else 0.0
        level = b[i]
        var = b[i + 1]
        if x != level or var:  # else the fold leaves both at what they are (a metric never seen)
            a = alpha if history >= warmup or alpha > warm else warm
            diff = x - level
            incr = a * diff
            b[i] = level + incr
            b[i + 1] = (1.0 - a) * (var + diff * incr)
        i += 2
    state.history_ms = history + span
    state.last_window_end = window[1]
    state.last_concurrent = values[_CONCURRENT]
    return True


def _fold_quiet_run(
    state: DetectorState, values: Sequence[float], windows: int, span: int, plan: _Plan
) -> None:
    """Fold ``windows`` repeats of the quiet ``values`` (``span`` ms each) at once (a gap's idle windows).

    Both regimes of the fold have a closed form for a constant x (on the metric's test scale).
    During warm-up the weight is span/(history + span), a running mean: with n = history/span,
    j more values give mean' = (n mean + j x)/(n+j) and var' = (n var + n j d^2/(n+j))/(n+j)
    with d = x - mean. After it, with weight alpha and r = 1 - alpha, k windows give
    mean' = x - d r^k and var' = r^k (var + d^2 (1 - r^k)). Equal to ``windows`` calls of
    :func:`_fold_quiet` up to floating-point rounding.
    """
    b = state.baselines
    h0 = state.history_ms
    n0 = h0 / span
    i = 0
    for x, alpha, warmup, root in zip(values, plan.alphas, plan.warmup_ms, _SQRT, strict=True):
        if root:
            x = math.sqrt(x) if x > 0.0 else 0.0
        mean = b[i]
        var = b[i + 1]
        if x != mean or var:  # else a constant at its mean with no variance stays there
            running = 0
            if h0 < warmup:
                # windows still weighted 1/(n+1) > alpha: before warm-up ends and while 1/(n+1) > alpha
                until = min(-(-(warmup - h0) // span), math.floor(1.0 / alpha - n0))
                running = min(windows, max(0, until))
            if running:
                total = n0 + running
                diff = x - mean
                mean = (n0 * mean + running * x) / total
                var = (n0 * var + n0 * running * diff * diff / total) / total
            left = windows - running
            if left:
                rk = (1.0 - alpha) ** left
                diff = x - mean
                mean = x - diff * rk
                var = rk * (var + diff * diff * (1.0 - rk))
            b[i] = mean
            b[i + 1] = var
        i += 2
    state.history_ms = h0 + windows * span


def _skip(state: DetectorState, until_ms: int, plan: _Plan) -> None:
    """Let time pass to ``until_ms`` without readings: cooldowns run, nothing is learned.

    The warm-up counts observed time only (``history_ms`` is the time behind the baselines). A
    pending alert meets the gap as windows that missed its rule; a firing one waits for readings
    to resolve it.
    """
    assert state.last_window_end is not None
    gap = until_ms - state.last_window_end
    state.last_window_end = until_ms
    alerts = state.alerts
    if alerts:
        for key, slot in list(alerts.items()):
            if slot.phase == _COOLDOWN:
                slot.count -= gap
                if slot.count <= 0:
                    del alerts[key]
            elif slot.phase == _PENDING:
                timing = plan.drop_timing if key[1] == ALERT_DROP else plan.timing[METRICS.index(key[0])]
                if until_ms - slot.started_ms - slot.count > timing[1]:
                    del alerts[key]
        if not alerts:
            state.alerts = None


def _restart(state: DetectorState, end_ms: int, events: list[AlertEvent]) -> None:
    """Start a new session after a long silence: resolve what still fires, forget the baselines."""
    for key, slot in (state.alerts or {}).items():
        if slot.phase == _FIRING:
            events.append(_event(state.room_id, key, slot, RESOLVED, end_ms, end_ms))
    state.alerts = None
    state.history_ms = 0
    state.baselines = array("d", [0.0]) * (2 * _N)
    state.season = None
    state.drift = None


def resolve_all(state: DetectorState, end_ms: int) -> list[AlertEvent]:
    """Resolve whatever still fires (the room is being forgotten) and forget the baselines."""
    events: list[AlertEvent] = []
    _restart(state, end_ms, events)
    return events


def metric_values(stats: RoomStats, window_ms: int) -> tuple[float, ...]:
    """The detector's metrics of one window, in METRICS order."""
    seconds = window_ms / 1_000
    return (
        stats.views / seconds,
        float(stats.unique_viewers),
        float(stats.concurrent_viewers),
        float(stats.orders_per_sec),
        stats.gmv_minor / seconds,
        stats.gift_value_minor / seconds,
    )


def observe(
    state: DetectorState,
    stats: RoomStats,
    rules: Mapping[str, MetricRule],
    window_ms: int,
    *,
    max_gap_s: float = DEFAULT_MAX_GAP_S,
    surge_from: int | None = None,
    native: bool = True,
) -> list[AlertEvent]:
    """Feed one closed window of the room; returns the alert transitions (firing, resolved) it caused.

    ``rules`` must hold a rule for every name in METRICS (see ``rules_for``).
    Windows at or before the last one observed are ignored (replays are idempotent).
    ``surge_from``: the surge rule (``RoomSurge``) holds only for a baseline that began at or
    after this event time (None: always). Whoever starts watching rooms that are already live
    (a first deployment, a state reset) cannot tell them from new ones: it sets this past the
    first windows it saw, or every room already above a ``surge_value`` would raise one.
    ``native``: a window of a room with no alert slot open on which no rule is met goes to the
    native kernel where it is built (``streams/native``: the same state, seasonal term included,
    bit for bit, faster; the kernel hands back any window that might meet a rule); False: the
    Python detector takes every window.
    """
    if window_ms <= 0:
        raise ValueError(f"window_ms must be positive, got {window_ms}")
    if native and state.alerts is None and type(window_ms) is int:
        # the kernel takes the gap as a 64-bit int: inf, nan or a longer one are Python's
        max_gap_ms = max_gap_s * 1_000
        quiet = _plan(rules, window_ms).quiet if -_NATIVE_GAP_MS < max_gap_ms < _NATIVE_GAP_MS else None
        if quiet is not None and _fastcore.observe_quiet(state, stats, window_ms, int(max_gap_ms), quiet):
            return []
    return observe_values(
        state,
        metric_values(stats, window_ms),
        stats.window_start,
        stats.window_start + window_ms,
        rules,
        max_gap_s=max_gap_s,
        surge_from=surge_from,
    )


def observe_values(
    state: DetectorState,
    values: Sequence[float],
    window_start: int,
    window_end: int,
    rules: Mapping[str, MetricRule],
    *,
    max_gap_s: float = DEFAULT_MAX_GAP_S,
    skip_gaps: bool = False,
    surge_from: int | None = None,
) -> list[AlertEvent]:
    """:func:`observe` for metric values already computed (METRICS order), e.g. a generic series.

    Windows missing before ``window_start`` are a room's idle windows (flows 0, levels carried)
    up to ``max_gap_s``, and a restart after a longer gap. With ``skip_gaps`` they are instead
    windows of a sampled series with no reading: nothing is learned or tested on them and the
    warm-up does not advance, but time passes through them (seasonal position, cooldowns).
    """
    window_ms = window_end - window_start
    if window_ms <= 0:
        raise ValueError(f"window must have a positive length, got [{window_start}, {window_end})")
    events: list[AlertEvent] = []
    last_end = state.last_window_end
    if last_end is not None:
        if window_start < last_end:
            return events
        missed = (window_start - last_end) // window_ms
        if missed > 0 and skip_gaps:
            _skip(state, window_start, _plan(rules, window_ms))
        elif missed > 0:
            replayed = min(missed, max(0, int(max_gap_s * 1_000) // window_ms))
            idle = [0.0] * _N
            idle[_CONCURRENT] = state.last_concurrent
            plan = _plan(rules, window_ms)
            if state.alerts is None and state.season is None and _is_quiet(plan, idle, state.baselines):
                # Nothing can fire on the gap (zero flows only lower the orders baseline a drop
                # would need), so only the baselines move: all at once, or not at all when the
                # gap is long enough to restart them anyway.
                if missed <= replayed:
                    _fold_quiet_run(state, idle, replayed, window_ms, plan)
                    state.last_window_end = last_end + replayed * window_ms
            else:
                for k in range(replayed):
                    ws = last_end + k * window_ms
                    _step(state, idle, (ws, ws + window_ms), rules, True, events, surge_from)
            if missed > replayed:
                _restart(state, last_end + replayed * window_ms, events)
    _step(state, values, (window_start, window_end), rules, False, events, surge_from)
    return events


def firing(state: DetectorState) -> list[AlertEvent]:
    """Alerts of the room firing now, with the latest window's readings (for periodic re-sends)."""
    if not state.alerts or state.last_window_end is None:
        return []
    end = state.last_window_end
    return [
        _event(state.room_id, key, slot, FIRING, None, end)
        for key, slot in state.alerts.items()
        if slot.phase == _FIRING
    ]
