"""The spike detector on the Numenta Anomaly Benchmark (NAB), scored by NAB's own scorer.

    python -m loadtest.anomaly_eval --nab /path/to/NAB
    python -m loadtest.anomaly_eval --nab /path/to/NAB --subsets realKnownCause --per-file

NAB is not vendored: ``--nab`` is a checkout of github.com/numenta/NAB. Its
data (``data/``), labels (``labels/combined_windows.json``), cost profile
(``config/profiles.json``, "standard") and the published detectors' per-file
scores (``results/<detector>/<detector>_standard_scores.csv``) are read from
there, and the scoring runs NAB's own ``nab.sweeper.Sweeper`` imported from that
checkout (it needs only the standard library). NAB's ``runner``/``scorer``
wrap the same sweeper in pandas and multiprocessing; only the wrapper is not
used.

Each NAB series is fed to the detector row by row as one metric of a room
(:func:`streams.core._spikes.observe_values`), each row in the window of the
file's median spacing that holds its timestamp; rows missing from an
irregularly sampled file (realTraffic's, rogue_agent_key_hold's) are gaps the
detector's clock runs through without learning (``skip_gaps``), so the rule's
seconds are the series' seconds. The rule is ``GAUGE_RULE``
(``streams/core/_spike_rules.py``), the documented
rule for a gauge of unknown kind (README, "Spike alerts"), unchanged. A row
where an alert fires (``RoomSpike`` or ``RoomDip``) gets anomaly score 1, every
other row 0; NAB's threshold is then irrelevant (any value in (0, 1]).

Normalisation is NAB's: 100 x (score - null) / (perfect - null), with the null
detector's per-file scores from ``results/null`` and perfect = one true
positive per labelled window, summed over the files of each column.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streams.core import GAUGE_RULE, DetectorState, MetricRule, observe_values
from streams.core import SPIKE_METRICS as METRICS

SUBSETS = ("realKnownCause", "realTraffic", "realAdExchange", "artificialWithAnomaly")
PUBLISHED = (
    "numenta",
    "ARTime",
    "twitterADVec",
    "windowedGaussian",
    "knncad",
    "relativeEntropy",
    "random",
)
#: the metric slot a NAB series is fed as (a level: tested as it is, carried through gaps)
SLOT = METRICS.index("concurrent_viewers")
PROFILE = "standard"


@dataclass(frozen=True, slots=True)
class FileScore:
    path: str  # "<subset>/<file>.csv"
    score: float
    tp: int
    fp: int
    fn: int
    windows: int
    alerts: int


def _parse_ts(text: str) -> datetime:
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S.%f"):
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    raise ValueError(f"unknown NAB timestamp {text!r}")


def read_series(path: Path) -> tuple[list[datetime], list[float]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [_parse_ts(r["timestamp"]) for r in rows], [float(r["value"]) for r in rows]


def detect(timestamps: Sequence[datetime], values: Sequence[float], rule: MetricRule) -> list[float]:
    """Anomaly score per row: 1.0 where an alert fires, else 0.0.

    Each row is the window of the file's median spacing that holds its timestamp (a row in the
    window of the row before it takes the next window), and a stretch without rows is a gap in
    the sampling (``skip_gaps``): durations in the rule are the series' own seconds.
    """
    steps = [(b - a).total_seconds() for a, b in itertools.pairwise(timestamps)]
    window_ms = max(1_000, round(statistics.median(steps) * 1_000)) if steps else 60_000
    rules = dict.fromkeys(METRICS, rule)
    state = DetectorState("nab")
    scores = []
    vector = [0.0] * len(METRICS)
    last = None
    for t, x in zip(timestamps, values, strict=True):
        ms = round(t.replace(tzinfo=UTC).timestamp() * 1_000)
        ws = ms - ms % window_ms
        if last is not None and ws <= last:
            ws = last + window_ms
        last = ws
        vector[SLOT] = x
        events = observe_values(state, vector, ws, ws + window_ms, rules, skip_gaps=True)
        scores.append(1.0 if any(e.status == "firing" for e in events) else 0.0)
    return scores


def _sweeper(nab: Path) -> Any:
    sys.path.insert(0, str(nab))
    try:
        from nab.sweeper import Sweeper  # NAB's own scoring code, from the checkout
    finally:
        sys.path.remove(str(nab))
    profiles = json.loads((nab / "config" / "profiles.json").read_text())
    return Sweeper(probationPercent=0.15, costMatrix=profiles[PROFILE]["CostMatrix"])


def score_files(nab: Path, subsets: Sequence[str], rule: MetricRule) -> list[FileScore]:
    sweeper = _sweeper(nab)
    labels = json.loads((nab / "labels" / "combined_windows.json").read_text())
    out = []
    for subset in subsets:
        for path in sorted((nab / "data" / subset).glob("*.csv")):
            name = f"{subset}/{path.name}"
            timestamps, values = read_series(path)
            scores = detect(timestamps, values, rule)
            windows = [(_parse_ts(a), _parse_ts(b)) for a, b in labels[name]]
            _, row = sweeper.scoreDataSet(timestamps, scores, windows, name, 1.0)
            out.append(FileScore(name, row.score, row.tp, row.fp, row.fn, len(windows), int(sum(scores))))
    return out


def published(nab: Path, detector: str, files: Sequence[str]) -> dict[str, float]:
    """Per-file raw standard-profile scores of a published detector (at its own optimised threshold).

    From ``results/<detector>/<detector>_standard_scores.csv``; a file missing there (NAB's
    ``random`` table lists only 33 files) is scored from the detector's own per-row results
    file with NAB's sweeper at the detector's threshold from ``config/thresholds.json``, as
    NAB's ``scorer`` does.
    """
    path = nab / "results" / detector / f"{detector}_{PROFILE}_scores.csv"
    with path.open(newline="") as f:
        out = {r["File"]: float(r["Score"]) for r in csv.DictReader(f) if r["File"] and r["File"] != "Totals"}
    missing = [name for name in files if name not in out]
    if missing:
        sweeper = _sweeper(nab)
        labels = json.loads((nab / "labels" / "combined_windows.json").read_text())
        threshold = json.loads((nab / "config" / "thresholds.json").read_text())[detector][PROFILE][
            "threshold"
        ]
        for name in missing:
            subset, file = name.split("/")
            with (nab / "results" / detector / subset / f"{detector}_{file}").open(newline="") as f:
                rows = list(csv.DictReader(f))
            timestamps = [_parse_ts(r["timestamp"]) for r in rows]
            scores = [float(r["anomaly_score"]) for r in rows]
            windows = [(_parse_ts(a), _parse_ts(b)) for a, b in labels[name]]
            _, row = sweeper.scoreDataSet(timestamps, scores, windows, name, threshold)
            out[name] = row.score
    return out


def normalised(raw: Mapping[str, float], null: Mapping[str, float], windows: Mapping[str, int]) -> float:
    score = sum(raw[f] for f in windows)
    base = sum(null[f] for f in windows)
    perfect = sum(windows.values())
    return 100.0 * (score - base) / (perfect - base)


def table(nab: Path, ours: Sequence[FileScore], subsets: Sequence[str]) -> list[str]:
    files = [f.path for f in ours]
    null = published(nab, "null", files)
    columns = [(s, {f.path: f.windows for f in ours if f.path.startswith(s + "/")}) for s in subsets]
    columns.append(("union", {f.path: f.windows for f in ours}))
    head = "| detector | " + " | ".join(name for name, _ in columns) + " |"
    lines = [head, "|---" * (len(columns) + 1) + "|"]
    rows: list[tuple[str, Mapping[str, float]]] = [
        ("livepulse (GAUGE_RULE)", {f.path: f.score for f in ours})
    ]
    rows += [(d, published(nab, d, files)) for d in PUBLISHED]
    for name, raw in rows:
        cells = [f"{normalised(raw, null, files):.1f}" for _, files in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def check_published(nab: Path) -> list[str]:
    """This script's normalisation over NAB's whole corpus next to NAB's own final_results.json."""
    labels = json.loads((nab / "labels" / "combined_windows.json").read_text())
    windows = {name: len(spans) for name, spans in labels.items()}
    null = published(nab, "null", list(windows))
    final = json.loads((nab / "results" / "final_results.json").read_text())
    lines = ["| detector (whole corpus) | this script | NAB final_results.json |", "|---|---|---|"]
    for detector in PUBLISHED:
        ours = normalised(published(nab, detector, list(windows)), null, windows)
        lines.append(f"| {detector} | {ours:.2f} | {final[detector][PROFILE]:.2f} |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.anomaly_eval", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--nab", type=Path, required=True, help="a checkout of github.com/numenta/NAB")
    parser.add_argument("--subsets", default=",".join(SUBSETS), help="comma-separated NAB data folders")
    parser.add_argument("--per-file", action="store_true", help="also print each file's score and counts")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="override GAUGE_RULE"
    )
    parser.add_argument(
        "--check-published",
        action="store_true",
        help="first recompute the published whole-corpus scores, next to results/final_results.json",
    )
    args = parser.parse_args(argv)
    if args.check_published:
        for line in check_published(args.nab):
            print(line)
        print()
    subsets = [s for s in args.subsets.split(",") if s]
    rule = GAUGE_RULE
    if args.set:
        from dataclasses import replace

        changes = {
            k: (v.lower() == "true" if v.lower() in ("true", "false") else float(v))
            for k, v in (item.split("=", 1) for item in args.set)
        }
        rule = replace(rule, **changes)  # type: ignore[arg-type]
    ours = score_files(args.nab, subsets, rule)
    if args.per_file:
        print("| file | raw score | TP | FP | FN | windows | alerts |")
        print("|---|---|---|---|---|---|---|")
        for f in ours:
            print(f"| {f.path} | {f.score:.3f} | {f.tp} | {f.fp} | {f.fn} | {f.windows} | {f.alerts} |")
        print()
    print(f"NAB {PROFILE} profile, normalised (null = 0, perfect = 100); rule: {rule}")
    for line in table(args.nab, ours, subsets):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
