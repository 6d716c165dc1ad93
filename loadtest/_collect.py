"""Follow a deployment's outputs from the beginning: room-stats, alerts, dead letters and the
platform leaderboard, with arrival times, plus rollup windows and sessions when their topics are given.

Arrival is the harness's wall clock when the record was fetched, which is what
the end-to-end latency is measured against. A repeated room-stats key must
repeat the same record (replays after a crash are idempotent upserts); a
differing repeat is kept as a conflict for the correctness check. Rollups are
kept the same way; sessions as a compacted topic's reader sees them (the last
record per key).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer

from schemas import RoomSession, RoomStats, decode_room_session, decode_room_stats
from streams.settings import Topics

from ._packed import PackedRecords, SpilledMap, packed_floats

WindowKey = tuple[str, int]
T = TypeVar("T")
K = TypeVar("K")
R = TypeVar("R")


@dataclass
class Outputs:
    """Everything a deployment published, as seen by the harness (records packed: ``loadtest._packed``)."""

    windows: PackedRecords[WindowKey, RoomStats] = field(default_factory=lambda: PackedRecords(RoomStats))
    #: first arrival (unix seconds) per window
    arrivals: SpilledMap[WindowKey, float] = field(default_factory=packed_floats)
    #: record timestamp (unix seconds; set by the worker's producer when it queued the record) per window
    produced: SpilledMap[WindowKey, float] = field(default_factory=packed_floats)
    conflicts: list[tuple[RoomStats, RoomStats]] = field(default_factory=list)
    duplicates: int = 0
    #: (arrival unix seconds, alert record) for every record on the alerts topic
    alerts: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    dlq_reasons: Counter[str] = field(default_factory=Counter)
    #: dead letters go out in their task's transaction: one for a message replayed after a crash is a repeat
    dlq_seen: set[tuple[str, int, int]] = field(default_factory=set)
    dlq_duplicates: int = 0
    undecodable: int = 0
    #: closed rollup windows by (length ms, room_id, window_start); repeats as for windows
    rollups: PackedRecords[tuple[int, str, int], RoomStats] = field(
        default_factory=lambda: PackedRecords(RoomStats)
    )
    rollup_conflicts: list[tuple[RoomStats, RoomStats]] = field(default_factory=list)
    rollup_duplicates: int = 0
    #: the last record of each session by (room_id, session_start)
    sessions: PackedRecords[tuple[str, int], RoomSession] = field(
        default_factory=lambda: PackedRecords(RoomSession)
    )
    #: platform leaderboard records by window start; any repeat (even identical) is a duplicate:
    #: the leaderboard is exactly once
    leaderboards: dict[int, dict[str, Any]] = field(default_factory=dict)
    leaderboard_repeats: list[dict[str, Any]] = field(default_factory=list)


class Collector:
    """Background consumer of a deployment's room-stats, alerts and DLQ topics."""

    def __init__(
        self, bootstrap: str, topics: Topics, rollup_topics: Mapping[int, str] | None = None
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        #: topic -> rollup length; with rollup topics, the session topic is followed too
        self._rollup_lengths = {topic: length for length, topic in (rollup_topics or {}).items()}
        self.outputs = Outputs()
        #: records fetched so far, of every topic
        self.fetched = 0
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def __aenter__(self) -> Collector:
        consumer = AIOKafkaConsumer(
            self.topics.room_stats,
            self.topics.alerts,
            self.topics.dlq,
            *self._rollup_lengths,
            *([self.topics.room_sessions] if self._rollup_lengths else []),
            self.topics.leaderboard,
            bootstrap_servers=self.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            isolation_level="read_committed",  # the worker writes in transactions
            metadata_max_age_ms=2_000,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        await consumer.start()
        self._task = asyncio.create_task(self._follow(consumer))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        out, t = self.outputs, self.topics
        try:
            while not self._stop.is_set():
                # a few thousand records per round: the harness's sender shares this loop
                batches = await consumer.getmany(timeout_ms=50, max_records=5_000)
                now = time.time()
                for tp, messages in batches.items():
                    self.fetched += len(messages)
                    if tp.topic == t.room_stats:
                        self._windows(messages, now)
                    elif tp.topic in self._rollup_lengths:
                        self._rollups(self._rollup_lengths[tp.topic], messages)
                    elif tp.topic == t.room_sessions:
                        self._sessions(messages)
                    elif tp.topic == t.leaderboard:
                        self._leaderboards(messages)
                    elif tp.topic == t.alerts:
                        for m in messages:
                            try:
                                out.alerts.append((now, orjson.loads(m.value)))
                            except orjson.JSONDecodeError:
                                out.undecodable += 1
                    else:
                        self._dead_letters(messages)
        finally:
            # aiokafka's fetcher awaits the fetch tasks it has just cancelled: a fetch in its retry
            # backoff (the broker connection timed out while the ground truth held the loop)
            # raises CancelledError out of stop(). That one is absorbed; a cancellation of this
            # task is not.
            try:
                await consumer.stop()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
            except Exception:
                pass  # closing: nothing more to do with this consumer

    def _decoded(self, messages: list[Any], decode: Callable[[bytes], T]) -> Iterator[tuple[Any, T]]:
        """``(message, decode(value))`` for each message that decodes; the others are counted."""
        for m in messages:
            try:
                yield m, decode(m.value)
            except (orjson.JSONDecodeError, KeyError, TypeError):
                self.outputs.undecodable += 1

    def _dead_letters(self, messages: list[Any]) -> None:
        out = self.outputs
        for _, (source, reason) in self._decoded(messages, _dead_letter):
            if source in out.dlq_seen:
                out.dlq_duplicates += 1
            else:
                out.dlq_seen.add(source)
                out.dlq_reasons[reason] += 1

    def _leaderboards(self, messages: list[Any]) -> None:
        out = self.outputs
        for _, (ws, record) in self._decoded(messages, _leaderboard):
            if ws in out.leaderboards:
                out.leaderboard_repeats.append(record)
            else:
                out.leaderboards[ws] = record

    async def quiet(self, quiet_s: float = 3.0, timeout_s: float = 600.0) -> bool:
        """Wait until nothing new has been fetched for ``quiet_s`` (True), after a first record, or
        until ``timeout_s`` has passed (False): what a deployment published so far has been read."""
        deadline = time.monotonic() + timeout_s
        count, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            if self.fetched != count:
                count, since = self.fetched, time.monotonic()
            elif count > 0 and time.monotonic() - since >= quiet_s:
                return True
            await asyncio.sleep(0.25)
        return False

    async def wait_for_leaderboards(self, window_starts: set[int], timeout_s: float) -> bool:
        """Wait until a leaderboard record of every window in ``window_starts`` has arrived."""
        return await _arrived(window_starts, self.outputs.leaderboards, timeout_s)

    def _windows(self, messages: list[Any], now: float) -> None:
        out = self.outputs
        decoded = list(self._decoded(messages, decode_room_stats))
        keys = [(stats.room_id, stats.window_start) for _, stats in decoded]
        fresh, duplicates = _keep_first(out.windows, keys, [stats for _, stats in decoded], out.conflicts)
        out.duplicates += duplicates
        for (m, _), key, new in zip(decoded, keys, fresh, strict=True):
            if new:
                out.arrivals[key] = now
                out.produced[key] = m.timestamp / 1000

    def _rollups(self, length: int, messages: list[Any]) -> None:
        out = self.outputs
        records = [stats for _, stats in self._decoded(messages, decode_room_stats)]
        keys = [(length, stats.room_id, stats.window_start) for stats in records]
        _, duplicates = _keep_first(out.rollups, keys, records, out.rollup_conflicts)
        out.rollup_duplicates += duplicates

    def _sessions(self, messages: list[Any]) -> None:
        out = self.outputs
        for _, session in self._decoded(messages, decode_room_session):
            out.sessions[(session.room_id, session.session_start)] = session

    async def wait_for_rollups(self, keys: Iterable[tuple[int, str, int]], timeout_s: float) -> bool:
        """Wait until every rollup key in ``keys`` has arrived (True) or the time is up (False)."""
        return await _arrived(keys, self.outputs.rollups, timeout_s)

    async def wait_for(self, keys: Iterable[WindowKey], timeout_s: float) -> bool:
        """Wait until every key in ``keys`` has arrived (True) or the time is up (False)."""
        return await _arrived(keys, self.outputs.windows, timeout_s)


def _keep_first(
    held: SpilledMap[K, R], keys: list[K], records: list[R], conflicts: list[tuple[R, R]]
) -> tuple[list[bool], int]:
    """Keep each record under its key unless one is there already: a repeat must be the same record
    (a duplicate, counted), a different one is a conflict. Returns which records were new and the
    number of duplicates. The records may be on disk: the keys are looked up together."""
    fresh: list[bool] = []
    duplicates = 0
    batch: dict[K, R] = {}  # kept from this batch (a repeat may follow in the same fetch)
    for key, record, previous in zip(keys, records, held.get_many(keys), strict=True):
        if previous is None:
            previous = batch.get(key)
        if previous is None:
            held[key] = batch[key] = record
            fresh.append(True)
            continue
        fresh.append(False)
        if previous == record:
            duplicates += 1
        else:
            conflicts.append((previous, record))
    return fresh, duplicates


def _dead_letter(raw: bytes) -> tuple[tuple[str, int, int], str]:
    """A dead letter's source (topic, partition, offset) and reason."""
    letter = orjson.loads(raw)
    return (letter["topic"], letter["partition"], letter["offset"]), letter["reason"]


def _leaderboard(raw: bytes) -> tuple[int, dict[str, Any]]:
    """A leaderboard record's window start, and the record."""
    record: dict[str, Any] = orjson.loads(raw)
    return record["window_start"], record


async def _arrived(keys: Iterable[Any], received: Container[Any], timeout_s: float) -> bool:
    """Whether every key of ``keys`` is in ``received`` within ``timeout_s``; each check looks up
    only the keys still missing (the records may be on disk: ``loadtest._packed``)."""
    deadline = time.monotonic() + timeout_s
    missing = _absent(keys, received)
    while missing and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        missing = _absent(missing, received)
    return not missing


def _absent(keys: Iterable[Any], received: Container[Any]) -> list[Any]:
    if isinstance(received, SpilledMap):
        return received.absent(keys)
    return [key for key in keys if key not in received]
