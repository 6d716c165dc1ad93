"""The native quiet path of the spike detector (``streams/native``) against the Python detector.

Two rooms fed the same windows, one through ``observe(native=True)``, the other through the
Python detector alone, must hold the same state after every window, bit for bit, and raise the
same alerts. The counts of windows the kernel took make sure these tests exercise it (a kernel
that handed every window back would pass the comparisons).
"""

from __future__ import annotations

import copy
import math
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import RoomStats
from streams.core import _spikes
from streams.core._spike_rules import METRICS, MetricRule, SpikeRules, rules_for
from streams.core._spikes import DetectorState, metric_values, observe

W = 10_000
T0 = 1_767_225_600_000
ROOM = rules_for(SpikeRules(), "room-1")


def test_the_native_core_is_built() -> None:
    """``make test`` builds streams/native; without it every window would take the Python path."""
    assert _spikes.NATIVE
    assert _spikes._plan(ROOM, W).quiet is not None


def stats(
    ws: int,
    views: int = 0,
    unique: int = 0,
    concurrent: int = 0,
    orders: int = 0,
    gmv: int = 0,
    gifts: int = 0,
) -> RoomStats:
    return RoomStats(
        "room-1",
        ws,
        ws + W,
        views,
        unique,
        concurrent,
        0,
        0,
        orders,
        orders / (W / 1_000),
        gmv,
        0,
        0,
        gifts,
        0,
    )


def snapshot(state: DetectorState) -> tuple[Any, ...]:
    alerts = None
    if state.alerts is not None:
        alerts = {key: (a.phase, a.started_ms, a.count, a.severity) for key, a in state.alerts.items()}
    return (
        state.baselines.tobytes(),
        state.history_ms,
        type(state.history_ms),
        state.last_window_end,
        state.last_concurrent,
        type(state.last_concurrent),
        None if state.season is None else state.season.tobytes(),
        state.season_since_ms,
        None if state.drift is None else state.drift.tobytes(),
        alerts,
    )


@contextmanager
def counting() -> Iterator[list[int]]:
    """Counts the windows the kernel took ([taken, handed back])."""
    kernel = _spikes._fastcore
    counts = [0, 0]

    class Counting:
        QuietPlan = kernel.QuietPlan

        @staticmethod
        def observe_quiet(*args: Any) -> bool:
            took = kernel.observe_quiet(*args)
            counts[0 if took else 1] += 1
            return took

    _spikes._fastcore = Counting
    try:
        yield counts
    finally:
        _spikes._fastcore = kernel


def run_both(windows: list[RoomStats], rules: Any, max_gap_s: float = 600.0) -> tuple[int, int, int]:
    """Feed ``windows`` to a native and a Python room in lockstep; returns the windows the kernel
    took, the ones it handed back, and the alert transitions."""
    native, python = DetectorState("room-1"), DetectorState("room-1")
    transitions = 0
    with counting() as counts:
        for i, window in enumerate(windows):
            got = observe(native, window, rules, W, max_gap_s=max_gap_s)
            want = observe(python, window, rules, W, max_gap_s=max_gap_s, native=False)
            assert got == want, f"window {i}"
            assert snapshot(native) == snapshot(python), f"window {i}"
            transitions += len(got)
    return counts[0], counts[1], transitions


# -- series -------------------------------------------------------------------------------------


def test_a_quiet_room_with_gaps_takes_the_native_path_and_ends_in_the_same_state() -> None:
    """Sparse windows of a small room, with silences short (replayed as idle windows) and long
    (the baselines restart, which the Python side does), through warm-up and after it."""
    windows, t = [], T0
    for i in range(400):
        t += W * (1 + (i * 7919) % 13 if i % 5 else 1)
        if i % 97 == 0:
            t += 70 * W  # past max_gap_s: a restart
        windows.append(stats(t, views=i % 3, unique=i % 2, concurrent=i % 4, gmv=(i % 2) * 500))
    taken, handed_back, _ = run_both(windows, ROOM)
    assert taken > 300
    assert handed_back > 0  # the restarts


def test_a_room_growing_into_its_rules_leaves_the_native_path() -> None:
    """A room that grows until a spike fires, then calms down: the quiet windows before agree with
    the Python detector, and from the first loud window on (a seasonal term, an alert slot) the
    Python detector takes them all."""
    windows = [stats(T0 + i * W, views=5, unique=3, concurrent=min(i, 9)) for i in range(60)]
    windows += [stats(T0 + (60 + i) * W, views=5_000, unique=900, concurrent=4_000) for i in range(10)]
    windows += [stats(T0 + (70 + i) * W, views=5, unique=3, concurrent=2) for i in range(40)]
    taken, handed_back, transitions = run_both(windows, ROOM)
    assert taken >= 55
    assert handed_back == 1  # the first loud window: after it the room has a seasonal term
    assert transitions >= 2  # fired and resolved


def test_replayed_and_out_of_order_windows_are_ignored_on_both_paths() -> None:
    windows = [stats(T0 + i * W, views=1, concurrent=1) for i in range(5)]
    windows += [windows[2], stats(T0 + 3 * W + 5_000, views=1), stats(T0 + 9 * W, views=2)]
    assert run_both(windows, ROOM)[:2] == (len(windows), 0)


# -- rules the kernel reads: floors, the drop floor, warm-up, weights ---------------------------


def test_an_orders_baseline_at_the_drop_floor_leaves_the_native_path() -> None:
    """With the drop rule on, quiet orders (0.3/s, below every floor) build a baseline that
    reaches ``drop_min_baseline``: from then on a drop might fire, and Python takes the window."""
    rules = dict(ROOM)
    rules["orders_per_sec"] = replace(rules["orders_per_sec"], drop_enabled=True, drop_min_baseline=0.25)
    windows = [stats(T0 + i * W, views=3, concurrent=5, orders=3) for i in range(40)]
    taken, handed_back, _ = run_both(windows, rules)
    assert 0 < taken < len(windows)
    assert handed_back == len(windows) - taken  # from the first window past the floor on


def test_a_value_at_its_level_still_shrinks_the_variance() -> None:
    """Concurrent viewers 1, 3, then 2: the warm-up's running mean is exactly 2.0, and the third
    window, at the level, still folds the variance down (only a metric with no variance at its
    level is left as it is)."""
    windows = [stats(T0 + i * W, concurrent=c) for i, c in enumerate((1, 3, 2, 2))]
    native = DetectorState("room-1")
    for window in windows[:2]:
        observe(native, window, ROOM, W)
    i = 2 * METRICS.index("concurrent_viewers")
    assert native.baselines[i] == 2.0 and native.baselines[i + 1] > 0.0
    assert run_both(windows, ROOM)[:2] == (len(windows), 0)


RULE_CHANGES = st.fixed_dictionaries(
    {},
    optional={
        "min_volume": st.sampled_from([0.5, 1.0, 3.0, 20.0, 1e9]),
        "surge_value": st.sampled_from([None, 2.0, 50.0]),
        "warmup_s": st.sampled_from([0.0, 10.0, 60.0, 180.0, 3_600.0]),
        "half_life_s": st.sampled_from([10.0, 60.0, 200.0, 5_000.0]),
        "drop_enabled": st.booleans(),
        "drop_min_baseline": st.sampled_from([0.05, 1.0, 30.0]),
    },
)
VALUE = st.integers(min_value=0, max_value=40)


def steps_of(largest_gap: int, max_size: int) -> Any:
    """Windows as (gap in windows, then six values): a negative gap replays an older window, 0
    the same one again."""
    return st.lists(
        st.tuples(st.integers(min_value=-2, max_value=largest_gap), VALUE, VALUE, VALUE, VALUE, VALUE, VALUE),
        min_size=1,
        max_size=max_size,
    )


def series(
    changes: list[tuple[str, dict[str, Any]]], steps: list[tuple[int, ...]], scale: tuple[int, int, int]
) -> tuple[list[RoomStats], dict[str, MetricRule]]:
    """The windows of ``steps`` (concurrent viewers, GMV of the value squared and gift value
    multiplied by ``scale``), and the room rules with ``changes``."""
    rules: dict[str, MetricRule] = dict(ROOM)
    for metric, change in changes:
        rules[metric] = replace(rules[metric], **change)
    windows, t = [], T0
    concurrent_scale, gmv_scale, gift_scale = scale
    for gap, views, unique, concurrent, orders, gmv, gifts in steps:
        t += gap * W
        values = (concurrent * concurrent_scale, orders, gmv * gmv * gmv_scale, gifts * gift_scale)
        windows.append(stats(t, views, unique, *values))
    return windows, rules


@settings(max_examples=150, deadline=None)
@given(
    changes=st.lists(st.tuples(st.sampled_from(METRICS), RULE_CHANGES), max_size=4),
    steps=steps_of(70, 60),
    max_gap_s=st.sampled_from([0.0, 30.0, 600.0, -1.0]),
)
def test_any_rules_and_series_give_the_same_states_on_both_paths(
    changes: list[tuple[str, dict[str, Any]]], steps: list[tuple[int, ...]], max_gap_s: float
) -> None:
    run_both(*series(changes, steps, (1, 100, 1_000)), max_gap_s)


SEASON_CHANGES = st.fixed_dictionaries(
    {},
    optional={
        "season_s": st.sampled_from([0.0, 60.0, 300.0, 3_600.0]),
        "season_bins": st.sampled_from([1, 3, 7, 60]),
        "season_half_life_periods": st.sampled_from([0.1, 0.5, 3.0]),
        "long_season_s": st.sampled_from([0.0, 600.0, 1_200.0]),
        "long_season_bins": st.sampled_from([1, 2, 5]),
        "long_season_after_periods": st.sampled_from([0.0, 0.5, 1.0]),
        "min_volume": st.sampled_from([0.0, 0.5, 3.0, 20.0]),
        "surge_value": st.sampled_from([None, 2.0, 50.0]),
        "warmup_s": st.sampled_from([0.0, 30.0, 180.0]),
        "ratio": st.sampled_from([1.0, 2.25, 6.0]),
        "z_threshold": st.sampled_from([0.0, 1.0, 3.5, 40.0]),
        "winsor_k": st.sampled_from([0.5, 3.0]),
        "drop_enabled": st.booleans(),
        "drop_min_baseline": st.sampled_from([0.05, 1.0, 30.0]),
        "cooldown_s": st.sampled_from([0.0, 120.0]),
    },
)


@settings(max_examples=200, deadline=None)
@given(
    changes=st.lists(st.tuples(st.sampled_from(METRICS), SEASON_CHANGES), max_size=6),
    steps=steps_of(12, 120),
    max_gap_s=st.sampled_from([30.0, 600.0]),
)
def test_rooms_with_seasonal_terms_and_values_past_their_floors_agree_on_both_paths(
    changes: list[tuple[str, dict[str, Any]]], steps: list[tuple[int, ...]], max_gap_s: float
) -> None:
    """The native path also takes windows of rooms learning a seasonal term and windows past a
    floor that meet no rule: seasons short enough to be learned (and their long terms to take
    over) within a series, rule thresholds from always met to never."""
    run_both(*series(changes, steps, (5, 200, 1_500)), max_gap_s)


def test_a_room_with_a_seasonal_term_takes_the_native_path_once_calm() -> None:
    """A room that spiked has a seasonal term; once its alert has resolved and cooled down, its
    windows, busy (past the views floor, meeting no rule) or quiet, take the native path again,
    across seasonal periods and their long term (learned, then preferred)."""
    rules = dict(ROOM)
    for metric in ("views_per_sec", "unique_viewers"):
        rules[metric] = replace(
            rules[metric],
            season_s=120.0,
            season_bins=4,
            long_season_s=480.0,
            long_season_bins=8,
            long_season_after_periods=1.0,
        )
    windows = [stats(T0 + i * W, views=30 + i % 7, unique=12, concurrent=40) for i in range(40)]
    windows += [stats(T0 + (40 + i) * W, views=3_000, unique=900, concurrent=4_000) for i in range(8)]
    calm = ((25 + (i * 13) % 17, 10 + i % 5) for i in range(300))
    windows += [stats(T0 + (48 + i) * W, views=v, unique=u, concurrent=35) for i, (v, u) in enumerate(calm)]
    windows += [stats(T0 + (400 + 3 * i) * W, views=i % 3, concurrent=2) for i in range(50)]
    native = DetectorState("room-1")
    with counting() as counts:
        for window in windows[:48]:
            observe(native, window, rules, W)
        assert native.season is not None and native.alerts
        before = counts[0]
    taken, _, transitions = run_both(windows, rules)
    assert transitions >= 2  # fired and resolved
    assert taken > before + 250  # the calm windows after the cooldown, with a seasonal term


def without_seasons(**views: Any) -> dict[str, MetricRule]:
    """The room rules with no seasonal term (the native path steps a room past its floors
    without one) and ``views`` changed in the views rule."""
    rules = {metric: replace(rule, season_s=0.0) for metric, rule in ROOM.items()}
    rules["views_per_sec"] = replace(rules["views_per_sec"], **views)
    return rules


def step_both(state: DetectorState, window: RoomStats, rules: Any) -> bool:
    """One window into a copy of ``state`` natively and into another by Python alone: asserts
    they agree, returns whether the kernel took it."""
    native, python = copy.deepcopy(state), copy.deepcopy(state)
    with counting() as counts:
        got = observe(native, window, rules, W)
    want = observe(python, window, rules, W, native=False)
    assert got == want
    assert snapshot(native) == snapshot(python)
    return counts == [1, 0]


def test_a_value_at_its_surge_value_during_warm_up_is_python_s() -> None:
    rules = without_seasons(min_volume=20.0, surge_value=2.0)
    assert not step_both(DetectorState("room-1"), stats(T0, views=20), rules)  # 2.0/s: a surge
    assert step_both(DetectorState("room-1"), stats(T0, views=19), rules)


def test_a_value_past_its_ratio_but_within_counting_noise_is_native() -> None:
    """Views 1.5/s against a flat 1.0/s: far past the baseline's own scale, but 15 against 10
    counts is within Poisson noise; no spike, so the kernel folds it (clipped at its band)."""
    rules = without_seasons(min_volume=0.5, ratio=1.0, z_threshold=3.0)
    state = warmed()
    state.baselines[0], state.baselines[1] = 1.0, 1e-6
    assert step_both(state, stats(T0 + 30 * W, views=15, concurrent=1), rules)
    assert not step_both(state, stats(T0 + 30 * W, views=60, concurrent=1), rules)  # 6/s: a spike


def test_a_seasonal_term_raising_the_orders_expectation_to_the_drop_floor_is_python_s() -> None:
    """The drop rule reads the expected orders (the level plus its seasonal term), not the level."""
    rules = dict(ROOM)
    rules["orders_per_sec"] = replace(
        rules["orders_per_sec"], season_s=60.0, season_bins=1, drop_enabled=True, drop_min_baseline=1.0
    )
    state = warmed()
    plan = _spikes._plan(rules, W)
    state.season = array("f", [0.0]) * plan.season_total
    state.season_since_ms = T0
    orders = METRICS.index("orders_per_sec")
    state.season[plan.season_offsets[orders]] = 0.75
    state.baselines[2 * orders], state.baselines[2 * orders + 1] = 0.5, 0.01
    state.baselines[2 * METRICS.index("concurrent_viewers")] = 0.0
    assert not step_both(state, stats(T0 + 30 * W), rules)  # expected 1.25: a drop fires
    state.season[plan.season_offsets[orders]] = 0.25
    assert step_both(state, stats(T0 + 30 * W), rules)  # expected 0.75


@pytest.mark.parametrize("variance", [-1.0, math.inf, math.nan])
def test_a_corrupt_variance_past_a_floor_is_left_to_python(variance: float) -> None:
    """``_step`` takes the variance's square root (which raises for a negative one): the kernel
    hands such a window back, whatever Python then makes of it."""
    rules = without_seasons(min_volume=0.5)
    native, python = warmed(), warmed()
    for state in (native, python):
        state.baselines[1] = variance
    window = stats(T0 + 30 * W, views=15, concurrent=1)
    with counting() as counts:
        got = outcome(lambda: observe(native, window, rules, W))
        want = outcome(lambda: observe(python, window, rules, W, native=False))
    assert got == want
    assert snapshot(native) == snapshot(python)
    assert counts == [0, 1]


def test_the_kernel_reads_the_metrics_metric_values_reads() -> None:
    """The native side takes its metrics from ``_spikes._FIELDS``: the same as ``metric_values``."""
    window = stats(T0, views=7, unique=5, concurrent=3, orders=2, gmv=1_234, gifts=999)
    by_field = tuple(
        getattr(window, name) / (W / 1_000) if per_second else float(getattr(window, name))
        for name, per_second in _spikes._FIELDS
    )
    assert by_field == metric_values(window, W)


# -- what the kernel hands back untouched ------------------------------------------------------


def warmed(windows: int = 30) -> DetectorState:
    state = DetectorState("room-1")
    for i in range(windows):
        observe(state, stats(T0 + i * W, views=1, concurrent=1), ROOM, W, native=False)
    return state


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda s: setattr(s, "last_concurrent", 1), id="last_concurrent an int"),
        pytest.param(lambda s: setattr(s, "history_ms", float(s.history_ms)), id="history a float"),
        pytest.param(lambda s: setattr(s, "history_ms", True), id="history a bool"),
        pytest.param(lambda s: setattr(s, "last_window_end", 2**70), id="window end past i64"),
        pytest.param(lambda s: setattr(s, "baselines", array("f", [0.0]) * 12), id="float32 baselines"),
        pytest.param(lambda s: setattr(s, "baselines", s.baselines[:10]), id="short baselines"),
    ],
)
def test_unexpected_state_is_handed_back_untouched(spoil: Any) -> None:
    state = warmed()
    spoil(state)
    before = copy.deepcopy(state)
    plan = _spikes._plan(ROOM, W).quiet
    # a gap of 3 windows, so that last_concurrent is read too
    took = _spikes._fastcore.observe_quiet(state, stats(T0 + 33 * W, views=1), W, 600_000, plan)
    assert took is False
    assert snapshot(state) == snapshot(before)


@pytest.mark.parametrize(
    "window",
    [
        pytest.param(replace(stats(T0 + 30 * W), views=True), id="a bool count"),
        pytest.param(replace(stats(T0 + 30 * W), views=2**64), id="a count past i64"),
        pytest.param(replace(stats(T0 + 30 * W), window_start=float(T0 + 30 * W)), id="a float window start"),
        pytest.param(stats(T0 + 30 * W, views=20), id="views at the floor"),
    ],
)
def test_an_unexpected_or_loud_window_is_handed_back_untouched(window: RoomStats) -> None:
    state = warmed()
    before = copy.deepcopy(state)
    plan = _spikes._plan(ROOM, W).quiet
    assert _spikes._fastcore.observe_quiet(state, window, W, 600_000, plan) is False
    assert snapshot(state) == snapshot(before)


I64_MAX = 2**63 - 1


@pytest.mark.parametrize(
    ("spoil", "window"),
    [
        pytest.param(
            lambda s: setattr(s, "last_window_end", None), stats(I64_MAX - 5_000), id="window end past i64"
        ),
        pytest.param(lambda s: setattr(s, "history_ms", I64_MAX - 5_000), None, id="history past i64"),
        pytest.param(lambda s: setattr(s, "last_window_end", -(2**62)), stats(2**62), id="gap past i64"),
        pytest.param(lambda s: setattr(s, "history_ms", -W), None, id="negative history"),
        pytest.param(
            lambda s: (setattr(s, "history_ms", -W), setattr(s, "last_window_end", T0 + 28 * W)),
            None,
            id="negative history and a gap",
        ),
    ],
)
def test_results_python_ints_hold_and_i64_does_not_go_to_python(spoil: Any, window: RoomStats | None) -> None:
    """Python's ints do not overflow and a negative history may divide by zero there: the kernel
    hands such windows back (found by review: it wrapped around, or wrote inf and nan)."""
    native, python = warmed(), warmed()
    if spoil is not None:
        spoil(native)
        spoil(python)
    window = window or stats(T0 + 30 * W, views=1)
    with counting() as counts:
        want = outcome(lambda: observe(python, window, ROOM, W, native=False))
        got = outcome(lambda: observe(native, window, ROOM, W))
    assert got == want
    assert snapshot(native) == snapshot(python)
    assert counts == [0, 1]


def outcome(call: Any) -> Any:
    """What ``call()`` returns, or the type of what it raises."""
    try:
        return call()
    except (ArithmeticError, ValueError) as exc:
        return type(exc)


@pytest.mark.parametrize("gap", [0, 4])
@pytest.mark.parametrize("max_gap_s", [math.inf, -math.inf, math.nan, 1e17])
def test_a_gap_bound_past_i64_is_left_to_python(max_gap_s: float, gap: int) -> None:
    """Python converts ``max_gap_s`` only for a window after a gap (and raises for inf or nan)."""
    native, python = warmed(), warmed()
    window = stats(T0 + (30 + gap) * W, views=1)
    with counting() as counts:
        got = outcome(lambda: observe(native, window, ROOM, W, max_gap_s=max_gap_s))
        want = outcome(lambda: observe(python, window, ROOM, W, max_gap_s=max_gap_s, native=False))
    assert got == want
    assert snapshot(native) == snapshot(python)
    assert counts == [0, 0]


def test_rules_without_a_quiet_path_have_no_native_plan() -> None:
    loud = {metric: replace(rule, two_sided=True) for metric, rule in ROOM.items()}
    assert _spikes._plan(loud, W).quiet is None
