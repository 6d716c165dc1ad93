"""A real Alertmanager (Debian's ``prometheus-alertmanager``) on loopback, for the alert tests."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CONFIG = """\
route:
  receiver: blackhole
  group_wait: 1s
  group_interval: 1s
receivers:
  - name: blackhole
"""


def binary() -> str:
    found = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if found is None:
        raise AssertionError("Alertmanager is not installed: `make alertmanager` installs Debian's package")
    return found


@contextmanager
def running_alertmanager(work_dir: Path, port: int) -> Iterator[str]:
    """Start Alertmanager on 127.0.0.1:<port> (no clustering); yield its base URL; stop it."""
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "alertmanager.yml").write_text(CONFIG)
    log = (work_dir / "alertmanager.log").open("wb")
    proc = subprocess.Popen(
        [
            binary(),
            f"--config.file={work_dir / 'alertmanager.yml'}",
            f"--storage.path={work_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                tail = (work_dir / "alertmanager.log").read_text()[-2000:]
                raise AssertionError(f"alertmanager exited: {tail}")
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("alertmanager not ready after 30 s") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def alerts(url: str) -> list[dict[str, Any]]:
    """Alertmanager's view of its alerts (``GET /api/v2/alerts``)."""
    with urllib.request.urlopen(f"{url}/api/v2/alerts", timeout=5) as response:
        result: list[dict[str, Any]] = json.loads(response.read())
        return result
