"""A load-test run stopped half-way still cleans up: its workers killed, then its topics deleted
(a run killed after its catch-up used to leave ~900 MB of topics on the broker, session 37)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from loadtest import harness
from loadtest.harness import Harness, HarnessConfig


class _Worker:
    """A worker process stand-in: a real child process (a sleep), as the harness starts them."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _harness(tmp_path: Path, cleanup: bool = True) -> Harness:
    return Harness(HarnessConfig(out_dir=tmp_path, verbose=False, cleanup=cleanup))


@pytest.mark.parametrize("ending", ["cancelled", "failed"])
def test_a_run_stopped_half_way_kills_its_workers_then_deletes_its_topics(
    tmp_path: Path, ending: str
) -> None:
    h = _harness(tmp_path)
    worker = _Worker()
    seen: list[Any] = []

    async def half_way(bootstrap: str) -> Any:
        h._workers.append(worker)  # type: ignore[arg-type]  # started, then the run stops
        if ending == "cancelled":
            raise asyncio.CancelledError
        raise RuntimeError("worker consumed 10/100")

    async def delete(bootstrap: str) -> None:
        seen.append(worker.proc.poll())  # the worker's exit status when the topics go

    h._run = half_way  # type: ignore[method-assign]
    h._delete_topics = delete  # type: ignore[method-assign]
    with pytest.raises(asyncio.CancelledError if ending == "cancelled" else RuntimeError):
        asyncio.run(h.run("127.0.0.1:1"))
    assert seen and seen[0] is not None


def test_keep_topics_keeps_them_and_a_finished_worker_is_left_alone(tmp_path: Path) -> None:
    h = _harness(tmp_path, cleanup=False)
    worker = _Worker()
    worker.kill()
    killed: list[bool] = []
    worker.kill = lambda: killed.append(True)  # type: ignore[method-assign]

    async def done(bootstrap: str) -> Any:
        h._workers.append(worker)  # type: ignore[arg-type]
        return "result"

    async def delete(bootstrap: str) -> None:
        raise AssertionError("--keep-topics: nothing deleted")

    h._run = done  # type: ignore[method-assign]
    h._delete_topics = delete  # type: ignore[method-assign]
    assert asyncio.run(h.run("127.0.0.1:1")) == "result"
    assert killed == []


def test_topic_clean_up_never_raises_nor_waits_past_its_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(harness, "DELETE_TOPICS_TIMEOUT_S", 0.5)
    h = _harness(tmp_path)

    async def unanswered(self: Any) -> None:
        await asyncio.sleep(30)  # a broker that never answers

    monkeypatch.setattr(harness.AIOKafkaAdminClient, "start", unanswered)
    took = asyncio.run(_timed(h._delete_topics("127.0.0.1:1")))
    assert took < 5


async def _timed(coro: Any) -> float:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await coro
    return loop.time() - t0


def test_sigterm_cancels_the_run_as_ctrl_c_does() -> None:
    async def main() -> str:
        async def run() -> str:
            try:
                await asyncio.sleep(30)
            finally:
                cleaned.append(True)
            return "not reached"

        asyncio.get_running_loop().call_later(0.1, signal.raise_signal, signal.SIGTERM)
        return await harness._stopped_by_sigterm(run())  # type: ignore[arg-type]

    cleaned: list[bool] = []
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(main())
    assert cleaned == [True]


def test_the_workers_and_the_ground_truth_share_a_session_gap_no_run_outlasts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's idle watermark follows the wall clock: with a gap shorter than a ground truth
    can take to compute (30 min), every session ended before the comparison."""
    run = _harness(tmp_path)
    deployment = run._deployment("127.0.0.1:1", ("v", "o", "g"), "r0", (("LIVEPULSE_X", "1"),))
    env = deployment.env(8080, tmp_path)
    assert env["LIVEPULSE_SESSION_GAP_MS"] == str(harness.SESSION_GAP_MS)
    assert env["LIVEPULSE_X"] == "1"
    assert harness.SESSION_GAP_MS >= 86_400_000
    asked: dict[str, Any] = {}
    monkeypatch.setattr(harness._truth, "compute", lambda phases, **kwargs: asked.update(kwargs))
    run._ground_truth([])
    assert asked["session_gap_ms"] == harness.SESSION_GAP_MS
    assert asked["window_ms"] == deployment.window_ms and asked["grace_ms"] == deployment.grace_ms
    assert asked["rollup_windows_ms"] == deployment.rollup_windows_ms


def test_the_live_rate_is_fixed_or_a_share_of_the_capacity() -> None:
    """``--live-rate`` fixes the live phase's events/s (two runs' live phases then compare);
    without it the rate is ``--live-load`` of the catch-up's capacity; never below the backlog
    rooms' own rate, and a quick run sends that alone."""
    from loadtest.harness import HarnessConfig, _parser, live_target

    assert live_target(HarnessConfig(), 2_000.0, 100_000.0) == 50_000.0
    assert live_target(HarnessConfig(live_rate=64_000.0), 2_000.0, 100_000.0) == 64_000.0
    assert live_target(HarnessConfig(live_rate=1_000.0), 2_000.0, 100_000.0) == 2_000.0
    assert live_target(HarnessConfig(live_rate=64_000.0, quick=True), 2_000.0, 100_000.0) == 2_000.0
    assert _parser().parse_args(["--live-rate", "64000"]).live_rate == 64_000.0
    assert _parser().parse_args([]).live_rate is None
