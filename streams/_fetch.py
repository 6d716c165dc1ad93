"""The data plane's fetched records read natively (issue 13).

aiokafka hands every fetched record over as a ``ConsumerRecord``: a C record object, its key
and value copied out as ``bytes``, a dataclass built in Python and a generator step, about
1.6-2 µs a record on the build machine (``loadtest/RESULTS.md``, session 35), most of what a
plain consumer loop costs. :class:`NativeFetch` takes the same fetch responses from the
consumer's fetcher and reads them natively (``_fastcore.FetchedRecords``, ``fetched.rs``):
each partition's records come as a ``RecordRun``, whose values the fused decoder reads in
place (``NativeRooms.apply_raw``) and which anything else reads as a sequence of messages.

Everything but the reading of records stays aiokafka's: fetch requests and sessions, the
position (advanced as its ``FetchResult`` does), errors (raised as its ``fetched_records``
raises them), rebalances. A response that is not all v2 uncompressed batches (a producer that
compresses, an old message format) is read by aiokafka as before, record by record.

The fetcher does not keep a response's bytes: :func:`keep_fetched_bytes` has it build its
record sets as :class:`KeptRecords`, aiokafka's own ``MemoryRecords`` with the bytes kept
beside it, the same for every other reader (the installation is process-wide, and changes
nothing for consumers that do not read through :class:`NativeFetch`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.consumer import fetcher as _fetcher
from aiokafka.errors import ConsumerStoppedError, CorruptRecordException
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from ._swap import swap_class
from .core import _fastcore  # type: ignore[attr-defined]

FetchedRecords: Any = _fastcore.FetchedRecords
RecordRun: Any = _fastcore.RecordRun


class KeptRecords:
    """aiokafka's ``MemoryRecords`` of a fetch response, with the response's bytes (``raw``)."""

    __slots__ = ("_records", "raw")

    def __init__(self, bytes_data: bytes) -> None:
        self.raw = bytes_data
        self._records = MemoryRecords(bytes_data)

    def size_in_bytes(self) -> int:
        return int(self._records.size_in_bytes())

    def has_next(self) -> bool:
        return bool(self._records.has_next())

    def next_batch(self) -> Any:
        return self._records.next_batch()


def keep_fetched_bytes() -> bool:
    """Have aiokafka's fetcher keep the bytes of its responses (:class:`KeptRecords`); False when
    its fetcher is not the one this was written against (then nothing is read natively)."""
    return swap_class(_fetcher, "MemoryRecords", MemoryRecords, KeptRecords)


class NativeFetch:
    """``getmany`` for one consumer, whose fetched v2 uncompressed responses come as
    ``RecordRun`` objects rather than lists of ``ConsumerRecord``."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer
        #: the response being read per partition, and its reader
        self._reading: dict[TopicPartition, tuple[Any, Any]] = {}

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, Sequence[Any]]:
        """What ``AIOKafkaConsumer.getmany(timeout_ms=..., max_records=...)`` returns, read natively
        where it can be: up to ``max_records`` records of the responses already fetched, or, if
        there are none, of those that arrive within ``timeout_ms``."""
        consumer: Any = self._consumer
        if consumer._closed:
            raise ConsumerStoppedError()
        fetcher = consumer._fetcher
        consumer._coordinator.check_errors()  # as getmany does
        deadline = time.monotonic() + timeout_ms / 1000
        with consumer._subscription.fetch_context():
            while True:
                if fetcher._subscriptions.reassignment_in_progress:
                    await fetcher._subscriptions.wait_for_assignment()
                drained = self._drain(fetcher, max_records)
                left = deadline - time.monotonic()
                if drained or left <= 0:
                    return drained
                waiter = fetcher._create_fetch_waiter()
                done, pending = await asyncio.wait([waiter], timeout=left)
                if not done or fetcher._closed:
                    for future in pending:
                        future.cancel()
                    return {}
                waiter.result()  # authorization errors

    def _drain(self, fetcher: Any, max_records: int) -> dict[TopicPartition, Sequence[Any]]:
        """``Fetcher.fetched_records``' drain, each response read natively where it can be."""
        records = fetcher._records
        for tp in [tp for tp, (result, _) in self._reading.items() if records.get(tp) is not result]:
            del self._reading[tp]  # dropped by the fetcher itself (a seek, a reset, a lost assignment)
        drained: dict[TopicPartition, Sequence[Any]] = {}
        left = max_records
        for tp in list(records):
            result = records[tp]
            if type(result) is not _fetcher.FetchResult:
                if drained:
                    return drained  # the error is raised at the next call, as aiokafka does
                self._forget(fetcher, tp)
                result.check_raise()
                continue
            taken = self._take(fetcher, tp, result, left)
            if not result.has_more():
                self._forget(fetcher, tp)
            if taken:
                drained[tp] = taken
                left -= len(taken)
                if left <= 0:
                    break
        return drained

    def _forget(self, fetcher: Any, tp: TopicPartition) -> None:
        """Drop ``tp``'s result from ``fetcher``, which then fetches the partition again from its
        position (as aiokafka's ``fetched_records`` does with a result read or failed)."""
        del fetcher._records[tp]
        self._reading.pop(tp, None)
        fetcher._notify(fetcher._wait_consume_future)

    def _take(self, fetcher: Any, tp: TopicPartition, result: Any, max_records: int) -> Sequence[Any]:
        """Up to ``max_records`` records of ``result``, a ``FetchResult``: natively, or as aiokafka
        reads them (the response is not all v2 uncompressed batches, or was not kept)."""
        reading = self._reading.get(tp)
        if reading is None or reading[0] is not result:
            reading = (result, self._reader(result))
            self._reading[tp] = reading
        reader = reading[1]
        if reader is None:
            return result.getall(max_records)  # type: ignore[no-any-return]
        if not result.check_assignment(tp):  # unassigned or paused, or sought elsewhere
            return []
        try:
            run = reader.take(max_records)
        except ValueError as exc:
            # A corrupt response. Dropped, with its position as it was: the partition is fetched
            # again from there and the error comes back, as aiokafka's reader does.
            self._forget(fetcher, tp)
            raise CorruptRecordException(f"{tp.topic}[{tp.partition}]: {exc}") from exc
        partition_records = result._partition_records
        partition_records.next_fetch_offset = reader.next_offset
        result._update_position()
        if reader.exhausted:
            result._partition_records = None
        return run  # type: ignore[no-any-return]

    @staticmethod
    def _reader(result: Any) -> Any:
        """A native reader of ``result``'s response, or None: aiokafka reads it."""
        partition_records = result._partition_records
        kept = getattr(partition_records, "_records", None)
        if type(kept) is not KeptRecords or type(kept.raw) is not bytes:
            return None
        aborted = [(int(producer), int(first)) for producer, first in partition_records._aborted_transactions]
        try:
            reader = FetchedRecords(
                kept.raw,
                partition_records.next_fetch_offset,
                aborted,
                partition_records._isolation_level == _fetcher.READ_COMMITTED,
                bool(partition_records._check_crcs),
            )
        except ValueError:  # not all v2 uncompressed batches (``readable``, checked once, there)
            return None
        # aiokafka's record generator is never started now. Unstarted, it holds its
        # PartitionRecords (and the response's bytes) in a reference cycle that only the cyclic
        # collector frees, which runs seldom when few Python objects are made: +110 MB of
        # responses held at 100 000 rooms before this line. aiokafka breaks the cycle when the
        # generator ends; an empty one in its place reads as ended.
        partition_records._records_iterator = iter(())
        return reader
