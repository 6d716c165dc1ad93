"""The batch data plane: aiokafka in, the pure core in the middle, batched outputs out.

One consumer in its own group, range-assigned over the co-partitioned input
topics and the repartition topic, so partition ``p`` of every input belongs to
the same worker and feeds one :class:`TaskAggregator`. Each fetched batch is
decoded (invalid messages dead-lettered), checked for misrouting (re-routed
through the repartition topic), applied in one loop, and the closed windows
queued for publishing.

Checkpoint protocol, every ``commit_interval_ms`` and before partitions are
given up: (1) flush outputs, dead letters and re-routed events and wait for
acks; (2) write the dirty rooms to the changelog and wait for acks; (3) commit
input offsets. A crash anywhere replays from the last commit, and each room's
recorded offsets skip what its restored state already holds.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import IllegalStateError

from schemas import (
    RoomStats,
    dead_letter,
    decode_gift_batch,
    decode_order_batch,
    decode_viewer_batch,
    encode_dead_letter,
    encode_room_stats,
)

from ._changelog import read_partition, stage_checkpoint
from ._outbound import Outbound
from ._rules import RuleSet, rules_from_entries
from ._topology import ensure_topology
from .core import (
    SPIKE_METRICS,
    AlertEvent,
    PartitionCache,
    TaskAggregator,
    iso_utc,
    partition_for,
    to_alertmanager,
    top_rooms,
)
from .metrics import Metrics
from .settings import Settings

log = logging.getLogger(__name__)

VIEWER, ORDER, GIFT, REPARTITION = range(4)
SOURCE_HEADER = "livepulse-source"
_DECODERS: dict[int, Callable[..., tuple[list[Any], list[Any]]]] = {
    VIEWER: decode_viewer_batch,
    ORDER: decode_order_batch,
    GIFT: decode_gift_batch,
}

Clock = Callable[[], float]


class DataPlane:
    """Consumes, aggregates and publishes for the partitions this worker owns."""

    def __init__(self, settings: Settings, metrics: Metrics, clock: Clock = time.time) -> None:
        self.settings = settings
        self.metrics = metrics
        self._clock = clock
        t = settings.topics
        self._sources = {t.viewer: VIEWER, t.order: ORDER, t.gift: GIFT, t.repartition: REPARTITION}
        self._source_by_header = {t.viewer.encode(): VIEWER, t.order.encode(): ORDER, t.gift.encode(): GIFT}
        self.tasks: dict[int, TaskAggregator] = {}
        self.partitions = 0
        self.ready = False
        self._rebalancing = False
        #: an error raised inside a rebalance callback (aiokafka would only log it)
        self._failure: BaseException | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._outbound: Outbound | None = None
        self._route: PartitionCache | None = None
        self._lock = asyncio.Lock()
        self._consumed: dict[TopicPartition, int] = {}
        #: next offset to read per assigned input partition (known after the first fetch or lookup)
        self._position: dict[TopicPartition, int] = {}
        self._last_checkpoint = 0.0
        self._last_top = 0.0
        self._stopping = False
        self._on_window: list[Callable[[int, list[RoomStats]], None]] = []
        self._last_resend = 0.0
        #: where rule overrides come from (a faust table in the worker); polled at checkpoints
        self._rules_source: Callable[[], Mapping[str, Any]] | None = None
        self._rules_seen: dict[str, Any] = {}
        self._rules = RuleSet()

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        if s.gc_threshold:
            # Room state is millions of long-lived lists, dicts and sets; with Python's default
            # (a young collection every 700 allocations, promoting into frequent full passes over
            # all of them) the collector took ~35 % of the data plane's CPU in a 100 k-room catch-up.
            gc.set_threshold(s.gc_threshold, 50, 100)
        client = {"bootstrap_servers": s.brokers, **s.security.client_kwargs()}
        admin = AIOKafkaAdminClient(**client)
        await admin.start()
        try:
            self.partitions = await ensure_topology(admin, s)  # normally done by prepare_topics already
        finally:
            await admin.close()
        self._route = PartitionCache(self.partitions)
        self._producer = AIOKafkaProducer(
            **client,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=1024 * 1024,
            max_request_size=8 * 1024 * 1024,
        )
        await self._producer.start()
        self._outbound = Outbound(self._producer)
        self._consumer = AIOKafkaConsumer(
            **client,
            group_id=s.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            partition_assignment_strategy=(RangePartitionAssignor,),
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
        )
        await self._consumer.start()
        self._consumer.subscribe([*s.topics.inputs, s.topics.repartition], listener=_Rebalance(self))
        self._last_checkpoint = self._clock()
        log.info("data plane started: %d partitions per input, group %s", self.partitions, s.group_id)

    async def run(self) -> None:
        """Fetch and process until :meth:`stop`; infrastructure errors propagate."""
        assert self._consumer is not None
        s = self.settings
        while not self._stopping:
            batches = await self._consumer.getmany(
                timeout_ms=s.fetch_timeout_ms, max_records=s.max_batch_records
            )
            if self._failure is not None:
                raise self._failure
            async with self._lock:
                if self._stopping:
                    break
                if self._rebalancing:
                    continue  # fetched before a revocation; whoever owns the partitions next re-reads them
                await self._process(batches)
                if (self._clock() - self._last_checkpoint) * 1000 >= s.commit_interval_ms:
                    await self._checkpoint()

    def request_stop(self) -> None:
        """Make :meth:`run` return after the batch in hand."""
        self._stopping = True

    async def stop(self) -> None:
        """Checkpoint and commit what was processed, then close the clients."""
        self._stopping = True
        async with self._lock:
            try:
                if self._consumer is not None and self.tasks:
                    await self._checkpoint()
            finally:
                if self._consumer is not None:
                    await self._consumer.stop()
                if self._producer is not None:
                    await self._producer.stop()
                self.ready = False

    def on_windows(self, callback: Callable[[int, list[RoomStats]], None]) -> None:
        """Call ``callback(partition, closed_windows)`` for every batch of closed windows."""
        self._on_window.append(callback)

    # -- processing ------------------------------------------------------------------------

    async def _process(self, batches: dict[TopicPartition, list[Any]]) -> None:
        assert self._outbound is not None
        now = self._clock()
        now_ms = int(now * 1000)
        m = self.metrics
        started = time.perf_counter()
        total = 0
        waited = 0.0
        for tp, messages in batches.items():
            task = self.tasks.get(tp.partition)
            if task is None or not messages:
                continue  # revoked while the fetch was in flight; the new owner re-reads it
            total += len(messages)
            self._process_partition(tp, task, messages, now_ms)
            self._consumed[tp] = messages[-1].offset
            self._position[tp] = messages[-1].offset + 1
            if self._publish_windows(tp.partition, task):
                waited += await self._send()  # out before the next partition's work
        busy = await self._lagging()
        for partition, task in self.tasks.items():
            task.tick(now_ms, busy.get(partition, ()))
            self._publish_windows(partition, task)
            watermark = task.watermark_ms
            if watermark is not None:
                m.watermark_delay.labels(str(partition)).set(max(0.0, now - watermark / 1000))
        # Closed windows go to the producer before the spike detector evaluates them: at a window
        # boundary tens of thousands of rooms close at once, and their records need not wait for it.
        waited += await self._send()
        m.publish_wait_seconds.observe(waited)
        await asyncio.sleep(0)
        transitions = False
        for task in self.tasks.values():
            alerts = task.drain_alerts()
            transitions = transitions or bool(alerts)
            self._publish_alerts(alerts)
        if transitions or now - self._last_resend >= self.settings.alert_resend_ms / 1000:
            self._resend_firing(resend=now - self._last_resend >= self.settings.alert_resend_ms / 1000)
        await self._outbound.send()
        if total:
            m.batch_size.observe(total)
            m.batch_seconds.observe(time.perf_counter() - started)
        m.active_rooms.set(sum(len(task.rooms) for task in self.tasks.values()))
        if now - self._last_top >= self.settings.core.window_seconds:
            self._last_top = now
            self._export_top_rooms()

    async def _send(self) -> float:
        """Hand what is queued to the producer; returns the seconds that took."""
        assert self._outbound is not None
        started = time.perf_counter()
        await self._outbound.send()
        return time.perf_counter() - started

    def _export_top_rooms(self, n: int = 10) -> None:
        """Bounded business view for Prometheus: GMV of the top-n rooms by rank, not a series per room."""
        ranked = top_rooms(self.tasks.values(), "gmv_minor", n)
        for rank in range(1, n + 1):
            value = ranked[rank - 1].gmv_minor if rank <= len(ranked) else 0
            self.metrics.top_room_value.labels(str(rank)).set(value)

    async def _lagging(self) -> dict[int, set[int]]:
        """Sources behind their log end (or not yet known), by partition; updates the lag gauge."""
        assert self._consumer is not None
        busy: dict[int, set[int]] = {}
        for tp in self._consumer.assignment():
            position = self._position.get(tp)
            if position is None:
                try:
                    position = self._position[tp] = await self._consumer.position(tp)
                except IllegalStateError:  # revoked meanwhile
                    continue
            highwater = self._consumer.highwater(tp)
            if highwater is None or position < highwater:
                busy.setdefault(tp.partition, set()).add(self._sources[tp.topic])
            if highwater is not None:
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                    max(0, highwater - position)
                )
        return busy

    def _process_partition(
        self, tp: TopicPartition, task: TaskAggregator, messages: list[Any], now_ms: int
    ) -> None:
        m = self.metrics
        source = self._sources[tp.topic]
        m.events_consumed.labels(tp.topic).inc(len(messages))
        if source == REPARTITION:
            groups = self._split_repartitioned(messages)
        else:
            groups = [(source, tp.topic, messages)]
        for origin, origin_topic, group in groups:
            good, bad = _DECODERS[origin](
                [(msg.offset, msg.value or b"") for msg in group], now_ms, self.settings.limits
            )
            if bad:
                self._dead_letter(tp, group, bad, now_ms)
            if source != REPARTITION:
                good = self._keep_local(tp, origin_topic, group, good, task.rooms)
            result = task.apply(source, good, now_ms)
            if result.applied:
                m.events_applied.labels(origin_topic).inc(result.applied)
            if result.late:
                m.events_late.labels(origin_topic).inc(result.late)
            if result.duplicate:
                m.events_duplicate.labels(origin_topic).inc(result.duplicate)
            if result.replayed:
                m.events_replayed.labels(origin_topic).inc(result.replayed)

    def _split_repartitioned(self, messages: list[Any]) -> list[tuple[int, str, list[Any]]]:
        """Group re-routed messages by the topic they were first published to (a header)."""
        t = self.settings.topics
        names = {VIEWER: t.viewer, ORDER: t.order, GIFT: t.gift}
        by_origin: dict[int, list[Any]] = {}
        for msg in messages:
            origin = next(
                (self._source_by_header.get(v) for k, v in msg.headers or () if k == SOURCE_HEADER), None
            )
            by_origin.setdefault(VIEWER if origin is None else origin, []).append(msg)
        return [(origin, names[origin], group) for origin, group in by_origin.items()]

    def _keep_local(
        self, tp: TopicPartition, topic: str, messages: list[Any], good: list[Any], known: Mapping[str, Any]
    ) -> list[Any]:
        """Events whose room belongs to this partition; the others are re-routed to the right one.

        ``known`` holds the rooms this task already aggregates: they are local by construction,
        so the murmur2 check runs only for rooms seen here for the first time.
        """
        assert self._route is not None and self._outbound is not None
        route, here = self._route, tp.partition
        for _, ev in good:
            room_id = ev.room_id
            if room_id not in known and route(room_id) != here:
                break
        else:
            return good
        raw_by_offset = {msg.offset: msg.value for msg in messages}
        keep = []
        header = [(SOURCE_HEADER, topic.encode())]
        rerouted = 0
        for offset, ev in good:
            target = route(ev.room_id)
            if target == here:
                keep.append((offset, ev))
            else:
                self._outbound.add(
                    self.settings.topics.repartition,
                    target,
                    ev.room_id.encode(),
                    raw_by_offset[offset],
                    header,
                )
                rerouted += 1
        self.metrics.events_rerouted.labels(topic).inc(rerouted)
        return keep

    def _dead_letter(self, tp: TopicPartition, messages: list[Any], bad: list[Any], now_ms: int) -> None:
        assert self._outbound is not None
        by_offset = {msg.offset: msg for msg in messages}
        dlq = self.settings.topics.dlq
        for offset, raw, invalid in bad:
            msg = by_offset[offset]
            letter = dead_letter(
                invalid,
                topic=tp.topic,
                partition=tp.partition,
                offset=offset,
                key=msg.key,
                raw=raw,
                now_ms=now_ms,
            )
            self._outbound.add(dlq, tp.partition, msg.key, encode_dead_letter(letter))
            self.metrics.events_invalid.labels(tp.topic, invalid.reason).inc()

    def _publish_windows(self, partition: int, task: TaskAggregator) -> int:
        """Queue the task's closed windows for the room-stats topic; returns how many."""
        closed = task.drain()
        if not closed:
            return 0
        assert self._outbound is not None
        topic = self.settings.topics.room_stats
        add = self._outbound.add
        # Keyed by room on the task's own partition number: every room here hashes to it
        # (murmur2, re-routed otherwise), so this is partition_for(key) without the hashing.
        for stats in closed:
            add(topic, partition, stats.room_id.encode(), encode_room_stats(stats))
        self.metrics.windows_emitted.inc(len(closed))
        if task.detect_spikes:
            self.metrics.detector_evaluations.inc(len(closed))
        for callback in self._on_window:
            callback(partition, closed)
        return len(closed)

    def _publish_alerts(self, events: list[AlertEvent], *, transitions: bool = True) -> None:
        """Queue alerts for the alerts topic, keyed by fingerprint; count fired/resolved transitions."""
        if not events:
            return
        assert self._outbound is not None
        topic = self.settings.topics.alerts
        # A firing alert expires in Alertmanager unless re-sent: 4 re-send intervals of wall time
        # (not event time, which lags behind during a catch-up).
        expires_at = iso_utc(int(self._clock() * 1000) + 4 * self.settings.alert_resend_ms)
        for event in events:
            key = event.fingerprint.encode()
            alert = to_alertmanager(event)
            if event.status == "firing":
                alert["endsAt"] = expires_at
            self._outbound.add(topic, partition_for(key, self.partitions), key, orjson.dumps(alert))
            if transitions:
                fired = event.status == "firing"
                (self.metrics.alerts_fired if fired else self.metrics.alerts_resolved).labels(
                    event.metric
                ).inc()

    def _resend_firing(self, *, resend: bool) -> None:
        """Update the firing gauge; with ``resend``, re-publish every firing alert.

        Alertmanager resolves an alert that is not refreshed before its endsAt.
        """
        firing = [event for task in self.tasks.values() for event in task.firing_alerts()]
        if resend:
            self._last_resend = self._clock()
            self._publish_alerts(firing, transitions=False)
        by_metric = dict.fromkeys(SPIKE_METRICS, 0)
        for event in firing:
            by_metric[event.metric] += 1
        for metric, count in by_metric.items():
            self.metrics.alerts_firing.labels(metric).set(count)

    def use_rules(self, source: Callable[[], Mapping[str, Any]]) -> None:
        """Read spike-rule overrides from ``source()`` (entries as kept by the control agent)."""
        self._rules_source = source
        self._refresh_rules()

    def _refresh_rules(self) -> None:
        if self._rules_source is None:
            return
        entries = dict(self._rules_source())
        if entries == self._rules_seen:
            return
        self._rules_seen = entries
        self._rules = rules_from_entries(entries)
        for task in self.tasks.values():
            task.rules, task.categories = self._rules.rules, self._rules.categories
        self.metrics.rule_overrides.set(self._rules.overrides)
        log.info(
            "spike rules updated: %d overrides, %d room categories",
            self._rules.overrides,
            len(self._rules.categories),
        )

    # -- checkpoints and rebalances ------------------------------------------------------------

    async def _checkpoint(self) -> None:
        """Outputs acked, then changelog acked, then offsets committed (caller holds the lock)."""
        assert self._outbound is not None and self._consumer is not None
        started = time.perf_counter()
        await self._outbound.flush()
        written = 0
        for partition, task in self.tasks.items():
            written += stage_checkpoint(
                self._outbound, self.settings.topics.changelog, partition, task.checkpoint()
            )
        await self._outbound.flush()
        if self._consumed:
            await self._consumer.commit({tp: offset + 1 for tp, offset in self._consumed.items()})
            self._consumed.clear()
        self._last_checkpoint = self._clock()
        self._refresh_rules()
        self.metrics.checkpoint_rooms.inc(written)
        self.metrics.checkpoint_seconds.observe(time.perf_counter() - started)

    async def on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        try:
            await self._revoke(revoked)
        except BaseException as exc:
            self._failure = exc
            raise

    async def on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        try:
            await self._assign(assigned)
        except BaseException as exc:
            self._failure = exc
            raise

    async def _revoke(self, revoked: Iterable[TopicPartition]) -> None:
        async with self._lock:
            self.ready = False
            self._rebalancing = True
            if self.tasks and self._outbound is not None:
                await self._checkpoint()
            revoked = set(revoked)
            self._consumed = {tp: o for tp, o in self._consumed.items() if tp not in revoked}
            self._position = {tp: o for tp, o in self._position.items() if tp not in revoked}

    async def _assign(self, assigned: Iterable[TopicPartition]) -> None:
        async with self._lock:
            numbers = sorted({tp.partition for tp in assigned})
            for partition in list(self.tasks):
                if partition not in numbers:
                    del self.tasks[partition]
                    self.metrics.watermark_delay.remove(str(partition))
            for partition in numbers:
                if partition not in self.tasks:
                    self.tasks[partition] = await self._restore(partition)
            self.metrics.assigned_partitions.set(len(numbers))
            if self.settings.gc_threshold:
                gc.collect()
                gc.freeze()  # restored state is long-lived: keep it out of every later collection
            self._rebalancing = False
            self.ready = True
            log.info("assigned partitions %s; state restored", numbers)

    async def _restore(self, partition: int) -> TaskAggregator:
        records, seconds = await read_partition(self.settings, partition)
        task = TaskAggregator(self.settings.core, sources=(VIEWER, ORDER, GIFT, REPARTITION))
        task.rules, task.categories = self._rules.rules, self._rules.categories
        rooms = task.restore(records)
        self.metrics.restore_seconds.observe(seconds)
        log.info(
            "partition %d: restored %d rooms from %d records in %.2fs",
            partition,
            rooms,
            len(records),
            seconds,
        )
        return task


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._plane.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._plane.on_assigned(assigned)
