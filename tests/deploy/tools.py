"""Run the real checking tools (promtool, hadolint, check-jsonschema, ...) on deploy/ artefacts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
VENV_BIN = Path(sys.executable).parent


def tool(name: str, hint: str) -> str:
    """The path of ``name`` (venv first, then PATH); a missing tool fails the test, it never skips."""
    found = shutil.which(name, path=str(VENV_BIN)) or shutil.which(name)
    if found is None:
        raise AssertionError(f"{name} is not installed: {hint}")
    return found


def run(*argv: str, cwd: Path = REPO) -> str:
    """Run a checker; a non-zero exit fails the test with the tool's own output."""
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(argv)} exited {proc.returncode}:\n{output}"
    return output
