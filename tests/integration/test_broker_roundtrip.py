"""Round trip through the real broker: keyed produce, group consume, Java-compatible partitioning."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from loadtest.traffic import encode
from schemas import ViewerEvent, decode_viewer
from streams.settings import Settings
from tests.integration.kafkatools import TopicFactory

pytestmark = pytest.mark.integration

# Partition of each room on a 3-partition topic, computed with the Java client's
# Utils.toPositive(Utils.murmur2(key)) % 3: the design expects rooms there.
JAVA_PARTITION = {
    "room-1": 0,
    "room-2": 0,
    "room-3": 1,
    "room-4": 2,
    "room-5": 2,
    "room-6": 2,
    "room-7": 0,
    "room-8": 2,
}
PER_ROOM = 25


async def test_keyed_messages_come_back_on_their_java_partition(
    kafka_bootstrap: str, create_topic: TopicFactory
) -> None:
    topic = await create_topic(partitions=3)
    now_ms = int(time.time() * 1000)
    sent = [
        ViewerEvent("join", room, f"user-{i}", now_ms + i) for room in JAVA_PARTITION for i in range(PER_ROOM)
    ]

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(topic, encode(e), key=e.room_id.encode()) for e in sent]
        acked = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    assert {m.partition for m in acked} == {0, 1, 2}

    received = await _consume(kafka_bootstrap, topic, len(sent))

    assert len(received) == len(sent)
    by_room: dict[str, list[ViewerEvent]] = defaultdict(list)
    for key, partition, value in received:
        event = decode_viewer(value, now_ms)
        assert isinstance(event, ViewerEvent), event
        assert key == event.room_id.encode()
        assert partition == JAVA_PARTITION[event.room_id]
        by_room[event.room_id].append(event)
    # Within a partition order is kept, so each room's events arrive in send order.
    for room, events in by_room.items():
        assert events == [e for e in sent if e.room_id == room]


async def _consume(bootstrap: str, topic: str, expected: int) -> list[tuple[bytes, int, bytes]]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"test-{uuid.uuid4().hex[:10]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    received: list[tuple[bytes, int, bytes]] = []
    try:
        deadline = time.monotonic() + 30
        while len(received) < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                received += [(r.key, r.partition, r.value) for r in records]
    finally:
        await consumer.stop()
    return received


async def test_a_record_batch_larger_than_the_workers_fetch_size_is_read_whole(
    kafka_bootstrap: str, create_topic: TopicFactory
) -> None:
    """The worker fetches ``fetch_partition_bytes`` (1 MiB) per partition; a producer may write
    one record batch larger than that (a topic allowing bigger messages, a large ``batch.size``).
    The broker returns such a batch whole (KIP-74), and the consumer must take it, not skip it."""
    fetch_bytes = Settings().fetch_partition_bytes
    topic = await create_topic(config={"max.message.bytes": str(4 * fetch_bytes)})
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap,
        acks="all",
        linger_ms=1_000,
        max_batch_size=3 * fetch_bytes,
        max_request_size=4 * fetch_bytes,
    )
    await producer.start()
    try:
        batch = producer.create_batch()
        value, n = b"x" * 1_000, 0
        while batch.append(key=None, value=value, timestamp=None) is not None:
            n += 1
        assert n * len(value) > 2 * fetch_bytes  # one batch of more than twice the fetch size
        await (await producer.send_batch(batch, topic, partition=0))
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"test-{uuid.uuid4().hex[:10]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=fetch_bytes,
    )
    await consumer.start()
    received = 0
    try:
        deadline = time.monotonic() + 30
        while received < n and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            received += sum(len(records) for records in batches.values())
    finally:
        await consumer.stop()
    assert received == n
