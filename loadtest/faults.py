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
  its default partitioner (crc32 of the key) and lz4 compression, the rest from aiokafka (murmur2),
  interleaved, so a room's events arrive on two partitions and half of them are
  re-routed;
* ``freeze``: two workers, one frozen (SIGSTOP) past the session timeout and resumed;
* ``rolling``: two workers stopped (SIGTERM) and restarted one after the other;
* ``broker-restart``: the broker stopped and started again mid-traffic; the librdkafka half is
  held back from the outage until 4 s after the broker is back, as a producer backing off between
  reconnects delivers it (librdkafka's default backoff grows to 10 s), so aiokafka's fresh events
  arrive seconds before the buffered ones (the worker's outage hold must keep those on time);
* ``corrupt-changelog``: a worker killed, an undecodable record written over an
  active room's state, the worker restarted: it must quarantine the record and run on.

Hostile input, each beside the honest traffic, sent from a thread (librdkafka) so the honest pacing
holds; honest windows must be exact, every bad message dead-lettered with its reason, and the
worker's peak RSS within ``rss_limit_mb``:

* ``clock-fast``: a producer whose clock is 4 minutes fast sends heartbeats for the honest rooms
  (``ts_skew``, none may move the watermark);
* ``stale-input``: the gift topic carries only hour-old gifts (honest traffic has none), sent until
  the comparison is done: that input must stop holding the watermark back (its events count late);
* ``malformed-flood``: ``hostile_messages`` malformed messages cycling through every reason code
  (``loadtest.scenarios.malformed``), each expected in the DLQ with that code;
* ``room-flood``: ``hostile_messages`` joins, each in a new room, once every honest room is open; the
  worker runs with ``LIVEPULSE_MAX_ROOMS=max_rooms``: each flood event is a window of its room or a
  ``room_cap`` dead letter, and memory stays bounded.

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
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from deploy.exceptions import BrokerError  # noqa: F401  (tests catch it as faults.BrokerError)
from deploy.localkafka import BrokerSettings, ensure_broker, stop_broker
from schemas import ROOM_STATS_FIELDS, RoomStats
from streams.core import room_key

from . import _truth
from ._checks import alert_keys, compare_leaderboards, compare_sessions_and_rollups, leaderboard_failures
from ._collect import Collector, Outputs
from .deployment import REPO, Deployment, WorkerProcess, free_port, short_rollup_windows
from .oracle import UniqueTally, expected_leaderboards
from .produce import ensure_topics
from .scenarios import malformed
from .traffic import GIFT, VIEWER, MessageLog, Phase, TrafficConfig, TrafficModel, no_gc

HOSTILE = ("clock-fast", "stale-input", "malformed-flood", "room-flood")
SCENARIOS = (
    "kill9-murmur2",
    "kill9-mixed",
    "freeze",
    "rolling",
    "broker-restart",
    "corrupt-changelog",
    *HOSTILE,
)
#: the deployments' leaderboard size (the default setting)
LEADERBOARD_SIZE = 100
#: room ids of hostile traffic start with this; honest rooms are the model's r<rank>
HOSTILE_ROOM = "x-"
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
    #: malformed messages (malformed-flood) and distinct new rooms (room-flood)
    hostile_messages: int = 1_000_000
    #: LIVEPULSE_MAX_ROOMS of the room-flood worker (per task; 4 tasks)
    max_rooms: int = 25_000
    #: the worker's peak RSS in a hostile row must stay within this. 550 MB since the room flood's
    #: joins are in time (each of its 100 000 rooms then holds a unique-viewer sketch, a session and
    #: rollups): 484, 497 and just over 500 MB measured; 471-476 MB while its joins were late and
    #: opened lighter rooms (late events open no room since session 11)
    rss_limit_mb: float = 550.0

    @classmethod
    def short(cls) -> FaultConfig:
        return cls(
            seconds=25.0,
            rate_per_s=500.0,
            rooms=150,
            window_ms=5_000,
            freeze_s=16.0,
            broker_down_s=8.0,
            hostile_messages=100_000,
            max_rooms=5_000,
        )


#: broker-restart: seconds after the broker is back that the librdkafka half delivers its backlog
#: (within the worker's 10 s outage hold; over its 2 s grace)
SLOW_PRODUCER_BACK_S = 4.0


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
    #: platform leaderboard windows compared with the oracle, and those missing, extra, different or
    #: published twice (rows without hostile traffic or corrupted state; elsewhere not compared)
    leaderboards: int = 0
    leaderboard_wrong: int = 0
    restarts: int = 0
    restarts_allowed: int = 0
    ready_s: float = 0.0
    #: windows of rooms whose state was quarantined on purpose (not compared), and quarantined records
    not_compared: int = 0
    quarantined: int = 0
    #: hostile rows: bad messages sent, those not accounted for (not in the DLQ with their reason,
    #: nor where the row expects them), and the worker's peak RSS against the limit
    hostile_sent: int = 0
    unaccounted: int = 0
    peak_rss_mb: float = 0.0
    rss_limit_mb: float = 0.0
    notes: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        over = bool(self.rss_limit_mb) and self.peak_rss_mb > self.rss_limit_mb
        return not (
            self.missing
            or self.wrong
            or self.double_counted
            or self.unexpected
            or self.late_counted
            or self.duplicates
            or self.alerts_wrong
            or self.leaderboard_wrong
            or self.restarts > self.restarts_allowed
            or self.unaccounted
            or over
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

    async def restart(self, how: str, while_down: Callable[[], Awaitable[object]] | None = None) -> float:
        """Stop the worker (``kill`` or ``term``), run ``while_down()``, start a new one; seconds
        from the new start until it recovered."""
        self._paused = True
        if how == "kill":
            self.worker.kill()
        else:
            code = await asyncio.to_thread(self.worker.stop, 60)
            if code != 0:
                self.exit_codes.append(code)
        if while_down is not None:
            await while_down()
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


@dataclass
class SlowReconnect:
    """A producer that is cut off when ``down`` is set and delivers what it buffered (then goes
    on) once ``back`` is set."""

    down: asyncio.Event = field(default_factory=asyncio.Event)
    back: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def cut_off(self) -> bool:
        return self.down.is_set() and not self.back.is_set()


@dataclass
class Pace:
    """How far the honest traffic has been sent: the event time of the newest message handed to a
    producer, and how far behind the wall clock that ever was.

    On a loaded machine the sender's event loop falls behind (4 s measured with one core taken by
    another process): traffic stamped from the wall clock would then lead the honest events by
    more than the grace, and the worker would rightly count those late."""

    sent_ms: int = 0
    behind_s: float = 0.0

    def sent(self, ts_ms: int) -> None:
        self.sent_ms = ts_ms
        self.behind_s = max(self.behind_s, time.time() - ts_ms / 1000)

    def now_ms(self) -> int:
        """The honest traffic's present: the wall clock, or the newest event time sent if behind."""
        wall = int(time.time() * 1000)
        return min(wall, self.sent_ms) if self.sent_ms else wall


async def send_paced(
    bootstrap: str,
    inputs: Sequence[str],
    messages: MessageLog,
    *,
    librdkafka_share: float,
    seed: int,
    slow: SlowReconnect | None = None,
    pace: Pace | None = None,
) -> None:
    """Send each message when the wall clock reaches its event time.

    A ``librdkafka_share`` of the messages goes through a confluent-kafka
    producer that picks the partition itself (librdkafka's default partitioner);
    the rest through aiokafka onto the murmur2 partition. Both idempotent. With
    ``slow``, the librdkafka share is buffered while it is cut off. ``pace`` is
    told each message's event time as it is handed to a producer.
    """
    aio = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, linger_ms=5)
    await aio.start()
    rd = librdkafka_producer(bootstrap) if librdkafka_share > 0 else None
    rng = random.Random(seed)
    pending: list[asyncio.Future[Any]] = []
    buffered: list[tuple[str, bytes, bytes | None]] = []
    try:
        for source, partition, key, raw, ts, _ in messages.wire():
            ahead = ts / 1000 - time.time()
            if ahead > 0.005:
                if rd is not None:
                    rd.poll(0)
                await asyncio.sleep(ahead)
            if pace is not None:
                pace.sent(ts)
            if rd is not None and rng.random() < librdkafka_share:
                if slow is not None and slow.cut_off:
                    buffered.append((inputs[source], raw, key))
                    continue
                for args in buffered:
                    rd.produce(*args)
                buffered.clear()
                rd.produce(inputs[source], raw, key)
            else:
                pending.append(await aio.send(inputs[source], raw, key=key, partition=partition))
            if len(pending) > 2_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        if buffered and slow is not None and rd is not None:
            await slow.back.wait()
            for args in buffered:
                rd.produce(*args)
        if rd is not None:
            left = await asyncio.to_thread(rd.flush, 120)
            if left:
                raise RuntimeError(f"confluent-kafka producer could not deliver {left} messages")
    finally:
        await aio.stop()


def librdkafka_producer(bootstrap: str, *, compression: str = "lz4", linger_ms: int = 5) -> Any:
    """An idempotent confluent-kafka (librdkafka) producer: the fault suite's second client.

    It compresses with ``compression``, as many production producers do: the worker must decompress
    what it reads. librdkafka sends a batch uncompressed when compressing does not make it smaller,
    so at the suite's pace many may not be; the worker integration test (a longer linger, batches
    of many messages) checks compressed batches on the broker's disk."""
    from confluent_kafka import Producer  # only the fault suite and its tests need it

    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "linger.ms": linger_ms,
            "message.timeout.ms": 120_000,
            "compression.type": compression,
        }
    )


# -- hostile traffic ----------------------------------------------------------------------------

#: (i, now_ms) -> (source, room id, raw bytes, expected dead-letter reason or None)
MakeHostile = Callable[[int, int], tuple[int, str, bytes, str | None]]


@dataclass
class Hostile:
    """Bad traffic beside the honest: ``total`` messages (None: until stopped) at ``rate_per_s``
    from the wall time ``start_s``, made by ``make``; ``expected`` counts the reasons sent."""

    make: MakeHostile
    rate_per_s: float
    start_s: float
    total: int | None = None
    #: stop once the honest traffic is sent (else: once the comparison is done)
    stop_with_traffic: bool = True
    sent: int = 0
    expected: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)

    def send(self, bootstrap: str, inputs: Sequence[str], partitions: int) -> None:
        """Produce from this (worker) thread through librdkafka onto each room's murmur2 partition."""
        from streams.core import PartitionCache

        route = PartitionCache(partitions)
        producer = librdkafka_producer(bootstrap)
        time.sleep(max(0.0, self.start_s - time.time()))
        t0 = time.time()
        try:
            while not self.stop.is_set() and (self.total is None or self.sent < self.total):
                due = int((time.time() - t0) * self.rate_per_s) + 1
                if self.total is not None:
                    due = min(due, self.total)
                now_ms = int(time.time() * 1000)
                while self.sent < due:
                    source, room, raw, reason = self.make(self.sent, now_ms)
                    key = room.encode()
                    try:
                        producer.produce(inputs[source], raw, key, partition=route(room))
                    except BufferError:  # librdkafka's queue is full: let it drain
                        producer.poll(0.05)
                        continue
                    if reason is not None:
                        self.expected[reason] += 1
                    self.sent += 1
                producer.poll(0)
                time.sleep(0.005)
        finally:
            left = producer.flush(120)
        if left:
            raise RuntimeError(f"hostile producer could not deliver {left} messages")


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
        extra = (("LIVEPULSE_MAX_ROOMS", str(cfg.max_rooms)),) if name == "room-flood" else ()
        self.deployment = Deployment(
            bootstrap,
            self.inputs,
            f"f-{name}-{suffix}",
            cfg.partitions,
            cfg.window_ms,
            cfg.grace_ms,
            log_level="info",  # assignments, restores and fencing in the workers' logs
            extra_env=extra,
        )
        #: the frozen worker is fenced and exits (status 3) for its supervisor to restart; a broker
        #: outage may fail a commit the same way; anything else must not need a restart
        self.row = Row(name, restarts_allowed=1 if name in ("freeze", "broker-restart") else 0)
        self.workers: list[Supervisor] = []
        #: the corrupt-changelog scenario: the room whose state is lost, and when (wall ms)
        self.corrupted: str | None = None
        self.corrupted_span_ms = (0, 0)
        #: broker-restart: the librdkafka half comes back this long after the broker
        self.slow = SlowReconnect() if name == "broker-restart" else None

    async def run(self) -> Row:
        cfg = self.cfg
        await _warm_transactions(self.bootstrap)
        await ensure_topics(self.bootstrap, self.inputs, cfg.partitions)
        n_workers = 2 if self.name in ("freeze", "rolling") else 1
        self.workers = [Supervisor(self.deployment, self.log_dir, f"w{i}") for i in range(n_workers)]
        try:
            for sup in self.workers:
                await sup.worker.wait_ready()
            # stale-input: honest traffic without gifts, so the gift topic is the hostile input alone
            no_gifts = {"gift_share": 0.0} if self.name == "stale-input" else {}
            model = TrafficModel(
                TrafficConfig(
                    rooms=cfg.rooms,
                    users=50_000,
                    rate_per_s=cfg.rate_per_s,
                    partitions=cfg.partitions,
                    **no_gifts,
                ),
                seed=cfg.seed,
            )
            start_ms = int((time.time() + 2) * 1000)
            with no_gc():
                phase = model.phase(start_ms, cfg.seconds, realtime=True)
            self.row.events = phase.events
            share = 0.0 if self.name == "kill9-murmur2" or self.name in HOSTILE else 0.5
            pace = Pace()
            hostile = self._hostile(phase, model, start_ms, pace)
            async with Collector(
                self.bootstrap, self.deployment.topics, self.deployment.rollup_topics
            ) as collector:
                sending = asyncio.create_task(
                    send_paced(
                        self.bootstrap,
                        self.inputs,
                        phase.messages,
                        librdkafka_share=share,
                        seed=cfg.seed,
                        slow=self.slow,
                        pace=pace,
                    )
                )
                bad = None
                if hostile is not None:
                    bad = asyncio.create_task(
                        asyncio.to_thread(hostile.send, self.bootstrap, self.inputs, cfg.partitions)
                    )
                try:
                    await self._fault(start_ms)
                    await sending
                    if pace.behind_s > 1:
                        self.row.notes.append(f"honest traffic sent up to {pace.behind_s:.1f} s late")
                    if hostile is not None and bad is not None and hostile.stop_with_traffic:
                        hostile.stop.set()
                        await bad
                    truth = await self._settle(phase, collector)
                    # stale-input: every honest window must close while the stale input still sends
                    stalled = sum(1 for k in truth.windows if k not in collector.outputs.windows)
                    if hostile is not None and bad is not None:
                        hostile.stop.set()  # stale-input: its last windows closed with it still sending
                        await bad
                        await self._wait_dead_letters(hostile, collector.outputs)
                    expected = None
                    if hostile is not None:
                        expected = hostile.expected + Counter({"room_cap": int(self.name == "room-flood")})
                    await self._compare(truth, collector.outputs, expected)
                    if self.name == "stale-input" and stalled:
                        self.row.missing += stalled
                        self.row.notes.append(
                            f"{stalled} windows not closed while the stale input was sending"
                        )
                    if hostile is not None:
                        await self._account(hostile, collector.outputs)
                finally:
                    if hostile is not None and bad is not None:
                        hostile.stop.set()
                        await bad
        finally:
            for sup in self.workers:
                self.row.restarts += sup.restarts
                if self.name in HOSTILE:
                    self.row.peak_rss_mb = max(self.row.peak_rss_mb, sup.worker.peak_rss() / 2**20)
                await sup.close()
        return self.row

    def _hostile(self, phase: Phase, model: TrafficModel, start_ms: int, pace: Pace) -> Hostile | None:
        """The bad traffic of a hostile row (None for the other rows); ``pace`` follows the honest
        traffic's sending."""
        cfg, name = self.cfg, self.name
        if name not in HOSTILE:
            return None
        self.row.rss_limit_mb = cfg.rss_limit_mb
        rooms = model.room_ids
        start_s, end_s = start_ms / 1000, start_ms / 1000 + cfg.seconds
        if name == "clock-fast":

            def fast(i: int, now_ms: int) -> tuple[int, str, bytes, str | None]:
                room = rooms[i % len(rooms)]
                raw = orjson.dumps(
                    {"type": "heartbeat", "room_id": room, "user_id": "u-fast", "ts": now_ms + 240_000}
                )
                return VIEWER, room, raw, "ts_skew"

            return Hostile(fast, rate_per_s=50.0, start_s=start_s + 0.1 * cfg.seconds)
        if name == "stale-input":

            def stale(i: int, now_ms: int) -> tuple[int, str, bytes, str | None]:
                room = f"{HOSTILE_ROOM}stale-{i % 64}"
                gift = {
                    "gift_id": f"g-stale-{i}",
                    "room_id": room,
                    "user_id": "u-stale",
                    "ts": now_ms - 3_600_000,
                }
                return GIFT, room, orjson.dumps(gift | {"count": 1, "value_minor": 100}), None

            return Hostile(stale, rate_per_s=50.0, start_s=start_s, stop_with_traffic=False)
        if name == "malformed-flood":

            def bad(i: int, now_ms: int) -> tuple[int, str, bytes, str | None]:
                room = rooms[i % len(rooms)]
                source, raw, reason = malformed(i, room, now_ms)
                return source, room, raw, reason

            span = 0.7 * cfg.seconds
            return Hostile(
                bad, cfg.hostile_messages / span, start_s + 0.1 * cfg.seconds, cfg.hostile_messages
            )

        def flood(i: int, now_ms: int) -> tuple[int, str, bytes, str | None]:
            room = f"{HOSTILE_ROOM}flood-{i}"
            # 1 s behind the honest traffic sent so far (the wall clock, unless its sender is behind):
            # in time, within the 2 s grace of the honest traffic's pace, which it must not lead; a
            # late join would open no room
            join = {"type": "join", "room_id": room, "user_id": "u-flood", "ts": pace.now_ms() - 1_000}
            return VIEWER, room, orjson.dumps(join), None

        # The flood starts once every honest room has had its first event, so none meets a full task.
        first: dict[bytes, int] = {}
        for _, _, key, _, ts, _ in phase.messages.wire():
            first.setdefault(key, ts)
        begin = max(first.values()) / 1000 + 0.5
        span = max(1.0, end_s - 0.05 * cfg.seconds - begin)
        self.row.notes.append(f"flood from {begin - start_s:.1f} s")
        return Hostile(flood, cfg.hostile_messages / span, begin, cfg.hostile_messages)

    async def _wait_dead_letters(self, hostile: Hostile, out: Outputs, timeout_s: float = 180) -> None:
        """Wait until the DLQ holds as many letters as the bad messages sent should produce."""
        want = sum(hostile.expected.values())
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.name == "room-flood":
                opened = out.dlq_reasons.get("room_cap", 0) + len(_hostile_rooms(out))
                done = opened + await self._late(VIEWER) >= hostile.sent
            elif self.name == "stale-input":
                done = sum(s.gifts for s in _hostile_windows(out)) + await self._late(GIFT) >= hostile.sent
            else:
                done = sum(n for r, n in out.dlq_reasons.items() if r in hostile.expected) >= want
            if done:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)  # anything extra would arrive now

    async def _late(self, source: int) -> int:
        """Events of input ``source`` the workers counted late (``livepulse_events_late_total``).
        In the hostile rows no honest event is late (each row checks), so these are hostile ones.
        A late event of a room without state is counted there only: it opens no room."""
        key = f'livepulse_events_late_total{{topic="{self.inputs[source]}"}}'
        late = 0
        for sup in self.workers:
            late += int((await sup.worker.metrics()).get(key, 0))
        return late

    async def _account(self, hostile: Hostile, out: Outputs) -> None:
        """Every bad message where it belongs: in the DLQ with its reason, or (stale, flood) in its room
        or counted late."""
        row = self.row
        row.hostile_sent = hostile.sent
        hostile_windows = _hostile_windows(out)
        if self.name == "room-flood":
            opened = len(_hostile_rooms(out))
            capped = out.dlq_reasons.get("room_cap", 0)
            late = await self._late(VIEWER)
            row.unaccounted = abs(hostile.sent - opened - capped - late)
            row.notes.append(
                f"{opened:,} flood rooms opened, {capped:,} room_cap dead letters, {late:,} late"
            )
            if not capped:
                row.notes.append("the room cap was never reached")
                row.unaccounted += 1
            return
        if self.name == "stale-input":
            late = await self._late(GIFT)
            charged = sum(s.late_events for s in hostile_windows)
            applied = sum(s.gifts for s in hostile_windows)
            # Late once the input is found trailing; the first ones (before any watermark) are
            # applied to their own hour-old windows. Never anywhere else, and never lost. A late
            # one is charged to its room's window only while the room has state.
            row.notes.append(
                f"{late:,} of {hostile.sent:,} stale events late ({charged:,} charged to a room's window), "
                f"{applied} in their own windows"
            )
            row.unaccounted = abs(hostile.sent - late - applied) + (0 if late else 1) + (charged > late)
            return
        got = out.dlq_reasons
        row.unaccounted = sum(abs(got.get(r, 0) - n) for r, n in hostile.expected.items())
        row.notes.append(
            f"{len(hostile.expected)} reason codes, {sum(hostile.expected.values()):,} dead letters"
        )
        if row.unaccounted:
            row.examples.append(
                "dead letters (reason: expected/got) "
                + ", ".join(f"{r}: {n}/{got.get(r, 0)}" for r, n in sorted(hostile.expected.items()))
            )

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
            assert self.slow is not None
            self.slow.down.set()
            await asyncio.to_thread(stop_broker, self.broker)
            await asyncio.sleep(cfg.broker_down_s)
            before = await first.mark()
            await asyncio.to_thread(ensure_broker, self.broker)
            asyncio.get_running_loop().call_later(SLOW_PRODUCER_BACK_S, self.slow.back.set)
            row.ready_s = await first.recovered(time.monotonic(), before)
            row.notes.append(
                f"broker down {cfg.broker_down_s:.0f} s; "
                f"librdkafka half back {SLOW_PRODUCER_BACK_S:.0f} s later"
            )
        elif name == "corrupt-changelog":
            await self._at(start_ms, 0.45)
            killed_ms = int(time.time() * 1000)

            async def corrupt() -> None:
                self.corrupted = await self._corrupt_busiest_room()

            row.ready_s = await first.restart("kill", while_down=corrupt)
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
                key=room_key(room),
                partition=partition,
            )
        finally:
            await producer.stop()
        return room

    async def _settle(self, phase: Phase, collector: Collector) -> _truth.Truth:
        """Wait for the last windows (watermark by wall clock once traffic stops), compute the truth."""
        cfg = self.cfg
        rollups = short_rollup_windows(cfg.window_ms)
        truth = _truth.compute(
            [phase],
            partitions=cfg.partitions,
            window_ms=cfg.window_ms,
            grace_ms=cfg.grace_ms,
            rollup_windows_ms=rollups,
        )
        await collector.wait_for(set(truth.windows), timeout_s=(cfg.window_ms + cfg.grace_ms) / 1000 + 60)
        # the longest rollup closes up to its length after the last window (watermark by wall time)
        await collector.wait_for_rollups(set(truth.rollups), timeout_s=max(rollups) / 1000 + 30)
        if self._compares_leaderboard:
            await collector.wait_for_leaderboards(set(expected_leaderboards(truth.windows.values(), 1)), 30)
        await asyncio.sleep(2)  # anything extra (a duplicate, a stray window) would arrive now
        return truth

    @property
    def _compares_leaderboard(self) -> bool:
        """Hostile rooms and a room whose state was destroyed on purpose move the platform totals
        away from the honest truth: those rows do not compare the leaderboard."""
        return self.name not in HOSTILE and self.corrupted is None

    def _lost(self, key: tuple[str, int]) -> bool:
        """A window of the corrupted room that overlaps its loss (from the last commit before the
        kill until it restarted fresh): its state is gone by design, not compared."""
        start, end = self.corrupted_span_ms
        w = self.cfg.window_ms
        return key[0] == self.corrupted and key[1] + w > start - w and key[1] < end + w

    async def _compare(
        self, truth: _truth.Truth, out: Outputs, expected_dlq: Counter[str] | None = None
    ) -> None:
        row = self.row
        want = {k: v for k, v in truth.windows.items() if not self._lost(k)}
        # hostile rooms are accounted for by ``_account``; honest ones must match the truth exactly
        got = {
            k: v for k, v in out.windows.items() if not self._lost(k) and not k[0].startswith(HOSTILE_ROOM)
        }
        row.not_compared = len(truth.windows) - len(want)
        row.windows_expected = len(want)
        row.missing = sum(1 for k in want if k not in got)
        row.unexpected = sum(1 for k in got if k not in want)
        tally = UniqueTally()
        for key, expected in want.items():
            have = got.get(key)
            if have is None:
                continue
            fields = _EXACT
            if key[0] == self.corrupted:  # after the loss: joins - leaves restarted from zero
                fields = tuple(f for f in _EXACT if f != "concurrent_viewers")
            wrong = [f for f in fields if getattr(have, f) != getattr(expected, f)]
            if not tally.close(have.unique_viewers, expected.unique_viewers):
                wrong.append("unique_viewers")
            if wrong:
                row.wrong += 1
                if any(getattr(have, f) > getattr(expected, f) for f in wrong if f != "late_events"):
                    row.double_counted += 1
                if len(row.examples) < 5:
                    diff = ", ".join(f"{f} {getattr(expected, f)}->{getattr(have, f)}" for f in wrong)
                    row.examples.append(f"{key}: {diff}")
        row.wrong += len(out.conflicts)
        row.duplicates = out.duplicates + out.dlq_duplicates + out.rollup_duplicates
        # rollups and sessions: the hostile rooms and the corrupted one (its state is gone) left out
        longer = compare_sessions_and_rollups(
            truth, out, skip_room=lambda r: r == self.corrupted or r.startswith(HOSTILE_ROOM), tally=tally
        )
        row.missing += len(longer.missing)
        row.unexpected += len(longer.unexpected)
        row.wrong += len(longer.wrong) + longer.conflicts
        row.double_counted += longer.double_counted
        row.notes.append(
            f"{longer.rollups_expected} rollup windows and {longer.sessions_expected} sessions compared"
        )
        for failure in longer.failures(2):
            if len(row.examples) < 5:
                row.examples.append(failure)
        if (unique_failure := tally.failure()) is not None:
            row.wrong += tally.under
            row.examples.append(unique_failure)
        row.late_counted = sum(s.late_events for s in got.values())
        firing, _, problems = alert_keys(out)
        honest = lambda k: k[0] != self.corrupted and not k[0].startswith(HOSTILE_ROOM)  # noqa: E731
        published = {k for k in firing if honest(k)}
        expected_alerts = {k for k in truth.expected_alerts() if honest(k)}
        unexplained = published - truth.possible_alerts()
        row.alerts_wrong = (
            len(unexplained) + len(expected_alerts - published) + len(problems) + out.undecodable
        )
        if row.alerts_wrong:
            row.examples.append(
                f"alerts published only: {sorted(unexplained)[:3]}, "
                f"expected only: {sorted(expected_alerts - published)[:3]}"
            )
        if self._compares_leaderboard:
            want_boards = expected_leaderboards(truth.windows.values(), LEADERBOARD_SIZE)
            missing, unexpected, different, repeats = compare_leaderboards(want_boards, out)
            row.leaderboards = len(want_boards)
            row.leaderboard_wrong = len(missing) + len(unexpected) + len(different) + repeats
            if row.leaderboard_wrong:
                row.examples.extend(leaderboard_failures(want_boards, out, limit=3))
        row.quarantined = out.dlq_reasons.get("state_undecodable", 0)
        accounted = {"state_undecodable", *(expected_dlq or ())}
        other_dlq = {r: n for r, n in out.dlq_reasons.items() if r not in accounted}
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


def _hostile_windows(out: Outputs) -> list[RoomStats]:
    return [s for k, s in out.windows.items() if k[0].startswith(HOSTILE_ROOM)]


def _hostile_rooms(out: Outputs) -> set[str]:
    return {k[0] for k in out.windows if k[0].startswith(HOSTILE_ROOM)}


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
    "| alerts wrong | leaderboard windows / wrong | restarts | ready again (s) | bad sent | unaccounted "
    "| peak RSS (MB) | notes |"
    "\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
)


def format_row(row: Row) -> str:
    rss = f"{row.peak_rss_mb:.0f} / {row.rss_limit_mb:.0f}" if row.rss_limit_mb else ""
    boards = f"{row.leaderboards:,} / {row.leaderboard_wrong}" if row.leaderboards else "not compared"
    return (
        f"| {row.scenario} | {row.events:,} | {row.windows_expected:,} | {row.missing} | {row.wrong} "
        f"| {row.double_counted} | {row.unexpected} | {row.late_counted} | {row.duplicates} "
        f"| {row.alerts_wrong} | {boards} | {row.restarts} | {row.ready_s:.1f} | {row.hostile_sent:,} "
        f"| {row.unaccounted} | {rss} | {'; '.join(row.notes)} |"
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
