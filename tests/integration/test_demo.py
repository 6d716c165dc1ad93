"""`make demo` drives `livepulse demo`; this runs the same entry point for 30 seconds."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.integration.workers import REPO, free_port

pytestmark = pytest.mark.integration


def _demo(tmp_path, run: str) -> list[str]:  # type: ignore[no-untyped-def]
    """One `livepulse demo` of 30 s; its window lines."""
    log = tmp_path / f"worker-{run}.log"
    result = subprocess.run(
        [sys.executable, "-m", "streams", "demo", "--duration", "30", "--web-port", str(free_port())],
        cwd=REPO,
        env={**os.environ, "LIVEPULSE_DEMO_LOG": str(log)},  # same broker as the session
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr + (log.read_text() if log.exists() else "")
    assert "(already running)" in result.stdout  # the session's broker: the demo must leave it running
    assert "worker: stopped (0)" in result.stdout
    windows = [line for line in result.stdout.splitlines() if line.startswith("window ")]
    assert windows, result.stdout
    return windows


def test_demo_runs_for_its_duration_and_prints_windows_again_when_run_again(
    kafka_bootstrap: str, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """The second run restores the first one's state (its app id is fixed): its orders must not
    be taken for the first run's retried (the same order ids, when both used one seed)."""
    for run in ("first", "second"):
        windows = _demo(tmp_path, run)
        gmv = [float(line.split("gmv=")[1].split()[0].replace(",", "")) for line in windows]
        assert any(g > 0 for g in gmv), (run, windows)
