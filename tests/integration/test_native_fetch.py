"""Fetch responses read natively (``streams._fetch.NativeFetch``) against aiokafka's ``getmany``,
on the real broker: the same records, in the same order, at the same positions.

The topic holds what the data plane meets: plain batches, transactions committed and aborted
(read_committed skips the aborted ones and every control batch), and batches compressed by
a producer that compresses, which aiokafka reads record by record in its stead.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from streams import _fetch
from tests.integration.kafkatools import TopicFactory

pytestmark = pytest.mark.integration


async def _write(bootstrap: str, topic: str) -> set[bytes]:
    """Writes the topic; returns the values a read_committed reader must see."""
    visible: set[bytes] = set()
    plain = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    gzip = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type="gzip", linger_ms=20)
    txn = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"t-{uuid.uuid4().hex[:8]}")
    for producer in (plain, gzip, txn):
        await producer.start()
    try:
        for round_ in range(4):
            sends = []
            for i in range(60):
                value = f"plain-{round_}-{i}".encode()
                sends.append(await plain.send(topic, value, key=f"k{i % 7}".encode(), partition=i % 2))
                visible.add(value)
            for i in range(40):
                value = f"gzip-{round_}-{i}".encode()
                headers = [("h", b"x")] if i % 3 == 0 else None
                sends.append(await gzip.send(topic, value, partition=i % 2, headers=headers))
                visible.add(value)
            await asyncio.gather(*sends)
            for outcome in ("commit", "abort"):
                await txn.begin_transaction()
                for i in range(30):
                    value = f"txn-{outcome}-{round_}-{i}".encode()
                    await txn.send_and_wait(topic, value, partition=i % 2)
                    if outcome == "commit":
                        visible.add(value)
                if outcome == "commit":
                    await txn.commit_transaction()
                else:
                    await txn.abort_transaction()
    finally:
        for producer in (plain, gzip, txn):
            await producer.stop()
    return visible


async def _read(
    bootstrap: str, topic: str, *, native: bool, max_records: int
) -> dict[int, list[tuple[Any, ...]]]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"g-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=2048,  # many small responses, some cut mid-batch
    )
    if native:
        assert _fetch.keep_fetched_bytes()
    await consumer.start()
    fetch = _fetch.NativeFetch(consumer)
    got: dict[int, list[tuple[Any, ...]]] = {0: [], 1: []}
    kinds: set[str] = set()
    try:
        idle = 0
        while idle < 6:
            if native:
                batches = await fetch.getmany(500, max_records)
            else:
                batches = await consumer.getmany(timeout_ms=500, max_records=max_records)
            idle = 0 if batches else idle + 1
            for tp, messages in batches.items():
                assert len(messages) <= max_records
                kinds.add(type(messages).__name__)
                got[tp.partition] += [(m.offset, m.key, m.value, tuple(m.headers or ())) for m in messages]
        for partition in (0, 1):  # positions agree with what was handed over, control batches passed
            tp = TopicPartition(topic, partition)
            assert await consumer.position(tp) == (await consumer.end_offsets([tp]))[tp]
    finally:
        await consumer.stop()
    if native:
        assert kinds == {"RecordRun", "list"}, kinds  # both readers met: plain and compressed responses
    return got


@pytest.mark.parametrize("max_records", [7, 10_000])
async def test_native_reads_what_aiokafka_reads(
    kafka_bootstrap: str, create_topic: TopicFactory, max_records: int
) -> None:
    topic = await create_topic(partitions=2)
    visible = await _write(kafka_bootstrap, topic)
    plain = await _read(kafka_bootstrap, topic, native=False, max_records=max_records)
    native = await _read(kafka_bootstrap, topic, native=True, max_records=max_records)
    assert native == plain
    assert {value for records in native.values() for _, _, value, _ in records} == visible
