"""`make demo` drives `livepulse demo`; this runs the same entry point for 30 seconds."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.integration.workers import REPO, free_port

pytestmark = pytest.mark.integration


def test_demo_runs_for_its_duration_and_prints_windows(kafka_bootstrap: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = subprocess.run(
        [sys.executable, "-m", "streams", "demo", "--duration", "30", "--web-port", str(free_port())],
        cwd=REPO,
        env={**os.environ, "LIVEPULSE_DEMO_LOG": str(tmp_path / "worker.log")},  # same broker as the session
        capture_output=True,
        text=True,
        timeout=240,
    )
    log = tmp_path / "worker.log"
    assert result.returncode == 0, result.stdout + result.stderr + (log.read_text() if log.exists() else "")
    assert "(already running)" in result.stdout  # the session's broker: the demo must leave it running
    windows = [line for line in result.stdout.splitlines() if line.startswith("window ")]
    assert windows, result.stdout
    assert "worker: stopped (0)" in result.stdout
