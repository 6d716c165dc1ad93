"""PNG plots of a load-test run (matplotlib, headless): throughput, latency CDF, memory, spike timeline.

``write_all(result, directory)`` writes the four files and returns their paths;
the harness calls it with ``--report`` and links them from ``RESULTS.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import itertools

import matplotlib.pyplot as plt

FILES = ("throughput.png", "latency_cdf.png", "memory.png", "spikes.png")


def _rates(samples: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """(seconds since the first sample, messages/s between consecutive samples)."""
    xs, ys = [], []
    for a, b in itertools.pairwise(samples):
        if b["t"] > a["t"]:
            xs.append(b["t"] - samples[0]["t"])
            ys.append((b["consumed"] - a["consumed"]) / (b["t"] - a["t"]))
    return xs, ys


def _finish(
    fig: Any, ax: Any, path: Path, *, xlabel: str, ylabel: str, title: str, legend: str = "best"
) -> None:
    """Label, grid, legend, and write the figure as a PNG."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc=legend)
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def throughput(result: Any, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, samples in sorted(result.series.items()):
        if name.startswith("catchup_r") and len(samples) > 1:  # the variants are not drawn
            xs, ys = _rates(samples)
            ax.plot(xs, [y / 1000 for y in ys], label=f"catch-up {name.removeprefix('catchup_')}", lw=1)
    live = result.series.get("live") or []
    if len(live) > 1:
        xs, ys = _rates(live)
        ax.plot(xs, [y / 1000 for y in ys], label="live phase", lw=1, color="black")
    _finish(
        fig,
        ax,
        path,
        xlabel="seconds",
        ylabel="messages consumed / s (thousands)",
        title="livepulse worker throughput (one process)",
    )


def latency_cdf(result: Any, path: Path) -> None:
    values = result.series.get("latency_cdf") or []
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if values:
        n = len(values)
        ax.plot(values, [(i + 1) / n for i in range(n)], lw=1.5)
    target = result.live.get("latency_target_s")
    if target:
        ax.axvline(
            target, color="red", ls="--", lw=1, label=f"target p99 <= window + grace + 1 s = {target:g} s"
        )
    for q in ("p50", "p99"):
        v = result.live.get(f"latency_{q}_s")
        if v is not None:
            ax.axvline(v, color="gray", ls=":", lw=1, label=f"{q} = {v:.2f} s")
    _finish(
        fig,
        ax,
        path,
        xlabel="event time -> room-stats arrival (s)",
        ylabel="share of events",
        title=f"end-to-end latency, live phase at ~{result.live.get('target_rate', 0):,.0f} events/s",
        legend="lower right",
    )


def memory(result: Any, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, samples in sorted(result.series.items()):
        if (name.startswith("catchup_r") or name == "live") and samples:
            t0 = samples[0]["t"]
            ax.plot([s["t"] - t0 for s in samples], [s["rss"] / 1e6 for s in samples], label=name, lw=1)
    ax.axhline(500, color="red", ls="--", lw=1, label="500 MB target (100 k rooms)")
    _finish(fig, ax, path, xlabel="seconds", ylabel="worker RSS (MB)", title="livepulse worker memory")


def spikes(result: Any, path: Path) -> None:
    """Injected spikes as bars (event time) with the alerts for their rooms marked at their startsAt."""
    spikes = result.correctness.get("spikes") or []
    alerts = result.series.get("alerts") or []
    base = result.series.get("phases", {}).get("backlog_start_ms", 0)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.8 * max(1, len(spikes))))
    for row, spike in enumerate(spikes):
        start, end = (spike["start_ms"] - base) / 1000, (spike["end_ms"] - base) / 1000
        ax.barh(row, end - start, left=start, height=0.5, color="tab:orange", alpha=0.5)
        for _arrival, status, room, _metric, _name, starts in alerts:
            if room == spike["room"] and status == "firing" and starts is not None:
                ax.plot((starts - base) / 1000, row, marker="v", color="tab:red", ms=8)
        delay = spike.get("delay_s")
        note = (
            f"alert +{delay:.1f} s wall"
            if delay is not None
            else ("alerted" if spike.get("alert") else "NOT alerted")
        )
        ax.text(end + 2, row, note, va="center", fontsize=8)
    ax.set_yticks(range(len(spikes)), [f"{s['scenario']}\n{s['room'][:18]}" for s in spikes], fontsize=8)
    ax.set_xlabel(
        "event time since the backlog's start (s); bars: injected spike, triangles: firing alerts (startsAt)"
    )
    ax.set_title("injected spikes and the alerts raised for their rooms")
    ax.grid(alpha=0.3, axis="x")
    _save(fig, path)


def write_all(result: Any, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / name for name in FILES]
    for fn, path in zip((throughput, latency_cdf, memory, spikes), paths, strict=True):
        fn(result, path)
    return paths
