"""livepulse worker processes for the load test: isolated deployments, /metrics scraping, psutil sampling.

A :class:`Deployment` is one app id with its own output and internal topics
over shared input topics (so every run reads the same backlog). A
:class:`WorkerProcess` is ``python -m streams worker`` with that deployment's
environment; :class:`Sampler` polls its ``/metrics`` and its CPU time and RSS
(psutil) into a time series.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from streams.settings import Topics

REPO = Path(__file__).resolve().parents[1]
#: rooms and order keys are never forgotten during a load test (the oracle assumes it)
NEVER_MS = 7 * 86_400_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def short_rollup_windows(window_ms: int) -> tuple[int, int]:
    """Rollup lengths of a test deployment, short enough to close within a run: 2 and 6 windows."""
    return (2 * window_ms, 6 * window_ms)


@dataclass(frozen=True, slots=True)
class Deployment:
    """One isolated livepulse deployment reading ``inputs``."""

    bootstrap: str
    inputs: tuple[str, str, str]
    name: str
    partitions: int = 4
    window_ms: int = 10_000
    grace_ms: int = 2_000
    commit_interval_ms: int = 1_000
    log_level: str = "warning"
    #: further ``LIVEPULSE_*`` settings of this deployment, as (name, value) pairs
    extra_env: tuple[tuple[str, str], ...] = ()

    @property
    def topics(self) -> Topics:
        """Shared inputs; every other topic (outputs, internal, control) private to this deployment."""
        names = {name: f"{self.name}.{name.replace('_', '-')}" for name in Topics.__dataclass_fields__}
        names.update(viewer=self.inputs[0], order=self.inputs[1], gift=self.inputs[2])
        return Topics(**names)

    @property
    def rollup_windows_ms(self) -> tuple[int, int]:
        return short_rollup_windows(self.window_ms)

    @property
    def rollup_topics(self) -> dict[int, str]:
        return {length: self.topics.rollup(length) for length in self.rollup_windows_ms}

    def env(self, web_port: int, data_dir: Path) -> dict[str, str]:
        t = self.topics
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEPULSE_") or k in PASSED_ON}
        env.update(
            LIVEPULSE_BROKERS=self.bootstrap,
            LIVEPULSE_APP_ID=self.name,
            LIVEPULSE_WEB_PORT=str(web_port),
            LIVEPULSE_PARTITIONS=str(self.partitions),
            LIVEPULSE_WINDOW_MS=str(self.window_ms),
            LIVEPULSE_GRACE_MS=str(self.grace_ms),
            LIVEPULSE_COMMIT_INTERVAL_MS=str(self.commit_interval_ms),
            LIVEPULSE_ROOM_IDLE_MS=str(NEVER_MS),
            LIVEPULSE_DEDUP_TTL_MS=str(NEVER_MS),
            LIVEPULSE_ROLLUP_WINDOWS_MS=",".join(map(str, self.rollup_windows_ms)),
            LIVEPULSE_LOG_LEVEL=self.log_level,
            LIVEPULSE_DATA_DIR=str(data_dir),
            **{f"LIVEPULSE_TOPIC_{name.upper()}": getattr(t, name) for name in Topics.__dataclass_fields__},
        )
        env.update(self.extra_env)
        return env


#: settings the harness's own environment gives every worker it starts (the rest of its LIVEPULSE_*
#: settings are not the workers'): ``LIVEPULSE_NATIVE_ROOMS=false python -m loadtest.faults`` runs
#: the fault suite, and ``livepulse loadtest run`` its measured worker, on the Python rooms;
#: ``LIVEPULSE_OUTPUT_SLICE_BYTES=0`` with each boundary's output written at once
PASSED_ON = (
    "LIVEPULSE_NATIVE_ROOMS",
    "LIVEPULSE_NATIVE_BATCHES",
    "LIVEPULSE_NATIVE_FETCH",
    "LIVEPULSE_OUTPUT_SLICE_BYTES",
)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} plus {'name': sum over label sets}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        try:
            number = float(value)
        except ValueError:
            continue
        out[head] = number
        name = head.partition("{")[0]
        if name != head:
            out[name] = out.get(name, 0.0) + number
    return out


class WorkerProcess:
    """One ``python -m streams worker`` of a deployment, its log in ``log_dir``."""

    def __init__(self, deployment: Deployment, log_dir: Path, label: str) -> None:
        self.deployment = deployment
        self.port = free_port()
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{label}.log"
        self._log = self.log_path.open("wb")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams", "worker"],
            cwd=REPO,
            env=deployment.env(self.port, log_dir / f"{label}-data"),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.ps = psutil.Process(self.proc.pid)

    def get(self, path: str, timeout_s: float = 5) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout_s) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    async def metrics(self) -> dict[str, float]:
        status, body = await asyncio.to_thread(self.get, "/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        return parse_metrics(body.decode())

    async def wait_ready(self, timeout_s: float = 120) -> float:
        """Seconds from start until ``/readyz`` is 200; raises with the log tail if it exits or times out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                status, _ = await asyncio.to_thread(self.get, "/readyz", 2)
                if status == 200:
                    return time.monotonic() - self.started_at
            except OSError:
                pass
            await asyncio.sleep(0.2)
        raise RuntimeError(f"worker not ready after {timeout_s:.0f} s:\n{self.tail()}")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def peak_rss(self) -> int:
        """Peak resident set size (VmHWM) as the kernel recorded it."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def kill(self) -> None:
        """SIGKILL the whole process group: no checkpoint, no goodbye."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self._log.close()

    def stop(self, timeout_s: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9
        self._log.close()
        return code

    def tail(self, lines: int = 40) -> str:
        if not self._log.closed:  # closed once the worker was stopped or killed
            self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Sample:
    t: float
    cpu_s: float
    rss: int
    consumed: float
    windows: float


@dataclass
class Sampler:
    """Polls a worker every ``every_s``: CPU seconds, RSS, messages consumed, windows emitted."""

    worker: WorkerProcess
    every_s: float = 0.5
    samples: list[Sample] = field(default_factory=list)

    async def sample(self) -> Sample:
        m = await self.worker.metrics()
        s = Sample(
            time.time(),
            self.worker.cpu_s(),
            self.worker.rss(),
            m.get("livepulse_events_consumed_total", 0.0),
            m.get("livepulse_windows_emitted_total", 0.0),
        )
        self.samples.append(s)
        return s

    async def until_consumed(self, total: int, timeout_s: float) -> Sample:
        """Sample until ``total`` messages are consumed; raises on timeout or worker exit."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.worker.check_alive()
            s = await self.sample()
            if s.consumed >= total:
                return s
            await asyncio.sleep(self.every_s)
        raise RuntimeError(f"worker consumed {self.samples[-1].consumed:.0f}/{total} in {timeout_s:.0f} s")

    async def until_settled(self, quiet_s: float, timeout_s: float) -> Sample:
        """Sample until no window has closed for ``quiet_s`` (the last ones close on wall time)."""
        last = await self.sample()
        since = time.monotonic()
        deadline = since + timeout_s
        while time.monotonic() < deadline:
            await asyncio.sleep(self.every_s)
            self.worker.check_alive()
            s = await self.sample()
            if s.windows != last.windows:
                last, since = s, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return last
        raise RuntimeError(f"windows still closing after {timeout_s:.0f} s")

    async def run(self, stop: asyncio.Event) -> None:
        """Sample until ``stop`` is set (for the live phase)."""
        while not stop.is_set():
            if self.worker.proc.poll() is None:
                with contextlib.suppress(OSError, RuntimeError):
                    await self.sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every_s)
