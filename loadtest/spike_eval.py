"""Labeled evaluation of the spike detector on synthetic series (``loadtest.spike_series``).

    python -m loadtest.spike_eval --seed 1 --rooms 2000
    python -m loadtest.spike_eval --seeds 2,3,4,5,6 --rooms 2000 --jobs 2

Every room's windows go through ``streams.core`` ``observe`` with the default
rules. Scoring, per (injection, metric of its group):

- an instance is **detected** when the first firing alert for that room and
  metric, fired while the spike lasts (or up to D windows after it ends),
  fired in a window at index ``start .. start + D`` (``--match-windows``,
  default 3); its **delay** is that index minus ``start`` (0 = fired as soon
  as the first spiking window closed, 1 = when the second one closed);
- **recall** per spike size = detected / labeled, over *eligible* instances:
  those whose expected spiked value (size x pre-spike expected value) is at
  least ``--eligible-margin`` (default 1.5) x the rule's ``min_volume``. Smaller
  rooms are below the volume floor by design; they are reported separately;
- **precision** = true alerts / all firing alerts. The first alert per
  (spike, metric) fired during the spike (up to D windows after it ends) is
  true, whatever the spike's size or eligibility and even if too late to count
  as detected (late alerts are reported); any other alert (a second one for
  the same spike, one on a decoy blip or ramp, one on nothing) is false.
  ``RoomSurge`` alerts are counted apart: every synthetic room starts at full
  size in window 0, which to the detector is a brand-new room, exactly what
  the surge rule is for (no spike is injected before window
  ``history_windows``, long after warm-up).
- **flash-sale slots** are routine, not events: an alert on orders/s or GMV/s
  fired during a room's second or later hourly slot (or up to D windows after
  it) is false (``flash``); one during the room's first slot is counted apart
  (the detector cannot know a routine it has not seen yet) and left out of
  precision, like ``RoomSurge``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace

from streams.core import SPIKE_METRICS as METRICS
from streams.core import DetectorState, MetricRule, SpikeRules, observe, rules_for

from .spike_series import GROUPS, Injection, RoomSeries, SeriesConfig, generate_room


def tally_first(series: RoomSeries, fired: Sequence[tuple[int, str]], match: int) -> int:
    """Alerts on sales metrics during the room's first flash-sale slot (left out of precision)."""
    if not series.slots:
        return 0
    start, end = series.slots[0]
    return sum(1 for at, metric in fired if metric in GROUPS["sales"] and start <= at < end + match)


@dataclass(slots=True)
class Tally:
    """Counts of one room batch; tallies add up."""

    alerts: int = 0
    true_alerts: int = 0
    #: RoomSurge alerts: every synthetic room starts at full size in window 0, a "new room" to the detector
    surge_alerts: int = 0
    #: alerts on sales metrics during a room's first flash-sale slot (not scored)
    first_slot_alerts: int = 0
    #: rooms with flash-sale slots, and their slots after the first
    slot_rooms: int = 0
    later_slots: int = 0
    decoy_alerts: Counter[str] = field(default_factory=Counter)
    unmatched_alerts: Counter[str] = field(default_factory=Counter)
    #: (kind, size bucket, eligible) -> instances
    labeled: Counter[tuple[str, float, bool]] = field(default_factory=Counter)
    #: (kind, size bucket, eligible) -> instances that got an alert in time
    detected: Counter[tuple[str, float, bool]] = field(default_factory=Counter)
    #: (kind, size bucket, eligible) -> instances alerted, but later than D windows after the start
    late: Counter[tuple[str, float, bool]] = field(default_factory=Counter)
    #: size bucket -> delays (windows) of eligible detected spikes
    delays: dict[float, list[int]] = field(default_factory=lambda: defaultdict(list))
    windows: int = 0

    def add(self, other: Tally) -> None:
        self.alerts += other.alerts
        self.true_alerts += other.true_alerts
        self.surge_alerts += other.surge_alerts
        self.first_slot_alerts += other.first_slot_alerts
        self.slot_rooms += other.slot_rooms
        self.later_slots += other.later_slots
        self.decoy_alerts.update(other.decoy_alerts)
        self.unmatched_alerts.update(other.unmatched_alerts)
        self.labeled.update(other.labeled)
        self.detected.update(other.detected)
        self.late.update(other.late)
        for size, delays in other.delays.items():
            self.delays[size].extend(delays)
        self.windows += other.windows


def _bucket(inj: Injection) -> float:
    return inj.size if inj.kind == "spike" else round(inj.size)


def evaluate_rooms(
    seed: int,
    indexes: Sequence[int],
    cfg: SeriesConfig,
    rules: Mapping[str, MetricRule],
    match: int,
    margin: float,
) -> Tally:
    tally = Tally()
    for index in indexes:
        series = generate_room(seed, index, cfg)
        state = DetectorState(series.room_id)
        fired: list[tuple[int, str]] = []  # (window index, metric)
        for stats in series.stats:
            for event in observe(state, stats, rules, cfg.window_ms):
                if event.status == "firing" and event.alertname == "RoomSurge":
                    tally.surge_alerts += 1
                elif event.status == "firing":
                    fired.append(((event.window_end_ms - cfg.start_ms) // cfg.window_ms - 1, event.metric))
        tally.windows += len(series.stats)
        claimed: set[int] = set()
        if series.slots:
            tally.slot_rooms += 1
            tally.later_slots += len(series.slots) - 1
            first = series.slots[0]
            for k, (at, metric) in enumerate(fired):
                if metric in GROUPS["sales"] and first[0] <= at < first[1] + match:
                    claimed.add(k)
                    tally.first_slot_alerts += 1
            for start, end in series.slots[1:]:
                for k, (at, metric) in enumerate(fired):
                    if k not in claimed and metric in GROUPS["sales"] and start <= at < end + match:
                        claimed.add(k)
                        tally.decoy_alerts["flash"] += 1
        tally.alerts += len(fired) - tally_first(series, fired, match)
        for inj in series.injections:
            for metric in inj.metrics:
                eligible = inj.size * inj.base[metric] >= margin * rules[metric].min_volume
                key = (inj.kind, _bucket(inj), eligible)
                tally.labeled[key] += 1
                end = inj.start + inj.length + match
                hit = next(
                    (
                        k
                        for k, (at, m) in enumerate(fired)
                        if m == metric and k not in claimed and inj.start <= at < end
                    ),
                    None,
                )
                if hit is None:
                    continue
                claimed.add(hit)
                if inj.kind != "spike":
                    tally.decoy_alerts[inj.kind] += 1
                    tally.detected[key] += 1
                    continue
                tally.true_alerts += 1
                delay = fired[hit][0] - inj.start
                if delay <= match:
                    tally.detected[key] += 1
                    if eligible:
                        tally.delays[inj.size].append(delay)
                else:
                    tally.late[key] += 1
        for k, (_, metric) in enumerate(fired):
            if k not in claimed:
                tally.unmatched_alerts[metric] += 1
    return tally


def run(
    seed: int, cfg: SeriesConfig, rules: Mapping[str, MetricRule], match: int, margin: float, jobs: int
) -> Tally:
    total = Tally()
    chunks = [range(i, cfg.rooms, max(1, jobs)) for i in range(max(1, jobs))]
    if jobs <= 1:
        total.add(evaluate_rooms(seed, chunks[0], cfg, rules, match, margin))
        return total
    with ProcessPoolExecutor(jobs) as pool:
        for part in pool.map(
            evaluate_rooms, *zip(*[(seed, c, cfg, rules, match, margin) for c in chunks], strict=True)
        ):
            total.add(part)
    return total


def _pct(values: Sequence[int], q: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))]) if ordered else float("nan")


@dataclass(frozen=True, slots=True)
class Summary:
    precision: float
    recall_3x_up: float
    median_delay_3x_up: float
    rows: list[tuple[str, int, int, float, float, float]]  # bucket, labeled, detected, recall, p50, p90
    false_alerts: int
    alerts: int


def summarise(t: Tally, sizes: Iterable[float]) -> Summary:
    rows = []
    for size in sizes:
        n, d = t.labeled[("spike", size, True)], t.detected[("spike", size, True)]
        delays = t.delays.get(size, [])
        rows.append((f"{size:g}x", n, d, d / n if n else float("nan"), _pct(delays, 0.5), _pct(delays, 0.9)))
    big = [s for s in sizes if s >= 3]
    n3 = sum(t.labeled[("spike", s, True)] for s in big)
    d3 = sum(t.detected[("spike", s, True)] for s in big)
    delays3 = [d for s in big for d in t.delays.get(s, [])]
    false_alerts = t.alerts - t.true_alerts
    return Summary(
        precision=t.true_alerts / t.alerts if t.alerts else float("nan"),
        recall_3x_up=d3 / n3 if n3 else float("nan"),
        median_delay_3x_up=statistics.median(delays3) if delays3 else float("nan"),
        rows=rows,
        false_alerts=false_alerts,
        alerts=t.alerts,
    )


def report(seed: int, t: Tally, cfg: SeriesConfig, seconds: float, match: int) -> Summary:
    s = summarise(t, cfg.spike_sizes)
    print(f"seed {seed}: {cfg.rooms} rooms x {cfg.windows} windows, {t.windows} records, {seconds:.1f} s")
    print(f"  alerts {s.alerts}: true {t.true_alerts}, false {s.false_alerts}, precision {s.precision:.4f}")
    print(f"  spikes >= 3x (eligible): recall {s.recall_3x_up:.4f}, median delay {s.median_delay_3x_up:g}")
    print("  spike size  labeled  detected  recall  delay p50  delay p90   (eligible instances)")
    for bucket, n, d, r, p50, p90 in s.rows:
        print(f"  {bucket:>10}  {n:7d}  {d:8d}  {r:6.3f}  {p50:9g}  {p90:9g}")
    late = [(k, n) for k, n in sorted(t.late.items()) if k[0] == "spike"]
    if late:
        parts = [f"{k[1]:g}x{'' if k[2] else ' (below floor)'} {n}" for k, n in late]
        print(f"  alerted more than {match} windows after the start (true, not detected): {', '.join(parts)}")
    small = [(k, n) for k, n in sorted(t.labeled.items()) if k[0] == "spike" and not k[2]]
    if small:
        parts = [f"{k[1]:g}x {t.detected[k]}/{n}" for k, n in small]
        print(f"  below volume floor (not in recall): detected {', '.join(parts)}")
    for kind in ("blip", "ramp"):
        n = sum(v for k, v in t.labeled.items() if k[0] == kind)
        d = sum(v for k, v in t.detected.items() if k[0] == kind)
        print(f"  decoy {kind:5}: {n} labeled instances, {d} alerted ({d / n if n else 0:.4f})")
    print(
        f"  flash-sale slots: {t.slot_rooms} rooms; alerts in later slots (false) {t.decoy_alerts['flash']}"
        f" over {t.later_slots} slots; in the first slot (not scored) {t.first_slot_alerts}"
    )
    print(f"  alerts matching nothing, by metric: {dict(sorted(t.unmatched_alerts.items()))}")
    print(f"  RoomSurge alerts at room start (new-room rule, not scored): {t.surge_alerts}")
    return s


def _rules(args: argparse.Namespace) -> Mapping[str, MetricRule]:
    rules = rules_for(SpikeRules(), "eval")
    changes: dict[str, float | int] = {}
    for name in ("ratio", "z_threshold", "confirm_s", "half_life_s", "winsor_k"):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    if not changes:
        return rules
    return {m: replace(rules[m], **changes) for m in METRICS}  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.spike_eval", description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seeds", help="comma-separated seeds; prints each and the medians across them")
    parser.add_argument("--rooms", type=int, default=2_000)
    parser.add_argument("--windows", type=int, default=720)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument(
        "--match-windows", type=int, default=3, help="D: max windows from spike start to alert"
    )
    parser.add_argument("--eligible-margin", type=float, default=1.5)
    for name, kind in (
        ("ratio", float),
        ("z_threshold", float),
        ("confirm_s", float),
        ("half_life_s", float),
        ("winsor_k", float),
    ):
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, help="override the default rule")
    args = parser.parse_args(argv)
    cfg = SeriesConfig(rooms=args.rooms, windows=args.windows)
    rules = _rules(args)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed]
    summaries = []
    for seed in seeds:
        t0 = time.perf_counter()
        tally = run(seed, cfg, rules, args.match_windows, args.eligible_margin, args.jobs)
        summaries.append(report(seed, tally, cfg, time.perf_counter() - t0, args.match_windows))
    if len(summaries) > 1:
        med = statistics.median
        print(f"median over seeds {','.join(map(str, seeds))}:")
        print(f"  precision {med(s.precision for s in summaries):.4f}")
        print(f"  recall (spikes >= 3x, eligible) {med(s.recall_3x_up for s in summaries):.4f}")
        print(f"  median delay (spikes >= 3x) {med(s.median_delay_3x_up for s in summaries):g} windows")
        for i, (bucket, *_rest) in enumerate(summaries[0].rows):
            recall = med(s.rows[i][3] for s in summaries)
            p50 = med(s.rows[i][4] for s in summaries)
            p90 = med(s.rows[i][5] for s in summaries)
            print(f"  {bucket:>4}: recall {recall:.4f}  delay p50 {p50:g}  p90 {p90:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
