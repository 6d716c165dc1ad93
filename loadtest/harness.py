"""``livepulse loadtest run``: the load-test harness.

    livepulse loadtest run --events 1000000 --rooms 100000 --runs 3 --report
    livepulse loadtest run --quick            # a few seconds of traffic, all scenarios, correctness only

1. Start the local broker unless one is running (and stop it at the end if it was started here).
2. Generate the backlog (``loadtest.traffic`` + the named scenarios, event time compressed into the
   last minutes) and send it to fresh input topics as fast as the broker takes it.
3. ``--runs`` times, on that same backlog: the baselines (``loadtest.baselines``), each a process
   timed until it consumed everything, then a fresh livepulse worker (own app id and outputs)
   and the ``--variants``, timed until they consumed everything and closed the last window:
   events per worker CPU-second (psutil) over all that work, events per second read, peak RSS,
   checkpoint seconds from its ``/metrics``.
4. The last worker is killed (SIGKILL) once caught up and started again: restore seconds.
5. A live phase in real time at ``--live-load`` x the measured capacity: the backlog's rooms go on
   at their own rate (one trending spike among them), the rest of the load comes from a second
   room population; latency = arrival of each event's room-stats window minus its event time.
6. Correctness of everything the last deployment published (``loadtest._checks``).

Results go to ``<out-dir>/results-<stamp>.json``; ``--report`` also rewrites the load-test
section of ``loadtest/RESULTS.md`` and the PNG plots in ``loadtest/plots/``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import resource
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import psutil
from aiokafka.admin import AIOKafkaAdminClient

from deploy.localkafka import BrokerSettings, broker_pid, ensure_broker, stop_broker

from . import _truth, scenarios
from ._checks import Verdict, check, parse_iso_ms
from ._collect import Collector
from ._measure import SenderLag, WindowKey, catch_up_rate, event_latencies_each, histogram, percentile
from .baselines import BASELINES
from .baselines.runner import run_baseline
from .deployment import NEVER_MS, Deployment, Sampler, WorkerProcess, short_rollup_windows
from .oracle import expected_leaderboards
from .probe import Probe
from .produce import Progress, ensure_topics, generate, send
from .sender import send_apart
from .traffic import Phase, TrafficConfig, TrafficModel, no_gc

REPO = Path(__file__).resolve().parents[1]
#: the most a run's clean-up waits for the broker to take its topic deletions
DELETE_TOPICS_TIMEOUT_S = 30.0

#: ``--variants``: livepulse workers with other settings, name -> (what differs, their settings)
VARIANTS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "bare": (
        "sessions and rollups off (the leaderboard stays on)",
        (("LIVEPULSE_SESSIONS", "false"), ("LIVEPULSE_ROLLUP_WINDOWS_MS", "")),
    ),
    "default-rollups": (
        "the default rollups (1 m, 1 h) instead of the harness's 2 and 6 windows",
        (("LIVEPULSE_ROLLUP_WINDOWS_MS", "60000,3600000"),),
    ),
    "drift30": (
        "watermark alignment with a 30 s drift instead of 120 s",
        (("LIVEPULSE_MAX_SOURCE_DRIFT_MS", "30000"),),
    ),
    "fetch4m": (
        "the consumer fetches 4 MiB per partition (the default before session 13) instead of 1 MiB",
        (("LIVEPULSE_FETCH_PARTITION_BYTES", "4194304"),),
    ),
    "trim1s": (
        "free heap pages handed back after every checkpoint (malloc_trim at most every 1 s, not 10 s)",
        (("LIVEPULSE_MALLOC_TRIM_MS", "1000"),),
    ),
    "no-trim": (
        "free heap pages never handed back to the system (no malloc_trim)",
        (("LIVEPULSE_MALLOC_TRIM_MS", "0"),),
    ),
    "py-decoders": (
        "the Python decoding loops alone, without the native pass of schemas/native",
        (("LIVEPULSE_NATIVE_DECODERS", "false"),),
    ),
    "split-decode": (
        "every message decoded into an event object, then applied (LIVEPULSE_FUSED_DECODE=false), "
        "instead of the native table applying events as the native parser reads them",
        (("LIVEPULSE_FUSED_DECODE", "false"),),
    ),
    "py-core": (
        "the Python spike detector alone, without the native quiet path of streams/native",
        (("LIVEPULSE_NATIVE_CORE", "false"),),
    ),
    "native-rooms": (
        "each task's rooms in the native table (streams/native/src/rooms.rs; the default, beside "
        "a run whose workers have Python rooms)",
        (("LIVEPULSE_NATIVE_ROOMS", "true"),),
    ),
    "py-batches": (
        "output records into aiokafka's batch builder (LIVEPULSE_NATIVE_BATCHES=false) instead of "
        "the native record batches (streams/native/src/batches.rs)",
        (("LIVEPULSE_NATIVE_BATCHES", "false"),),
    ),
    "python-rooms": (
        "each task's rooms as Python objects (TaskAggregator, LIVEPULSE_NATIVE_ROOMS=false)",
        (("LIVEPULSE_NATIVE_ROOMS", "false"),),
    ),
    "unaligned": (
        "no watermark alignment: inputs read as fast as the client hands them over",
        (("LIVEPULSE_MAX_SOURCE_DRIFT_MS", "0"),),
    ),
}


#: The session gap of the harness's workers and of its ground truth: no session ends in a load
#: test. With the default 30 min the comparison failed once the ground truth took longer than
#: the gap to compute (30 min, 1 796 s, after a 2 000-room run's 16 M live events): the worker's idle
#: watermark follows the wall clock and ended every session, as it should, before the comparison.
SESSION_GAP_MS = NEVER_MS


@dataclass(frozen=True)
class HarnessConfig:
    events: int = 1_000_000
    rooms: int = 100_000
    users: int = 2_000_000
    scenarios: tuple[str, ...] = scenarios.NAMES
    runs: int = 3
    seed: int = 1
    partitions: int = 4
    window_ms: int = 10_000
    grace_ms: int = 2_000
    live_s: float = 90.0
    live_load: float = 0.5
    #: the live phase's rate in events/s, fixed (None: ``live_load`` x the catch-up's capacity,
    #: which moves with the machine; a fixed rate compares two runs' live phases)
    live_rate: float | None = None
    baselines: tuple[str, ...] = BASELINES
    #: livepulse workers with other settings (``VARIANTS``), timed on the same backlog in every run
    variants: tuple[str, ...] = ()
    #: events per second of event time (None: the events spread over the scenarios' minimum span)
    event_rate: float | None = None
    #: faust moves a few thousand events/s: it is timed on this prefix of the backlog
    faust_max_messages: int = 200_000
    quick: bool = False
    report: bool = False
    brokers: str | None = None
    out_dir: Path = REPO / ".cache" / "loadtest"
    require_alerts: bool = True
    #: compare late counts per room rather than per window (see ``_checks.check``)
    late_slack: bool = True
    #: restart the caught-up worker with SIGKILL (a crash) rather than SIGTERM (a clean hand-over)
    crash_restart: bool = True
    cleanup: bool = True
    timeout_s: float = 900.0
    verbose: bool = True
    #: the command line, for the report
    argv: tuple[str, ...] = ()

    @classmethod
    def quick_config(cls, **overrides: Any) -> HarnessConfig:
        """A few seconds of traffic with every scenario; correctness only."""
        base = cls(
            events=300_000,
            rooms=2_000,
            users=200_000,
            runs=1,
            window_ms=5_000,
            # the live debut must outlast the surge rule's 20 s confirmation
            live_s=40.0,
            baselines=(),
            quick=True,
            # a clean restart: after SIGKILL faust's group waits out its 60 s session timeout
            crash_restart=False,
            late_slack=False,
            timeout_s=120.0,
        )
        return replace(base, **overrides)


@dataclass
class Result:
    config: dict[str, Any]
    machine: dict[str, Any] = field(default_factory=dict)
    backlog: dict[str, Any] = field(default_factory=dict)
    livepulse: list[dict[str, Any]] = field(default_factory=list)
    #: the same measurement of the workers in ``HarnessConfig.variants``, each row named
    variants: list[dict[str, Any]] = field(default_factory=list)
    baselines: list[dict[str, Any]] = field(default_factory=list)
    restore: dict[str, Any] = field(default_factory=dict)
    live: dict[str, Any] = field(default_factory=dict)
    correctness: dict[str, Any] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)
    verdict: Verdict | None = None

    @property
    def ok(self) -> bool:
        return self.verdict is not None and self.verdict.ok


class Harness:
    """One harness run; see the module docstring for the steps."""

    def __init__(self, cfg: HarnessConfig) -> None:
        self.cfg = cfg
        self.stamp = time.strftime("%Y%m%d-%H%M%S")
        self.suffix = uuid.uuid4().hex[:8]
        self.log_dir = cfg.out_dir / f"run-{self.stamp}-{self.suffix}"
        self.result = Result(config={k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()})
        self.topics_created: list[str] = []
        #: every worker process started, killed at the end if still running (a run stopped
        #: half-way: the workers run in sessions of their own, which Ctrl-C does not reach)
        self._workers: list[WorkerProcess] = []
        self._sender_lag = SenderLag(())

    def say(self, text: str) -> None:
        if self.cfg.verbose:
            print(f"[loadtest {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    async def run(self, bootstrap: str) -> Result:
        """The whole run; its topics deleted after it (unless ``keep_topics``) however it ends:
        a run stopped half-way (Ctrl-C, SIGTERM) left gigabytes on the broker, which its log
        cleaner then compacted beside the next run's workers (session 37: after dozens of
        catch-ups killed this way, 27 GB on the dev broker, and a 100 000-room catch-up did
        0.53x plain where a fresh broker gave the same code 0.67x)."""
        try:
            return await self._run(bootstrap)
        finally:
            for worker in self._workers:
                if worker.proc.poll() is None:
                    worker.kill()
            if self.cfg.cleanup:
                await self._delete_topics(bootstrap)

    async def _run(self, bootstrap: str) -> Result:
        cfg, res = self.cfg, self.result
        res.machine = machine_facts()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        model, backlog = self._generate_backlog()
        inputs = (f"lt.{self.suffix}.viewer", f"lt.{self.suffix}.order", f"lt.{self.suffix}.gift")
        await ensure_topics(bootstrap, inputs, cfg.partitions)
        self.topics_created += inputs
        stats = await send(
            bootstrap, inputs, backlog.messages, progress=Progress("produce", len(backlog.messages))
        )
        res.backlog["produce_rate"] = stats.rate
        res.backlog["produce_mb_s"] = stats.bytes / 1e6 / stats.seconds
        self.say(f"backlog sent: {stats.messages:,} messages in {stats.seconds:.2f} s = {stats.rate:,.0f}/s")
        total = len(backlog.messages)
        worker: WorkerProcess | None = None
        deployment: Deployment | None = None
        for run in range(cfg.runs):
            await self._baselines(bootstrap, inputs, total, run)
            for name in cfg.variants:
                variant = self._deployment(bootstrap, inputs, f"{name}-r{run}", VARIANTS[name][1])
                row, other = await self._catch_up(variant, total, f"{name}-r{run}")
                self.result.variants.append({"name": name, "run": run, **row})
                other.stop()
                self.say(f"variant {name} run {run + 1}: {row['per_cpu_s']:,.0f} events/CPU-s")
            deployment = self._deployment(bootstrap, inputs, f"r{run}")
            row, worker = await self._catch_up(deployment, total, f"r{run}")
            self.result.livepulse.append({"run": run, **row})
            self.say(
                f"livepulse run {run + 1}: {row['per_cpu_s']:,.0f} events/CPU-s, "
                f"{row['per_s']:,.0f} events/s, peak RSS {row['peak_rss'] / 1e6:,.0f} MB, "
                f"{row['active_rooms']:,.0f} rooms"
            )
            if run < cfg.runs - 1:
                worker.stop()
        assert worker is not None and deployment is not None
        try:
            async with Collector(bootstrap, deployment.topics, deployment.rollup_topics) as collector:
                # What the catch-up published is read first, with the machine otherwise idle: read
                # during the live phase, it took the sender's CPU (the records may go to disk).
                t0 = time.monotonic()
                if not await collector.quiet():
                    self.say("the catch-up's outputs were still arriving after 600 s")
                self.say(
                    f"catch-up outputs read: {collector.fetched:,} records in "
                    f"{time.monotonic() - t0:.1f} s ({_own_rss()})"
                )
                worker = await self._restart(worker, deployment)
                # a reader of room-stats alone, in its own process: arrivals not delayed by the
                # collector's checks nor by the sender sharing its loop (``loadtest.probe``)
                probe = Probe(bootstrap, deployment.topics.room_stats, self.log_dir / "probe.bin")
                try:
                    await probe.ready()
                    live = await self._live(model, worker, collector)
                    truth = await self._settle_and_truth(backlog, live, collector)
                    probed = probe.stop()
                finally:
                    probe.kill()
                m = await worker.metrics()
                res.live.update(peak_rss=worker.peak_rss(), active_rooms=m.get("livepulse_active_rooms", 0.0))
                res.verdict = check(
                    truth, collector.outputs, require_alerts=cfg.require_alerts, late_slack=cfg.late_slack
                )
                self._record_correctness(truth, live, collector, probed)
                out = collector.outputs
                # what the harness kept on disk rather than in memory (``loadtest._packed``, ``MessageLog``)
                res.machine["harness_on_disk"] = sorted(
                    name
                    for name, held in (
                        ("backlog messages", backlog.messages),
                        ("live messages", live.messages),
                        ("true windows", truth.windows),
                        ("true rollups", truth.rollups),
                        ("true sessions", truth.sessions),
                        ("received windows", out.windows),
                        ("received rollups", out.rollups),
                        ("received sessions", out.sessions),
                        ("arrival times", out.arrivals),
                    )
                    if getattr(held, "spilled", False)
                )
        finally:
            code = worker.stop()
            self.say(f"worker stopped ({code}); logs in {self.log_dir}")
        # the load test's own peak: it must stay bounded
        res.machine["harness_peak_rss"] = _own_peak_rss()
        path = self.log_dir / "results.json"
        path.write_bytes(
            orjson.dumps(_jsonable(res), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
        )
        res.correctness["results_file"] = str(path)
        return res

    # -- steps ---------------------------------------------------------------------------

    def _generate_backlog(self) -> tuple[TrafficModel, Phase]:
        cfg = self.cfg
        t0 = time.perf_counter()
        config = TrafficConfig(rooms=cfg.rooms, users=cfg.users, partitions=cfg.partitions)
        model, phase = generate(
            config,
            cfg.scenarios,
            seed=cfg.seed,
            events=cfg.events,
            window_ms=cfg.window_ms,
            grace_ms=cfg.grace_ms,
            realtime=False,
            event_rate=cfg.event_rate,
        )
        gen_s = time.perf_counter() - t0
        span_s = (phase.end_ms - phase.start_ms) / 1000
        self.result.backlog.update(
            messages=len(phase.messages),
            events=phase.events,
            malformed=sum(phase.malformed.values()),
            span_s=span_s,
            event_rate=model.config.rate_per_s,
            generate_s=gen_s,
            injections=[asdict(i) for i in phase.injections],
        )
        self._gen_rate = len(phase.messages) / gen_s
        self.say(
            f"backlog generated: {len(phase.messages):,} messages over {span_s:.0f} s of event time "
            f"({model.config.rate_per_s:,.0f} events/s), {gen_s:.1f} s"
        )
        for inj in phase.injections:
            self.say(f"  {inj.scenario} in {inj.room_id}: {inj.detail}")
        return model, phase

    async def _baselines(self, bootstrap: str, inputs: tuple[str, str, str], total: int, run: int) -> None:
        cfg = self.cfg
        for name in cfg.baselines:
            limit = min(total, cfg.faust_max_messages) if name == "faust" else total
            b = await run_baseline(
                name,
                brokers=bootstrap,
                topics=inputs,
                total=limit,
                partitions=cfg.partitions,
                window_ms=cfg.window_ms,
                grace_ms=cfg.grace_ms,
                log_dir=self.log_dir,
                timeout_s=cfg.timeout_s,
                group_prefix=f"lt-{self.suffix}-base",  # its framework's topics cleaned up with the run's
            )
            row = {
                "name": name,
                "run": run,
                "messages": limit,
                "completed": b.completed,
                "error": b.error,
                "per_cpu_s": b.events_per_cpu_s,
                "per_s": b.events_per_s,
                "peak_rss": b.peak_rss,
            }
            self.result.baselines.append(row)
            rate = f"{b.events_per_cpu_s:,.0f}/CPU-s" if b.events_per_cpu_s else b.error
            self.say(f"baseline {name} run {run + 1}: {rate}")

    def _deployment(
        self, bootstrap: str, inputs: tuple[str, str, str], label: str, env: tuple[tuple[str, str], ...] = ()
    ) -> Deployment:
        cfg = self.cfg
        deployment = Deployment(
            bootstrap,
            inputs,
            f"lt-{self.suffix}-{label}",
            cfg.partitions,
            cfg.window_ms,
            cfg.grace_ms,
            extra_env=(("LIVEPULSE_SESSION_GAP_MS", str(SESSION_GAP_MS)), *env),
        )
        self.topics_created += [t for t in asdict(deployment.topics).values() if t not in inputs]
        return deployment

    async def _catch_up(
        self, deployment: Deployment, total: int, label: str
    ) -> tuple[dict[str, Any], WorkerProcess]:
        """A fresh worker of ``deployment`` timed until it consumed the backlog and closed its last
        window (see ``catch_up_rate``); it is left running."""
        worker = self._start_worker(deployment, f"livepulse-{label}")
        ready_s = await worker.wait_ready()
        sampler = Sampler(worker, every_s=0.25)
        await sampler.until_consumed(total, self.cfg.timeout_s)
        # the backlog's last windows close once its inputs are idle and wall time moved past them
        cfg = self.cfg
        await sampler.until_settled((cfg.window_ms + cfg.grace_ms) / 1000 + 3, cfg.timeout_s)
        rate = catch_up_rate(sampler.samples, total)
        metrics = await worker.metrics()
        checkpoint = histogram(metrics, "livepulse_checkpoint_seconds")
        row = {
            "ready_s": ready_s,
            "messages": rate.messages,
            "cpu_s": rate.cpu_s,
            "wall_s": rate.wall_s,
            "per_cpu_s": rate.per_cpu_s,
            "per_s": rate.per_s,
            "peak_rss": worker.peak_rss(),
            "active_rooms": metrics.get("livepulse_active_rooms", 0.0),
            "checkpoints": checkpoint.count,
            "checkpoint_mean_s": checkpoint.mean,
            "checkpoint_p99_le_s": checkpoint.p99_bound,
            "checkpoint_max_le_s": checkpoint.max_bound,
            "applied": metrics.get("livepulse_events_applied_total", 0.0),
            "invalid": metrics.get("livepulse_events_invalid_total", 0.0),
            "windows_emitted": metrics.get("livepulse_windows_emitted_total", 0.0),
        }
        self.result.series[f"catchup_{label}"] = [asdict(s) for s in sampler.samples]
        return row, worker

    async def _restart(self, worker: WorkerProcess, deployment: Deployment) -> WorkerProcess:
        """Kill (or stop) the caught-up worker, start another: restore time from its /metrics."""
        crash = self.cfg.crash_restart
        if crash:
            worker.kill()
        else:
            worker.stop()
        again = self._start_worker(deployment, "livepulse-restarted")
        ready_s = await again.wait_ready()
        m = await again.metrics()
        for _ in range(30):  # the rooms gauge is set by the first processing round after restore
            if m.get("livepulse_active_rooms", 0.0) > 0:
                break
            await asyncio.sleep(0.1)
            m = await again.metrics()
        restore = histogram(m, "livepulse_restore_seconds")
        assignment = histogram(m, "livepulse_assignment_seconds")
        self.result.restore = {
            "how": "SIGKILL" if crash else "SIGTERM",
            "ready_s": ready_s,
            "restore_s_total": restore.total,
            "assignment_s": assignment.total,
            "assignments": assignment.count,
            "partitions": restore.count,
            "restore_s_max_le": restore.max_bound,
            "rooms": m.get("livepulse_active_rooms", 0.0),
            "rss_after": again.rss(),
        }
        self.say(
            f"{'killed' if crash else 'stopped'} and restarted: {m.get('livepulse_active_rooms', 0):,.0f} "
            f"rooms restored in {assignment.total:.2f} s (the assignment: {restore.count:.0f} partitions "
            f"read side by side, {restore.total:.2f} s summed, and decoded); "
            f"ready {ready_s:.1f} s after start"
        )
        return again

    async def _live(self, model: TrafficModel, worker: WorkerProcess, collector: Collector) -> Phase:
        cfg = self.cfg
        base_rate = model.config.rate_per_s
        capacity = statistics.median(r["per_s"] for r in self.result.livepulse)
        target = live_target(cfg, base_rate, capacity)
        names = [n for n in cfg.scenarios if n in ("late", "malformed")]
        built = scenarios.build(names, span_s=cfg.live_s, window_ms=cfg.window_ms, grace_ms=cfg.grace_ms)
        # A spike in real time: a debut (surge rule). A trending spike would need the room's history
        # to run on without a gap, and the runs before the live phase leave one of minutes.
        if "hot-room" in cfg.scenarios:
            built.append(scenarios.HotRoom(at_s=min(20.0, cfg.live_s / 5)))
        if target > base_rate * 1.05:
            built.append(scenarios.Filler(target - base_rate, rooms=max(1_000, cfg.rooms // 4)))
        expected = target * cfg.live_s * 1.1
        lead_s = 5.0 + 3.0 * expected / self._gen_rate  # generous: sending late would inflate latency
        start_ms = int((time.time() + lead_s) * 1000)
        with no_gc():
            phase = model.phase(start_ms, cfg.live_s, built, realtime=True)
        self.say(
            f"live phase: {len(phase.messages):,} messages over {cfg.live_s:.0f} s at ~{target:,.0f}/s "
            f"({target / capacity:.0%} of {capacity:,.0f}/s capacity; backlog rooms at {base_rate:,.0f}/s)"
        )
        stop = asyncio.Event()
        sampler = Sampler(worker, every_s=0.5)
        sampling = asyncio.create_task(sampler.run(stop))
        try:
            # from a process of its own: the collector's work at a boundary stalled a sender in
            # this loop past the worker's idle timeout (``loadtest.sender``)
            stats = await send_apart(worker.deployment.bootstrap, worker.deployment.inputs, phase.messages)
        finally:
            stop.set()
            await sampling
        metrics = await worker.metrics()
        batch = histogram(metrics, "livepulse_batch_processing_seconds")
        wait = histogram(metrics, "livepulse_publish_wait_seconds")
        checkpoint = histogram(metrics, "livepulse_checkpoint_seconds")
        self.result.live.update(
            worker_batch_mean_s=batch.mean,
            worker_batch_p99_le_s=batch.p99_bound,
            worker_publish_wait_mean_s=wait.mean,
            worker_publish_wait_p99_le_s=wait.p99_bound,
            worker_publish_wait_max_le_s=wait.max_bound,
            worker_checkpoint_mean_s=checkpoint.mean,
            worker_checkpoint_max_le_s=checkpoint.max_bound,
        )
        self.result.live.update(
            target_rate=target,
            capacity=capacity,
            sent=stats.messages,
            sent_rate=stats.rate,
            sender_behind_s=stats.behind_s,
            sender_lag_p99_s=percentile(SenderLag(stats.lags).values(), 99),
            seconds=stats.seconds,
            injections=[asdict(i) for i in phase.injections],
            late_events=phase.late_events,
            start_ms=phase.start_ms,
        )
        self.result.series["live"] = [asdict(s) for s in sampler.samples]
        self._sender_lag = SenderLag(stats.lags)
        return phase

    async def _settle_and_truth(self, backlog: Phase, live: Phase, collector: Collector) -> _truth.Truth:
        """Let the last windows close and arrive (latencies need an idle loop), then compute the truth."""
        cfg = self.cfg
        await asyncio.sleep((cfg.window_ms + cfg.grace_ms) / 1000 + 4)
        stable_since, count = time.monotonic(), -1
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now_count = len(collector.outputs.windows)
            if now_count != count:
                stable_since, count = time.monotonic(), now_count
            elif time.monotonic() - stable_since > 3:
                break
            await asyncio.sleep(0.5)
        t0 = time.perf_counter()
        rollups = short_rollup_windows(cfg.window_ms)
        truth = self._ground_truth([backlog, live])
        truth.expected_alerts()
        self.say(
            f"ground truth: {len(truth.windows):,} windows, {len(truth.rollups):,} rollups, "
            f"{len(truth.sessions):,} sessions ({time.perf_counter() - t0:.1f} s; {_own_rss()})"
        )
        # the keys are read as they are waited for (a set of them was hundreds of MB)
        if not await collector.wait_for(truth.windows.keys(), 30):
            self.say("some expected windows never arrived")
        # the longest rollup closes up to its length after the last window (watermark by wall time)
        if not await collector.wait_for_rollups(truth.rollups.keys(), max(rollups) / 1000 + 30):
            self.say("some expected rollup windows never arrived")
        boards = set(expected_leaderboards(truth.windows.values(), 1))
        if not await collector.wait_for_leaderboards(boards, 30):
            self.say("some expected leaderboard windows never arrived")
        await asyncio.sleep(1)  # stragglers: late duplicates or alerts
        return truth

    def _ground_truth(self, phases: Sequence[Phase]) -> _truth.Truth:
        """The outputs ``phases`` must give, with the workers' settings (``_deployment``)."""
        cfg = self.cfg
        return _truth.compute(
            phases,
            partitions=cfg.partitions,
            window_ms=cfg.window_ms,
            grace_ms=cfg.grace_ms,
            rollup_windows_ms=short_rollup_windows(cfg.window_ms),
            session_gap_ms=SESSION_GAP_MS,
        )

    def _record_correctness(
        self, truth: _truth.Truth, live: Phase, collector: Collector, probed: Mapping[WindowKey, float]
    ) -> None:
        res, cfg = self.result, self.cfg
        out = collector.outputs
        lag = self._sender_lag
        [
            (latencies, no_window),
            (at_worker, _),
            (adjusted, _),
            (at_worker_adjusted, _),
            (at_probe, probe_missing),
            (at_probe_adjusted, _),
        ] = event_latencies_each(
            live.messages,
            [
                (out.arrivals, None),
                # The same up to the moment the worker queued the record: what the harness's own
                # reader (sharing the 2 cores) and the broker add is the difference.
                (out.produced, None),
                # Both less the sender's own lag behind the clock where the window could close.
                (out.arrivals, lag),
                (out.produced, lag),
                # At a reader that does nothing else (``loadtest.probe``).
                (probed, None),
                (probed, lag),
            ],
            cfg.window_ms,
            cfg.grace_ms,
        )
        res.live.update(
            latency_sender_adjusted_p99_s=percentile(adjusted, 99),
            latency_worker_sender_adjusted_p99_s=percentile(at_worker_adjusted, 99),
        )
        res.live.update(
            latency_events=len(latencies),
            latency_missing=no_window,
            latency_p50_s=percentile(latencies, 50),
            latency_p99_s=percentile(latencies, 99),
            latency_max_s=latencies[-1] if latencies else None,
            latency_worker_p50_s=percentile(at_worker, 50),
            latency_worker_p99_s=percentile(at_worker, 99),
            latency_probe_events=len(at_probe),
            latency_probe_missing=probe_missing,
            latency_probe_p50_s=percentile(at_probe, 50),
            latency_probe_p99_s=percentile(at_probe, 99),
            latency_probe_sender_adjusted_p99_s=percentile(at_probe_adjusted, 99),
            latency_target_s=(cfg.window_ms + cfg.grace_ms) / 1000 + 1,
        )
        step = max(1, len(latencies) // 2_000)
        res.series["latency_cdf"] = [*latencies[::step], *latencies[-1:]]
        v = res.verdict
        assert v is not None
        realtime_from = live.start_ms
        res.correctness.update(
            ok=v.ok,
            summary=v.summary(),
            windows=v.windows_expected,
            mismatches=len(v.missing) + len(v.unexpected) + len(v.mismatched) + v.conflicts,
            alerts_present=bool(out.alerts),
            spikes=[
                {
                    "scenario": s.injection.scenario,
                    "room": s.injection.room_id,
                    "start_ms": s.injection.start_ms,
                    "end_ms": s.injection.end_ms,
                    "alert": list(s.alert) if s.alert else None,
                    "start_offset_s": s.start_offset_s,
                    "delay_s": s.delay_s(s.injection.start_ms >= realtime_from),
                    "arrival_s": s.arrival_s,
                }
                for s in v.spikes
            ],
            organic=len(v.organic),
            unexplained=[list(k) for k in v.unexplained],
            late_expected=v.late_expected,
            dlq=sum(v.dlq_got.values()),
            dlq_duplicates=out.dlq_duplicates,
            window_repeats=out.duplicates,
        )
        res.series["alerts"] = [_alert_row(arrival, rec) for arrival, rec in out.alerts]
        res.series["phases"] = {
            "backlog_start_ms": truth.phases[0]["start_ms"],
            "live_start_ms": live.start_ms,
        }
        self.say(
            f"live latency p50 {res.live['latency_p50_s']:.2f} s, p99 {res.live['latency_p99_s']:.2f} s "
            f"over {len(latencies):,} events (target p99 <= {res.live['latency_target_s']:.1f} s); "
            f"at the probe p50 {res.live['latency_probe_p50_s']:.2f} s, "
            f"p99 {res.live['latency_probe_p99_s']:.2f} s "
            f"({probe_missing:,} events without a window there); "
            f"{_own_rss()}"
        )
        self.say("correctness:\n" + v.summary())

    def _start_worker(self, deployment: Deployment, label: str) -> WorkerProcess:
        worker = WorkerProcess(deployment, self.log_dir, label)
        self._workers.append(worker)
        return worker

    async def _delete_topics(self, bootstrap: str) -> None:
        """The run's topics deleted; bounded (a run may have ended because the broker is gone)
        and never raising, so it neither hides the run's result nor replaces its error."""
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            async with asyncio.timeout(DELETE_TOPICS_TIMEOUT_S):
                await self._delete_with(admin)
        except Exception as exc:  # cleanup must not hide the result (a timeout included)
            self.say(f"could not delete topics: {exc!r}")
        finally:
            with contextlib.suppress(Exception):
                await admin.close()

    async def _delete_with(self, admin: AIOKafkaAdminClient) -> None:
        await admin.start()
        existing = set(await admin.list_topics())
        # and every topic of the run's deployments (app ids ``lt-<suffix>-<label>``) and
        # baselines (groups ``lt-<suffix>-base-<name>-<id>``): rollup topics and the
        # frameworks' own are not among the topics a deployment configures
        ours = f"lt-{self.suffix}-"
        doomed = sorted(t for t in existing if t in self.topics_created or t.startswith(ours))
        if doomed:
            await admin.delete_topics(doomed)


def live_target(cfg: HarnessConfig, base_rate: float, capacity: float) -> float:
    """The live phase's events/s: ``live_rate`` if set, else ``live_load`` of the catch-up's
    ``capacity``; never below the backlog rooms' own ``base_rate`` (a quick run: that alone)."""
    wanted = cfg.live_load * capacity if cfg.live_rate is None else cfg.live_rate
    return base_rate if cfg.quick else max(base_rate, wanted)


def _own_peak_rss() -> int:
    """The load test's own peak resident set size in bytes (VmHWM; ru_maxrss is in KB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _own_rss() -> str:
    """The load test's own memory now and at its peak so far, for its log."""
    now = psutil.Process().memory_info().rss
    return f"load test RSS {now / 2**20:,.0f} MB, peak {_own_peak_rss() / 2**20:,.0f} MB"


def machine_facts() -> dict[str, Any]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for dist in (
        "aiokafka",
        "faust-streaming",
        "quixstreams",
        "confluent-kafka",
        "orjson",
        "datasketches",
        "psutil",
    ):
        with contextlib.suppress(PackageNotFoundError):
            versions[dist] = version(dist)
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": os.getloadavg(),
        "kafka": "3.9.1 (local single-node KRaft, loopback)",
        "versions": versions,
    }


def _alert_row(arrival: float, rec: dict[str, Any]) -> list[Any]:
    """[arrival s, status, room, metric, alertname, startsAt ms] of one alert record."""
    labels = rec.get("labels") or {}
    try:
        starts = parse_iso_ms(rec["startsAt"])
    except (KeyError, TypeError, ValueError):
        starts = None
    return [
        arrival,
        rec.get("status"),
        labels.get("room_id"),
        labels.get("metric"),
        labels.get("alertname"),
        starts,
    ]


def _jsonable(res: Result) -> dict[str, Any]:
    doc = asdict(res)
    doc.pop("verdict", None)
    return doc


async def run_harness(cfg: HarnessConfig) -> Result:
    """Run the harness against ``cfg.brokers`` or the local broker (started if needed)."""
    if cfg.brokers:
        return await Harness(cfg).run(cfg.brokers)
    settings = BrokerSettings.from_env(os.environ)
    started = broker_pid(settings) is None
    broker = await asyncio.to_thread(ensure_broker, settings)
    try:
        return await Harness(cfg).run(broker.bootstrap)
    finally:
        if started:
            await asyncio.to_thread(stop_broker, settings)


async def _stopped_by_sigterm(run: Coroutine[Any, Any, Result]) -> Result:
    """``run``, cancelled by SIGTERM as Ctrl-C cancels it: its clean-up runs either way."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await run
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="livepulse loadtest run", description=__doc__.split("\n\n")[0])
    d = HarnessConfig()
    p.add_argument("--events", type=int, default=d.events, help="base events in the backlog")
    p.add_argument("--rooms", type=int, default=d.rooms)
    p.add_argument("--scenario", default="all", help="comma-separated: " + ",".join(scenarios.NAMES))
    p.add_argument("--runs", type=int, default=d.runs)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--live-s", type=float, default=d.live_s, help="seconds of live (real-time) traffic")
    p.add_argument("--live-load", type=float, default=d.live_load, help="live rate as a share of capacity")
    p.add_argument(
        "--live-rate", type=float, default=d.live_rate, help="live rate in events/s (instead of --live-load)"
    )
    p.add_argument("--baselines", default=",".join(d.baselines), help="comma-separated, or 'none'")
    p.add_argument("--faust-max-messages", type=int, default=d.faust_max_messages)
    p.add_argument(
        "--variants",
        default="",
        help="comma-separated livepulse variants timed beside it in every run: "
        + "; ".join(f"{k}: {v[0]}" for k, v in VARIANTS.items()),
    )
    p.add_argument(
        "--rate",
        type=float,
        help="events per second of event time, which sets the density: events per room-window "
        "= rate x window / rooms (default: the events over the scenarios' minimum span)",
    )
    p.add_argument(
        "--quick", action="store_true", help="a few seconds of traffic, all scenarios, correctness only"
    )
    p.add_argument("--report", action="store_true", help="update loadtest/RESULTS.md and loadtest/plots/")
    p.add_argument("--brokers", help="use these brokers instead of the local one")
    p.add_argument("--out-dir", type=Path, default=d.out_dir)
    p.add_argument("--keep-topics", action="store_true")
    p.add_argument(
        "--report-from",
        type=Path,
        nargs="+",
        metavar="RESULTS_JSON",
        help="run nothing: rewrite loadtest/RESULTS.md and the plots from a run's results.json; with "
        "more (runs at other room densities), also a table of every density side by side",
    )
    return p


def load_result(path: Path) -> Result:
    """A run's ``results.json`` as a :class:`Result` (without its verdict object; the report
    reads the correctness summary it holds)."""
    doc = orjson.loads(path.read_bytes())
    doc.pop("verdict", None)
    result = Result(**doc)
    result.correctness.setdefault("results_file", str(path))
    return result


def write_report(result: Result, argv: list[str], densities: Sequence[Result] = ()) -> None:
    from . import _report, plots

    written = plots.write_all(result, REPO / "loadtest" / "plots")
    _report.update_results_md(result, written, argv=argv, densities=densities)


#: modules a baseline's process imports that the worker's own dependencies do not bring
BASELINE_NEEDS: dict[str, str] = {"quix": "quixstreams"}


def missing_extras(baselines: Sequence[str], *, report: bool) -> list[str]:
    """Modules the run would need and cannot import: checked before the run, which otherwise
    finds out minutes in (a baseline process that exits at its first import; the plots after
    every run)."""
    needed = [BASELINE_NEEDS[b] for b in baselines if b in BASELINE_NEEDS]
    if report:
        needed.append("matplotlib")
    return [module for module in needed if importlib.util.find_spec(module) is None]


def require_extras(baselines: Sequence[str], *, report: bool) -> None:
    """Stop with a clear message if :func:`missing_extras` names any."""
    missing = missing_extras(baselines, report=report)
    if missing:
        raise SystemExit(
            f"not installed: {', '.join(missing)} (the `bench` extra: pip install -e '.[bench]')"
            + ("; or leave the baselines that need them out with --baselines" if baselines else "")
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.report_from:
        require_extras((), report=True)
        results = [load_result(path) for path in args.report_from]
        write_report(results[0], list(results[0].config.get("argv") or ["..."]), results)
        return 0
    common = {
        "scenarios": tuple(scenarios.parse(args.scenario)),
        "seed": args.seed,
        "brokers": args.brokers,
        "out_dir": args.out_dir,
        "report": args.report,
        "cleanup": not args.keep_topics,
        "argv": tuple(argv if argv is not None else sys.argv[1:]),
    }
    if args.quick:
        cfg = HarnessConfig.quick_config(**common)
    else:
        baselines = () if args.baselines == "none" else tuple(b for b in args.baselines.split(",") if b)
        unknown = [b for b in baselines if b not in BASELINES]
        if unknown:
            raise SystemExit(f"unknown baselines {unknown}; known: {', '.join(BASELINES)}")
        variants = tuple(v for v in args.variants.split(",") if v)
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown:
            raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
        cfg = HarnessConfig(
            events=args.events,
            rooms=args.rooms,
            runs=args.runs,
            live_s=args.live_s,
            live_load=args.live_load,
            live_rate=args.live_rate,
            baselines=baselines,
            faust_max_messages=args.faust_max_messages,
            variants=variants,
            event_rate=args.rate,
            **common,
        )
    require_extras(cfg.baselines, report=args.report)
    try:
        result = asyncio.run(_stopped_by_sigterm(run_harness(cfg)))
    except asyncio.CancelledError:  # SIGTERM: stopped, cleaned up; the shell's code for it
        return 128 + signal.SIGTERM
    if cfg.report:
        write_report(result, list(cfg.argv))
    print(result.verdict.summary() if result.verdict else "no verdict")
    return 0 if result.ok else 1
