"""The spike detector on constructed series: each rule, the alert lifecycle, gaps, restarts, the record."""

from __future__ import annotations

import itertools
import math
import random
import statistics
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import RoomStats
from streams.core._alerts import AlertEvent, fingerprint, to_alertmanager
from streams.core._spike_rules import GAUGE_RULE, METRICS, MetricRule, SpikeRules, rules_for
from streams.core._spikes import (
    DetectorState,
    _fold_quiet,
    _fold_quiet_run,
    _plan,
    _step,
    firing,
    observe,
    observe_values,
)

W = 10_000  # window_ms
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a multiple of W
RULES = rules_for(SpikeRules(), "room-1")


def window(
    i: int,
    *,
    views: int = 100,
    unique: int = 300,
    concurrent: int = 1_000,
    orders: int = 20,
    gmv: int | None = None,
    gift_value: int = 0,
    room: str = "room-1",
) -> RoomStats:
    """Window ``i`` of a room; the defaults are a steady mid-size room (10 views/s, 2 orders/s)."""
    start = T0 + i * W
    return RoomStats(
        room_id=room,
        window_start=start,
        window_end=start + W,
        views=views,
        unique_viewers=unique,
        concurrent_viewers=concurrent,
        likes=0,
        comments=0,
        orders=orders,
        orders_per_sec=orders / (W / 1_000),
        gmv_minor=orders * 5_000 if gmv is None else gmv,
        refunds_minor=0,
        gifts=0,
        gift_value_minor=gift_value,
        late_events=0,
    )


def poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 50:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def gmv_of(rng: random.Random, orders: int) -> int:
    """Sum of ``orders`` lognormal amounts (median 5 000 minor units), by a normal approximation when many."""
    mu, sigma = math.log(5_000), 0.5
    if orders <= 10:
        return sum(round(rng.lognormvariate(mu, sigma)) for _ in range(orders))
    mean = math.exp(mu + sigma**2 / 2)
    sd = mean * math.sqrt(math.exp(sigma**2) - 1)
    return max(0, round(rng.gauss(orders * mean, math.sqrt(orders) * sd)))


def noisy(rng: random.Random, i: int, scale: Sequence[float] = (1.0,) * 4, level: float = 1.0) -> RoomStats:
    """A steady room's window with Poisson noise; ``scale`` multiplies views, unique, concurrent, orders."""
    views, unique, concurrent, orders = (level * s for s in scale)
    n_orders = poisson(rng, 20 * orders)
    return window(
        i,
        views=poisson(rng, 100 * views),
        unique=poisson(rng, 300 * unique),
        concurrent=max(0, round(rng.gauss(1_000 * concurrent, 30 * math.sqrt(concurrent)))),
        orders=n_orders,
        gmv=gmv_of(rng, n_orders),
    )


def run(
    series: Iterable[RoomStats], rules: Any = RULES, state: DetectorState | None = None
) -> tuple[DetectorState, list[AlertEvent]]:
    state = state or DetectorState("room-1")
    events: list[AlertEvent] = []
    for stats in series:
        events.extend(observe(state, stats, rules, W))
    return state, events


def index_of(ms: int) -> int:
    return (ms - T0) // W


# --- steady traffic, ramps ------------------------------------------------------------------------


@settings(max_examples=100, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1), level=st.floats(0.05, 50.0))
def test_steady_traffic_with_noise_never_fires(seed: int, level: float) -> None:
    rng = random.Random(seed)
    _, events = run(noisy(rng, i, level=level) for i in range(400))
    assert [e for e in events if e.alertname != "RoomSurge"] == []


@pytest.mark.parametrize("seed", range(5))
def test_slow_ramp_does_not_fire(seed: int) -> None:
    """Traffic triples over 20 minutes (120 windows), holds, and eases back: no alert."""
    rng = random.Random(seed)
    profile = (
        [1.0] * 60
        + [1 + 2 * k / 120 for k in range(120)]
        + [3.0] * 60
        + [3 - 2 * k / 120 for k in range(120)]
    )
    _, events = run(noisy(rng, i, level=m) for i, m in enumerate(profile))
    assert events == []


# --- a step up ------------------------------------------------------------------------------------


def step_series(rng: random.Random, up: int = 100, length: int = 20, size: float = 5.0) -> list[RoomStats]:
    """Steady, then views x ``size`` for ``length`` windows from window ``up``, then steady again."""
    return [
        noisy(rng, i, scale=(size if up <= i < up + length else 1.0, 1.0, 1.0, 1.0))
        for i in range(up + length + 60)
    ]


@pytest.mark.parametrize("seed", range(5))
def test_step_up_fires_once_and_resolves_once(seed: int) -> None:
    _, events = run(step_series(random.Random(seed)))
    assert [(e.alertname, e.metric, e.status) for e in events] == [
        ("RoomSpike", "views_per_sec", "firing"),
        ("RoomSpike", "views_per_sec", "resolved"),
    ]
    fired, resolved = events
    # confirmed by the second spiking window; starts at the first; resolves after 3 windows back down
    assert index_of(fired.window_end_ms) == 102 and index_of(fired.starts_at_ms) == 100
    assert fired.ends_at_ms is None and fired.severity == "warning"
    assert 4 < fired.ratio < 6.5 and fired.zscore > 10
    assert resolved.starts_at_ms == fired.starts_at_ms
    assert resolved.ends_at_ms == resolved.window_end_ms == T0 + 123 * W


def test_spike_barely_moves_its_baseline() -> None:
    state, _ = run(step_series(random.Random(7), up=100, length=15, size=10.0)[:100])
    before, _ = state.baseline("views_per_sec")
    run(step_series(random.Random(7), up=100, length=15, size=10.0)[100:115], state=state)
    after, _ = state.baseline("views_per_sec")
    assert after < 1.25 * before  # an unclipped EWMA would have moved to ~5x


def test_ten_fold_spike_is_critical_and_a_long_step_keeps_firing() -> None:
    state, events = run(step_series(random.Random(3), up=100, length=60, size=12.0)[:160])
    assert [(e.status, e.severity) for e in events] == [("firing", "critical")]
    assert [(e.metric, e.status) for e in firing(state)] == [("views_per_sec", "firing")]
    assert firing(state)[0].window_end_ms == T0 + 160 * W


def test_single_window_blip_does_not_fire() -> None:
    rng = random.Random(11)
    series = [noisy(rng, i, scale=(8.0 if i == 100 else 1.0, 1, 1, 1)) for i in range(200)]
    assert run(series)[1] == []


# --- warm-up and surge ----------------------------------------------------------------------------


def test_spike_during_warmup_does_not_fire() -> None:
    """Windows 0-4 at 10 views/s, then 5x for 6 windows while the baseline is still warming up."""
    series = [window(i, views=500 if 5 <= i < 11 else 100) for i in range(60)]
    assert run(series)[1] == []


def test_surge_fires_during_warmup_and_resolves_once_the_baseline_knows_the_room() -> None:
    """A new room straight at 150 views/s (surge level 100/s), staying there."""
    state, events = run(window(i, views=1_500) for i in range(3))
    assert [(e.alertname, e.metric, e.status, e.severity) for e in events] == [
        ("RoomSurge", "views_per_sec", "firing", "critical")
    ]
    assert events[0].starts_at_ms == T0
    _, later = run((window(i, views=1_500) for i in range(3, 40)), state=state)
    assert [(e.alertname, e.status) for e in later] == [("RoomSurge", "resolved")]
    # warm-up is 18 windows; the surge resolves 3 windows after the baseline knows the level
    assert index_of(later[0].window_end_ms) == 21


def test_surge_only_for_a_baseline_begun_at_or_after_surge_from() -> None:
    """``surge_from`` names the first window of a new room; a baseline begun before it (a room the
    caller saw at its own start) gets no surge, and a baseline restarted after a long silence
    (the room is back as a new one) gets it again."""

    def surged(series: Iterable[RoomStats], surge_from: int, state: DetectorState) -> list[int]:
        events = [e for s in series for e in observe(state, s, RULES, W, surge_from=surge_from)]
        return [index_of(e.starts_at_ms) for e in events if e.alertname == "RoomSurge"]

    big = [window(i, views=1_500) for i in range(5)]
    assert surged(big, T0 + W, DetectorState("room-1")) == []
    assert surged(big, T0, DetectorState("room-1")) == [0]
    assert surged(big[1:], T0 + W, DetectorState("room-1")) == [1]
    # a quiet room growing past the surge level later in its warm-up began before surge_from
    growing = [window(i, views=50 if i < 4 else 1_500) for i in range(10)]
    assert surged(growing, T0 + W, DetectorState("room-1")) == []
    # back after a silence long enough to restart the baseline: a new room again
    state = DetectorState("room-1")
    assert surged(big, T0 + W, state) == []
    back = [window(i, views=1_500) for i in range(200, 203)]
    assert surged(back, T0 + W, state) == [200]


def test_no_spike_alert_while_a_surge_fires() -> None:
    # still surging when warm-up ends (18 windows), then 10x more: the surge covers it
    series = [window(i, views=1_500 if i < 18 else 15_000) for i in range(30)]
    _, events = run(series)
    assert {e.alertname for e in events} == {"RoomSurge"}


# --- hysteresis and cooldown ----------------------------------------------------------------------


def baseline_then(values: Sequence[int], warm: int = 60) -> list[RoomStats]:
    """``warm`` windows at exactly 100 views then the given views per window."""
    return [window(i, views=100) for i in range(warm)] + [
        window(warm + k, views=v) for k, v in enumerate(values)
    ]


def test_flapping_around_the_threshold_yields_one_alert() -> None:
    # alternately just above (2.4x) and just below (2.1x) the 2.25x threshold, for 10 minutes
    _, events = run(baseline_then([240, 210] * 30))
    assert [e.status for e in events] == ["firing"]


def test_flapping_between_spike_and_normal_yields_one_alert() -> None:
    # 3 windows at 4x, 2 at 1x: never 3 windows below the resolve threshold in a row
    _, events = run(baseline_then([400, 400, 400, 100, 100] * 12))
    assert [e.status for e in events] == ["firing"]


def test_cooldown_blocks_a_refire_then_allows_it() -> None:
    rule = RULES["views_per_sec"]
    gap = round(rule.cooldown_s * 1_000) // W
    # spike, resolve (3 windows), spike again inside the cooldown, then again after it
    values = [400] * 5 + [100] * 3 + [400] * 4 + [100] * (gap + 3) + [400] * 3
    _, events = run(baseline_then(values))
    assert [(e.status, index_of(e.starts_at_ms)) for e in events] == [
        ("firing", 60),
        ("resolved", 60),
        ("firing", 60 + 5 + 3 + 4 + gap + 3),
    ]


# --- drop rule ------------------------------------------------------------------------------------

DROP_RULES = {**RULES, "orders_per_sec": replace(RULES["orders_per_sec"], drop_enabled=True)}


def drop_series(rng: random.Random, viewers_after: float) -> list[RoomStats]:
    """60 steady windows at 2 orders/s, then orders collapse to ~0 for 10 windows, then recover."""
    return [
        noisy(rng, i, scale=(1, 1, viewers_after, 0.02) if 60 <= i < 70 else (1, 1, 1, 1)) for i in range(90)
    ]


@pytest.mark.parametrize("seed", range(3))
def test_drop_fires_when_orders_collapse_while_viewers_hold(seed: int) -> None:
    _, events = run(drop_series(random.Random(seed), viewers_after=1.0), rules=DROP_RULES)
    drops = [
        (e.alertname, e.status, index_of(e.starts_at_ms)) for e in events if e.metric == "orders_per_sec"
    ]
    assert drops == [("OrdersDrop", "firing", 60), ("OrdersDrop", "resolved", 60)]
    assert events[0].severity == "critical" and events[0].ratio < 0.1


@pytest.mark.parametrize("seed", range(3))
def test_drop_does_not_fire_when_viewers_leave_too(seed: int) -> None:
    _, events = run(drop_series(random.Random(seed), viewers_after=0.3), rules=DROP_RULES)
    assert [e for e in events if e.alertname == "OrdersDrop"] == []


def test_drop_is_off_by_default() -> None:
    _, events = run(drop_series(random.Random(0), viewers_after=1.0))
    assert events == []


# --- gaps, replays, restarts ----------------------------------------------------------------------


def test_missing_windows_count_as_zero_activity_and_resolve_an_alert() -> None:
    state, events = run(baseline_then([400] * 5))
    assert [e.status for e in events] == ["firing"]
    # the room goes silent for 5 windows: views 0, concurrent viewers unchanged
    _, later = run([window(70, views=100)], state=state)
    assert [(e.status, index_of(e.ends_at_ms or 0)) for e in later] == [("resolved", 68)]
    assert state.history_ms == 71 * W


def test_long_silence_restarts_the_warmup() -> None:
    state, _ = run(baseline_then([400] * 5))
    _, later = run([window(1_000, views=100)], state=state, rules=RULES)
    assert [e.status for e in later] == ["resolved"]
    assert state.history_ms == W  # a new session: 1 window of history again
    _, after = run((window(1_001 + k, views=500) for k in range(10)), state=state)
    assert after == []  # a 5x jump, but the new session is still warming up


def test_replayed_windows_are_ignored() -> None:
    series = baseline_then([400] * 5)
    state, _ = run(series)
    wire = state.to_wire()
    assert run(series[-3:], state=state)[1] == []
    assert state.to_wire() == wire


# --- restart from the changelog -------------------------------------------------------------------


def lifecycle_series() -> list[RoomStats]:
    """Fire, resolve, a re-spike inside the cooldown, a second alert still firing at the end; a gap."""
    rng = random.Random(5)
    spikes = set(range(80, 90)) | set(range(98, 101)) | set(range(130, 138))
    series = [noisy(rng, i, scale=(6.0 if i in spikes else 1.0, 1, 1, 1)) for i in range(140)]
    del series[40:43]
    return series


def test_wire_round_trip_resumes_identically_from_any_window() -> None:
    series = lifecycle_series()
    whole_state, whole = run(series)
    assert [(e.status, index_of(e.starts_at_ms)) for e in whole] == [
        ("firing", 80),
        ("resolved", 80),
        ("firing", 130),
    ]
    for cut in range(len(series) + 1):
        state, first = run(series[:cut])
        restored = DetectorState.from_wire(orjson.loads(orjson.dumps(state.to_wire())))
        assert restored.to_wire() == state.to_wire()
        assert firing(restored) == firing(state)
        restored_state, rest = run(series[cut:], state=restored)
        assert first + rest == whole, cut
        assert restored_state.to_wire() == whole_state.to_wire(), cut
    assert [e.starts_at_ms for e in firing(whole_state)] == [T0 + 130 * W]


def test_from_wire_rejects_garbage() -> None:
    from streams.exceptions import StateError

    good = run(baseline_then([400] * 5))[0].to_wire()
    for bad in (
        [],
        [99, *good[1:]],
        [*good[:5], [1.0], good[6]],
        [*good[:6], [["nope", "RoomSpike", 1, 0, 0, "", 0, 0, 0]]],
        [*good[:7], [0, "not base64!"]],
        [*good[:7], [0, [0.5] * 120]],
    ):
        with pytest.raises(StateError):
            DetectorState.from_wire(bad)


# --- the Alertmanager record ----------------------------------------------------------------------


def event(**changes: Any) -> AlertEvent:
    base = AlertEvent(
        room_id="room-1",
        alertname="RoomSpike",
        metric="views_per_sec",
        severity="warning",
        status="firing",
        starts_at_ms=T0 + 1_234,
        ends_at_ms=None,
        window_end_ms=T0 + 20_000,
        value=52.5,
        baseline=10.0,
        zscore=14.25,
        test="poisson-sqrt+robust-z",
        basis="winsorised EWMA, half-life 200 s",
    )
    return replace(base, **changes)


def test_alertmanager_record_shape() -> None:
    record = to_alertmanager(event())
    assert record["labels"] == {
        "alertname": "RoomSpike",
        "room_id": "room-1",
        "metric": "views_per_sec",
        "severity": "warning",
    }
    assert record["annotations"] == {
        "summary": (
            "views_per_sec in room room-1 spiked to 52.5, 5.25x the expected 10"
            " (winsorised EWMA, half-life 200 s); poisson-sqrt+robust-z score 14.25"
        ),
        "value": "52.5",
        "baseline": "10",
        "expected": "10",
        "ratio": "5.25",
        "zscore": "14.25",
        "score": "14.25",
        "test": "poisson-sqrt+robust-z",
        "baseline_model": "winsorised EWMA, half-life 200 s",
    }
    assert record["startsAt"] == "2026-01-01T00:00:01.234Z"
    assert record["status"] == "firing" and "endsAt" not in record
    assert record["fingerprint"] == fingerprint(record["labels"])
    assert all(isinstance(v, str) for v in record["annotations"].values())
    orjson.dumps(record)


def test_resolved_record_has_ends_at_and_firing_may_expire() -> None:
    resolved = to_alertmanager(event(status="resolved", ends_at_ms=T0 + 60_000))
    assert resolved["status"] == "resolved" and resolved["endsAt"] == "2026-01-01T00:01:00.000Z"
    expiring = to_alertmanager(event(), expires_after_ms=120_000)
    assert expiring["endsAt"] == "2026-01-01T00:02:20.000Z"


def test_rise_from_zero_baseline_is_finite_json() -> None:
    record = to_alertmanager(event(baseline=0.0, severity="critical"))
    assert record["annotations"]["ratio"] == "inf"
    orjson.dumps(record)


def test_fingerprint_is_deterministic_and_label_dependent() -> None:
    labels = {"alertname": "RoomSpike", "room_id": "room-1", "metric": "views_per_sec", "severity": "warning"}
    reordered = dict(reversed(list(labels.items())))
    assert fingerprint(labels) == fingerprint(reordered) == event().fingerprint
    assert len(fingerprint(labels)) == 16 and int(fingerprint(labels), 16) >= 0
    for key in labels:
        assert fingerprint({**labels, key: labels[key] + "x"}) != fingerprint(labels)
    # values that would collide under naive concatenation do not
    assert fingerprint({"a": "b=c", "d": "e"}) != fingerprint({"a": "b", "c=d": "e"})
    # annotations, status and times are not identity
    assert event(value=1.0, status="resolved", ends_at_ms=T0).fingerprint == event().fingerprint


def test_metric_names() -> None:
    assert METRICS == (
        "views_per_sec",
        "unique_viewers",
        "concurrent_viewers",
        "orders_per_sec",
        "gmv_per_sec",
        "gift_value_per_sec",
    )
    assert isinstance(RULES["views_per_sec"], MetricRule)


# --- the labeled generator behind loadtest.spike_eval ---------------------------------------------


def test_spike_series_generator_is_seeded_and_labels_fit_the_series() -> None:
    from loadtest.spike_series import SeriesConfig, generate_room

    cfg = SeriesConfig(rooms=4, windows=720)
    for index in range(4):
        a, b = generate_room(3, index, cfg), generate_room(3, index, cfg)
        assert a == b
        assert a != generate_room(4, index, cfg)
        spans = sorted((inj.start, inj.start + inj.length) for inj in a.injections)
        assert all(cfg.history_windows <= s < e <= cfg.windows for s, e in spans)
        assert all(e1 <= s2 for (_, e1), (s2, _) in itertools.pairwise(spans))
        starts = [s.window_start for s in a.stats]
        assert starts == sorted(set(starts)) and all((t - cfg.start_ms) % cfg.window_ms == 0 for t in starts)


def _states(windows: int, mean: float, var: float) -> tuple[DetectorState, DetectorState]:
    """Two detector states with the same history length and the same baseline for every metric."""
    pair = DetectorState("r"), DetectorState("r")
    for state in pair:
        state.history_ms = windows * W
        state.baselines = array("d", [mean, var] * len(METRICS))
    return pair


@settings(max_examples=200, deadline=None)
@given(
    windows=st.integers(0, 40),
    mean=st.floats(0, 50),
    var=st.floats(0, 100),
    scale=st.floats(0, 0.99),
)
def test_quiet_fast_path_folds_exactly_like_the_full_step(
    windows: int, mean: float, var: float, scale: float
) -> None:
    """_fold_quiet must be a pure shortcut: same state as _step wherever it applies."""

    rules = rules_for(SpikeRules(), "r")
    quiet = [scale * rules[m].min_volume for m in METRICS]  # below every floor: no rule can trigger
    fast, full = _states(windows, mean, var)
    assert _fold_quiet(fast, quiet, (0, 10_000), rules)
    full.alerts = {}  # any alert slot, even empty, sends _step down its full path
    _step(full, quiet, (0, 10_000), rules, False, [])
    full.alerts = None
    assert fast.to_wire()[:7] == full.to_wire()[:7]  # the full path also starts a seasonal term


@settings(max_examples=300, deadline=None)
@given(
    windows=st.integers(0, 40),
    gap=st.integers(1, 60),
    mean=st.floats(0, 50),
    var=st.floats(0, 100),
    concurrent=st.floats(0, 99),
    half_life=st.sampled_from([1.0, 2.0, 5.0, 20.0, 100.0]),
    warmup=st.integers(0, 60),
)
def test_a_quiet_gap_folds_at_once_like_window_by_window(
    windows: int, gap: int, mean: float, var: float, concurrent: float, half_life: float, warmup: int
) -> None:
    """The closed-form fold of a gap's idle windows equals folding them one by one (to rounding)."""
    defaults = {
        m: replace(rule, half_life_s=half_life * W / 1_000, warmup_s=warmup * W / 1_000)
        for m, rule in SpikeRules().defaults.items()
    }
    rules = rules_for(SpikeRules(defaults), "r")
    idle = [0.0] * len(METRICS)
    idle[METRICS.index("concurrent_viewers")] = concurrent
    at_once, one_by_one = _states(windows, mean, var)
    _fold_quiet_run(at_once, idle, gap, W, _plan(rules, W))
    for k in range(gap):
        assert _fold_quiet(one_by_one, idle, (k * W, (k + 1) * W), rules)
    assert at_once.history_ms == one_by_one.history_ms == (windows + gap) * W
    assert at_once.baselines.tolist() == pytest.approx(one_by_one.baselines.tolist(), rel=1e-9, abs=1e-9)


# --- the same behaviour at any window length ------------------------------------------------------


def resampled(fine: Sequence[int], fine_ms: int, window_ms: int) -> list[RoomStats]:
    """Views per ``fine_ms`` bucket summed into windows of ``window_ms`` (other metrics quiet)."""
    per = window_ms // fine_ms
    out = []
    for k in range(len(fine) // per):
        start = T0 + k * window_ms
        out.append(
            replace(
                window(0, views=sum(fine[k * per : (k + 1) * per]), unique=0, concurrent=0, orders=0, gmv=0),
                window_start=start,
                window_end=start + window_ms,
            )
        )
    return out


def alert_times(series: Sequence[RoomStats], window_ms: int) -> list[tuple[str, str, int]]:
    state = DetectorState("room-1")
    events = [e for stats in series for e in observe(state, stats, RULES, window_ms)]
    return [(e.alertname, e.status, e.window_end_ms) for e in events]


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.sampled_from([(5, 10), (5, 60), (10, 60), (10, 300), (60, 300), (5, 300)]),
    rate=st.floats(20.0, 60.0),  # below the 100/s surge level: a known room, not a new one
    size=st.floats(3.0, 20.0),
    onset=st.integers(0, 3),
    duration=st.integers(1, 4),
    noise=st.lists(st.floats(-0.1, 0.1), min_size=16, max_size=16),
)
def test_a_series_resampled_to_another_window_length_alerts_at_the_same_times(
    lengths: tuple[int, int], rate: float, size: float, onset: int, duration: int, noise: list[float]
) -> None:
    """Every duration is in seconds: 5 s, 10 s, 60 s and 300 s windows fire and resolve within one window.

    The spike starts and ends on window boundaries of both lengths (a spike covering part of a
    window shows up diluted in it, a difference of measurement, not of rules).
    """
    fine_s, coarse_s = lengths
    fine_ms, coarse_ms = fine_s * 1_000, coarse_s * 1_000
    start_s = coarse_s * (-(-1_200 // coarse_s) + onset)
    end_s = start_s + coarse_s * duration * max(1, 120 // coarse_s)
    total_s = end_s + coarse_s * (-(-900 // coarse_s))
    fine = [
        round(rate * fine_s * (size if start_s <= t < end_s else 1.0) * (1.0 + noise[k % len(noise)]))
        for k, t in enumerate(range(0, total_s, fine_s))
    ]
    a = alert_times(resampled(fine, fine_ms, fine_ms), fine_ms)
    b = alert_times(resampled(fine, fine_ms, coarse_ms), coarse_ms)
    assert [(name, status) for name, status, _ in a] == [
        ("RoomSpike", "firing"),
        ("RoomSpike", "resolved"),
    ]
    assert [(name, status) for name, status, _ in b] == [(name, status) for name, status, _ in a]
    for (_, _, t_fine), (_, _, t_coarse) in zip(a, b, strict=True):
        assert abs(t_fine - t_coarse) <= coarse_ms, (t_fine - T0, t_coarse - T0)


def test_rules_are_in_seconds_so_a_window_count_depends_on_the_window_length() -> None:
    rule = RULES["views_per_sec"]
    assert rule.confirm_s == 20.0 and rule.half_life_s == 200.0
    # the EWMA weight of 6 windows of 10 s equals that of 1 window of 60 s
    assert (1 - rule.alpha(10.0)) ** 6 == pytest.approx(1 - rule.alpha(60.0))


# --- the seasonal term ----------------------------------------------------------------------------


def test_recurring_flash_sale_slots_alert_once_then_belong_to_the_baseline() -> None:
    """Orders x5 for the first 5 minutes of every hour, 4 hours: only the first slot alerts."""
    rng = random.Random(2)
    hour = 360  # windows of 10 s
    series = [
        noisy(rng, i, scale=(1.0, 1.0, 1.0, 5.0 if i % hour < 30 else 1.0)) for i in range(30 + 4 * hour)
    ][30:]  # start mid-hour so the first slot comes after warm-up
    _, events = run(series)
    fired = [(e.metric, index_of(e.starts_at_ms) // hour) for e in events if e.status == "firing"]
    assert fired and {hour_index for _, hour_index in fired} == {1}
    assert {metric for metric, _ in fired} <= {"orders_per_sec", "gmv_per_sec"}


def test_a_one_off_spike_fades_from_the_seasonal_term() -> None:
    """A spike at minute 0 of hour 1, nothing at hour 2: a spike at hour 4, same minute, alerts again."""
    rng = random.Random(4)
    hour = 360
    spikes = set(range(hour, hour + 30)) | set(range(4 * hour, 4 * hour + 30))
    series = [noisy(rng, i, scale=(6.0 if i in spikes else 1.0, 1, 1, 1)) for i in range(4 * hour + 60)]
    _, events = run(series)
    fired = [index_of(e.starts_at_ms) for e in events if e.status == "firing" and e.alertname == "RoomSpike"]
    assert [i // hour for i in fired] == [1, 4]


# --- every alert explains itself ------------------------------------------------------------------


def test_alerts_name_their_test_and_baseline() -> None:
    _, events = run(step_series(random.Random(1)))
    fired = events[0]
    assert fired.test == "poisson-sqrt+robust-z"
    assert fired.basis == "winsorised EWMA, half-life 200 s"
    notes = to_alertmanager(fired)["annotations"]
    assert notes["test"] == fired.test and notes["baseline_model"] == fired.basis
    assert float(notes["expected"]) == pytest.approx(fired.baseline, rel=1e-3)
    assert float(notes["score"]) >= RULES["views_per_sec"].z_threshold
    assert float(notes["ratio"]) >= RULES["views_per_sec"].ratio


def test_money_is_tested_on_the_square_root_scale() -> None:
    rng = random.Random(9)
    series = [noisy(rng, i, scale=(1, 1, 1, 6.0 if 100 <= i < 110 else 1.0)) for i in range(140)]
    _, events = run(series)
    gmv = [e for e in events if e.metric == "gmv_per_sec" and e.status == "firing"]
    assert gmv and gmv[0].test == "sqrt-robust-z" and "of sqrt" in gmv[0].basis


def test_two_sided_rule_fires_a_dip() -> None:
    from streams.core._spike_rules import GAUGE_RULE

    rules = dict.fromkeys(METRICS, replace(GAUGE_RULE, warmup_s=600.0, season_s=0.0))
    rng = random.Random(3)
    series = [noisy(rng, i, scale=(1, 1, 0.3 if 200 <= i < 260 else 1.0, 1)) for i in range(300)]
    _, events = run(series, rules=rules)
    dips = [(e.alertname, e.metric, e.status) for e in events if e.alertname == "RoomDip"]
    assert ("RoomDip", "concurrent_viewers", "firing") in dips


# --- rules changed while an alert is open ---------------------------------------------------------


def test_a_drop_alert_resolves_once_the_drop_rule_is_turned_off() -> None:
    """Rules reloaded (or the room's category changed) while OrdersDrop fires: the slot its rule no
    longer reads resolves after resolve_s, instead of firing until the room expires."""
    rng = random.Random(0)
    state, events = run(drop_series(rng, viewers_after=1.0)[:66], rules=DROP_RULES)
    assert [(e.alertname, e.status) for e in events] == [("OrdersDrop", "firing")]
    # the collapse goes on: with the rule still on it keeps firing
    collapse = [noisy(rng, i, scale=(1, 1, 1, 0.02)) for i in range(66, 80)]
    kept, _ = run([], rules=DROP_RULES, state=DetectorState.from_wire(state.to_wire()))
    _, still = run(collapse, rules=DROP_RULES, state=kept)
    assert [e.status for e in still] == []
    _, after = run(collapse, rules=RULES, state=state)
    assert [(e.alertname, e.status) for e in after] == [("OrdersDrop", "resolved")]
    assert firing(state) == []


def test_a_dip_alert_resolves_once_the_rule_is_no_longer_two_sided() -> None:
    gauge = replace(GAUGE_RULE, warmup_s=600.0, season_s=0.0)
    rules = dict.fromkeys(METRICS, gauge)
    rng = random.Random(3)
    series = [noisy(rng, i, scale=(1, 1, 0.3 if i >= 200 else 1.0, 1)) for i in range(230)]
    state, events = run(series, rules=rules)
    assert ("RoomDip", "firing") in [
        (e.alertname, e.status) for e in events if e.metric == "concurrent_viewers"
    ]
    one_sided = dict.fromkeys(METRICS, replace(gauge, two_sided=False))
    low = [noisy(rng, i, scale=(1, 1, 0.3, 1)) for i in range(230, 230 + 400)]
    _, after = run(low, rules=one_sided, state=state)
    dips = [(e.alertname, e.status) for e in after if e.alertname == "RoomDip"]
    assert dips == [("RoomDip", "resolved")] * len(dips) and dips, after
    assert [e for e in firing(state) if e.alertname == "RoomDip"] == []


def test_a_ratio_lowered_below_the_resolve_ratio_does_not_flap() -> None:
    """An override that makes a room more sensitive (ratio 1.2, resolve_ratio left at 1.5): a level
    1.3x its baseline fires once and resolves once, as the baseline takes the new level in, instead
    of resolving while it still meets the rule and firing again after the cooldown (before: fired
    at window 62, resolved at 65, fired at 79, resolved at 82)."""
    sensitive = {**RULES, "views_per_sec": replace(RULES["views_per_sec"], ratio=1.2, z_threshold=1.0)}
    assert sensitive["views_per_sec"].resolve_ratio == 1.5
    _, events = run(baseline_then([130] * 240), rules=sensitive)
    got = [(e.status, index_of(e.window_end_ms)) for e in events if e.metric == "views_per_sec"]
    assert [status for status, _ in got] == ["firing", "resolved"]
    assert got[1][1] - got[0][1] > 3 + round(sensitive["views_per_sec"].resolve_s * 1_000) // W


def test_a_drop_ratio_raised_above_its_resolve_ratio_does_not_flap() -> None:
    """The same for the drop rule: drop_ratio 0.6 over the default drop_resolve_ratio 0.5, orders at
    0.55x (before: fired, resolved three windows later, fired again after the cooldown)."""
    rules = {**RULES, "orders_per_sec": replace(RULES["orders_per_sec"], drop_enabled=True, drop_ratio=0.6)}
    assert rules["orders_per_sec"].drop_resolve_ratio == 0.5
    series = [window(i, orders=11 if i >= 60 else 20) for i in range(300)]
    _, events = run(series, rules=rules)
    got = [(e.status, index_of(e.window_end_ms)) for e in events if e.alertname == "OrdersDrop"]
    assert [status for status, _ in got] == ["firing", "resolved"]
    assert got[1][1] - got[0][1] > 3 + round(RULES["orders_per_sec"].resolve_s * 1_000) // W


# --- state versions -------------------------------------------------------------------------------


def test_version_1_state_still_decodes() -> None:
    """A v1 record (window counts, 10 s windows) restores with its history and alert timers in ms."""
    v1 = [
        1,
        "room-1",
        T0 + 70 * W,
        70,
        1_000.0,
        [10.0, 1.0, 300.0, 300.0, 1_000.0, 900.0, 2.0, 0.2, 10_000.0, 4e6, 0.0, 0.0],
        [["views_per_sec", "RoomSpike", 1, T0 + 60 * W, 2, "warning", 40.0, 10.0, 30.0]],
    ]
    state = DetectorState.from_wire(v1)
    assert state.last_window_end == T0 + 70 * W
    assert state.history_ms == 0  # money baselines changed scale: the warm-up restarts
    assert state.baseline("views_per_sec") == (10.0, 1.0)
    assert [(e.alertname, e.metric, e.starts_at_ms) for e in firing(state)] == [
        ("RoomSpike", "views_per_sec", T0 + 60 * W)
    ]
    assert state.alerts is not None and state.alerts[("views_per_sec", "RoomSpike")].count == 2 * W
    assert DetectorState.from_wire(orjson.loads(orjson.dumps(state.to_wire()))).to_wire() == state.to_wire()


def test_anomaly_eval_feeds_a_generic_series_row_by_row() -> None:
    """The NAB harness's detector side (the scoring needs a NAB checkout; see loadtest.anomaly_eval)."""
    from datetime import datetime, timedelta

    from loadtest.anomaly_eval import detect
    from streams.core._spike_rules import GAUGE_RULE

    t0 = datetime(2026, 1, 1)
    rows = 4 * 288  # four days of 5-minute rows
    timestamps = [t0 + timedelta(minutes=5 * i) for i in range(rows)]
    rng = random.Random(1)
    values = [
        50.0 + 10 * math.sin(2 * math.pi * i / 288) + rng.gauss(0, 1) + (40.0 if i >= 3 * 288 else 0.0)
        for i in range(rows)
    ]
    scores = detect(timestamps, values, GAUGE_RULE)
    assert len(scores) == rows and set(scores) <= {0.0, 1.0}
    assert [i for i, s in enumerate(scores) if s] == [3 * 288]  # the step, nothing on the daily cycle


def test_anomaly_eval_places_irregular_rows_at_their_own_times() -> None:
    """A series sampled at irregular times (NAB's realTraffic) keeps its clock: gaps are skipped,
    not squeezed out, so the daily term still learns the day and durations stay seconds."""
    from datetime import datetime, timedelta

    from loadtest.anomaly_eval import detect

    t0 = datetime(2026, 1, 1)
    rng = random.Random(2)
    step = 4 * 288
    kept = [i for i in range(5 * 288) if i == step or rng.random() < 0.4]
    timestamps = [t0 + timedelta(minutes=5 * i) for i in kept]
    timestamps.insert(1, timestamps[0] + timedelta(minutes=1))  # two rows in one window
    values = [
        50.0
        + 20 * math.sin(2 * math.pi * t.hour / 24)
        + rng.gauss(0, 1)
        + (40.0 if t >= t0 + timedelta(minutes=5 * step) else 0.0)
        for t in timestamps
    ]
    scores = detect(timestamps, values, GAUGE_RULE)
    assert len(scores) == len(timestamps)
    assert [timestamps[i] for i, s in enumerate(scores) if s] == [t0 + timedelta(minutes=5 * step)]


# --- the drift test and the tail-adapted threshold (GAUGE_RULE) ------------------------------------

FIVE_MIN_MS = 300_000
GAUGE_SLOT = METRICS.index("concurrent_viewers")


def gauge_alerts(
    values: Sequence[float], window_ms: int, rule: MetricRule, state: DetectorState | None = None
) -> tuple[DetectorState, list[tuple[str, str, str, int]]]:
    """A generic series fed as one gauge metric (as the NAB harness does): (alertname, status, test, row)."""
    state = state or DetectorState("gauge")
    rules = dict.fromkeys(METRICS, rule)
    vector = [0.0] * len(METRICS)
    out = []
    for i, x in enumerate(values):
        vector[GAUGE_SLOT] = x
        for e in observe_values(state, vector, T0 + i * window_ms, T0 + (i + 1) * window_ms, rules):
            out.append((e.alertname, e.status, e.test, i))
    return state, out


def ar1(rng: random.Random, n: int, phi: float, sd: float = 5.0, level: float = 100.0) -> list[float]:
    """Stationary AR(1) noise around ``level`` with marginal standard deviation ``sd``."""
    e, out = 0.0, []
    for _ in range(n):
        e = phi * e + math.sqrt(1.0 - phi * phi) * rng.gauss(0.0, 1.0)
        out.append(level + sd * e)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_drift_test_detects_a_slow_ramp_the_single_window_test_misses(seed: int) -> None:
    """+1 sd every 6 h from day 3 (5-minute rows): the drift test fires within 16 h, the z test never."""
    rng = random.Random(seed)
    start, rows = 3 * 288, 6 * 288
    values = [100.0 + rng.gauss(0.0, 5.0) + max(0, i - start) * 5.0 / 72 for i in range(rows)]
    _, with_drift = gauge_alerts(values, FIVE_MIN_MS, GAUGE_RULE)
    _, without = gauge_alerts(values, FIVE_MIN_MS, replace(GAUGE_RULE, drift_z=0.0))
    assert [a for a in without if a[1] == "firing"] == []
    # (a rare false alarm before the ramp is the other test's business)
    fired = [
        (name, test, row) for name, status, test, row in with_drift if status == "firing" and row > start
    ]
    assert fired and fired[0][:2] == ("RoomSpike", "ewma-drift")
    assert fired[0][2] <= start + 16 * 12


@pytest.mark.parametrize("phi", [0.0, 0.9])
def test_drift_test_is_rare_on_stationary_noise(phi: float) -> None:
    """Independent and strongly autocorrelated noise, 4 x 30 days: a false drift alert is rare.

    Measured: 6 in 120 days on independent noise, 14 on AR(1) noise with phi 0.9. The gap is
    divided by its own spread on the series, which keeps learning, so autocorrelation (phi 0.9:
    a chart about 19x wider in variance than for independent noise) raises the threshold
    instead of firing; with ``slow_half_life_s`` made practically infinite (the slow mean and
    the spread frozen at their warm-up estimates) the same AR series fire 52 times.
    """
    fired = frozen = 0
    for seed in range(4):
        values = ar1(random.Random(seed), 30 * 288, phi)
        _, alerts = gauge_alerts(values, FIVE_MIN_MS, GAUGE_RULE)
        fired += sum(1 for _, status, test, _ in alerts if status == "firing" and test == "ewma-drift")
        if phi:
            never_learns = replace(GAUGE_RULE, slow_half_life_s=1e10)  # frozen after warm-up
            _, alerts = gauge_alerts(values, FIVE_MIN_MS, never_learns)
            frozen += sum(1 for _, status, test, _ in alerts if status == "firing" and test == "ewma-drift")
    assert fired <= (8 if phi == 0.0 else 16)  # at most 2 (4) a month
    if phi:
        assert frozen > 3 * fired


@pytest.mark.parametrize(("fine_s", "coarse_s"), [(10, 60), (60, 300), (60, 600), (300, 900)])
def test_drift_test_fires_at_the_same_time_at_any_window_length(fine_s: int, coarse_s: int) -> None:
    """A ramp of 2 sd an hour measured in fine windows and in their coarse averages, 8 seeds:
    the median detection delays agree within one coarse window, and every delay is under 2 h.

    Every duration is in seconds and the chart is on the value's own scale, so averaging
    windows changes neither; the averaged noise is another draw of the statistic, so a single
    series' crossing moves by a few windows either way (seen: up to 8 windows of 60 s), which is
    why the medians are compared.
    """
    rule = replace(GAUGE_RULE, z_threshold=1e6, season_s=0.0, warmup_s=6 * 3_600.0)
    k = coarse_s // fine_s
    start_s, total_s = 8 * 3_600, 12 * 3_600
    delays_fine, delays_coarse = [], []
    for seed in range(8):
        rng = random.Random(seed)
        fine = [
            100.0 + rng.gauss(0.0, 5.0) + max(0, t - start_s) / 3_600 * 10.0
            for t in range(0, total_s, fine_s)
        ]
        coarse = [sum(fine[j : j + k]) / k for j in range(0, len(fine), k)]
        for values, length_s, delays in ((fine, fine_s, delays_fine), (coarse, coarse_s, delays_coarse)):
            _, alerts = gauge_alerts(values, length_s * 1_000, rule)
            ends = [(row + 1) * length_s for _, status, _, row in alerts if status == "firing"]
            assert ends and 0 < ends[0] - start_s < 2 * 3_600
            delays.append(ends[0] - start_s)
    assert abs(statistics.median(delays_fine) - statistics.median(delays_coarse)) <= coarse_s


def test_tail_adapted_threshold_quietens_routine_outliers() -> None:
    """6-sd outliers every 2 h: the series' own tail raises its threshold, so in days 10-20 they
    alert less than half as often as with the threshold fixed (measured: 25 vs 60, 24 vs 68)."""
    rule = replace(GAUGE_RULE, drift_z=0.0, cooldown_s=0.0, resolve_s=300.0)  # the tail alone
    for seed in range(2):
        rng = random.Random(seed)
        values = [100.0 + rng.gauss(0.0, 5.0) + (30.0 if i % 24 == 7 else 0.0) for i in range(20 * 288)]
        _, fixed = gauge_alerts(values, FIVE_MIN_MS, replace(rule, tail_cap=0.0))
        _, adapted = gauge_alerts(values, FIVE_MIN_MS, rule)
        late_fixed = sum(1 for _, status, _, row in fixed if status == "firing" and row >= 10 * 288)
        late_adapted = sum(1 for _, status, _, row in adapted if status == "firing" and row >= 10 * 288)
        assert late_fixed > 40 and late_adapted < late_fixed / 2


def test_gauge_state_round_trip_resumes_identically() -> None:
    """The drift chart and tail are part of the state: a restore from the wire at any cut is seamless."""
    rng = random.Random(6)
    values = [100.0 + rng.gauss(0.0, 5.0) + max(0, i - 400) * 0.2 for i in range(600)]
    rule = replace(GAUGE_RULE, warmup_s=6 * 3_600.0)
    whole_state, whole = gauge_alerts(values, FIVE_MIN_MS, rule)
    assert whole_state.drift is not None and any(test == "ewma-drift" for _, _, test, _ in whole)
    for cut in range(0, len(values), 37):
        state, first = gauge_alerts(values[:cut], FIVE_MIN_MS, rule)
        restored = DetectorState.from_wire(orjson.loads(orjson.dumps(state.to_wire())))
        assert restored.to_wire() == state.to_wire()
        rest_state, rest = gauge_alerts_from(values, cut, rule, restored)
        assert first + rest == whole, cut
        assert rest_state.to_wire() == whole_state.to_wire(), cut


def gauge_alerts_from(
    values: Sequence[float], cut: int, rule: MetricRule, state: DetectorState
) -> tuple[DetectorState, list[tuple[str, str, str, int]]]:
    rules = dict.fromkeys(METRICS, rule)
    vector = [0.0] * len(METRICS)
    out = []
    for i in range(cut, len(values)):
        vector[GAUGE_SLOT] = values[i]
        for e in observe_values(state, vector, T0 + i * FIVE_MIN_MS, T0 + (i + 1) * FIVE_MIN_MS, rules):
            out.append((e.alertname, e.status, e.test, i))
    return state, out


def test_version_2_state_still_decodes() -> None:
    """A v2 record (no drift chart) restores with the chart absent; it restarts from zero."""
    state, _ = run(lifecycle_series())
    v3 = orjson.loads(orjson.dumps(state.to_wire()))
    assert v3[0] == 3 and v3[-1] is None  # room defaults have no drift test
    v2 = [2, *v3[1:-1]]
    restored = DetectorState.from_wire(v2)
    assert restored.drift is None and restored.to_wire() == v3
    gauge, _ = gauge_alerts([100.0 + (i % 7) for i in range(400)], FIVE_MIN_MS, GAUGE_RULE)
    wire = gauge.to_wire()
    restored = DetectorState.from_wire([2, *wire[1:-1]])
    assert restored.drift is None and restored.baselines == gauge.baselines
    from streams.exceptions import StateError

    with pytest.raises(StateError):
        DetectorState.from_wire([*wire[:-1], [0.0] * 5])


# --- resolving a gauge alert by its score, and gaps in a sampled series ---------------------------


def _dip_then_back(seed: int) -> list[float]:
    """A day of noise around 100 (sd 5, 5-minute rows), an hour at 40, then back to the same noise."""
    rng = random.Random(seed)
    values = [100.0 + rng.gauss(0.0, 5.0) for _ in range(3 * 288)]
    for i in range(288, 300):
        values[i] = 40.0 + rng.gauss(0.0, 1.0)
    return values


@pytest.mark.parametrize("seed", range(3))
def test_a_gauge_dip_resolves_once_its_score_is_back_within_resolve_z(seed: int) -> None:
    rule = replace(GAUGE_RULE, season_s=0.0, long_season_s=0.0, drift_z=0.0)
    _, alerts = gauge_alerts(_dip_then_back(seed), FIVE_MIN_MS, rule)
    dips = [(status, row) for name, status, _, row in alerts if name == "RoomDip"]
    assert dips[0] == ("firing", 288)
    # back at row 300; resolved after resolve_s (1 h = 12 rows) of scores above -resolve_z
    assert dips[1][0] == "resolved" and 311 <= dips[1][1] <= 320
    # The ratio alone (resolve_z 0) needs an hour of rows all above the expectation: a noisy
    # series back at its level gives that about once in 2^12 rows, so the dip keeps firing.
    _, stuck = gauge_alerts(_dip_then_back(seed), FIVE_MIN_MS, replace(rule, resolve_z=0.0))
    assert [(status, row) for name, status, _, row in stuck if name == "RoomDip"] == [("firing", 288)]


@pytest.mark.parametrize("seed", range(3))
def test_an_alert_the_drift_test_still_meets_is_not_resolved_by_its_single_window_score(seed: int) -> None:
    """A lasting step of 2 sd: the drift test fires it and keeps meeting the rule while single
    windows score well within resolve_z; without a cooldown it must not fire and resolve in a loop."""
    rule = replace(GAUGE_RULE, season_s=0.0, long_season_s=0.0, cooldown_s=0.0)
    rng = random.Random(seed)
    values = [100 + rng.gauss(0, 5) + (10 if i >= 3 * 288 else 0) for i in range(4 * 288)]
    _, alerts = gauge_alerts(values, FIVE_MIN_MS, rule)
    after = [(name, status, test) for name, status, test, row in alerts if row >= 3 * 288]
    assert after == [("RoomSpike", "firing", "ewma-drift")]


def _sampled(
    state: DetectorState, rows: Sequence[tuple[int, float]], rule: MetricRule
) -> list[tuple[str, str, int]]:
    """Rows (5-minute window index, value) of a sampled gauge, gaps skipped: (alertname, status, index)."""
    rules = dict.fromkeys(METRICS, rule)
    vector = [0.0] * len(METRICS)
    out = []
    for k, x in rows:
        vector[GAUGE_SLOT] = x
        ws = T0 + k * FIVE_MIN_MS
        for e in observe_values(state, vector, ws, ws + FIVE_MIN_MS, rules, skip_gaps=True):
            out.append((e.alertname, e.status, k))
    return out


def test_a_gap_in_a_sampled_series_is_skipped_not_replayed_nor_a_restart() -> None:
    rule = replace(GAUGE_RULE, season_s=0.0, long_season_s=0.0, drift_z=0.0, warmup_s=3_600.0)
    rng = random.Random(5)
    state = DetectorState("gauge")
    assert _sampled(state, [(k, 100.0 + rng.gauss(0.0, 5.0)) for k in range(100)], rule) == []
    before = state.baselines.tolist()
    # two days without a reading (far beyond max_gap_s), then a spike: nothing was learned on the
    # gap, the warm-up was not restarted, and the spike fires on its first row
    assert _sampled(state, [(100 + 576, 200.0)], rule) == [("RoomSpike", "firing", 676)]
    assert state.history_ms == 101 * FIVE_MIN_MS  # the warm-up counts observed time only
    level, var = before[2 * GAUGE_SLOT], before[2 * GAUGE_SLOT + 1]
    # the spike moved the level by at most one window's weight of its winsor band, not the scale
    alpha = GAUGE_RULE.alpha(FIVE_MIN_MS / 1_000)
    assert 0.0 < state.baselines[2 * GAUGE_SLOT] - level <= alpha * 3.0 * math.sqrt(var) + 1e-9
    assert state.baselines[2 * GAUGE_SLOT + 1] == var
    # the same gap fed as a room's idle windows restarts the detector: the spike is not seen
    restarted = DetectorState("gauge")
    _sampled(restarted, [(k, 100.0 + rng.gauss(0.0, 5.0)) for k in range(100)], rule)
    rules = dict.fromkeys(METRICS, rule)
    vector = [0.0] * len(METRICS)
    vector[GAUGE_SLOT] = 200.0
    ws = T0 + 676 * FIVE_MIN_MS
    assert [e.status for e in observe_values(restarted, vector, ws, ws + FIVE_MIN_MS, rules)] == []
    assert restarted.history_ms == FIVE_MIN_MS


def test_a_pending_alert_does_not_survive_a_gap_longer_than_confirm_miss_s() -> None:
    rule = replace(
        GAUGE_RULE,
        season_s=0.0,
        long_season_s=0.0,
        drift_z=0.0,
        warmup_s=3_600.0,
        confirm_s=600.0,  # two windows
        confirm_miss_s=0.0,
    )
    rng = random.Random(3)
    state = DetectorState("gauge")
    _sampled(state, [(k, 100.0 + rng.gauss(0.0, 5.0)) for k in range(100)], rule)
    assert _sampled(state, [(100, 200.0)], rule) == []  # pending
    # three days later one more such reading starts a new confirmation instead of completing one
    assert _sampled(state, [(964, 200.0)], rule) == []
    assert _sampled(state, [(965, 200.0)], rule) == [("RoomSpike", "firing", 965)]
    assert state.alerts is not None
    assert state.alerts[("concurrent_viewers", "RoomSpike")].started_ms == T0 + 964 * FIVE_MIN_MS


def test_cooldowns_run_through_a_gap_in_a_sampled_series() -> None:
    rule = replace(
        GAUGE_RULE, season_s=0.0, long_season_s=0.0, drift_z=0.0, warmup_s=3_600.0, resolve_s=600.0
    )
    rng = random.Random(6)
    rows = [(k, 100.0 + rng.gauss(0.0, 5.0)) for k in range(100)]
    rows += [(100, 200.0), (101, 100.0), (102, 100.0), (103, 100.0)]  # fires, resolves
    state = DetectorState("gauge")
    assert [(n, s) for n, s, _ in _sampled(state, rows, rule)] == [
        ("RoomSpike", "firing"),
        ("RoomSpike", "resolved"),
    ]
    assert state.alerts is not None  # in its 1-day cooldown
    # a row 2 hours later: still cooling down; a row after a gap longer than the cooldown: fires
    assert _sampled(state, [(104 + 24, 200.0)], rule) == []
    assert _sampled(state, [(104 + 24 + 300, 200.0)], rule) == [("RoomSpike", "firing", 428)]


@pytest.mark.parametrize("seed", range(3))
def test_a_one_off_spike_does_not_come_back_as_a_dip_a_day_later(seed: int) -> None:
    """GAUGE_RULE's seasonal term learns only the clipped residual of windows that alert."""
    rng = random.Random(seed)
    values = [100 + 20 * math.sin(2 * math.pi * i / 288) + rng.gauss(0, 3) for i in range(6 * 288)]
    spike = 3 * 288 + 120  # day 3, 10:00, for an hour
    for i in range(spike, spike + 12):
        values[i] += 150
    _, alerts = gauge_alerts(values, FIVE_MIN_MS, GAUGE_RULE)
    # resolved once neither test meets the rule (the drift test's fast mean lags the hour) and
    # an hour has passed back at the expectation; nothing after
    assert [(name, status) for name, status, _, _ in alerts] == [
        ("RoomSpike", "firing"),
        ("RoomSpike", "resolved"),
    ]
    assert alerts[0][3] == spike and spike + 12 + 12 <= alerts[1][3] <= spike + 12 + 48
    # learning the raw residual, the daily bins expect the spike again: a dip a day later
    _, echo = gauge_alerts(values, FIVE_MIN_MS, replace(GAUGE_RULE, season_learns_alerts=True))
    assert ("RoomDip", "firing", spike + 288) in [(name, status, row) for name, status, _, row in echo]


# --- the long (weekly) seasonal term (GAUGE_RULE) --------------------------------------------------

HALF_HOUR_MS = 1_800_000
WEEK_ROWS = 7 * 48  # half-hour rows


def weekly_series(rng: random.Random, weeks: int, weekend: float) -> list[float]:
    """Half-hour rows: a daily cycle, ``weekend`` added on days 5 and 6 of each week, noise."""
    return [
        100.0
        + 20.0 * math.sin(2 * math.pi * (i % 48) / 48)
        + (weekend if (i // 48) % 7 >= 5 else 0.0)
        + rng.gauss(0.0, 3.0)
        for i in range(weeks * WEEK_ROWS)
    ]


def firing_rows(alerts: Sequence[tuple[str, str, str, int]]) -> list[int]:
    return [row for _, status, _, row in alerts if status == "firing"]


@pytest.mark.parametrize("seed", range(3))
def test_a_weekly_pattern_stops_alerting_once_the_long_term_is_learned(seed: int) -> None:
    """Weekends 10 sd above weekdays, 8 weeks: with the daily term alone every weekend keeps
    alerting; with the long term, nothing fires after week 3 but an injected spike."""
    values = weekly_series(random.Random(seed), 8, weekend=30.0)
    # a Wednesday of week 7, the second row of its hourly bin: the bins learn the raw residual, so
    # a spike in a bin's first row can make the row after it a dip (seed 0 does)
    spike_at = 6 * WEEK_ROWS + 2 * 48 + 21
    values[spike_at] += 60.0
    _, daily_only = gauge_alerts(values, HALF_HOUR_MS, replace(GAUGE_RULE, long_season_s=0.0))
    _, weekly = gauge_alerts(values, HALF_HOUR_MS, GAUGE_RULE)
    late = 3 * WEEK_ROWS
    assert len([r for r in firing_rows(daily_only) if r >= late]) >= 5
    assert [r for r in firing_rows(weekly) if r >= late] == [spike_at]


@pytest.mark.parametrize("seed", range(3))
def test_a_one_off_spike_does_not_come_back_a_week_later_through_the_long_term(seed: int) -> None:
    values = weekly_series(random.Random(seed), 7, weekend=30.0)
    spike = 4 * WEEK_ROWS + 2 * 48 + 20  # the Wednesday of week 4, 10:00, for two hours
    for i in range(spike, spike + 4):
        values[i] += 80.0
    _, alerts = gauge_alerts(values, HALF_HOUR_MS, GAUGE_RULE)
    assert [(name, status) for name, status, _, row in alerts if row >= spike] == [
        ("RoomSpike", "firing"),
        ("RoomSpike", "resolved"),
    ]
    _, echo = gauge_alerts(values, HALF_HOUR_MS, replace(GAUGE_RULE, season_learns_alerts=True))
    assert ("RoomDip", "firing", spike + WEEK_ROWS) in [(name, status, row) for name, status, _, row in echo]


@pytest.mark.parametrize("seed", range(3))
def test_the_long_term_changes_nothing_before_it_may_count(seed: int) -> None:
    """A series shorter than ``long_season_after_periods`` long periods alerts exactly as without it."""
    values = weekly_series(random.Random(seed), 2, weekend=30.0)
    values[WEEK_ROWS + 30] -= 50.0
    _, daily_only = gauge_alerts(values, HALF_HOUR_MS, replace(GAUGE_RULE, long_season_s=0.0))
    _, weekly = gauge_alerts(values, HALF_HOUR_MS, GAUGE_RULE)
    assert weekly == daily_only and firing_rows(weekly)


def test_without_a_weekly_pattern_the_daily_term_stays_in_use() -> None:
    """Daily cycle only, 6 weeks: the long term predicts no better, so alerts name the daily term."""
    values = weekly_series(random.Random(4), 6, weekend=0.0)
    values[5 * WEEK_ROWS + 100] += 40.0
    state, _ = gauge_alerts(values, HALF_HOUR_MS, GAUGE_RULE)
    rules = dict.fromkeys(METRICS, GAUGE_RULE)
    vector = [0.0] * len(METRICS)
    vector[GAUGE_SLOT] = values[-1] + 40.0
    end = T0 + len(values) * HALF_HOUR_MS
    events = observe_values(state, vector, end, end + HALF_HOUR_MS, rules)
    assert events and "86400 s in 24 bins" in events[0].basis


def test_long_seasonal_state_round_trip_resumes_identically() -> None:
    """The long term and its miss averages live in the seasonal array: a restore at any cut is seamless."""
    values = weekly_series(random.Random(8), 5, weekend=30.0)
    values[4 * WEEK_ROWS + 51] += 60.0
    whole_state, whole = gauge_alerts(values, HALF_HOUR_MS, GAUGE_RULE)
    assert whole_state.season is not None and len(whole_state.season) == len(METRICS) * (24 + 168 + 2)
    assert any("604800 s in 168 bins" in basis for basis in _bases(values, GAUGE_RULE))
    for cut in range(0, len(values), 131):
        state, first = gauge_alerts(values[:cut], HALF_HOUR_MS, GAUGE_RULE)
        restored = DetectorState.from_wire(orjson.loads(orjson.dumps(state.to_wire())))
        assert restored.to_wire() == state.to_wire()
        rules = dict.fromkeys(METRICS, GAUGE_RULE)
        vector = [0.0] * len(METRICS)
        rest = []
        for i in range(cut, len(values)):
            vector[GAUGE_SLOT] = values[i]
            ws = T0 + i * HALF_HOUR_MS
            for e in observe_values(restored, vector, ws, ws + HALF_HOUR_MS, rules):
                rest.append((e.alertname, e.status, e.test, i))
        assert first + rest == whole, cut
        assert restored.to_wire() == whole_state.to_wire(), cut


def _bases(values: Sequence[float], rule: MetricRule) -> list[str]:
    state = DetectorState("gauge")
    rules = dict.fromkeys(METRICS, rule)
    vector = [0.0] * len(METRICS)
    out = []
    for i, x in enumerate(values):
        vector[GAUGE_SLOT] = x
        ws = T0 + i * HALF_HOUR_MS
        out += [e.basis for e in observe_values(state, vector, ws, ws + HALF_HOUR_MS, rules)]
    return out
