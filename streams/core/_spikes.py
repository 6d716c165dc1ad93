"""Per-room spike detector: EWMA baselines, spike/surge/drop rules and the alert lifecycle.

Pure: fed one closed window (:class:`schemas.RoomStats`) at a time per room,
it returns the alert transitions of that window. Time comes only from the
window bounds, and windows are counted from the records, so a replay or a
restart from :meth:`DetectorState.to_wire` yields the same alerts.

Per metric an alert slot moves idle -> pending (rule met, fewer than
``confirm_windows`` in a row) -> firing -> (``resolve_windows`` windows below
the lower threshold) resolved -> cooldown (``cooldown_windows`` windows) -> idle.

A missing window is a window without activity: flow metrics (views, unique
viewers, orders, GMV, gifts) are 0 and concurrent viewers keep their last
value. Up to ``max_gap_windows`` such windows are replayed; a longer silence
starts a new session: firing alerts resolve at the end of the replayed span
and the baselines restart their warm-up (by then they have decayed to noise
anyway). Synthetic windows are no evidence for the drop rule: it neither
fires nor holds on them.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping, Sequence
from operator import ge
from typing import Any, Final

from schemas import RoomStats

from ..exceptions import StateError
from ._alerts import ALERT_DROP, ALERT_SPIKE, ALERT_SURGE, FIRING, RESOLVED, AlertEvent, severity_for
from ._spike_rules import METRICS, MetricRule

SPIKE_STATE_VERSION: Final = 1
#: missing windows replayed as zero-activity windows before a room restarts its warm-up
DEFAULT_MAX_GAP_WINDOWS: Final = 60

_N = len(METRICS)
#: metrics that are Poisson-like counts: "rate" = count per window / window seconds, "count" = per window.
#: Concurrent viewers (a level) and money (sums of amounts) are not.
_COUNTS: Final = {"views_per_sec": "rate", "unique_viewers": "count", "orders_per_sec": "rate"}
_COUNT_KIND = tuple(_COUNTS.get(metric) for metric in METRICS)
_CONCURRENT = METRICS.index("concurrent_viewers")
_ORDERS = METRICS.index("orders_per_sec")
_Z_CAP = 1e9  # keeps z finite (JSON has no inf) when the baseline has no variance yet
_STD_EPS = 1e-12
#: winsorising band never narrower than this fraction of the baseline, so a flat series can still move
_WINSOR_REL_FLOOR = 0.1
_PENDING, _FIRING, _COOLDOWN = 0, 1, 2
#: windows a pending alert may miss its rule (while staying above the resolve threshold) and still confirm
_CONFIRM_MISSES = 1
_ALERTNAMES = (ALERT_SPIKE, ALERT_SURGE, ALERT_DROP)


class _Alert:
    """Lifecycle of one (metric, alertname) of one room; absent from the state when idle."""

    __slots__ = ("baseline", "count", "phase", "severity", "started_ms", "value", "zscore")

    def __init__(
        self,
        phase: int,
        started_ms: int,
        count: int = 0,
        severity: str = "",
        value: float = 0.0,
        baseline: float = 0.0,
        zscore: float = 0.0,
    ) -> None:
        self.phase = phase
        #: start of the first window that met the rule
        self.started_ms = started_ms
        #: pending: windows met so far; firing: windows below the lower threshold; cooldown: windows left
        self.count = count
        self.severity = severity
        self.value = value
        self.baseline = baseline
        self.zscore = zscore


class DetectorState:
    """Spike-detector state of one room: baselines per metric and live alert slots.

    ``to_wire()`` gives a JSON-able list (embed it in the room changelog record);
    ``DetectorState.from_wire`` restores it exactly.
    """

    __slots__ = ("alerts", "baselines", "last_concurrent", "last_window_end", "room_id", "windows")

    def __init__(self, room_id: str) -> None:
        self.room_id = room_id
        #: end of the last window observed (exclusive), None before the first
        self.last_window_end: int | None = None
        #: windows of history behind the baselines (real and replayed)
        self.windows = 0
        #: concurrent viewers of the last window, carried through missing windows
        self.last_concurrent = 0.0
        #: EWMA mean and variance per metric, interleaved in METRICS order
        self.baselines = array("d", [0.0]) * (2 * _N)
        self.alerts: dict[tuple[str, str], _Alert] | None = None

    def baseline(self, metric: str) -> tuple[float, float]:
        """(mean, standard deviation) of one metric's baseline."""
        i = 2 * METRICS.index(metric)
        return self.baselines[i], math.sqrt(self.baselines[i + 1])

    def to_wire(self) -> list[Any]:
        alerts = [
            [metric, name, a.phase, a.started_ms, a.count, a.severity, a.value, a.baseline, a.zscore]
            for (metric, name), a in (self.alerts or {}).items()
        ]
        return [
            SPIKE_STATE_VERSION,
            self.room_id,
            self.last_window_end,
            self.windows,
            self.last_concurrent,
            self.baselines.tolist(),
            alerts,
        ]

    @classmethod
    def from_wire(cls, wire: Sequence[Any]) -> DetectorState:
        """Inverse of :meth:`to_wire`; raises :class:`StateError` on anything it cannot read."""
        try:
            version, room_id, last_end, windows, last_concurrent, baselines, alerts = wire
            if version != SPIKE_STATE_VERSION:
                raise StateError(f"spike detector state version {version!r} is not {SPIKE_STATE_VERSION}")
            state = cls(str(room_id))
            state.last_window_end = None if last_end is None else int(last_end)
            state.windows = int(windows)
            state.last_concurrent = float(last_concurrent)
            if len(baselines) != 2 * _N:
                raise StateError(f"spike detector state has {len(baselines)} baseline values, not {2 * _N}")
            state.baselines = array("d", (float(v) for v in baselines))
            for metric, name, phase, started, count, severity, value, base, zscore in alerts:
                if metric not in METRICS or name not in _ALERTNAMES or phase not in (0, 1, 2):
                    raise StateError(f"spike detector state has a bad alert slot {metric!r}/{name!r}")
                if state.alerts is None:
                    state.alerts = {}
                slot = _Alert(int(phase), int(started), int(count), str(severity))
                slot.value, slot.baseline, slot.zscore = float(value), float(base), float(zscore)
                state.alerts[(metric, name)] = slot
        except StateError:
            raise
        except (TypeError, ValueError) as exc:
            raise StateError(f"spike detector state is malformed: {exc}") from exc
        return state


def _zscore(delta: float, std: float) -> float:
    if std > _STD_EPS:
        return max(-_Z_CAP, min(_Z_CAP, delta / std))
    return 0.0 if delta == 0 else math.copysign(_Z_CAP, delta)


def _advance(
    state: DetectorState,
    events: list[AlertEvent],
    metric: str,
    name: str,
    met: bool,
    below: bool,
    rule: MetricRule,
    at: tuple[int, int, float, float, float],
) -> None:
    """Move one alert slot through its lifecycle for one window.

    ``met``: the firing rule holds this window; ``below``: the value is past the
    lower (resolve) threshold; ``at``: window start, window end, value, baseline, z.
    """
    alerts = state.alerts
    key = (metric, name)
    slot = alerts.get(key) if alerts else None
    if slot is None:
        if not met:
            return
        slot = _Alert(_PENDING, at[0])
        if alerts is None:
            alerts = state.alerts = {}
        alerts[key] = slot
    assert alerts is not None
    _, window_end, value, baseline, zscore = at
    if slot.phase == _COOLDOWN:
        slot.count -= 1
        if slot.count <= 0:
            del alerts[key]
        return
    if slot.phase == _PENDING:
        if not met:
            # Tolerate one window that misses the rule but stays above the lower threshold:
            # a real 3x step measured with noise does not clear 3x in every window.
            age = (at[0] - slot.started_ms) // (window_end - at[0]) + 1
            if below or age - slot.count > _CONFIRM_MISSES:
                del alerts[key]
            return
        slot.count += 1
        if slot.count < (rule.drop_confirm_windows if name == ALERT_DROP else rule.confirm_windows):
            return
        slot.phase, slot.count = _FIRING, 0
        slot.severity = severity_for(name, value, baseline)
        slot.value, slot.baseline, slot.zscore = value, baseline, zscore
        events.append(_event(state.room_id, metric, name, slot, FIRING, None, window_end))
        return
    slot.value, slot.baseline, slot.zscore = value, baseline, zscore
    if not below:
        slot.count = 0
        return
    slot.count += 1
    if slot.count >= rule.resolve_windows:
        events.append(_event(state.room_id, metric, name, slot, RESOLVED, window_end, window_end))
        if rule.cooldown_windows > 0:
            slot.phase, slot.count = _COOLDOWN, rule.cooldown_windows
        else:
            del alerts[key]


def _event(
    room_id: str, metric: str, name: str, slot: _Alert, status: str, ends_at: int | None, window_end: int
) -> AlertEvent:
    return AlertEvent(
        room_id=room_id,
        alertname=name,
        metric=metric,
        severity=slot.severity,
        status=status,
        starts_at_ms=slot.started_ms,
        ends_at_ms=ends_at,
        window_end_ms=window_end,
        value=slot.value,
        baseline=slot.baseline,
        zscore=slot.zscore,
    )


def _in_alert(state: DetectorState, metric: str) -> bool:
    alerts = state.alerts
    if not alerts:
        return False
    for name in _ALERTNAMES:
        slot = alerts.get((metric, name))
        if slot is not None and slot.phase != _COOLDOWN:
            return True
    return False


def _step(
    state: DetectorState,
    values: Sequence[float],
    window: tuple[int, int],
    rules: Mapping[str, MetricRule],
    synthetic: bool,
    events: list[AlertEvent],
) -> None:
    """Evaluate every metric against its pre-window baseline, then fold the window into the baselines."""
    if state.alerts is None and _fold_quiet(state, values, window, rules):
        return
    n = state.windows
    b = state.baselines
    seconds = (window[1] - window[0]) / 1_000
    concurrent_mean = b[2 * _CONCURRENT]
    for i, metric in enumerate(METRICS):
        rule = rules[metric]
        x = values[i]
        mean, var = b[2 * i], b[2 * i + 1]
        std = math.sqrt(var)
        z = _zscore(x - mean, std)
        kind = _COUNT_KIND[i]
        if kind is not None:
            # Counting noise: a small count's Poisson tail is far heavier than a Gaussian with the
            # same variance, so also require significance on the square-root (variance-stabilised)
            # scale, where Poisson counts have unit variance.
            c = seconds if kind == "rate" else 1.0
            z = min(z, 2.0 * (math.sqrt(max(x, 0.0) * c) - math.sqrt(max(mean, 0.0) * c)))
        warmed = n >= rule.warmup_windows
        spike = warmed and x >= rule.min_volume and x >= rule.ratio * mean and z >= rule.z_threshold
        surge_at = rule.surge_value
        surge = not warmed and surge_at is not None and x >= surge_at
        at = (window[0], window[1], x, mean, z)
        drop = False
        if i == _ORDERS:
            active = (
                rule.drop_enabled
                and warmed
                and not synthetic
                and mean >= rule.drop_min_baseline
                and values[_CONCURRENT] >= rule.drop_hold_ratio * concurrent_mean
            )
            drop = active and x <= rule.drop_ratio * mean
            if drop or (state.alerts and (metric, ALERT_DROP) in state.alerts):
                recovered = not active or x >= rule.drop_resolve_ratio * mean
                _advance(state, events, metric, ALERT_DROP, drop, recovered, rule, at)
        if spike or surge or state.alerts:
            surge_over = (
                surge_at is None
                or x < rule.surge_resolve_fraction * surge_at
                or (warmed and x < rule.resolve_ratio * mean)
            )
            _advance(state, events, metric, ALERT_SURGE, surge, surge_over, rule, at)
            surge_slot = state.alerts.get((metric, ALERT_SURGE)) if state.alerts else None
            surging = surge_slot is not None and surge_slot.phase == _FIRING
            spike_over = x < rule.resolve_ratio * mean or x < rule.min_volume
            _advance(state, events, metric, ALERT_SPIKE, spike and not surging, spike_over, rule, at)
        # Fold into the baseline: plain running mean and variance during warm-up, EWMA after.
        # A spiking value (one that meets the spike or drop rule, or any value while an alert
        # of the metric is pending or firing) is winsorised: it moves the mean by at most
        # alpha * band and leaves the variance alone, so a spike barely moves its own baseline.
        if not warmed:
            alpha = max(rule.alpha, 1.0 / (n + 1))
        elif spike or (i == _ORDERS and drop) or _in_alert(state, metric):
            band = max(rule.winsor_k * std, _WINSOR_REL_FLOOR * max(mean, rule.min_volume))
            b[2 * i] = mean + rule.alpha * min(max(x - mean, -band), band)
            continue
        else:
            alpha = rule.alpha
        diff = x - mean
        incr = alpha * diff
        b[2 * i] = mean + incr
        b[2 * i + 1] = (1.0 - alpha) * (var + diff * incr)
    if state.alerts is not None and not state.alerts:
        state.alerts = None
    state.windows = n + 1
    state.last_window_end = window[1]
    state.last_concurrent = values[_CONCURRENT]


class _Plan:
    """The numbers of a rules mapping that the quiet fast path reads, in METRICS order."""

    __slots__ = ("alphas", "drop_floor", "floors", "max_warmup", "running_until", "warmups")

    def __init__(self, rules: Mapping[str, MetricRule]) -> None:
        ordered = [rules[metric] for metric in METRICS]
        #: a value at or above its floor might meet the spike or surge rule
        self.floors = tuple(
            r.min_volume if r.surge_value is None else min(r.min_volume, r.surge_value) for r in ordered
        )
        self.alphas = tuple(r.alpha for r in ordered)
        self.warmups = tuple(r.warmup_windows for r in ordered)
        self.max_warmup = max(self.warmups)
        #: history length from which the fold's weight is alpha, not 1/(n+1) (a plain running mean)
        self.running_until = tuple(_running_until(r.alpha, r.warmup_windows) for r in ordered)
        orders = ordered[_ORDERS]
        #: an orders baseline at or above this might meet the drop rule (None: drop disabled)
        self.drop_floor = orders.drop_min_baseline if orders.drop_enabled else None


def _running_until(alpha: float, warmup: int) -> int:
    """Smallest n at which the fold weight max(alpha, 1/(n+1)) of a warming-up metric is alpha."""
    n = min(warmup, int(1.0 / alpha))
    while n > 0 and 1.0 / n < alpha:
        n -= 1
    while n < warmup and 1.0 / (n + 1) >= alpha:
        n += 1
    return n


_PLANS: dict[int, tuple[Mapping[str, MetricRule], _Plan]] = {}
_PLAN_CACHE_CAP = 4_096


def _plan(rules: Mapping[str, MetricRule]) -> _Plan:
    """The fast-path plan of a rules mapping (rooms share a few mappings; cached by identity)."""
    hit = _PLANS.get(id(rules))
    if hit is not None and hit[0] is rules:
        return hit[1]
    if len(_PLANS) >= _PLAN_CACHE_CAP:
        _PLANS.clear()
    plan = _Plan(rules)
    _PLANS[id(rules)] = (rules, plan)  # holding the mapping keeps its id from being reused
    return plan


def _is_quiet(plan: _Plan, values: Sequence[float], baselines: array[float]) -> bool:
    """No rule can trigger on ``values`` (given no alert slot is open)."""
    if any(map(ge, values, plan.floors)):
        return False
    drop_floor = plan.drop_floor
    return drop_floor is None or baselines[2 * _ORDERS] < drop_floor


def _fold_quiet(
    state: DetectorState, values: Sequence[float], window: tuple[int, int], rules: Mapping[str, MetricRule]
) -> bool:
    """Fast path of :func:`_step` for a window that cannot trigger any rule; False if it might.

    With no alert slot open, a metric below its ``min_volume`` and ``surge_value`` can neither
    spike nor surge, and a drop needs a baseline of at least ``drop_min_baseline``; then only
    the baseline fold remains, computed exactly as in ``_step``. Most windows of small rooms
    take this path.
    """
    plan = _plan(rules)
    b = state.baselines
    if not _is_quiet(plan, values, b):
        return False
    n = state.windows
    if n >= plan.max_warmup:
        alphas: Sequence[float] = plan.alphas
    else:
        warm = 1.0 / (n + 1)
        alphas = [a if n >= w else max(a, warm) for a, w in zip(plan.alphas, plan.warmups, strict=True)]
    i = 0
    for x, alpha in zip(values, alphas, strict=True):
        mean = b[i]
        if x != mean or b[i + 1]:  # else the fold leaves both at what they are (a metric never seen)
            diff = x - mean
            incr = alpha * diff
            b[i] = mean + incr
            b[i + 1] = (1.0 - alpha) * (b[i + 1] + diff * incr)
        i += 2
    state.windows = n + 1
    state.last_window_end = window[1]
    state.last_concurrent = values[_CONCURRENT]
    return True


def _fold_quiet_run(state: DetectorState, values: Sequence[float], windows: int, plan: _Plan) -> None:
    """Fold ``windows`` repeats of the quiet ``values`` into the baselines at once (a gap's idle windows).

    Both regimes of the fold have a closed form for a constant x. During warm-up the fold is a
    running mean and variance (weight 1/(n+1)): j more values give mean' = (n mean + j x)/(n+j)
    and var' = (n var + n j d^2/(n+j))/(n+j) with d = x - mean. After it, with weight alpha and
    r = 1 - alpha, k windows give mean' = x - d r^k and var' = r^k (var + d^2 (1 - r^k)). Equal
    to ``windows`` calls of :func:`_fold_quiet` up to floating-point rounding.
    """
    b = state.baselines
    n0 = state.windows
    i = 0
    for x, alpha, until in zip(values, plan.alphas, plan.running_until, strict=True):
        mean = b[i]
        var = b[i + 1]
        if x != mean or var:  # else a constant at its mean with no variance stays there
            running = until - n0 if n0 < until else 0
            if running > windows:
                running = windows
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
    state.windows = n0 + windows


def _restart(state: DetectorState, end_ms: int, events: list[AlertEvent]) -> None:
    """Start a new session after a long silence: resolve what still fires, forget the baselines."""
    for (metric, name), slot in (state.alerts or {}).items():
        if slot.phase == _FIRING:
            events.append(_event(state.room_id, metric, name, slot, RESOLVED, end_ms, end_ms))
    state.alerts = None
    state.windows = 0
    state.baselines = array("d", [0.0]) * (2 * _N)


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
    max_gap_windows: int = DEFAULT_MAX_GAP_WINDOWS,
) -> list[AlertEvent]:
    """Feed one closed window of the room; returns the alert transitions (firing, resolved) it caused.

    ``rules`` must hold a rule for every name in METRICS (see ``rules_for``).
    Windows at or before the last one observed are ignored (replays are idempotent).
    """
    if window_ms <= 0:
        raise ValueError(f"window_ms must be positive, got {window_ms}")
    events: list[AlertEvent] = []
    last_end = state.last_window_end
    start = stats.window_start
    if last_end is not None:
        if start < last_end:
            return events
        missed = (start - last_end) // window_ms
        if missed > 0:
            replayed = min(missed, max(0, max_gap_windows))
            idle = [0.0] * _N
            idle[_CONCURRENT] = state.last_concurrent
            plan = _plan(rules)
            if state.alerts is None and _is_quiet(plan, idle, state.baselines):
                # Nothing can fire on the gap (zero flows only lower the orders baseline a drop
                # would need), so only the baselines move: all at once, or not at all when the
                # gap is long enough to restart them anyway.
                if missed <= replayed:
                    _fold_quiet_run(state, idle, replayed, plan)
                    state.last_window_end = last_end + replayed * window_ms
            else:
                for k in range(replayed):
                    ws = last_end + k * window_ms
                    _step(state, idle, (ws, ws + window_ms), rules, True, events)
            if missed > replayed:
                _restart(state, last_end + replayed * window_ms, events)
    _step(state, metric_values(stats, window_ms), (start, stats.window_end), rules, False, events)
    return events


def firing(state: DetectorState) -> list[AlertEvent]:
    """Alerts of the room firing now, with the latest window's readings (for periodic re-sends)."""
    if not state.alerts or state.last_window_end is None:
        return []
    end = state.last_window_end
    return [
        _event(state.room_id, metric, name, slot, FIRING, None, end)
        for (metric, name), slot in state.alerts.items()
        if slot.phase == _FIRING
    ]
