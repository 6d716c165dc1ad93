"""Run one baseline process over the backlog and rate it: events per CPU-second of that process.

The rate is taken between the first progress line with messages consumed
(start-up, group join and topic creation excluded, as for livepulse) and the
final one (the whole backlog consumed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import orjson

MODULES = {
    "plain": "loadtest.baselines.plain",
    "faust": "loadtest.baselines.faust_agent",
    "quix": "loadtest.baselines.quix_app",
}
REPO = Path(__file__).resolve().parents[2]


@dataclass
class BaselineRun:
    """One baseline run: its progress samples and the rates derived from them."""

    name: str
    total: int
    samples: list[dict[str, float]] = field(default_factory=list)
    completed: bool = False
    error: str = ""

    def _span(self) -> tuple[dict[str, float], dict[str, float]] | None:
        moving = [s for s in self.samples if s["consumed"] > 0]
        if len(moving) < 2 or not self.completed:
            return None
        return moving[0], moving[-1]

    @property
    def events_per_cpu_s(self) -> float | None:
        span = self._span()
        if span is None or span[1]["cpu_s"] <= span[0]["cpu_s"]:
            return None
        first, last = span
        return (last["consumed"] - first["consumed"]) / (last["cpu_s"] - first["cpu_s"])

    @property
    def events_per_s(self) -> float | None:
        span = self._span()
        if span is None or span[1]["t"] <= span[0]["t"]:
            return None
        first, last = span
        return (last["consumed"] - first["consumed"]) / (last["t"] - first["t"])

    @property
    def peak_rss(self) -> int:
        return int(max((s["rss"] for s in self.samples), default=0))


async def run_baseline(
    name: str,
    *,
    brokers: str,
    topics: tuple[str, str, str],
    total: int,
    partitions: int,
    window_ms: int,
    grace_ms: int,
    log_dir: Path,
    timeout_s: float,
    group_prefix: str = "lt-base",
) -> BaselineRun:
    """Start ``python -m <baseline>``, follow its progress until done, the timeout, or its exit.
    Its consumer group (which names the topics faust and Quix make) begins with ``group_prefix``."""
    group = f"{group_prefix}-{name}-{uuid.uuid4().hex[:8]}"
    state_dir = log_dir / f"state-{group}"
    cmd = [
        sys.executable,
        "-m",
        MODULES[name],
        "--brokers",
        brokers,
        "--topics",
        ",".join(topics),
        "--group",
        group,
        "--total",
        str(total),
        "--partitions",
        str(partitions),
        "--window-ms",
        str(window_ms),
        "--grace-ms",
        str(grace_ms),
        "--state-dir",
        str(state_dir),
    ]
    log_dir.mkdir(parents=True, exist_ok=True)
    run = BaselineRun(name, total)
    with (log_dir / f"{group}.log").open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            start_new_session=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("LIVEPULSE_")},
        )
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    run.error = f"timed out after {timeout_s:.0f} s"
                    break
                try:
                    line = await asyncio.wait_for(proc.stdout.readline(), remaining)
                except TimeoutError:
                    continue
                if not line:
                    run.error = run.error or f"exited with {await proc.wait()} before consuming everything"
                    break
                if not line.startswith(b"{"):
                    continue
                sample = orjson.loads(line)
                run.samples.append(sample)
                if sample.get("done"):
                    run.completed = True
                    break
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
    return run
