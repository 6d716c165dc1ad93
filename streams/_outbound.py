"""Batch-first publishing: records gather per (topic, partition) and go out as whole batches.

The batches are written natively (``_fastcore.Outbox``, ``streams/native/src/batches.rs``: the
same bytes as aiokafka's builder, without a Python call a record for what the native room table
writes) unless the producer compresses or serializes, when aiokafka's own builder writes them.
``send`` hands the gathered batches to the producer without waiting for the
broker; ``flush`` waits until every batch handed over so far is acknowledged
and raises if any failed. The checkpoint protocol is built on the two.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.producer.message_accumulator import BatchBuilder

from .core import _fastcore  # type: ignore[attr-defined]

Headers = Sequence[tuple[str, bytes]]

_NO_HEADERS: list[tuple[str, bytes]] = []  # passed for a record without headers; never changed


def append_record(
    builder: BatchBuilder, key: bytes | None, value: bytes | None, headers: Headers = ()
) -> bool:
    """Append one record (timestamp: now) to an aiokafka producer batch; False if it is full.

    The same record as ``builder.append(key=..., value=..., timestamp=None, headers=...)``, whose
    keyword arguments, serializer dispatch and header copy cost about 1 µs a record, twice what
    the compiled record builder under it takes (a window boundary at 100 000 rooms writes five
    records per room). This calls that builder directly; a batch made with serializers takes the
    public method. It relies on the internals of aiokafka's batch as of 0.14 (the project pins
    <0.15; another version's would fail here loudly, not build other records)."""
    if builder._key_serializer is not None or builder._value_serializer is not None:
        return builder.append(key=key, value=value, timestamp=None, headers=list(headers)) is not None
    if builder._closed:
        return False
    listed = list(headers) if headers else _NO_HEADERS
    if builder._builder.append(builder._relative_offset, None, key, value, listed) is None:
        builder.close()
        return False
    builder._relative_offset += 1
    return True


def native_outbox(producer: AIOKafkaProducer) -> Any:
    """A native outbox writing the batches ``producer.create_batch()`` would (its batch size, its
    transactional flag), or None when that producer compresses or serializes records. Relies on
    aiokafka 0.14's accumulator, as ``append_record`` does on its batch."""
    accumulator = producer._message_accumulator
    if accumulator._compression_type or producer._key_serializer or producer._value_serializer:
        return None
    txn = accumulator._txn_manager
    return _fastcore.Outbox(accumulator._batch_size, txn is not None and txn.transactional_id is not None)


class Outbound:
    """Accumulates records and publishes them in producer batches.

    ``outbox``: the native outbox the records go to (with ``native``, unless the producer
    compresses or serializes; None: aiokafka's builders, in Python), which the native room table
    writes into directly. ``acked``: called as each batch is acknowledged (or fails)."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        *,
        native: bool = True,
        acked: Callable[[asyncio.Future[Any]], object] | None = None,
    ) -> None:
        self._producer = producer
        self._acked = acked
        self._open: dict[tuple[str, int], Any] = {}
        self._full: list[tuple[str, int, Any]] = []
        self._in_flight: list[asyncio.Future[Any]] = []
        self.outbox = native_outbox(producer) if native else None
        if self.outbox is not None:
            self.add = self.outbox.add  # type: ignore[method-assign]

    def add(
        self, topic: str, partition: int, key: bytes | None, value: bytes | None, headers: Headers = ()
    ) -> None:
        builder = self._open.get((topic, partition))
        if builder is None:
            builder = self._open[(topic, partition)] = self._producer.create_batch()
        if not append_record(builder, key, value, headers):
            self._full.append((topic, partition, builder))
            builder = self._open[(topic, partition)] = self._producer.create_batch()
            if not append_record(builder, key, value, headers):
                raise ValueError(f"record for {topic} too large for one producer batch")

    @property
    def pending(self) -> bool:
        native = self.outbox is not None and self.outbox.pending
        return bool(native or self._open or self._full or self._in_flight)

    async def send(self) -> None:
        """Hand every gathered batch to the producer (does not wait for acknowledgement)."""
        batches = self._full + [(topic, partition, b) for (topic, partition), b in self._open.items()]
        self._full, self._open = [], {}
        if self.outbox is not None:
            batches += self.outbox.take()
        for topic, partition, builder in batches:
            if builder.record_count():
                future = await self._producer.send_batch(builder, topic, partition=partition)
                if self._acked is not None:
                    future.add_done_callback(self._acked)
                self._in_flight.append(future)

    async def flush(self) -> None:
        """Send what is gathered and wait until the broker acknowledged all of it."""
        await self.send()
        in_flight, self._in_flight = self._in_flight, []
        if in_flight:
            await asyncio.gather(*in_flight)
