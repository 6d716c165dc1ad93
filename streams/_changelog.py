"""The compacted room-state changelog: partition ``p`` holds the state of task ``p``.

Written only inside the task's transactions (``streams._transactions``) and
read back ``read_committed``: a restore sees exactly the committed
checkpoints, never the writes of a transaction that was aborted or fenced.
"""

from __future__ import annotations

import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from .exceptions import InfrastructureError
from .settings import Settings

log = logging.getLogger(__name__)

#: a restore that reads nothing for this long fails (the worker exits and is restarted)
STALL_S = 60.0


async def read_partition(
    settings: Settings, partition: int
) -> tuple[list[tuple[bytes, bytes | None]], dict[bytes, int], float]:
    """The latest committed record of each key of one changelog partition (a tombstone as ``None``),
    keys in the order of their first record; each key's latest offset; and the seconds it took.

    Older records of a key are dropped as they are read: the log is compacted only now and then,
    and a restore that held every record read would hold every checkpoint since (several times
    the state).

    Call it after the task's producer started: that fenced the previous owner
    and ended its open transaction, so the last stable offset is the log end.
    """
    started = time.perf_counter()
    tp = TopicPartition(settings.topics.changelog, partition)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.brokers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        **settings.security.client_kwargs(),
    )
    await consumer.start()
    latest: dict[bytes, bytes | None] = {}
    offsets: dict[bytes, int] = {}
    try:
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        await consumer.seek_to_beginning(tp)
        position, progressed = await consumer.position(tp), time.monotonic()
        while position < end:
            batch = await consumer.getmany(tp, timeout_ms=1_000, max_records=50_000)
            now_position = await consumer.position(tp)
            if now_position > position:
                position, progressed = now_position, time.monotonic()
            elif time.monotonic() - progressed > STALL_S:
                raise InfrastructureError(
                    f"restoring {tp.topic}[{partition}] made no progress for {STALL_S:.0f} s "
                    f"at offset {position} of {end}"
                )
            for message in batch.get(tp, ()):
                if message.key is not None:
                    latest[message.key] = message.value
                    offsets[message.key] = message.offset
    finally:
        await consumer.stop()
    return list(latest.items()), offsets, time.perf_counter() - started
