"""The fault suite: real-time traffic, a fault, and every window checked against the ground truth.

    python -m loadtest.faults                      # every scenario, full length (make faults)
    python -m loadtest.faults --short              # the short form (also run by make test)
    python -m loadtest.faults --only kill9-mixed --seconds 40

Each scenario gets its own deployment (input, output and internal topics) on a
broker of its own that the suite starts (so a broker restart disturbs nothing
else), sends the traffic model's base mix paced in real time, applies its
fault, lets the last windows close, and compares what the workers published
(read_committed) with the brute-force oracle's windows for the same events:

* ``kill9-murmur2`` / ``kill9-mixed``: one worker, SIGKILL mid-traffic, restarted.
  Mixed: half the events come from a confluent-kafka (librdkafka) producer with
  its default partitioner (crc32 of the key), the rest from aiokafka (murmur2),
  interleaved, so a room's events arrive on two partitions and half of them are
  re-routed;
* ``freeze``: two workers, one frozen (SIGSTOP) past the session timeout and resumed;
* ``rolling``: two workers stopped (SIGTERM) and restarted one after the other;
* ``broker-restart``: the broker stopped and started again mid-traffic;
* ``corrupt-changelog``: a worker killed, an undecodable record written over an
  active room's state, the worker restarted: it must quarantine the record and run on.

Workers run under a supervisor as in production: one that exits is started
again (counted in the row). A row reports events sent, windows expected,
missing, wrong (any field differs; HLL unique viewers within their bound),
double counted (a count above the truth), unexpected windows, late events
counted, worker restarts, and the seconds until the affected worker was ready.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from deploy._settings import BrokerSettings
from deploy.localkafka import ensure_broker, stop_broker
from schemas import ROOM_STATS_FIELDS

from . import _truth
from ._checks import alert_keys
from ._collect import Collector, Outputs
from ._deploy import REPO, Deployment, WorkerProcess, free_port
from .oracle import unique_viewers_close
from .produce import ensure_topics
from .traffic import Message, Phase, TrafficConfig, TrafficModel, no_gc

SCENARIOS = ("kill9-murmur2", "kill9-mixed", "freeze", "rolling", "broker-restart", "corrupt-changelog")
_COUNTS = tuple(f for f in ROOM_STATS_FIELDS if f not in ("room_id", "window_start", "window_end"))
CHECKPOINTS = "livepulse_checkpoint_seconds_count"
_EXACT = tuple(f for f in _COUNTS if f not in ("unique_viewers", "orders_per_sec"))


@dataclass(frozen=True, slots=True)
class FaultConfig:
    seconds: float = 60.0
    rate_per_s: float = 1_000.0
    rooms: int = 300
    partitions: int = 4
    window_ms: int = 10_000
    grace_ms: int = 2_000
    seed: int = 7
    #: SIGSTOP this long: past the data plane's 10 s session timeout
    freeze_s: float = 20.0
    broker_down_s: float = 10.0

    @classmethod
    def short(cls) -> FaultConfig:
        return cls(
            seconds=25.0, rate_per_s=500.0, rooms=150, window_ms=5_000, freeze_s=16.0, broker_down_s=8.0
        )


@dataclass
class Row:
    scenario: str
    events: int = 0
    windows_expected: int = 0
    missing: int = 0
    wrong: int = 0
    double_counted: int = 0
    unexpected: int = 0
    late_counted: int = 0
    #: records published twice (room-stats, dead letters): none under transactions
    duplicates: int = 0
    #: firing alerts published vs the detector replayed over the true windows (symmetric difference)
    alerts_wrong: int = 0
    restarts: int = 0
    restarts_allowed: int = 0
    ready_s: float = 0.0
    #: windows of rooms whose state was quarantined on purpose (not compared), and quarantined records
    not_compared: int = 0
    quarantined: int = 0
    notes: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.missing
            or self.wrong
            or self.double_counted
            or self.unexpected
            or self.late_counted
            or self.duplicates
            or self.alerts_wrong
            or self.restarts > self.restarts_allowed
        )


class Supervisor:
    """Keeps one worker of a deployment running: restarts it whenever it exits (as Kubernetes would)."""

    def __init__(self, deployment: Deployment, log_dir: Path, name: str) -> None:
        self.deployment, self.log_dir, self.name = deployment, log_dir, name
        self.restarts = 0
        self.exit_codes: list[int] = []
        self._n = 0
        self.worker = self._spawn()
        self._paused = False
        self._watch = asyncio.create_task(self._watch_loop())

    def _spawn(self) -> WorkerProcess:
        self._n += 1
        return WorkerProcess(self.deployment, self.log_dir, f"{self.name}-{self._n}")

    async def _watch_loop(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            if not self._paused and self.worker.proc.poll() is not None:
                self.exit_codes.append(self.worker.stop(1))  # collects the exit status, closes its log
                self.restarts += 1
                self.worker = self._spawn()

    async def restart(self, how: str) -> float:
        """Stop the worker (``kill`` or ``term``), start a new one; seconds until it recovered."""
        self._paused = True
        if how == "kill":
            self.worker.kill()
        else:
            code = await asyncio.to_thread(self.worker.stop, 60)
            if code != 0:
                self.exit_codes.append(code)
        t0 = time.monotonic()
        self.worker = self._spawn()
        self._paused = False
        return await self.recovered(t0, (self.worker.proc.pid, 0.0))

    async def mark(self) -> tuple[int, float]:
        """The current worker's pid and checkpoints committed so far (before a fault ends)."""
        with contextlib.suppress(OSError, RuntimeError):
            return self.worker.proc.pid, (await self.worker.metrics()).get(CHECKPOINTS, 0.0)
        return self.worker.proc.pid, 0.0

    async def recovered(self, t0: float, before: tuple[int, float], timeout_s: float = 180) -> float:
        """Seconds from the monotonic ``t0`` until a worker is ready and has committed a checkpoint
        after ``before`` (a new process, or more checkpoints than then)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, RuntimeError):
                status, _ = await asyncio.to_thread(self.worker.get, "/readyz", 2)
                if status == 200:
                    done = (await self.worker.metrics()).get(CHECKPOINTS, 0.0)
                    if (self.worker.proc.pid != before[0] and done > 0) or done > before[1]:
                        return time.monotonic() - t0
            await asyncio.sleep(0.2)
        raise RuntimeError(
            f"{self.name} not recovered {timeout_s:.0f} s after the fault:\n{self.worker.tail()}"
        )

    async def close(self) -> None:
        self._watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._watch
        code = await asyncio.to_thread(self.worker.stop, 60)
        if code not in (0, -9):
            self.exit_codes.append(code)


# -- traffic ------------------------------------------------------------------------------------


async def send_paced(
    bootstrap: str, inputs: Sequence[str], messages: Sequence[Message], *, librdkafka_share: float, seed: int
) -> None:
    """Send each message when the wall clock reaches its event time.

    A ``librdkafka_share`` of the messages goes through a confluent-kafka
    producer that picks the partition itself (librdkafka's default partitioner);
    the rest through aiokafka onto the murmur2 partition. Both idempotent.
    """
    aio = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, linger_ms=5)
    await aio.start()
    rd = _librdkafka_producer(bootstrap) if librdkafka_share > 0 else None
    rng = random.Random(seed)
    pending: list[asyncio.Future[Any]] = []
    try:
        for source, partition, key, raw, ts, _ in messages:
            ahead = ts / 1000 - time.time()
            if ahead > 0.005:
                if rd is not None:
                    rd.poll(0)
                await asyncio.sleep(ahead)
            if rd is not None and rng.random() < librdkafka_share:
                rd.produce(inputs[source], raw, key)
            else:
                pending.append(await aio.send(inputs[source], raw, key=key, partition=partition))
            if len(pending) > 2_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        if rd is not None:
            left = await asyncio.to_thread(rd.flush, 120)
            if left:
                raise RuntimeError(f"confluent-kafka producer could not deliver {left} messages")
    finally:
        await aio.stop()


def _librdkafka_producer(bootstrap: str) -> Any:
    from confluent_kafka import Producer  # only the fault suite and its tests need it

    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": 5,
            "message.timeout.ms": 120_000,
        }
    )


# -- one scenario --------------------------------------------------------------------------------


class Scenario:
    """One row: a deployment, its workers, traffic, a fault, the comparison."""

    def __init__(
        self, name: str, cfg: FaultConfig, bootstrap: str, broker: BrokerSettings, log_dir: Path
    ) -> None:
        self.name, self.cfg, self.bootstrap, self.broker = name, cfg, bootstrap, broker
        self.log_dir = log_dir / name
        suffix = uuid.uuid4().hex[:6]
        self.inputs = (f"f.{suffix}.viewer", f"f.{suffix}.order", f"f.{suffix}.gift")
        self.deployment = Deployment(
            bootstrap,
            self.inputs,
            f"f-{name}-{suffix}",
            cfg.partitions,
            cfg.window_ms,
            cfg.grace_ms,
            log_level="info",  # assignments, restores and fencing in the workers' logs
        )
        #: the frozen worker is fenced and exits (status 3) for its supervisor to restart; a broker
        #: outage may fail a commit the same way; anything else must not need a restart
        self.row = Row(name, restarts_allowed=1 if name in ("freeze", "broker-restart") else 0)
        self.workers: list[Supervisor] = []
        #: the corrupt-changelog scenario: the room whose state is lost, and when (wall ms)
        self.corrupted: str | None = None
        self.corrupted_span_ms = (0, 0)

    async def run(self) -> Row:
        cfg = self.cfg
        await _warm_transactions(self.bootstrap)
        await ensure_topics(self.bootstrap, self.inputs, cfg.partitions)
        n_workers = 2 if self.name in ("freeze", "rolling") else 1
        self.workers = [Supervisor(self.deployment, self.log_dir, f"w{i}") for i in range(n_workers)]
        try:
            for sup in self.workers:
                await sup.worker.wait_ready()
            model = TrafficModel(
                TrafficConfig(
                    rooms=cfg.rooms, users=50_000, rate_per_s=cfg.rate_per_s, partitions=cfg.partitions
                ),
                seed=cfg.seed,
            )
            start_ms = int((time.time() + 2) * 1000)
            with no_gc():
                phase = model.phase(start_ms, cfg.seconds, realtime=True)
            self.row.events = phase.events
            share = 0.0 if self.name == "kill9-murmur2" else 0.5
            async with Collector(self.bootstrap, self.deployment.topics) as collector:
                sending = asyncio.create_task(
                    send_paced(
                        self.bootstrap, self.inputs, phase.messages, librdkafka_share=share, seed=cfg.seed
                    )
                )
                await self._fault(start_ms)
                await sending
                truth = await self._settle(phase, collector)
                await self._compare(truth, collector.outputs)
        finally:
            for sup in self.workers:
                self.row.restarts += sup.restarts
                await sup.close()
        return self.row

    async def _at(self, start_ms: int, fraction: float) -> None:
        await asyncio.sleep(max(0.0, start_ms / 1000 + fraction * self.cfg.seconds - time.time()))

    async def _fault(self, start_ms: int) -> None:
        cfg, name, row = self.cfg, self.name, self.row
        first = self.workers[0]
        if name.startswith("kill9"):
            await self._at(start_ms, 0.45)
            row.ready_s = await first.restart("kill")
        elif name == "freeze":
            await self._at(start_ms, 0.25)
            before = await first.mark()
            os.killpg(before[0], signal.SIGSTOP)
            await asyncio.sleep(cfg.freeze_s)
            os.killpg(before[0], signal.SIGCONT)
            row.ready_s = await first.recovered(time.monotonic(), before)
            row.notes.append(f"frozen {cfg.freeze_s:.0f} s")
        elif name == "rolling":
            await self._at(start_ms, 0.3)
            ready = [await sup.restart("term") for sup in self.workers]
            row.ready_s = max(ready)
        elif name == "broker-restart":
            await self._at(start_ms, 0.35)
            await asyncio.to_thread(stop_broker, self.broker)
            await asyncio.sleep(cfg.broker_down_s)
            before = await first.mark()
            await asyncio.to_thread(ensure_broker, self.broker)
            row.ready_s = await first.recovered(time.monotonic(), before)
            row.notes.append(f"broker down {cfg.broker_down_s:.0f} s")
        elif name == "corrupt-changelog":
            await self._at(start_ms, 0.45)
            first._paused = True
            killed_ms = int(time.time() * 1000)
            first.worker.kill()
            self.corrupted = await self._corrupt_busiest_room()
            t0 = time.monotonic()
            first.worker = first._spawn()
            first._paused = False
            row.ready_s = await first.recovered(t0, (first.worker.proc.pid, 0.0))
            self.corrupted_span_ms = (killed_ms, int(time.time() * 1000))

    async def _corrupt_busiest_room(self) -> str:
        """Write an undecodable state record over the room with the most traffic (non-transactional)."""
        room = "r1"  # rank 1 of the Zipf model: the busiest room
        partition = _truth_partition(room, self.cfg.partitions)
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(
                self.deployment.topics.changelog,
                b"\x00not a room state",
                key=b"r/" + room.encode(),
                partition=partition,
            )
        finally:
            await producer.stop()
        return room

    async def _settle(self, phase: Phase, collector: Collector) -> _truth.Truth:
        """Wait for the last windows (watermark by wall clock once traffic stops), compute the truth."""
        cfg = self.cfg
        truth = _truth.compute(
            [phase], partitions=cfg.partitions, window_ms=cfg.window_ms, grace_ms=cfg.grace_ms
        )
        await collector.wait_for(set(truth.windows), timeout_s=(cfg.window_ms + cfg.grace_ms) / 1000 + 60)
        await asyncio.sleep(2)  # anything extra (a duplicate, a stray window) would arrive now
        return truth

    def _lost(self, key: tuple[str, int]) -> bool:
        """A window of the corrupted room that overlaps its loss (from the last commit before the
        kill until it restarted fresh): its state is gone by design, not compared."""
        start, end = self.corrupted_span_ms
        w = self.cfg.window_ms
        return key[0] == self.corrupted and key[1] + w > start - w and key[1] < end + w

    async def _compare(self, truth: _truth.Truth, out: Outputs) -> None:
        row = self.row
        want = {k: v for k, v in truth.windows.items() if not self._lost(k)}
        got = {k: v for k, v in out.windows.items() if not self._lost(k)}
        row.not_compared = len(truth.windows) - len(want)
        row.windows_expected = len(want)
        row.missing = sum(1 for k in want if k not in got)
        row.unexpected = sum(1 for k in got if k not in want)
        for key, expected in want.items():
            have = got.get(key)
            if have is None:
                continue
            fields = _EXACT
            if key[0] == self.corrupted:  # after the loss: joins - leaves restarted from zero
                fields = tuple(f for f in _EXACT if f != "concurrent_viewers")
            wrong = [f for f in fields if getattr(have, f) != getattr(expected, f)]
            if not unique_viewers_close(have.unique_viewers, expected.unique_viewers):
                wrong.append("unique_viewers")
            if wrong:
                row.wrong += 1
                if any(getattr(have, f) > getattr(expected, f) for f in wrong if f != "late_events"):
                    row.double_counted += 1
                if len(row.examples) < 5:
                    diff = ", ".join(f"{f} {getattr(expected, f)}->{getattr(have, f)}" for f in wrong)
                    row.examples.append(f"{key}: {diff}")
        row.wrong += len(out.conflicts)
        row.duplicates = out.duplicates + out.dlq_duplicates
        row.late_counted = sum(s.late_events for s in got.values())
        firing, _, problems = alert_keys(out)
        published = {k for k in firing if k[0] != self.corrupted}
        expected_alerts = {k for k in truth.expected_alerts() if k[0] != self.corrupted}
        row.alerts_wrong = len(published ^ expected_alerts) + len(problems) + out.undecodable
        if row.alerts_wrong:
            row.examples.append(
                f"alerts published only: {sorted(published - expected_alerts)[:3]}, "
                f"expected only: {sorted(expected_alerts - published)[:3]}"
            )
        row.quarantined = out.dlq_reasons.get("state_undecodable", 0)
        other_dlq = {r: n for r, n in out.dlq_reasons.items() if r != "state_undecodable"}
        if other_dlq:
            row.notes.append(f"unexpected dead letters {other_dlq}")
            row.wrong += sum(other_dlq.values())
        if self.corrupted is not None:
            row.notes.append(
                f"state of {self.corrupted} corrupted: its {row.not_compared} windows around the loss "
                "not compared, its concurrent viewers restart from 0"
            )
            if row.quarantined != 1:
                row.notes.append(f"expected 1 quarantined record, got {row.quarantined}")
                row.wrong += 1
        codes = [c for sup in self.workers for c in sup.exit_codes]
        if codes:
            row.notes.append(f"worker exit codes {codes}")


def _truth_partition(room: str, partitions: int) -> int:
    from streams.core import partition_for

    return partition_for(room.encode(), partitions)


# -- the suite -----------------------------------------------------------------------------------


@contextlib.contextmanager
def suite_broker(port: int | None = None) -> Iterator[BrokerSettings]:
    """A broker of the suite's own (free ports, fresh work dir), stopped and removed afterwards."""
    broker = BrokerSettings.from_env(
        os.environ,
        port=port or free_port(),
        controller_port=free_port(),
        work_dir=REPO / ".cache" / "kafka" / f"faults-{uuid.uuid4().hex[:6]}",
    )
    try:
        ensure_broker(broker)
        yield broker
    finally:
        stop_broker(broker)
        shutil.rmtree(broker.work_dir, ignore_errors=True)


async def _warm_transactions(bootstrap: str) -> None:
    """The first transactional producer on a new broker creates its transaction-state topic
    (seconds); do it before the scenarios, whose workers would otherwise race it at start."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"warm-{uuid.uuid4().hex}")
    await producer.start()
    try:
        await producer.begin_transaction()
        await producer.abort_transaction()
    finally:
        await producer.stop()


def log_dir() -> Path:
    return REPO / ".cache" / "faults" / time.strftime("%Y%m%d-%H%M%S")


async def run_suite(
    cfg: FaultConfig, names: Sequence[str], *, say: Callable[[str], None] = print
) -> list[Row]:
    """Run each scenario on a broker of the suite's own."""
    logs = log_dir()
    rows: list[Row] = []
    with suite_broker() as broker:
        for name in names:
            say(f"[faults] {name}: {cfg.seconds:.0f} s of traffic at {cfg.rate_per_s:,.0f} events/s ...")
            row = await Scenario(name, cfg, broker.bootstrap, broker, logs).run()
            say(f"[faults] {name}: {format_row(row)}")
            rows.append(row)
    return rows


HEADER = (
    "| scenario | events | windows | missing | wrong | double counted | unexpected | late | duplicates "
    "| alerts wrong | restarts | ready again (s) | notes |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
)


def format_row(row: Row) -> str:
    return (
        f"| {row.scenario} | {row.events:,} | {row.windows_expected:,} | {row.missing} | {row.wrong} "
        f"| {row.double_counted} | {row.unexpected} | {row.late_counted} | {row.duplicates} "
        f"| {row.alerts_wrong} | {row.restarts} | {row.ready_s:.1f} | {'; '.join(row.notes)} |"
    )


def table(rows: Sequence[Row]) -> str:
    return "\n".join([HEADER, *(format_row(r) for r in rows)])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.faults", description=__doc__.split("\n")[0])
    parser.add_argument("--short", action="store_true", help="the short form run by make test")
    parser.add_argument("--only", action="append", choices=SCENARIOS, help="run only these scenarios")
    parser.add_argument("--seconds", type=float, help="traffic per scenario")
    parser.add_argument("--rate", type=float, help="events per second")
    args = parser.parse_args(argv)
    cfg = FaultConfig.short() if args.short else FaultConfig()
    overrides = {k: v for k, v in (("seconds", args.seconds), ("rate_per_s", args.rate)) if v}
    if overrides:
        cfg = FaultConfig(**{**asdict(cfg), **overrides})
    rows = asyncio.run(run_suite(cfg, args.only or SCENARIOS))
    print(table(rows))
    for row in rows:
        for example in row.examples:
            print(f"  {row.scenario}: {example}")
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
