"""Batch-first publishing: records gather per (topic, partition) and go out as whole batches.

The batches are written natively (``_fastcore.Outbox``, ``streams/native/src/batches.rs``: the
same bytes as aiokafka's builder, without a Python call a record for what the native room table
writes) unless the producer compresses or serializes, when aiokafka's own builder writes them.
``send`` hands the gathered batches to the producer without waiting for the
broker; ``flush`` waits until every batch handed over so far is acknowledged
and raises if any failed. The checkpoint protocol is built on the two.

aiokafka encodes a produce request field by field, each level joining the bytes of the one
below: a batch's bytes are copied five times before the connection frames them (1.6 ms for a
1.3 MB request offline; in a 100 000-room catch-up the produce send path took 0.54 s of CPU
with it, 0.35 s without; ``loadtest/RESULTS.md``, session 37).
:func:`join_produce_requests` has it write the same bytes in one join.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.producer import sender as _sender
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.protocol.produce import ProduceRequest, ProduceRequest_v3

from ._swap import swap_class
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


_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_ACKS_TIMEOUT = struct.Struct(">hi")
_PARTITION_SIZE = struct.Struct(">ii")


def _string(text: str | None) -> bytes:
    if text is None:
        return _I16.pack(-1)
    encoded = text.encode("utf-8")
    return _I16.pack(len(encoded)) + encoded


def _encode_joined(request: Any) -> bytes:
    """A v3-v7 produce request's bytes (the schema those versions share), written in one join."""
    topics = request.topics
    parts = [
        _string(request.transactional_id),
        _ACKS_TIMEOUT.pack(request.required_acks, request.timeout),
        _I32.pack(-1 if topics is None else len(topics)),  # a null array: -1
    ]
    for topic, partitions in topics or ():
        parts.append(_string(topic))
        parts.append(_I32.pack(-1 if partitions is None else len(partitions)))
        for partition, records in partitions or ():
            if records is None:
                parts.append(_PARTITION_SIZE.pack(partition, -1))
            else:
                parts.append(_PARTITION_SIZE.pack(partition, len(records)))
                parts.append(records)
    return b"".join(parts)


#: each produce request version with the v3 schema, its encoding joined (by its own class)
_JOINED: dict[type, type] = {
    cls: type(cls.__name__, (cls,), {"encode": _encode_joined, "__module__": __name__})
    for cls in ProduceRequest._CLASSES
    if cls.SCHEMA is ProduceRequest_v3.SCHEMA
}


class JoinedProduceRequest(ProduceRequest):  # type: ignore[misc]
    """aiokafka's ``ProduceRequest``, its v3-v7 structs encoded by :func:`_encode_joined`."""

    def build(self, request_struct_class: Any) -> Any:
        return super().build(_JOINED.get(request_struct_class, request_struct_class))


def join_produce_requests() -> bool:
    """Have aiokafka's producers write their produce requests in one join (the same bytes,
    ``tests/unit/test_native_batches.py``); False when its sender is not the one this was written
    against (aiokafka 0.14), then nothing changes. Process-wide, as ``_fetch.keep_fetched_bytes``."""
    return swap_class(_sender, "ProduceRequest", ProduceRequest, JoinedProduceRequest)


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
        #: batches handed to the producer and not yet acknowledged, oldest first, with their bytes
        self._in_flight: deque[tuple[asyncio.Future[Any], int]] = deque()
        self._in_flight_bytes = 0
        self.outbox = native_outbox(producer) if native else None
        if native:
            join_produce_requests()
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
                size = builder.size()
                future = await self._producer.send_batch(builder, topic, partition=partition)
                if self._acked is not None:
                    future.add_done_callback(self._acked)
                self._in_flight.append((future, size))
                self._in_flight_bytes += size

    async def settle(self, limit: int) -> None:
        """Send what is gathered, then wait until at most ``limit`` bytes of what was sent are
        unacknowledged (the oldest batches first); raises if one of those failed. Records
        written in slices (a window boundary's) wait here between slices, so the producer
        holds about two slices, not all of them."""
        await self.send()
        while self._in_flight and self._in_flight_bytes > limit:
            future, size = self._in_flight.popleft()
            self._in_flight_bytes -= size
            await future

    async def flush(self) -> None:
        """Send what is gathered and wait until the broker acknowledged all of it."""
        await self.send()
        in_flight, self._in_flight = self._in_flight, deque()
        self._in_flight_bytes = 0
        if in_flight:
            await asyncio.gather(*(future for future, _ in in_flight))
