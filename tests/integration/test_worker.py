"""The worker on the real broker: oracle equality, kill -9, rebalancing, re-routing, dead letters."""

from __future__ import annotations

import asyncio
import base64
import itertools
import random
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic, RecordsToDelete
from aiokafka.errors import TopicAlreadyExistsError

from deploy.localkafka import Broker
from loadtest.oracle import (
    expected_leaderboards,
    expected_rollups,
    expected_sessions,
    expected_windows,
)
from loadtest.traffic import TrafficConfig, encode
from schemas import (
    Event,
    OrderEvent,
    RoomSession,
    RoomStats,
    ViewerEvent,
    decode_room_session,
    decode_room_stats,
    decode_viewer,
)
from tests.integration.kafkatools import await_leaders
from tests.integration.workers import (
    REPO,
    Deployment,
    Worker,
    batch_codecs,
    crc32_partitioner,
    eventually,
    free_port,
    model_events,
    produce,
    produce_in_transactions,
    produce_java,
    produce_librdkafka,
    produce_mixed,
    read_topic,
    records,
    room_stats_by_key,
)
from tests.records import assert_records_match

pytestmark = pytest.mark.integration

SOURCE = {"viewer": 0, "order": 1, "gift": 2}


def traffic(n: int, *, seed: int, rate_per_s: int, start_ms: int | None = None) -> list[tuple[str, Event]]:
    """``n`` events of the traffic model over 40 rooms, disorder well inside the grace period."""
    start = start_ms if start_ms is not None else int(time.time() * 1000) - 30_000
    config = TrafficConfig(rooms=40, users=500, rate_per_s=rate_per_s, disorder_share=1.0, disorder_ms=800)
    return list(itertools.islice(model_events(config, seed=seed, start_ms=start), n))


def retried(events: list[tuple[str, Event]]) -> int:
    """Order messages a client re-sent (same order and status): the worker drops them as duplicates."""
    orders = [(ev.order_id, ev.status) for _, ev in events if isinstance(ev, OrderEvent)]
    return len(orders) - len(set(orders))


def oracle(events: list[tuple[str, Event]], deployment: Deployment) -> dict[tuple[str, int], RoomStats]:
    offsets = dict.fromkeys(SOURCE, 0)
    stream = []
    for kind, ev in events:
        offsets[kind] += 1
        stream.append((SOURCE[kind], offsets[kind], ev))
    expected = expected_windows(
        stream, window_ms=deployment.window_ms, grace_ms=deployment.grace_ms, sources=SOURCE.values()
    )
    assert not any(s.late_events for s in expected.values()), "test traffic must not contain late events"
    return expected


async def collect(
    deployment: Deployment, expected: dict[tuple[str, int], RoomStats]
) -> dict[tuple[str, int], RoomStats]:
    values = await read_topic(
        deployment.bootstrap,
        deployment.topics.room_stats,
        until=lambda vs: len({(r["room_id"], r["window_start"]) for r in records(vs)}) >= len(expected),
    )
    return room_stats_by_key(values)


def assert_equal_to_oracle(
    got: dict[tuple[str, int], RoomStats], expected: dict[tuple[str, int], RoomStats]
) -> None:
    assert_records_match(got, expected)


async def assert_leaderboard_equal_to_oracle(
    deployment: Deployment, expected: dict[tuple[str, int], RoomStats]
) -> dict[int, dict[str, object]]:
    """Every window's platform leaderboard published once, equal to the oracle's; returns them."""
    want = expected_leaderboards(expected.values(), 100)
    assert len(want) >= 2
    topic = deployment.topics.leaderboard
    await read_topic(deployment.bootstrap, topic, until=lambda vs: len(vs) >= len(want))
    values = await read_topic(
        deployment.bootstrap, topic, until=lambda vs: False, timeout_s=4
    )  # + stragglers
    got = [orjson.loads(v) for v in values]
    assert [r["window_start"] for r in got] == sorted(want), "each window once, in window order"
    for record in got:
        assert record == want[record["window_start"]]
    return {r["window_start"]: r for r in got}


@pytest.fixture
def deployment(kafka_bootstrap: str) -> Deployment:
    return Deployment(kafka_bootstrap)


@pytest.fixture
def workers(deployment: Deployment, tmp_path: Path):  # type: ignore[no-untyped-def]
    started: list[Worker] = []

    def start(name: str = "worker") -> Worker:
        worker = Worker(deployment, tmp_path, name)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()


async def test_room_stats_equal_the_oracle(deployment: Deployment, workers) -> None:  # type: ignore[no-untyped-def]
    worker = workers()
    await worker.wait_ready()
    events = traffic(6_000, seed=1, rate_per_s=400)
    expected = oracle(events, deployment)
    await produce(deployment.bootstrap, deployment.topics, events, partitions=deployment.partitions)

    got = await collect(deployment, expected)

    assert_equal_to_oracle(got, expected)
    assert worker.metric("livepulse_events_applied_total") == len(events) - retried(events)
    assert worker.metric("livepulse_events_duplicate_total") == retried(events)
    assert worker.metric("livepulse_windows_emitted_total") >= len(expected)
    status, body = worker.get("/rooms/top?metric=gmv&n=3")
    assert status == 200 and len(orjson.loads(body)["rooms"]) == 3
    status, body = worker.get("/rooms/r0")  # the most popular room
    assert status == 200 and orjson.loads(body)["last_closed"]["room_id"] == "r0"
    assert worker.get("/rooms/no-such-room")[0] == 404
    assert worker.get("/healthz")[0] == 200
    boards = await assert_leaderboard_equal_to_oracle(deployment, expected)
    last = boards[max(boards)]
    await eventually(
        lambda: orjson.loads(worker.get("/leaderboard")[1]) == last, "/leaderboard serves the last"
    )
    first = min(boards)
    status, body = worker.get(f"/leaderboard?window_start={first}")
    assert status == 200 and orjson.loads(body) == boards[first]
    assert worker.metric("livepulse_platform_gmv_minor") == last["gmv_minor"]
    assert worker.metric("livepulse_platform_rooms_live") == last["rooms_live"]


async def test_a_backlog_sent_after_the_worker_sat_idle_on_empty_topics_is_counted(
    deployment: Deployment, workers
) -> None:  # type: ignore[no-untyped-def]
    """A deployment started before its producers: every input idle well past
    ``idle_partition_ms``, the tasks exchanging markers. Then half a minute of buffered events
    arrives at once. No task has seen an event, so no watermark ran on with the wall clock:
    every window is exact, nothing late (as it was, it all came late)."""
    worker = workers()
    await worker.wait_ready()
    await eventually(
        lambda: worker.metric("livepulse_assigned_partitions") == deployment.partitions, "assigned"
    )
    await asyncio.sleep(3 * 2.0)  # three times the default idle_partition_ms: every input idle
    events = traffic(4_000, seed=12, rate_per_s=400)
    expected = oracle(events, deployment)
    await produce(deployment.bootstrap, deployment.topics, events, partitions=deployment.partitions)

    got = await collect(deployment, expected)

    assert_equal_to_oracle(got, expected)
    assert worker.metric("livepulse_events_late_total") == 0


async def test_a_producer_clock_seconds_fast_makes_no_honest_event_late(
    deployment: Deployment, workers
) -> None:  # type: ignore[no-untyped-def]
    """One producer's clock runs 9 s fast (inside LIVEPULSE_MAX_FUTURE_MS, so its events are
    taken), another's is right; only the viewer topic is busy (orders and gifts idle), so nothing
    else holds the watermark. Event time alone put the watermark 3 s ahead of the wall clock and
    made every honest join late; the worker's watermark never passes the wall clock less grace.
    The grace is 6 s here, so an honest join 0.3 s old has 5.7 s to be read (a stalled CI
    machine must not make this test's joins late)."""
    deployment.grace_ms = 6_000
    worker = workers()
    await worker.wait_ready()
    honest: list[tuple[str, Event]] = []
    producer = AIOKafkaProducer(bootstrap_servers=deployment.bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        for i in range(200):  # 20 s, paced on the wall clock
            now = int(time.time() * 1000)
            right = ViewerEvent("join", f"h{i % 8}", f"u{i}", now - 300)
            fast = ViewerEvent("join", f"fast{i % 8}", f"v{i}", now + 9_000)
            honest.append(("viewer", right))
            for ev in (right, fast):
                await producer.send(deployment.topics.viewer, encode(ev), key=ev.room_id.encode())
            await asyncio.sleep(0.1)
        await producer.flush()
    finally:
        await producer.stop()
    expected = oracle(honest, deployment)

    values = await read_topic(
        deployment.bootstrap,
        deployment.topics.room_stats,
        until=lambda vs: set(expected) <= {(r["room_id"], r["window_start"]) for r in records(vs)},
    )
    got = room_stats_by_key(values)

    assert_equal_to_oracle({k: v for k, v in got.items() if k in expected}, expected)
    assert worker.metric("livepulse_events_late_total") == 0
    # the fast producer's joins are taken too (not ts_skew), in their own windows
    assert any(s.views for (room, _), s in got.items() if room.startswith("fast"))
    assert worker.metric("livepulse_events_applied_total") > len(honest)


async def test_kill_9_mid_stream_then_restart_gives_the_same_room_stats(
    deployment: Deployment, workers
) -> None:  # type: ignore[no-untyped-def]
    first = workers("first")
    await first.wait_ready()
    events = traffic(6_000, seed=2, rate_per_s=300)
    expected = oracle(events, deployment)
    producing = asyncio.create_task(
        produce(
            deployment.bootstrap, deployment.topics, events, partitions=deployment.partitions, pace_per_s=600
        )
    )
    await asyncio.sleep(4)  # a few checkpoints in, windows already emitted
    assert first.metric("livepulse_events_applied_total") > 0
    first.kill()
    second = workers("second")
    await second.wait_ready()
    await producing

    got = await collect(deployment, expected)

    assert_equal_to_oracle(got, expected)  # duplicates allowed only as identical records (collect checks)
    assert second.metric("livepulse_restore_seconds_count") == deployment.partitions
    await assert_leaderboard_equal_to_oracle(deployment, expected)  # none lost, none twice


ROLLUPS_MS = (20_000, 30_000)


async def test_kill_9_mid_session_leaves_rollups_and_sessions_exact(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    rollups = ",".join(map(str, ROLLUPS_MS))
    # each boundary's records and checkpoint written a few records at a time (a slice of 2 KB),
    # each slice sent before the next: a restart from a checkpoint written so is exact too
    env = {"LIVEPULSE_ROLLUP_WINDOWS_MS": rollups, "LIVEPULSE_OUTPUT_SLICE_BYTES": "2048"}
    deployment = Deployment(kafka_bootstrap, extra_env=env)
    started: list[Worker] = []
    try:
        started.append(first := Worker(deployment, tmp_path, "first"))
        await first.wait_ready()
        events = traffic(6_000, seed=4, rate_per_s=300)
        stream = _stream(events)
        window, grace = deployment.window_ms, deployment.grace_ms
        want_rollups = expected_rollups(
            stream, window_ms=window, grace_ms=grace, lengths_ms=ROLLUPS_MS, sources=SOURCE.values()
        )
        want_sessions = expected_sessions(
            stream,
            window_ms=window,
            grace_ms=grace,
            bucket_ms=1_000,
            gap_ms=1_800_000,
            sources=SOURCE.values(),
        )
        assert all(s.status == "live" for s in want_sessions.values())
        producing = asyncio.create_task(
            produce(
                deployment.bootstrap,
                deployment.topics,
                events,
                partitions=deployment.partitions,
                pace_per_s=600,
            )
        )
        await asyncio.sleep(4)  # mid-session: checkpoints committed, windows and session records out
        assert first.metric("livepulse_events_applied_total") > 0
        first.kill()
        started.append(second := Worker(deployment, tmp_path, "second"))
        await second.wait_ready()
        await producing

        got_rollups: dict[tuple[int, str, int], RoomStats] = {}
        for length in ROLLUPS_MS:
            n = sum(k[0] == length for k in want_rollups)

            def enough(vs: list[bytes], n: int = n) -> bool:
                return len({(r["room_id"], r["window_start"]) for r in records(vs)}) >= n

            values = await read_topic(deployment.bootstrap, deployment.topics.rollup(length), until=enough)
            for raw in values:
                stats = decode_room_stats(raw)
                key = (length, stats.room_id, stats.window_start)
                assert got_rollups.setdefault(key, stats) == stats, f"{key} published twice, differently"
        assert_records_match(got_rollups, want_rollups)

        def sessions(values: list[bytes]) -> dict[tuple[str, int], RoomSession]:
            latest = {}
            for raw in values:
                session = decode_room_session(raw)
                latest[(session.room_id, session.session_start)] = session
            return latest

        values = await read_topic(
            deployment.bootstrap,
            deployment.topics.room_sessions,
            until=lambda vs: (
                {k: s.updated_at for k, s in sessions(vs).items()}
                == {k: s.updated_at for k, s in want_sessions.items()}
            ),
        )
        got_sessions = sessions(values)
        assert_records_match(got_sessions, want_sessions)
        status, body = second.get("/rooms/r0")
        assert status == 200 and orjson.loads(body)["session"]["status"] == "live"
    finally:
        for worker in started:
            worker.kill()


def _stream(events: list[tuple[str, Event]]) -> list[tuple[int, int, Event]]:
    offsets = dict.fromkeys(SOURCE, 0)
    stream = []
    for kind, ev in events:
        offsets[kind] += 1
        stream.append((SOURCE[kind], offsets[kind], ev))
    return stream


async def test_two_workers_split_partitions_and_hand_over_state(deployment: Deployment, workers) -> None:  # type: ignore[no-untyped-def]
    a = workers("a")
    await a.wait_ready()
    events = traffic(9_000, seed=3, rate_per_s=300)
    expected = oracle(events, deployment)
    producing = asyncio.create_task(
        produce(
            deployment.bootstrap, deployment.topics, events, partitions=deployment.partitions, pace_per_s=600
        )
    )
    b = workers("b")
    await b.wait_ready()
    await eventually(lambda: _partitions(b) and _partitions(a), "both workers own partitions")
    assert sorted(_partitions(a) + _partitions(b)) == list(range(deployment.partitions))
    without_merge = a if 0 not in _partitions(a) else b
    assert b"livepulse_platform_" not in without_merge.get("/metrics")[1]  # no stale totals elsewhere
    # a rebalance is no broker outage: no watermark is held for outage_hold_ms after it
    assert a.metric("livepulse_watermark_holds_total") == 0

    assert await asyncio.to_thread(a.stop) == 0  # graceful: checkpoint, commit, leave the group
    await eventually(lambda: _partitions(b) == list(range(deployment.partitions)), "b owns every partition")
    await producing

    got = await collect(deployment, expected)

    assert_equal_to_oracle(got, expected)
    await assert_leaderboard_equal_to_oracle(deployment, expected)  # the merge moved with task 0
    assert b.metric("livepulse_platform_rooms_live") > 0  # b runs task 0 now, hence the merge
    assert b.metric("livepulse_watermark_holds_total") == 0


async def test_events_from_a_non_murmur2_partitioner_still_aggregate_per_room(
    deployment: Deployment, workers
) -> None:  # type: ignore[no-untyped-def]
    worker = workers()
    await worker.wait_ready()
    events = traffic(4_000, seed=4, rate_per_s=400)
    expected = oracle(events, deployment)
    # Live traffic (paced): re-routing adds milliseconds, well inside the grace period.
    await produce(
        deployment.bootstrap,
        deployment.topics,
        events,
        partitions=deployment.partitions,
        partitioner=crc32_partitioner,
        pace_per_s=800,
    )

    got = await collect(deployment, expected)

    print(
        {
            m: worker.metric(f"livepulse_events_{m}_total")
            for m in ("late", "applied", "rerouted", "replayed", "consumed")
        }
    )
    assert_equal_to_oracle(got, expected)
    assert worker.metric("livepulse_events_rerouted_total") > 0
    assert worker.metric("livepulse_events_applied_total") == len(events) - retried(events)


async def test_compressed_batches_from_librdkafka_aggregate_like_plain_ones(
    deployment: Deployment, workers, kafka_broker: Broker
) -> None:  # type: ignore[no-untyped-def]
    """Producers compress: librdkafka with lz4 (viewer), zstd (order) and snappy (gift), codecs
    the consumer must decode (aiokafka needs cramjam for all three)."""
    worker = workers()
    await worker.wait_ready()
    events = traffic(4_000, seed=6, rate_per_s=400)
    expected = oracle(events, deployment)
    codecs = {"viewer": "lz4", "order": "zstd", "gift": "snappy"}
    await asyncio.to_thread(
        produce_librdkafka,
        deployment.bootstrap,
        deployment.topics,
        events,
        partitions=deployment.partitions,
        compression=codecs,
    )

    got = await collect(deployment, expected)

    assert_equal_to_oracle(got, expected)
    assert worker.metric("livepulse_events_applied_total") == len(events) - retried(events)
    # the batches the worker read were compressed with each codec (the broker keeps the producer's)
    log_dir = kafka_broker.settings.work_dir / "data"
    for kind, code in (("viewer", 3), ("order", 4), ("gift", 2)):
        codecs = batch_codecs(log_dir, getattr(deployment.topics, kind))
        assert codecs[code] > 0 and codecs[code] >= codecs[0], (kind, codecs)


async def test_events_from_the_java_client_aggregate_like_any_other(
    deployment: Deployment, workers, kafka_broker: Broker
) -> None:  # type: ignore[no-untyped-def]
    """The reference client with its defaults (idempotent, its own partitioner for keyed records)
    and gzip: every event lands where the worker expects it (nothing re-routed), windows exact."""
    worker = workers()
    await worker.wait_ready()
    events = traffic(4_000, seed=10, rate_per_s=400)
    expected = oracle(events, deployment)
    sent = await asyncio.to_thread(
        produce_java,
        deployment.bootstrap,
        deployment.topics,
        events,
        lib_dir=kafka_broker.settings.lib_dir,
        compression="gzip",
    )
    assert sent == len(events)

    got = await collect(deployment, expected)

    assert_equal_to_oracle(got, expected)
    assert worker.metric("livepulse_events_applied_total") == len(events) - retried(events)
    assert worker.metric("livepulse_events_rerouted_total") == 0
    log_dir = kafka_broker.settings.work_dir / "data"
    codecs = batch_codecs(log_dir, deployment.topics.viewer)
    assert codecs[1] > 0 and codecs[1] >= codecs[0], codecs  # gzip (1), as the Java client sent it


async def test_upstream_transactions_held_open_lose_no_event_and_aborted_ones_count_nothing(
    deployment: Deployment, workers
) -> None:  # type: ignore[no-untyped-def]
    """A transactional upstream (Flink's exactly-once sink commits once per checkpoint) keeps its
    records past the last stable offset for seconds: a ``read_committed`` reader sees nothing new
    and is at the last stable offset, yet those events are on their way. They must hold the
    watermark (not count late when the commit comes), and an aborted transaction counts nothing."""
    worker = workers()
    await worker.wait_ready()
    window = deployment.window_ms
    start = (int(time.time() * 1000) - 60_000) // window * window
    events = traffic(6_400, seed=8, rate_per_s=400, start_ms=start)  # 16 s of event time
    first, second = events[:3_200], events[3_200:]
    aborted = traffic(1_000, seed=9, rate_per_s=400, start_ms=start + 8_000)
    expected = oracle(events, deployment)
    # While the second transaction is open (9 s) every input is caught up with its last stable
    # offset: were that taken for silence, event time would move on with the clock from ~start + 8 s
    # and the window [start, start + 10 s) would close before the second half of its events came.
    await produce_in_transactions(
        deployment.bootstrap,
        deployment.topics,
        [(first, True, 0.0), (aborted, False, 1.0), (second, True, 9.0)],
        partitions=deployment.partitions,
    )

    got = await collect(deployment, expected)

    assert worker.metric("livepulse_events_late_total") == 0
    assert_equal_to_oracle(got, expected)
    assert worker.metric("livepulse_events_applied_total") == len(events) - retried(events)


async def test_an_input_recreated_below_the_recorded_offsets_resumes_at_its_end_and_counts_new_events(
    deployment: Deployment, workers
) -> None:  # type: ignore[no-untyped-def]
    """The viewer topic is deleted and recreated while the worker is down (as after a disaster
    recovery), so its log ends below the offsets the changelog recorded. The restarted worker says
    so, resumes at the log end and counts what comes next; it must not drop new records as
    replays of offsets the state already holds, nor re-read the log waiting to reach them."""
    now_ms = int(time.time() * 1000)
    window = deployment.window_ms
    before = traffic(2_000, seed=11, rate_per_s=400, start_ms=(now_ms - 80_000) // window * window)
    after = traffic(600, seed=12, rate_per_s=400, start_ms=(now_ms - 40_000) // window * window)
    first = workers("first")
    await first.wait_ready()
    await produce(deployment.bootstrap, deployment.topics, before, partitions=deployment.partitions)
    await collect(deployment, oracle(before, deployment))
    assert await asyncio.to_thread(first.stop) == 0  # checkpointed: the changelog holds the viewer offsets

    viewer = deployment.topics.viewer
    admin = AIOKafkaAdminClient(bootstrap_servers=deployment.bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([viewer])
        async with asyncio.timeout(60):
            while True:  # a topic marked for deletion cannot be created again yet
                try:
                    await admin.create_topics([NewTopic(viewer, deployment.partitions, 1)])
                    break
                except TopicAlreadyExistsError:
                    await asyncio.sleep(0.5)
        await await_leaders(admin, viewer, deployment.partitions)
    finally:
        await admin.close()
    second = workers("second")
    await second.wait_ready()
    await produce(deployment.bootstrap, deployment.topics, after, partitions=deployment.partitions)

    # the rooms carry state across the restart (concurrent viewers): the oracle sees both halves
    fresh = oracle(after, deployment)
    expected = {key: stats for key, stats in oracle(before + after, deployment).items() if key in fresh}
    values = await read_topic(
        deployment.bootstrap,
        deployment.topics.room_stats,
        until=lambda vs: set(expected) <= {(r["room_id"], r["window_start"]) for r in records(vs)},
    )
    got = {key: stats for key, stats in room_stats_by_key(values).items() if key in expected}
    assert_equal_to_oracle(got, expected)
    assert second.metric("livepulse_inputs_rebased_total", topic=viewer) == deployment.partitions
    assert second.metric("livepulse_events_replayed_total") == 0
    assert "the log was truncated" in second.tail(200)


async def test_input_records_deleted_before_they_were_read_are_counted_and_reading_goes_on(
    deployment: Deployment, workers
) -> None:  # type: ignore[no-untyped-def]
    """Viewer records written while the worker is down are deleted (retention, or an operator's
    delete-records) before it reads them: its recorded positions are below the logs' start. The
    restarted worker says so, counts them (``livepulse_input_records_expired_total``) and reads
    on from the start; before, the client reset to the start without a word."""
    now_ms = int(time.time() * 1000)
    window = deployment.window_ms
    before = traffic(1_500, seed=21, rate_per_s=400, start_ms=(now_ms - 80_000) // window * window)
    gone = [
        (k, ev) for k, ev in traffic(700, seed=22, rate_per_s=400, start_ms=now_ms - 60_000) if k == "viewer"
    ]
    after = traffic(600, seed=23, rate_per_s=400, start_ms=(now_ms - 40_000) // window * window)
    first = workers("first")
    await first.wait_ready()
    await produce(deployment.bootstrap, deployment.topics, before, partitions=deployment.partitions)
    await collect(deployment, oracle(before, deployment))
    assert await asyncio.to_thread(first.stop) == 0  # checkpointed: the changelog holds the viewer offsets

    await produce(deployment.bootstrap, deployment.topics, gone, partitions=deployment.partitions)
    viewer = deployment.topics.viewer
    tps = [TopicPartition(viewer, p) for p in range(deployment.partitions)]
    admin = AIOKafkaAdminClient(bootstrap_servers=deployment.bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=deployment.bootstrap)
    await admin.start()
    await consumer.start()
    try:
        ends = await consumer.end_offsets(tps)
        await admin.delete_records({tp: RecordsToDelete(ends[tp]) for tp in tps})
    finally:
        await consumer.stop()
        await admin.close()
    second = workers("second")
    await second.wait_ready()
    await produce(deployment.bootstrap, deployment.topics, after, partitions=deployment.partitions)

    fresh = oracle(after, deployment)
    expected = {key: stats for key, stats in oracle(before + after, deployment).items() if key in fresh}
    values = await read_topic(
        deployment.bootstrap,
        deployment.topics.room_stats,
        until=lambda vs: set(expected) <= {(r["room_id"], r["window_start"]) for r in records(vs)},
    )
    got = {key: stats for key, stats in room_stats_by_key(values).items() if key in expected}
    assert_equal_to_oracle(got, expected)
    assert second.metric("livepulse_input_records_expired_total", topic=viewer) == len(gone)
    assert "were deleted (retention) before this worker read them" in second.tail(200)


def malformed(rng: random.Random, now_ms: int) -> list[bytes]:
    good = {"type": "join", "room_id": "room-1", "user_id": "u", "ts": now_ms}
    out = [
        rng.randbytes(rng.randint(1, 300)),
        b"",
        b"[1,2,3]",
        b'"just a string"',
        orjson.dumps({**good, "ts": str(now_ms)}),
        orjson.dumps({**good, "ts": True}),
        orjson.dumps({**good, "room_id": "r" * 129}),
        orjson.dumps({**good, "user_id": ""}),
        orjson.dumps({**good, "type": "teleport"}),
        orjson.dumps({k: v for k, v in good.items() if k != "user_id"}),
        orjson.dumps({**good, "ts": now_ms + 86_400_000}),
        b"[" * 5_000 + b"]" * 5_000,
        orjson.dumps({**good, "pad": "x" * 20_000}),
    ]
    return out


async def test_malformed_flood_goes_to_the_dead_letter_topic_with_reasons(
    deployment: Deployment, workers
) -> None:  # type: ignore[no-untyped-def]
    worker = workers()
    await worker.wait_ready()
    rng = random.Random(5)
    now_ms = int(time.time() * 1000)
    good = traffic(1_500, seed=5, rate_per_s=200)
    expected = oracle(good, deployment)
    bad = [raw for _ in range(40) for raw in malformed(rng, now_ms)]
    want_reasons = sorted(_reason(raw, now_ms) for raw in bad)

    # The bad interleaved with the good on the viewer topic; order/gift stay clean. One producer
    # sends all of it in event order: a second one, started after the first had sent the whole
    # viewer backlog, left it to timing whether the worker saw the orders before the viewers'
    # newest events made them late.
    topics = deployment.topics
    mixed: list[tuple[str, bytes | None, bytes]] = [
        (getattr(topics, kind), ev.room_id.encode(), encode(ev)) for kind, ev in good
    ]
    for raw in bad:
        mixed.insert(rng.randrange(len(mixed) + 1), (topics.viewer, b"room-1", raw))
    await produce_mixed(deployment.bootstrap, mixed)

    letters = await read_topic(
        deployment.bootstrap, deployment.topics.dlq, until=lambda vs: len(vs) >= len(bad)
    )
    got = await collect(deployment, expected)

    assert sorted(r["reason"] for r in records(letters)) == want_reasons
    for letter in records(letters):
        assert letter["topic"] == deployment.topics.viewer
        kept = base64.b64decode(str(letter["raw_b64"]))
        assert any(raw.startswith(kept) and len(raw) == letter["raw_len"] for raw in bad)
    assert worker.metric("livepulse_events_invalid_total") == len(bad)
    for reason in set(want_reasons):
        assert worker.metric("livepulse_events_invalid_total", reason=reason) == want_reasons.count(reason)
    assert worker.metric("livepulse_events_applied_total") == len(good) - retried(good)
    assert_equal_to_oracle(got, expected)
    assert worker.get("/healthz")[0] == 200


def _reason(raw: bytes, now_ms: int) -> str:
    result = decode_viewer(raw, now_ms)
    assert not isinstance(result, tuple) or type(result).__name__ == "Invalid", raw[:50]
    return str(result.reason)  # type: ignore[union-attr]


def _partitions(worker: Worker) -> list[int]:
    status, body = worker.get("/readyz")
    return list(orjson.loads(body)["partitions"]) if status == 200 else []


async def test_worker_refuses_inputs_that_are_not_co_partitioned(
    deployment: Deployment, tmp_path: Path
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=deployment.bootstrap)
    await admin.start()
    try:
        t = deployment.topics
        await admin.create_topics([NewTopic(t.viewer, 4, 1), NewTopic(t.order, 3, 1), NewTopic(t.gift, 4, 1)])
    finally:
        await admin.close()
    env = {**deployment.env(free_port()), "LIVEPULSE_CREATE_TOPICS": "false"}
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "streams", "worker"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert f"input topics are not co-partitioned: {t.viewer}=4, {t.order}=3, {t.gift}=4" in result.stderr


@pytest.mark.parametrize("rooms, rate", [(40, 200), (30_000, 2_000)], ids=["few-rooms", "many-rooms"])
async def test_windows_closed_while_caught_up_are_committed_at_once(  # type: ignore[no-untyped-def]
    deployment: Deployment, workers, rooms: int, rate: int
) -> None:
    """Outputs are visible to read_committed readers only at a checkpoint's commit, and a task's
    watermark follows the other tasks' frontier markers, which come with their commits. With a
    commit interval of 20 s, live windows must still close within a few seconds of their end +
    grace and be readable within a few seconds of closing: caught up, a round that moved a frontier
    past a window's end or closed windows commits at once. (Without that each waits for the
    periodic commit: 20 s.)

    With many rooms, more than ``PROMPT_COMMIT_MAX_ROOMS`` are changed when a boundary comes, so
    the whole worker does not commit early: each task that closed windows commits its own
    transaction at once (``DataPlane._commit_task``)."""
    deployment.extra_env["LIVEPULSE_COMMIT_INTERVAL_MS"] = "20000"
    worker = workers()
    await worker.wait_ready()
    config = TrafficConfig(rooms=rooms, users=max(500, 2 * rooms), rate_per_s=rate)
    events = model_events(config, seed=11, start_ms=int(time.time() * 1000))
    live = list(itertools.islice(events, rate * 38))  # 38 s of event time from now
    consumer = AIOKafkaConsumer(
        deployment.topics.room_stats,
        bootstrap_servers=deployment.bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        isolation_level="read_committed",
    )
    await consumer.start()
    #: window start -> the most seconds between the worker closing one of its records (the record's
    #: timestamp) and the reader first seeing it
    waited: dict[int, float] = {}
    #: window start -> the most seconds from the moment its end + grace passed to its close
    closed_after: dict[int, float] = {}
    due_s = (deployment.window_ms + deployment.grace_ms) / 1000

    async def read() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            now = time.time()
            for messages in batch.values():
                for m in messages:
                    ws = decode_room_stats(m.value).window_start
                    waited[ws] = max(waited.get(ws, 0.0), now - m.timestamp / 1000)
                    late_s = m.timestamp / 1000 - (ws / 1000 + due_s)
                    closed_after[ws] = max(closed_after.get(ws, 0.0), late_s)

    reading = asyncio.create_task(read())
    try:
        # sent as it happens: each event when the wall clock reaches its time
        await produce(
            deployment.bootstrap, deployment.topics, live, partitions=deployment.partitions, pace_per_s=rate
        )
        await eventually(lambda: len(waited) >= 3, "three windows read", timeout_s=30)
    finally:
        reading.cancel()
        await consumer.stop()
    assert len(waited) >= 3, waited
    assert max(waited.values()) < 5.0, waited
    assert max(closed_after.values()) < 5.0, closed_after


RATE = 500


async def test_inputs_paused_for_running_ahead_in_a_backlog_lose_nothing(
    deployment: Deployment, workers
) -> None:  # type: ignore[no-untyped-def]
    """Watermark alignment on the real client: in a catch-up an input more than
    ``LIVEPULSE_MAX_SOURCE_DRIFT_MS`` ahead of the input or task its watermark waits for is paused
    (the client drops what it prefetched for it) and resumed once that catches up. Inputs were
    paused here, and every window is still exact: nothing dropped, skipped or read twice."""
    deployment.extra_env["LIVEPULSE_MAX_SOURCE_DRIFT_MS"] = "10000"
    first = workers("first")
    await first.wait_ready()  # topics made; then gone, so that the events wait as a backlog
    first.kill()
    start_ms = int(time.time() * 1000) - 3_600_000
    events = traffic(RATE * 300, seed=7, rate_per_s=RATE, start_ms=start_ms)
    # Gifts begin 200 s into the backlog: each task reads its gift input's first events 200 s of
    # event time ahead of its viewer input, which forces a hold however the fetches interleave.
    events = [(kind, ev) for kind, ev in events if kind != "gift" or ev.ts >= start_ms + 200_000]
    expected = oracle(events, deployment)
    await produce(deployment.bootstrap, deployment.topics, events, partitions=deployment.partitions)
    second = workers("second")
    await second.wait_ready()

    got = await collect(deployment, expected)

    assert_equal_to_oracle(got, expected)
    assert second.metric("livepulse_input_holds_total") > 0
    assert second.metric("livepulse_events_applied_total") == len(events) - retried(events)
    await eventually(lambda: second.metric("livepulse_inputs_held") == 0, "every input read again")
