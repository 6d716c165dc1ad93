"""A real Prometheus (Debian's ``prometheus`` package) on loopback, scraping live workers with
the project's rules (``deploy/prometheus/livepulse.rules.yml``), and its HTTP API."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "livepulse.rules.yml"


def binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        raise AssertionError("Prometheus is not installed: `make prometheus` installs Debian's package")
    return found


class Prometheus:
    """A running server; ``set_targets`` rewrites its file-based discovery (a worker moved)."""

    def __init__(self, url: str, targets_file: Path) -> None:
        self.url = url
        self.targets_file = targets_file

    def set_targets(self, targets: Sequence[str]) -> None:
        tmp = self.targets_file.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": list(targets)}]))
        tmp.replace(self.targets_file)  # atomic: discovery never reads half a file

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; a PromQL error fails with Prometheus' message."""
        try:
            data = self.api("query", query=expr)
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{expr!r}: {exc.read().decode()}") from None
        result: list[dict[str, Any]] = data["result"]
        return result

    def alerts(self, name: str) -> list[dict[str, Any]]:
        """Active (pending or firing) alerts called ``name``."""
        return [a for a in self.api("alerts")["alerts"] if a["labels"]["alertname"] == name]

    def rule_errors(self) -> list[str]:
        return [
            f"{rule['name']}: {rule['lastError']}"
            for group in self.api("rules")["groups"]
            for rule in group["rules"]
            if rule.get("health") == "err"
        ]


CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - {rules}
scrape_configs:
  - job_name: livepulse
    file_sd_configs:
      - files: [{targets}]
        refresh_interval: 1s
"""


@contextmanager
def running_prometheus(work_dir: Path, port: int, targets: Sequence[str]) -> Iterator[Prometheus]:
    """Start Prometheus on 127.0.0.1:<port> scraping ``targets`` as job "livepulse"; stop it after."""
    work_dir.mkdir(parents=True, exist_ok=True)
    targets_file = work_dir / "targets.json"
    server = Prometheus(f"http://127.0.0.1:{port}", targets_file)
    server.set_targets(targets)
    config = work_dir / "prometheus.yml"
    config.write_text(CONFIG.format(rules=json.dumps(str(RULES)), targets=json.dumps(str(targets_file))))
    log_path = work_dir / "prometheus.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [
            binary(),
            f"--config.file={config}",
            f"--storage.tsdb.path={work_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"prometheus not ready after 60 s: {log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
