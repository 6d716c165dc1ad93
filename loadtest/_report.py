"""Write the ``## Load test (issue 6)`` section of ``loadtest/RESULTS.md`` from a harness result.

Only that section is replaced (up to the next ``## `` heading); other sections
are left as they are. Hand-written analysis inside the section between
``<!-- notes -->`` and ``<!-- /notes -->`` survives a rewrite.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .harness import VARIANTS

HEADING = "## Load test (issue 6)"
NOTES_OPEN, NOTES_CLOSE = "<!-- notes -->", "<!-- /notes -->"
RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"


def _med(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def _span(values: list[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "n/a"
    return f"{_med(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def _seconds(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.2f} s"


def _yes(ok: bool) -> str:
    return "met" if ok else "**missed**"


def memory_verdict(rss: float, rooms: float) -> str:
    if rooms >= 100_000:
        return f"100 k rooms within 500 MB: {_yes(rss <= 500e6)}"
    if rooms:
        scaled = rss * 100_000 / rooms
        return f"{_yes(scaled <= 500e6)} ({scaled / 1e6:,.0f} MB scaled linearly to 100 k rooms)"
    return "n/a"


def events_per_room_window(result: Any) -> float:
    """The backlog's room density: events per second of event time x window / rooms."""
    cfg = result.config
    return float(result.backlog.get("event_rate", 0) * cfg["window_ms"] / 1000 / max(cfg["rooms"], 1))


def density_table(results: Sequence[Any]) -> list[str]:
    """Issue 13's table: per run (one room density each), livepulse against every baseline of the
    same run, medians of its runs."""
    ran = {r["name"] for res in results for r in res.baselines}
    names = [n for n in ("plain", "quix", "faust") if n in ran]
    lines = [
        "| rooms | events per room-window | runs | livepulse events/CPU-s | "
        + " | ".join(f"{n} | livepulse ÷ {n}" for n in names)
        + " |",
        "|---:|---:|---:|---:|" + "---:|---:|" * len(names),
    ]
    for res in sorted(results, key=lambda r: -r.config["rooms"]):
        cfg = res.config
        lp = _med([r["per_cpu_s"] for r in res.livepulse])
        density = events_per_room_window(res)
        cells = []
        for name in names:
            base = _med([r["per_cpu_s"] for r in res.baselines if r["name"] == name])
            cells.append("— | —" if math.isnan(base) or not base else f"{base:,.0f} | {lp / base:.2f}x")
        head = f"| {cfg['rooms']:,} | {density:.2f} | {len(res.livepulse)} | {lp:,.0f} | "
        lines.append(head + " | ".join(cells) + " |")
    return lines


def render(result: Any, plots: list[Path], argv: list[str], densities: Sequence[Any] = ()) -> str:
    cfg, m = result.config, result.machine
    lp = result.livepulse
    lp_cpu = _med([r["per_cpu_s"] for r in lp])
    by_base: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in result.baselines:
        by_base[row["name"]].append(row)
    run_dir = Path(result.correctness.get("results_file", "run/x")).parent.name
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
    load = m.get("loadavg_start", [math.nan])[0]
    bl = result.backlog
    lines = [
        HEADING,
        "",
        f"Measured in `{run_dir}` by `livepulse loadtest run {' '.join(argv)}` "
        "(results JSON under `.cache/loadtest/`).",
        "",
        f"Machine: {m.get('nproc')} vCPU ({m.get('cpu') or 'unknown CPU'}), Python {m.get('python')}, "
        f"Kafka {m.get('kafka')}; {versions}. "
        "The machine is shared and noisy: broker, producer, worker and baselines compete for 2 cores, "
        f"and other sessions ran load of their own (load average at start {load:.2f}). "
        "Rates are per CPU-second of the measured process (psutil), which is far less sensitive to that "
        "than wall-clock rates; both are given.",
        "",
        f"Backlog: {bl.get('messages', 0):,} messages ({bl.get('events', 0):,} events, "
        f"{bl.get('malformed', 0):,} malformed) over {bl.get('span_s', 0):,.0f} s of "
        f"event time ({bl.get('event_rate', 0):,.0f} events/s, "
        f"{events_per_room_window(result):.2f} events per "
        f"room-window), {cfg['rooms']:,} rooms, scenarios {', '.join(cfg['scenarios'])}; "
        f"{cfg['partitions']} partitions per topic, window {cfg['window_ms'] / 1000:g} s, grace "
        f"{cfg['grace_ms'] / 1000:g} s, checkpoint every 1 s, spike alerts on. Produced at "
        f"{result.backlog.get('produce_rate', 0):,.0f} messages/s "
        f"({result.backlog.get('produce_mb_s', 0):,.1f} MB/s) by one process with the batching producer "
        "of `livepulse loadtest produce` (target >= 200 k/s).",
        "",
        *(
            [
                "### Room densities side by side (issue 13's table)",
                "",
                "One run of the harness per density, the same command but for `--rooms` (and `--live-load`):",
                "",
                *density_table(densities),
                "",
            ]
            if len(densities) > 1
            else []
        ),
        f"### Throughput (median of {len(lp)} runs, min-max)",
        "",
        "| consumer | events / CPU-s | events / s | livepulse ÷ it (CPU-s) | target |",
        "|---|---:|---:|---:|---|",
        f"| livepulse worker (checkpoints + alerts) | {_span([r['per_cpu_s'] for r in lp])} | "
        f"{_span([r['per_s'] for r in lp])} | — | >= 150 000 / CPU-s: {_yes(lp_cpu >= 150_000)} |",
    ]
    targets = {"plain": 0.6, "faust": 15.0, "quix": 2.0}
    labels = {
        "plain": "plain aiokafka getmany + orjson + dict (ceiling)",
        "faust": "faust-streaming agent + tumbling table",
        "quix": "Quix Streams tumbling-window count",
    }
    for name, rows in by_base.items():
        base = _med([r["per_cpu_s"] for r in rows])
        ratio = lp_cpu / base if base else math.nan
        note = (
            f" ({rows[0]['messages']:,}-message prefix)"
            if rows[0]["messages"] < result.backlog.get("messages", 0)
            else ""
        )
        lines.append(
            f"| {labels.get(name, name)}{note} | {_span([r['per_cpu_s'] for r in rows])} | "
            f"{_span([r['per_s'] for r in rows])} | {ratio:.2f}x | >= {targets.get(name, 0):g}x: "
            f"{_yes(ratio >= targets.get(name, 0))} |"
        )
    by_variant: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in getattr(result, "variants", []):
        by_variant[row["name"]].append(row)
    for name, rows in by_variant.items():
        other = _med([r["per_cpu_s"] for r in rows])
        ratio = lp_cpu / other if other else math.nan
        lines.append(
            f"| livepulse variant `{name}`: {VARIANTS[name][0] if name in VARIANTS else name} | "
            f"{_span([r['per_cpu_s'] for r in rows])} | {_span([r['per_s'] for r in rows])} | "
            f"{ratio:.2f}x (CPU per event {1 / ratio - 1:+.0%} for livepulse as measured) | — |"
        )
    live, restore, corr = result.live, result.restore, result.correctness
    rss = max((r["peak_rss"] for r in lp), default=0)
    rooms = max((r["active_rooms"] for r in lp), default=0)
    lat_target = live.get("latency_target_s", math.nan)
    p99 = live.get("latency_p99_s", math.nan)
    ckpt = _med([r["checkpoint_mean_s"] for r in lp])
    # The assignment's wall time (every partition read side by side, then decoded); results from
    # before it was measured have the per-partition reads summed only.
    restored = restore.get("rooms", 0)
    restore_s = restore.get("assignment_s", restore.get("restore_s_total", math.inf))
    restore_verdict = "n/a (no rooms)"
    if restored >= 100_000:
        restore_verdict = _yes(restore_s < 10)
    elif restored:
        scaled = restore_s * 100_000 / restored
        restore_verdict = f"{_yes(scaled < 10)} ({scaled:.2f} s scaled linearly to 100 k rooms)"
    lines += [
        "",
        "### Latency, memory, restore, correctness",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| live phase | {live.get('sent', 0):,} messages over {live.get('seconds', 0):.0f} s at "
        f"~{live.get('target_rate', 0):,.0f}/s ({cfg['live_load']:.0%} of {live.get('capacity', 0):,.0f}/s "
        f"measured capacity; the sender was at most {live.get('sender_behind_s', math.nan):.2f} s behind "
        "event time) | — |",
        f"| event -> room-stats latency p50 / p99 / max | {live.get('latency_p50_s', math.nan):.2f} s / "
        f"{p99:.2f} s / {live.get('latency_max_s') or math.nan:.2f} s "
        f"over {live.get('latency_events', 0):,} events "
        f"| p99 <= {lat_target:g} s: {_yes(p99 <= lat_target)} |",
        f"| ... up to the worker queuing the record (its timestamp), p50 / p99 | "
        f"{live.get('latency_worker_p50_s', math.nan):.2f} s / "
        f"{live.get('latency_worker_p99_s', math.nan):.2f} s "
        "| (diagnostic: the rest is producer, broker and the harness's reader) |",
        f"| ... both less the sender's own lag where each window could close (sender lag p99 "
        f"{live.get('sender_lag_p99_s', math.nan):.2f} s), p99 at the reader / at the worker | "
        f"{live.get('latency_sender_adjusted_p99_s', math.nan):.2f} s / "
        f"{live.get('latency_worker_sender_adjusted_p99_s', math.nan):.2f} s "
        "| (diagnostic: the harness shares the 2 cores; see RESULTS.md) |",
        f"| peak RSS of the worker (VmHWM), rooms held: after the backlog | {rss / 1e6:,.0f} MB with "
        f"{rooms:,.0f} rooms | {memory_verdict(rss, rooms)} |",
        f"| ... restarted worker at the end of the live phase | {live.get('peak_rss', 0) / 1e6:,.0f} MB with "
        f"{live.get('active_rooms', 0):,.0f} rooms | "
        f"{memory_verdict(live.get('peak_rss', 0), live.get('active_rooms', 0))} |",
        f"| peak RSS of the load-test process itself (generator, sender, reader, ground truth) | "
        f"{m.get('harness_peak_rss', 0) / 1e6:,.0f} MB | — |",
        f"| checkpoint (changelog write + commit), mean / p99 bucket | {ckpt * 1000:.0f} ms / "
        f"<= {_med([r['checkpoint_p99_le_s'] for r in lp]) * 1000:.0f} ms | — |",
        f"| restore after {restore.get('how', '?')} (the assignment: every partition's changelog read "
        f"side by side and decoded), rooms | {_seconds(restore.get('assignment_s'))} for "
        f"{restore.get('rooms', 0):,.0f} rooms (the partitions' reads summed: "
        f"{restore.get('restore_s_total', math.nan):.2f} s) | 100 k rooms < 10 s: {restore_verdict} |",
        f"| restart to ready (process start -> /readyz 200) | {restore.get('ready_s', math.nan):.1f} s | — |",
        f"| room-stats windows vs ground truth | {corr.get('windows', 0):,} windows, "
        f"{corr.get('mismatches', '?')} "
        f"mismatches | 0: {_yes(corr.get('mismatches', 1) == 0)} |",
        f"| alerts | {corr.get('organic', 0)} organic (raised by the detector on the true windows too), "
        f"{len(corr.get('unexplained', []))} unexplained | every spike alerted, none unexplained: "
        f"{_yes(corr.get('ok', False))} |",
        "",
        "Injected spikes and their alerts:",
        "",
        "| scenario | room | alert | startsAt - spike start | detection delay (wall) |",
        "|---|---|---|---:|---:|",
    ]
    for s in corr.get("spikes", []):
        alert = f"{s['alert'][1]} {s['alert'][2]}" if s.get("alert") else "**none**"
        offset = f"{round(s['start_offset_s']) + 0:+d} s" if s.get("start_offset_s") is not None else "—"
        delay = f"{s['delay_s']:.1f} s" if s.get("delay_s") is not None else "— (backlog, event time)"
        lines.append(f"| {s['scenario']} | `{s['room']}` | {alert} | {offset} | {delay} |")
    lines += ["", "Correctness summary:", "", "```", corr.get("summary", ""), "```", ""]
    if plots:
        lines += ["Plots: " + ", ".join(f"[{p.stem}](plots/{p.name})" for p in plots), ""]
        lines += [f"![{p.stem}](plots/{p.name})" for p in plots] + [""]
    return "\n".join(lines)


def update_results_md(
    result: Any, plots: list[Path], argv: list[str], path: Path = RESULTS_MD, densities: Sequence[Any] = ()
) -> None:
    text = path.read_text() if path.exists() else "# livepulse results\n"
    body = render(result, plots, argv, densities)
    start = text.find(HEADING)
    if start < 0:
        path.write_text(text.rstrip("\n") + "\n\n" + body + "\n" + NOTES_OPEN + "\n" + NOTES_CLOSE + "\n")
        return
    end = text.find("\n## ", start + len(HEADING))
    end = len(text) if end < 0 else end + 1
    old = text[start:end]
    notes = NOTES_OPEN + "\n" + NOTES_CLOSE
    if NOTES_OPEN in old and NOTES_CLOSE in old:
        notes = old[old.index(NOTES_OPEN) : old.index(NOTES_CLOSE) + len(NOTES_CLOSE)]
    path.write_text(
        text[:start] + body + "\n" + notes + "\n" + ("\n" if end < len(text) else "") + text[end:]
    )
