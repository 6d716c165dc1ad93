"""One transactional producer per task: a task's writes and its input offsets commit together or not at all.

This is Kafka Streams' exactly-once design (one transactional id per task):
everything task ``p`` writes — room-stats, alerts, dead letters, events
re-routed to other tasks, their watermark markers, changelog records — goes
out inside the task's current transaction, and each checkpoint adds the
task's input offsets to it and commits. Starting the producer registers the
transactional id ``<app_id>-task-<p>`` with the broker, which fences any
older producer with the same id (a worker that lost the partition, frozen or
partitioned away) and aborts its open transaction: a zombie can no longer
write state, outputs or offsets. Readers use ``read_committed``.

A transaction is always open between checkpoints (begun right after the
previous commit); the broker sees it only once something is written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, KafkaTimeoutError

from ._errors import kafka_errors
from ._outbound import Outbound
from ._topology import MAX_RECORD_BYTES
from .exceptions import InfrastructureError

log = logging.getLogger(__name__)

#: the most a task's producer may take to get its producer id (see ``TaskProducer.start``)
START_TIMEOUT_S = 60.0


def transactional_id(app_id: str, partition: int) -> str:
    return f"{app_id}-task-{partition}"


class BrokerSilence:
    """The longest time the worker waited on the broker without a word from it, since ``take``.

    A wait (``waiting``: a send, a checkpoint's commit) is silent from its start or the last
    response (``heard``: a batch acknowledged, a transaction step done) to the next response or
    its end. An unreachable broker answers nothing until it is back; a slow one answers request
    by request: a catch-up's first checkpoint at 100 000 rooms writes ~120 000 changelog
    records, and a broker sharing two cores with the worker took over 2 s to take them while
    acknowledging every batch (session 36). Work of the worker's own inside a wait (another
    task's staging, side by side in one checkpoint) is no silence: a wait's start counts as a
    response."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._waits = 0
        self._since = 0.0
        self._longest = 0.0

    @contextmanager
    def waiting(self) -> Iterator[None]:
        self._waits += 1
        self._since = self._clock()
        try:
            yield
        finally:
            self.heard()
            self._waits -= 1

    def heard(self) -> None:
        """The broker answered."""
        now = self._clock()
        if self._waits:
            self._longest = max(self._longest, now - self._since)
        self._since = now

    def acked(self, batch: asyncio.Future[Any]) -> None:
        """A sent batch's done-callback: the broker answered, unless the batch was cancelled (the
        producer stopping) or failed for want of an answer. A transactional producer retries
        every retriable error the broker answers, so a retriable failure is the client's own:
        aiokafka 0.14 fails a batch with ``NotLeaderForPartitionError`` or
        ``LeaderNotAvailableError`` when no leader was known for ``request_timeout_ms``."""
        if batch.cancelled():
            return
        error = batch.exception()
        if isinstance(error, KafkaTimeoutError) or getattr(error, "retriable", False):
            return
        self.heard()

    @property
    def longest(self) -> float:
        """The longest silence in seconds since the last ``take`` (a wait in progress: up to its
        last response)."""
        return self._longest

    def take(self) -> float:
        """``longest``, and start afresh."""
        longest, self._longest = self._longest, 0.0
        return longest


class TaskProducer:
    """The transactional producer of one task, with its record batching (:class:`Outbound`).

    ``silence``: told of every response the producer waits for (:class:`BrokerSilence`), shared
    with the data plane, whose outage test reads it: required, as a producer of its own would hide
    an outage."""

    def __init__(
        self,
        client: Mapping[str, Any],
        app_id: str,
        partition: int,
        *,
        transaction_timeout_ms: int,
        silence: BrokerSilence,
        native_batches: bool = True,
    ) -> None:
        self.partition = partition
        self._silence = silence
        self.transactional_id = transactional_id(app_id, partition)
        self._producer = AIOKafkaProducer(
            **client,
            transactional_id=self.transactional_id,
            transaction_timeout_ms=transaction_timeout_ms,
            linger_ms=5,
            max_batch_size=1024 * 1024,
            max_request_size=MAX_RECORD_BYTES,
        )
        self.outbound = Outbound(self._producer, native=native_batches, acked=self._silence.acked)
        self._started = False

    async def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Register the transactional id (fencing any previous owner) and open a transaction.

        The client asks for the producer id until the broker has ended the previous owner's
        transaction, with no bound of its own: one that cannot end (a partition it wrote to has
        no leader) would hold the take-over, and every task of the worker, for good. Past
        ``timeout_s`` this raises :class:`InfrastructureError` instead, for a restart."""
        with kafka_errors(f"starting transactional producer {self.transactional_id}"):
            try:
                async with asyncio.timeout(timeout_s):
                    await self._producer.start()
                    self._started = True
                    await self._producer.begin_transaction()  # waits for the producer id: fencing is done
            except TimeoutError:
                raise InfrastructureError(
                    f"transactional producer {self.transactional_id} got no producer id in "
                    f"{timeout_s:.0f} s: the broker could not end the previous owner's transaction "
                    "(a partition without a leader?)"
                ) from None

    async def send(self) -> None:
        """Hand the records gathered so far to the producer (see :meth:`Outbound.send`)."""
        with kafka_errors(f"sending in transaction {self.transactional_id}"), self._silence.waiting():
            await self.outbound.send()

    async def settle(self, limit: int) -> None:
        """Send the records gathered so far, then wait until at most ``limit`` bytes of the
        transaction's are unacknowledged (see :meth:`Outbound.settle`)."""
        with kafka_errors(f"sending in transaction {self.transactional_id}"), self._silence.waiting():
            await self.outbound.settle(limit)

    async def commit(self, offsets: Mapping[TopicPartition, int], group_id: str) -> None:
        """Wait for every record of the transaction, add ``offsets``, commit, open the next one.

        Raises :class:`FencedError` if another producer owns the id now, or
        :class:`InfrastructureError`; the transaction is then not committed.
        """
        heard = self._silence.heard
        with kafka_errors(f"committing transaction {self.transactional_id}"), self._silence.waiting():
            await self.outbound.flush()
            if offsets:
                await self._producer.send_offsets_to_transaction(dict(offsets), group_id)
                heard()
            await self._producer.commit_transaction()
            heard()
            await self._producer.begin_transaction()

    async def close(self) -> None:
        """Stop without committing: an open transaction is aborted (by the broker or the next owner)."""
        if self._started:
            self._started = False
            try:
                await self._producer.stop()
            except KafkaError as exc:  # closing after a fence or a broker loss: nothing left to save
                log.warning("task %d: producer close failed: %r", self.partition, exc)
