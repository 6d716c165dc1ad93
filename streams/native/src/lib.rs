//! Native kernels of livepulse's core (`streams.core`), beside the Python code that defines them.
//!
//! `observe_quiet` is the spike detector's native path (`streams.core._spikes`): a closed window
//! of a room with no alert slot open, on which no rule is met, only moves the room's baselines
//! and its seasonal term, and so does a gap of idle windows before it. Below every rule's floor
//! (and with no seasonal term yet) that is `_fold_quiet` (and `_fold_quiet_run` for a gap); past
//! a floor, or with a seasonal term, it is `_step` with no alert transition: the tests computed
//! (the spike's score with its Poisson check, the surge, the drop on the expected orders) and,
//! when none is met, the winsorised fold and the seasonal bins' learning. At 100 000 sparse rooms
//! nearly every closed window takes this path, at 2 000 rooms most do. The kernel computes
//! exactly what the Python functions compute, in the same order of IEEE operations (no fused
//! multiply-add, the same libm `pow` and `sqrt`, float32 bins rounded as `array('f')` rounds
//! them), on copies written back only once it knows the whole window is taken. Anything else
//! (an alert slot, a rule that might be met, a seasonal term to allocate or resize, loud rules,
//! a gap long enough to restart the baselines, an attribute of an unexpected type) returns
//! `False` with the state untouched, and the Python detector takes the window.
//! `tests/unit/test_fastcore.py` holds the two to the same states, bit for bit.
//!
//! `rooms` is the room state in native code (issue 13, item 1): see its plan. `batches` writes
//! Kafka record batches, which the room table writes its records into directly.

mod batches;
mod dedup;
mod fetched;
/// the decoders' flat-JSON parser (`schemas/native`), shared source (the table checks fields it
/// does not keep: a gift's id, an order's or gift's user)
#[allow(dead_code)]
#[path = "../../../schemas/native/src/flat.rs"]
mod flat;
mod rooms;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyInt, PyString};

pub const MAX_METRICS: usize = 8;

/// The numbers of one rules mapping at one window length that the quiet path reads, in the
/// detector's METRICS order (built once per `streams.core._spikes._Plan`).
#[pyclass(frozen, module = "streams.core._fastcore")]
pub struct QuietPlan {
    pub n: usize,
    /// a value at or above its floor might trigger a rule
    floors: [f64; MAX_METRICS],
    alphas: [f64; MAX_METRICS],
    warmups: [i64; MAX_METRICS],
    /// metrics tested on their square root (money)
    roots: [bool; MAX_METRICS],
    /// an orders baseline at or above it might meet the drop rule (None: drop disabled)
    drop_floor: Option<f64>,
    concurrent: usize,
    orders: usize,
    /// the RoomStats attribute of each metric, and whether it is divided by the window's seconds
    names: Vec<Py<PyString>>,
    pub per_second: [bool; MAX_METRICS],
    /// where each metric is in a natively closed window's numbers (None: a name it has not)
    pub sources: Option<[rooms::StatField; MAX_METRICS]>,
    /// the rest of `_step`'s numbers, for windows past a floor or in a room with a seasonal term
    tests: [Test; MAX_METRICS],
    seasons: [Season; MAX_METRICS],
    /// the seasonal term's length (`_Plan.season_total`)
    season_total: usize,
}

/// A metric's tests (`_step`): its kind (`_RATE`, `_COUNT`, `_LEVEL`, `_MONEY`), `min_volume`,
/// `ratio`, `z_threshold`, `winsor_k`, and `surge_value` (infinite: none).
#[derive(Clone, Copy, Default)]
struct Test {
    kind: u8,
    min_volume: f64,
    ratio: f64,
    z_threshold: f64,
    winsor_k: f64,
    surge: f64,
}

/// A metric's seasonal term in `_Plan`: the period (0: none), its bins and their offset in the
/// term, the long period's (0: none), after how long it may replace the short one, and the weights
/// of the short bins, the long bins and the errors' slow mean.
#[derive(Clone, Copy, Default)]
struct Season {
    period_ms: i64,
    offset: usize,
    bins: i64,
    long_ms: i64,
    long_offset: usize,
    long_bins: i64,
    long_after_ms: i64,
    alpha: f64,
    long_alpha: f64,
    slow_alpha: f64,
}

impl Season {
    /// Where the slow mean squared misses of the short and the long term are (after the long bins).
    fn errors(&self) -> usize {
        self.long_offset + self.long_bins as usize
    }
}

/// `_RATE` and `_COUNT` of `streams.core._spikes` (tested against Poisson noise too)
const RATE: u8 = 0;
const COUNT: u8 = 1;

fn fill<T: Copy>(into: &mut [T; MAX_METRICS], from: &[T]) {
    into[..from.len()].copy_from_slice(from);
}

#[pymethods]
impl QuietPlan {
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        floors: Vec<f64>,
        alphas: Vec<f64>,
        warmups: Vec<i64>,
        roots: Vec<bool>,
        drop_floor: Option<f64>,
        concurrent: usize,
        orders: usize,
        names: Vec<Py<PyString>>,
        per_second: Vec<bool>,
        tests: Vec<(u8, f64, f64, f64, f64, Option<f64>)>,
        seasons: Vec<(i64, usize, i64, i64, usize, i64, i64)>,
        season_weights: Vec<(f64, f64, f64)>,
        season_total: usize,
    ) -> PyResult<Self> {
        let n = floors.len();
        let lengths = [
            alphas.len(),
            warmups.len(),
            roots.len(),
            names.len(),
            per_second.len(),
            tests.len(),
            seasons.len(),
            season_weights.len(),
        ];
        if n == 0 || n > MAX_METRICS || lengths.iter().any(|&len| len != n) {
            return Err(PyValueError::new_err(format!(
                "a quiet plan needs 1 to {MAX_METRICS} metrics, each with every field"
            )));
        }
        if concurrent >= n || orders >= n {
            return Err(PyValueError::new_err(
                "concurrent and orders must index a metric",
            ));
        }
        let mut sources = Some([rooms::StatField::Unique; MAX_METRICS]);
        for (i, name) in names.iter().enumerate() {
            match rooms::StatField::of(name.bind(py).to_str()?) {
                Some(field) => {
                    if let Some(known) = sources.as_mut() {
                        known[i] = field;
                    }
                }
                None => sources = None,
            }
        }
        let mut plan = QuietPlan {
            n,
            floors: [0.0; MAX_METRICS],
            alphas: [0.0; MAX_METRICS],
            warmups: [0; MAX_METRICS],
            roots: [false; MAX_METRICS],
            drop_floor,
            concurrent,
            orders,
            names,
            per_second: [false; MAX_METRICS],
            sources,
            tests: [Test::default(); MAX_METRICS],
            seasons: [Season::default(); MAX_METRICS],
            season_total,
        };
        for (i, &(kind, min_volume, ratio, z_threshold, winsor_k, surge)) in
            tests.iter().enumerate()
        {
            plan.tests[i] = Test {
                kind,
                min_volume,
                ratio,
                z_threshold,
                winsor_k,
                surge: surge.unwrap_or(f64::INFINITY),
            };
        }
        for (i, (&bins, &weights)) in seasons.iter().zip(&season_weights).enumerate() {
            let (period_ms, offset, bins, long_ms, long_offset, long_bins, long_after_ms) = bins;
            let (alpha, long_alpha, slow_alpha) = weights;
            // every bin read or written must be in the term (a long term ends with its two errors)
            let fits = |period: i64, offset: usize, bins: i64, extra: usize| {
                period == 0
                    || (period > 0
                        && bins > 0
                        && usize::try_from(bins)
                            .ok()
                            .and_then(|bins| offset.checked_add(bins + extra))
                            .is_some_and(|end| end <= season_total))
            };
            if !fits(period_ms, offset, bins, 0)
                || !fits(long_ms, long_offset, long_bins, 2)
                || (period_ms == 0 && long_ms != 0)
            {
                return Err(PyValueError::new_err(format!(
                    "metric {i}'s seasonal bins do not fit a term of {season_total}"
                )));
            }
            plan.seasons[i] = Season {
                period_ms,
                offset,
                bins,
                long_ms,
                long_offset,
                long_bins,
                long_after_ms,
                alpha,
                long_alpha,
                slow_alpha,
            };
        }
        fill(&mut plan.floors, &floors);
        fill(&mut plan.alphas, &alphas);
        fill(&mut plan.warmups, &warmups);
        fill(&mut plan.roots, &roots);
        fill(&mut plan.per_second, &per_second);
        Ok(plan)
    }
}

/// An exact Python int that fits an i64 (not a bool, not a float).
fn exact_int(value: &Bound<'_, PyAny>) -> Option<i64> {
    if value.is_exact_instance_of::<PyInt>() {
        value.extract::<i64>().ok()
    } else {
        None
    }
}

fn exact_float(value: &Bound<'_, PyAny>) -> Option<f64> {
    value.cast_exact::<PyFloat>().ok().map(|f| f.value())
}

/// A value on its test scale: the square root for money, clamped at zero.
fn scaled(x: f64, root: bool) -> f64 {
    if !root {
        x
    } else if x > 0.0 {
        x.sqrt()
    } else {
        0.0
    }
}

/// `_is_quiet`: no value reaches its floor, and the orders baseline is below the drop floor.
fn is_quiet(plan: &QuietPlan, values: &[f64], b: &[f64]) -> bool {
    if values.iter().zip(&plan.floors).any(|(x, floor)| x >= floor) {
        return false;
    }
    match plan.drop_floor {
        None => true,
        Some(floor) => b[2 * plan.orders] < floor,
    }
}

/// `_fold_quiet_run`: `windows` repeats of the quiet `values` (`span` ms each) folded at once into
/// `b`, whose baselines are behind `h0` ms of history. None where Python would raise (a zero or
/// non-finite alpha): the caller leaves the window to Python.
fn fold_run(
    plan: &QuietPlan,
    values: &[f64],
    windows: i64,
    span: i64,
    h0: i64,
    b: &mut [f64],
) -> Option<()> {
    let n0 = h0 as f64 / span as f64;
    for i in 0..plan.n {
        let x = scaled(values[i], plan.roots[i]);
        let alpha = plan.alphas[i];
        let (mut mean, mut var) = (b[2 * i], b[2 * i + 1]);
        if x == mean && var == 0.0 {
            continue; // a constant at its mean with no variance stays there
        }
        let mut running: i64 = 0;
        let warmup = plan.warmups[i];
        if h0 < warmup {
            // windows still weighted 1/(n+1) > alpha
            let until_warm = (warmup - h0).checked_add(span - 1)? / span;
            let cap = (1.0 / alpha - n0).floor();
            if !cap.is_finite() || cap.abs() >= 9.0e18 {
                return None;
            }
            running = windows.min(until_warm.min(cap as i64).max(0));
        }
        if running != 0 {
            let r = running as f64;
            let total = n0 + r;
            let diff = x - mean;
            mean = (n0 * mean + r * x) / total;
            var = (n0 * var + n0 * r * diff * diff / total) / total;
        }
        let left = windows - running;
        if left != 0 {
            let rk = (1.0 - alpha).powf(left as f64);
            let diff = x - mean;
            mean = x - diff * rk;
            var = rk * (var + diff * diff * (1.0 - rk));
        }
        b[2 * i] = mean;
        b[2 * i + 1] = var;
    }
    Some(())
}

/// `_fold_quiet`'s fold: one quiet window of `span` ms into `b`, behind `history` ms.
fn fold_one(plan: &QuietPlan, values: &[f64], span: i64, history: i64, b: &mut [f64]) {
    let warm = span as f64 / (history + span) as f64;
    for i in 0..plan.n {
        let x = scaled(values[i], plan.roots[i]);
        let (level, var) = (b[2 * i], b[2 * i + 1]);
        if x == level && var == 0.0 {
            continue; // the fold leaves both as they are (a metric never seen)
        }
        let alpha = plan.alphas[i];
        let a = if history >= plan.warmups[i] || alpha > warm {
            alpha
        } else {
            warm
        };
        let diff = x - level;
        let incr = a * diff;
        b[2 * i] = level + incr;
        b[2 * i + 1] = (1.0 - a) * (var + diff * incr);
    }
}

/// The part of a room's detector state the native path reads and writes (`DetectorState`'s
/// `last_window_end`, `history_ms`, `last_concurrent`, `baselines`, `season` and
/// `season_since_ms`).
pub struct QuietState<'a> {
    pub last_end: Option<i64>,
    pub history_ms: i64,
    /// None: not a float (a corrupt record); a gap that needs it goes to Python
    pub last_concurrent: Option<f64>,
    pub baselines: &'a mut [f64],
    /// the seasonal term (None: not allocated yet)
    pub season: Option<&'a mut [f32]>,
    pub season_since_ms: i64,
}

/// What the native path did with a window.
#[derive(PartialEq, Eq, Debug)]
pub enum Quiet {
    /// at or before the last window observed: nothing changes, as in Python
    Ignored,
    /// folded: the state moved, and no alert transition can result
    Folded,
    /// the Python detector's window: the state is untouched
    Python,
}

/// The state one window at a time moves: copies, written back once every window is taken.
struct Work<'a> {
    history: i64,
    b: &'a mut [f64],
    season: Option<&'a mut [f32]>,
    since: i64,
}

/// Python's `max(a, b)` and `min(a, b)` (the first argument on a tie, as `_step` reads them).
fn py_max(a: f64, b: f64) -> f64 {
    if b > a {
        b
    } else {
        a
    }
}

fn py_min(a: f64, b: f64) -> f64 {
    if b < a {
        b
    } else {
        a
    }
}

/// `_zscore`
fn zscore(delta: f64, std: f64) -> f64 {
    const Z_CAP: f64 = 1e9;
    if std > 1e-12 {
        py_max(-Z_CAP, py_min(Z_CAP, delta / std))
    } else if delta == 0.0 {
        0.0
    } else {
        Z_CAP.copysign(delta)
    }
}

/// A window's bin in a seasonal term: `(start % period) * bins // period` (Python's floor
/// modulo and division), None past 64 bits.
fn bin(start: i64, period: i64, bins: i64) -> Option<usize> {
    let at = i128::from(start.rem_euclid(period)) * i128::from(bins) / i128::from(period);
    usize::try_from(at).ok()
}

/// One window of `_step`, for a room with no alert slot open: the baselines and the seasonal
/// term fold as `_step` folds them. False (the work spoiled: the caller drops it) where Python
/// must take the window: a rule might be met (a spike's test, a surge, a drop), or the seasonal
/// term is to be allocated.
fn step(plan: &QuietPlan, values: &[f64], start: i64, span: i64, w: &mut Work<'_>) -> bool {
    let history = w.history;
    let Some(next) = history.checked_add(span) else {
        return false;
    };
    if w.season.is_none() {
        if is_quiet(plan, values, w.b) {
            // `_fold_quiet`
            fold_one(plan, values, span, history, w.b);
            w.history = next;
            return true;
        }
        if plan.season_total > 0 {
            return false; // `_step` allocates the term: Python's
        }
    }
    let Some(learned) = start.checked_sub(w.since) else {
        return false;
    };
    let seconds = span as f64 / 1_000.0;
    let b = &mut *w.b;
    for i in 0..plan.n {
        let x = values[i];
        let test = &plan.tests[i];
        let root = plan.roots[i];
        let y = scaled(x, root);
        let (level, var) = (b[2 * i], b[2 * i + 1]);
        let s = &plan.seasons[i];
        let mut s_index = None;
        let mut l_index = None;
        let mut s_term = 0.0;
        if let (Some(season), true) = (w.season.as_deref(), s.period_ms != 0) {
            let Some(short) = bin(start, s.period_ms, s.bins) else {
                return false;
            };
            let short = s.offset + short;
            s_index = Some(short);
            let mut use_long = false;
            if s.long_ms != 0 {
                let Some(long) = bin(start, s.long_ms, s.long_bins) else {
                    return false;
                };
                l_index = Some(s.long_offset + long);
                let errors = s.errors();
                use_long = learned >= s.long_after_ms && season[errors + 1] < season[errors];
            }
            if use_long {
                s_term = f64::from(season[l_index.expect("set")]);
            } else if learned >= s.period_ms - s.period_ms / s.bins {
                s_term = f64::from(season[short]);
            }
            if s_term < 0.0 {
                s_term = 0.0; // one-sided: the season only raises its expectation
            }
        }
        if !(level.is_finite() && var.is_finite() && var >= 0.0 && s_term.is_finite()) {
            return false; // a corrupt state: Python's (math.sqrt of a negative variance raises)
        }
        let center = level + s_term;
        let std = var.sqrt();
        let expected = if root { center * center + var } else { center };
        let warmed = history >= plan.warmups[i];
        if !warmed && x >= test.surge {
            return false; // a surge might be met
        }
        if i == plan.orders && plan.drop_floor.is_some_and(|floor| expected >= floor) {
            return false; // a drop might be met
        }
        if warmed && x >= test.min_volume && x >= test.ratio * expected {
            let mut z = zscore(y - center, std);
            if test.kind == RATE || test.kind == COUNT {
                let c = if test.kind == RATE { seconds } else { 1.0 };
                let zp = 2.0 * ((py_max(x, 0.0) * c).sqrt() - (py_max(expected, 0.0) * c).sqrt());
                z = if z >= 0.0 {
                    py_min(z, zp)
                } else {
                    py_max(z, zp)
                };
            }
            if z >= test.z_threshold {
                return false; // a spike
            }
        }
        let mut diff = y - center;
        let mut alpha = plan.alphas[i];
        if !warmed {
            let warm = span as f64 / (history + span) as f64;
            if warm > alpha {
                alpha = warm;
            }
        } else if x >= test.min_volume {
            let floor = 0.1
                * if root {
                    center.abs()
                } else {
                    py_max(center.abs(), test.min_volume)
                };
            let band = py_max(test.winsor_k * std, floor);
            if diff > band {
                diff = band;
            } else if diff < -band {
                diff = -band;
            }
        }
        let incr = alpha * diff;
        b[2 * i] = level + incr;
        b[2 * i + 1] = (1.0 - alpha) * (var + diff * incr);
        if let (Some(season), Some(at)) = (w.season.as_deref_mut(), s_index) {
            // no alert: the terms learn the raw residual of their bins
            let short_miss = y - level - f64::from(season[at]);
            season[at] = (f64::from(season[at]) + s.alpha * short_miss) as f32;
            if let Some(long) = l_index {
                let long_miss = y - level - f64::from(season[long]);
                season[long] = (f64::from(season[long]) + s.long_alpha * long_miss) as f32;
                if learned >= s.long_ms {
                    let errors = s.errors();
                    for (at, miss) in [(errors, short_miss), (errors + 1, long_miss)] {
                        let e = f64::from(season[at]);
                        season[at] = (e + s.slow_alpha * (miss * miss - e)) as f32;
                    }
                }
            }
        }
    }
    w.history = next;
    true
}

/// The native path over one window: `values` (METRICS order, per-second metrics already divided)
/// of the window starting at `window_start`, `window_ms` long; `max_gap_ms` is the longest
/// silence replayed as idle windows. The caller has checked there is no alert slot, and a
/// negative history is the caller's to hand back.
pub fn fold_quiet(
    plan: &QuietPlan,
    values: &[f64],
    window_start: i64,
    window_ms: i64,
    max_gap_ms: i64,
    state: &mut QuietState<'_>,
) -> Quiet {
    let n = plan.n;
    if window_ms <= 0 || state.history_ms < 0 || state.baselines.len() != 2 * n {
        return Quiet::Python;
    }
    if let Some(season) = &state.season {
        if season.len() != plan.season_total || season.is_empty() {
            return Quiet::Python; // the rules' seasons changed: `_step` reallocates it
        }
    }
    let history = state.history_ms;
    // every result below fits an i64 (Python's ints do not overflow; the kernel hands those back)
    let (Some(window_end), Some(_)) = (
        window_start.checked_add(window_ms),
        history.checked_add(window_ms),
    ) else {
        return Quiet::Python;
    };
    let mut b = [0.0f64; 2 * MAX_METRICS];
    let b = &mut b[..2 * n];
    b.copy_from_slice(state.baselines);
    let mut season = state.season.as_deref().map(<[f32]>::to_vec);
    let mut work = Work {
        history,
        b,
        season: season.as_deref_mut(),
        since: state.season_since_ms,
    };
    if let Some(last_end) = state.last_end {
        if window_start < last_end {
            return Quiet::Ignored;
        }
        let Some(missed) = window_start
            .checked_sub(last_end)
            .map(|gap| gap / window_ms)
        else {
            return Quiet::Python;
        };
        if missed > 0 {
            let replayable = if max_gap_ms > 0 {
                max_gap_ms / window_ms
            } else {
                0
            };
            if missed > replayable {
                return Quiet::Python; // the baselines restart: Python's
            }
            let Some(concurrent) = state.last_concurrent else {
                return Quiet::Python;
            };
            let Some(gap_ms) = missed
                .checked_mul(window_ms)
                .filter(|gap| gap.checked_add(history + window_ms).is_some())
            else {
                return Quiet::Python;
            };
            let mut idle = [0.0f64; MAX_METRICS];
            idle[plan.concurrent] = concurrent;
            let idle = &idle[..n];
            if work.season.is_none() && is_quiet(plan, idle, work.b) {
                // `observe_values`' closed form of a quiet gap
                if fold_run(plan, idle, missed, window_ms, history, work.b).is_none() {
                    return Quiet::Python;
                }
                work.history += gap_ms;
            } else {
                for k in 0..missed {
                    if !step(plan, idle, last_end + k * window_ms, window_ms, &mut work) {
                        return Quiet::Python;
                    }
                }
            }
        }
    }
    if !step(plan, values, window_start, window_ms, &mut work) {
        return Quiet::Python;
    }
    let history = work.history;
    state.baselines.copy_from_slice(b);
    if let (Some(into), Some(from)) = (state.season.as_deref_mut(), season.as_deref()) {
        into.copy_from_slice(from);
    }
    state.history_ms = history;
    state.last_end = Some(window_end);
    state.last_concurrent = Some(values[plan.concurrent]);
    Quiet::Folded
}

/// The detector's quiet path for one closed window of a room (`streams.core._spikes.observe`):
/// True if it took the window (the state is updated, no alert transition can result), False if
/// the Python detector must (the state is untouched).
///
/// `state` is a `DetectorState`, `stats` a `RoomStats` of `window_ms`; `max_gap_ms` is the
/// longest silence replayed as idle windows (`max_gap_s` in ms).
#[pyfunction]
fn observe_quiet(
    py: Python<'_>,
    state: &Bound<'_, PyAny>,
    stats: &Bound<'_, PyAny>,
    window_ms: i64,
    max_gap_ms: i64,
    plan: &Bound<'_, QuietPlan>,
) -> PyResult<bool> {
    let plan = plan.get();
    let n = plan.n;
    if window_ms <= 0 || !state.getattr(intern!(py, "alerts"))?.is_none() {
        return Ok(false);
    }
    let Some(window_start) = exact_int(&stats.getattr(intern!(py, "window_start"))?) else {
        return Ok(false);
    };
    // metric_values: per-second metrics over the window's seconds, the others as they are
    let seconds = window_ms as f64 / 1_000.0;
    let mut values = [0.0f64; MAX_METRICS];
    for (i, slot) in values.iter_mut().enumerate().take(n) {
        let value = stats.getattr(plan.names[i].bind(py))?;
        let x = if let Some(x) = exact_float(&value) {
            x
        } else if let Some(x) = exact_int(&value) {
            x as f64
        } else {
            return Ok(false);
        };
        *slot = if plan.per_second[i] { x / seconds } else { x };
    }
    let last_end = state.getattr(intern!(py, "last_window_end"))?;
    let last_end = if last_end.is_none() {
        None
    } else {
        match exact_int(&last_end) {
            Some(end) => Some(end),
            None => return Ok(false),
        }
    };
    let Some(history_ms) = exact_int(&state.getattr(intern!(py, "history_ms"))?) else {
        return Ok(false);
    };
    let baselines = state.getattr(intern!(py, "baselines"))?;
    let Ok(buffer) = PyBuffer::<f64>::get(&baselines) else {
        return Ok(false);
    };
    if buffer.item_count() != 2 * n || buffer.readonly() || !buffer.is_c_contiguous() {
        return Ok(false);
    }
    let mut b = [0.0f64; 2 * MAX_METRICS];
    let b = &mut b[..2 * n];
    buffer.copy_to_slice(py, b)?;
    let last_concurrent = exact_float(&state.getattr(intern!(py, "last_concurrent"))?);
    // the seasonal term: a float32 array, or None
    let season_buffer = {
        let season = state.getattr(intern!(py, "season"))?;
        if season.is_none() {
            None
        } else {
            let Ok(buffer) = PyBuffer::<f32>::get(&season) else {
                return Ok(false);
            };
            if buffer.readonly() || !buffer.is_c_contiguous() {
                return Ok(false);
            }
            Some(buffer)
        }
    };
    let mut season = season_buffer.as_ref().map(|b| b.to_vec(py)).transpose()?;
    let Some(season_since_ms) = exact_int(&state.getattr(intern!(py, "season_since_ms"))?) else {
        return Ok(false);
    };
    let mut quiet = QuietState {
        last_end,
        history_ms,
        last_concurrent,
        baselines: b,
        season: season.as_deref_mut(),
        season_since_ms,
    };
    match fold_quiet(
        plan,
        &values[..n],
        window_start,
        window_ms,
        max_gap_ms,
        &mut quiet,
    ) {
        Quiet::Python => Ok(false),
        Quiet::Ignored => Ok(true),
        Quiet::Folded => {
            buffer.copy_from_slice(py, quiet.baselines)?;
            if let (Some(into), Some(from)) = (&season_buffer, quiet.season.as_deref()) {
                into.copy_from_slice(py, from)?;
            }
            state.setattr(intern!(py, "history_ms"), quiet.history_ms)?;
            state.setattr(intern!(py, "last_window_end"), quiet.last_end)?;
            state.setattr(intern!(py, "last_concurrent"), values[plan.concurrent])?;
            Ok(true)
        }
    }
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`, as
/// `streams.core._partition.murmur2`).
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let rest = chunks.remainder();
    if rest.len() == 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition the Java client's default partitioner picks for a non-null key
/// (`streams.core._partition.partition_for`); `partitions` is at least 1.
pub fn partition_of(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) as i32 % partitions
}

/// `partition_of` for Python (the tests hold it to `streams.core._partition.partition_for`).
#[pyfunction]
pub fn partition_for(key: &[u8], partitions: i32) -> PyResult<i32> {
    if partitions < 1 {
        return Err(PyValueError::new_err("partitions must be at least 1"));
    }
    Ok(partition_of(key, partitions))
}

#[pymodule]
fn _fastcore(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<QuietPlan>()?;
    m.add_class::<rooms::NativeRooms>()?;
    m.add_class::<batches::Outbox>()?;
    m.add_class::<batches::RecordBatch>()?;
    m.add_class::<fetched::FetchedRecords>()?;
    m.add_class::<fetched::RecordRun>()?;
    m.add_class::<fetched::FetchedRecord>()?;
    m.add_function(wrap_pyfunction!(fetched::readable, m)?)?;
    m.add_function(wrap_pyfunction!(rooms::format_float, m)?)?;
    m.add_function(wrap_pyfunction!(partition_for, m)?)?;
    m.add_function(wrap_pyfunction!(observe_quiet, m)?)?;
    Ok(())
}
