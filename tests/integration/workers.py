"""Run real ``livepulse worker`` processes against the test broker, and read their outputs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
import uuid
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.record.memory_records import MemoryRecords

from deploy.localkafka import java_binary
from loadtest.deployment import WorkerProcess
from loadtest.deployment import free_port as free_port  # re-exported for the tests
from loadtest.faults import librdkafka_producer
from loadtest.traffic import SOURCE_NAMES, TrafficConfig, TrafficModel, encode
from schemas import Event, RoomStats, decode_room_stats
from streams.core import partition_for
from streams.settings import Topics

REPO = Path(__file__).resolve().parents[2]
JAVA_PRODUCER = Path(__file__).with_name("JavaProducer.java")


@dataclass
class Deployment:
    """A set of unique topic names and an app id: one isolated livepulse deployment."""

    bootstrap: str
    partitions: int = 4
    window_ms: int = 10_000
    grace_ms: int = 3_000
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def topics(self) -> Topics:
        s = self.suffix
        return Topics(
            viewer=f"it.viewer.{s}",
            order=f"it.order.{s}",
            gift=f"it.gift.{s}",
            room_stats=f"it.room-stats.{s}",
            room_sessions=f"it.room-sessions.{s}",
            alerts=f"it.alerts.{s}",
            dlq=f"it.dlq.{s}",
            repartition=f"it.repartition.{s}",
            changelog=f"it.changelog.{s}",
            control=f"it.rules.{s}",
            leaderboard=f"it.leaderboard.{s}",
            leaderboard_partials=f"it.leaderboard-partials.{s}",
        )

    def env(self, web_port: int, data_dir: Path | None = None) -> dict[str, str]:
        t = self.topics
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEPULSE_")}
        env.update(
            LIVEPULSE_BROKERS=self.bootstrap,
            LIVEPULSE_APP_ID=f"it-{self.suffix}",
            LIVEPULSE_WEB_PORT=str(web_port),
            LIVEPULSE_PARTITIONS=str(self.partitions),
            LIVEPULSE_WINDOW_MS=str(self.window_ms),
            LIVEPULSE_GRACE_MS=str(self.grace_ms),
            LIVEPULSE_COMMIT_INTERVAL_MS="500",
            **{f"LIVEPULSE_TOPIC_{name.upper()}": getattr(t, name) for name in Topics.__dataclass_fields__},
        )
        if data_dir is not None:
            env["LIVEPULSE_DATA_DIR"] = str(data_dir)
        env.update(self.extra_env)
        return env


class Worker(WorkerProcess):
    """One ``python -m streams worker`` (the load test's process handling) with metric look-ups for tests."""

    def __init__(self, deployment: Deployment, log_dir: Path, name: str = "worker") -> None:
        super().__init__(deployment, log_dir, f"{name}-{uuid.uuid4().hex[:6]}")  # type: ignore[arg-type]

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        _, body = self.get("/metrics")
        total = 0.0
        for line in body.decode().splitlines():
            if not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            metric_name, _, label_text = head.partition("{")
            if metric_name != name:
                continue
            if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
                total += float(value)
        return total


def murmur2_partitioner(room_id: str, partitions: int) -> int:
    """The Java client's default (what aiokafka does for keyed records)."""
    return partition_for(room_id.encode(), partitions)


def crc32_partitioner(room_id: str, partitions: int) -> int:
    """librdkafka's default for keyed records (confluent-kafka's ``consistent_random``)."""
    return zlib.crc32(room_id.encode()) % partitions


async def produce(
    bootstrap: str,
    topics: Topics,
    events: Iterable[tuple[str, Event]],
    *,
    partitions: int,
    partitioner: object = murmur2_partitioner,
    pace_per_s: float | None = None,
) -> int:
    """Send ``(kind, event)`` pairs (kind: viewer, order, gift) with an explicit partitioner."""
    choose = partitioner if callable(partitioner) else murmur2_partitioner
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    sent = 0
    started = time.monotonic()
    try:
        for kind, event in events:
            await _send(producer, topics, kind, event, choose(event.room_id, partitions))
            sent += 1
            if pace_per_s and sent % 50 == 0:
                ahead = sent / pace_per_s - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def _send(producer: AIOKafkaProducer, topics: Topics, kind: str, event: Event, partition: int) -> None:
    await producer.send(getattr(topics, kind), encode(event), key=event.room_id.encode(), partition=partition)


async def produce_in_transactions(
    bootstrap: str,
    topics: Topics,
    transactions: Iterable[tuple[list[tuple[str, Event]], bool, float]],
    *,
    partitions: int,
) -> None:
    """A transactional upstream (as Kafka Streams or Flink under exactly-once write): for each
    ``(events, commit, hold_s)`` one transaction sends the events (murmur2 partitions), flushes them
    to the log, keeps the transaction open ``hold_s`` seconds, then commits or aborts it."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"upstream-{uuid.uuid4().hex}")
    await producer.start()
    try:
        for events, commit, hold_s in transactions:
            await producer.begin_transaction()
            for kind, event in events:
                await _send(producer, topics, kind, event, murmur2_partitioner(event.room_id, partitions))
            await producer.flush()  # in the log, past the last stable offset, until the end
            await asyncio.sleep(hold_s)
            await (producer.commit_transaction() if commit else producer.abort_transaction())
    finally:
        await producer.stop()


def produce_librdkafka(
    bootstrap: str,
    topics: Topics,
    events: Iterable[tuple[str, Event]],
    *,
    partitions: int,
    compression: Mapping[str, str],
) -> int:
    """Send ``(kind, event)`` pairs through librdkafka (confluent-kafka), one producer per kind
    with that kind's ``compression.type`` (none, gzip, snappy, lz4, zstd), onto murmur2 partitions."""
    failed: list[object] = []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            failed.append(err)

    # a long linger makes batches of many messages: librdkafka sends a batch uncompressed when
    # compressing does not make it smaller, as with one or two small messages
    producers = {
        kind: librdkafka_producer(bootstrap, compression=codec, linger_ms=50)
        for kind, codec in compression.items()
    }
    sent = 0
    for kind, event in events:
        producer = producers[kind]
        producer.produce(
            getattr(topics, kind),
            encode(event),
            key=event.room_id.encode(),
            partition=murmur2_partitioner(event.room_id, partitions),
            on_delivery=delivered,
        )
        producer.poll(0)
        sent += 1
    for kind, producer in producers.items():
        left = producer.flush(60)
        if left:
            raise RuntimeError(f"librdkafka could not deliver {left} {kind} messages")
    if failed:
        raise RuntimeError(f"librdkafka failed {len(failed)} deliveries, e.g. {failed[0]}")
    return sent


def produce_java(
    bootstrap: str, topics: Topics, events: Iterable[tuple[str, Event]], *, lib_dir: Path, compression: str
) -> int:
    """Send ``(kind, event)`` pairs through the Java client (``JavaProducer.java``, run on the
    broker's jars): its default partitioner places keyed records, not ours."""
    lines = b"".join(
        b"%s\t%s\t%s\n" % (getattr(topics, kind).encode(), event.room_id.encode(), encode(event))
        for kind, event in events
    )
    done = subprocess.run(
        [java_binary(), "-cp", f"{lib_dir}/*", str(JAVA_PRODUCER), bootstrap, compression, "20"],
        input=lines,
        capture_output=True,
        timeout=180,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"the Java producer failed: {done.stderr.decode(errors='replace')[-2000:]}")
    return int(done.stdout)


def batch_codecs(log_dir: Path, topic: str) -> Counter[int]:
    """Record batches per compression codec (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd) in ``topic``'s
    log segments on the broker's disk, as the broker stored what the producers sent."""
    codecs: Counter[int] = Counter()
    for segment in sorted(log_dir.glob(f"{topic}-*/*.log")):
        records = MemoryRecords(segment.read_bytes())
        while (batch := records.next_batch()) is not None:
            codecs[batch.compression_type] += 1
    return codecs


def model_events(config: TrafficConfig, *, seed: int, start_ms: int) -> Iterator[tuple[str, Event]]:
    """The traffic model's events from ``start_ms`` on as ``(kind, event)`` pairs, endlessly."""
    for messages in TrafficModel(config, seed=seed).ticks(start_ms):
        for source, _, _, _, _, event in messages:
            assert event is not None  # the base mix has no malformed messages
            yield SOURCE_NAMES[source], event


async def produce_raw(
    bootstrap: str, topic: str, messages: Iterable[tuple[bytes | None, bytes | None]]
) -> None:
    await produce_mixed(bootstrap, ((topic, key, value) for key, value in messages))


async def produce_mixed(bootstrap: str, messages: Iterable[tuple[str, bytes | None, bytes | None]]) -> None:
    """Send ``(topic, key, value)`` in order through one producer (keyed records by murmur2)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=4 * 1024 * 1024
    )
    await producer.start()
    try:
        for topic, key, value in messages:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def read_topic(bootstrap: str, topic: str, *, until: object, timeout_s: float = 90) -> list[bytes]:
    """Values of ``topic`` from the beginning, read until ``until(values)`` is true or the time is up."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        isolation_level="read_committed",  # the worker writes in transactions
    )
    await consumer.start()
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                values.extend(m.value for m in messages)
            if callable(until) and until(values):
                break
    finally:
        await consumer.stop()
    return values


def room_stats_by_key(values: Iterable[bytes]) -> dict[tuple[str, int], RoomStats]:
    """Room-stats keyed by (room_id, window_start); a repeated key must repeat the same record."""
    out: dict[tuple[str, int], RoomStats] = {}
    for raw in values:
        stats = decode_room_stats(raw)
        key = (stats.room_id, stats.window_start)
        previous = out.setdefault(key, stats)
        assert previous == stats, f"two different records for {key}: {previous} != {stats}"
    return out


def records(values: Iterable[bytes]) -> Iterator[dict[str, object]]:
    for raw in values:
        yield orjson.loads(raw)


async def eventually(condition: Callable[[], bool], what: str, timeout_s: float = 90) -> None:
    """Poll ``condition`` (in a thread: it may block on HTTP) until true, or fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await asyncio.to_thread(condition):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out waiting until {what}")


@contextlib.asynccontextmanager
async def late_relay(target: str, delay_s: float) -> AsyncIterator[str]:
    """A TCP relay to ``target`` ("host:port") that starts listening only ``delay_s`` after entry
    (brokers that are not up yet); yields its own "host:port"."""
    host, port = target.rsplit(":", 1)
    relay_port = free_port()
    writers: list[asyncio.StreamWriter] = []

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.close()
            return
        writers.append(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def open_late() -> asyncio.Server:
        await asyncio.sleep(delay_s)
        return await asyncio.start_server(relay, "127.0.0.1", relay_port)

    opening = asyncio.create_task(open_late())
    try:
        yield f"127.0.0.1:{relay_port}"
    finally:
        if not opening.done():
            opening.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            server = await opening
            server.close()
        for writer in writers:  # connections a client left open
            writer.close()
