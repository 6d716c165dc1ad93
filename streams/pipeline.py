"""One task's per-batch pipeline, without a broker: the whole path of a message through a worker.

For each batch of one input partition, :meth:`TaskPipeline.process` decodes
strictly (invalid messages become dead letters), re-routes events whose room
belongs to another task, applies the rest to the task's
:class:`~streams.core.TaskAggregator` and writes the windows it closed as
room-stats records. :meth:`~TaskPipeline.tick` advances the watermark on wall
time, :meth:`~TaskPipeline.publish_alerts` writes the spike alerts and
:meth:`~TaskPipeline.stage_checkpoint` the watermark markers and changelog.
Everything goes into a :class:`RecordSink` — the task's transactional
producer in the worker, a list in the unit tests, Kafka record batches in
``loadtest.bench_pipeline`` — and the caller passes the wall clock as
``now_ms``.

``streams.dataplane`` is the aiokafka shell around this: it fetches, hands
each partition's messages here, ticks once per fetch round, sends what the
sinks gathered and commits each task's transaction.
"""

from __future__ import annotations

import functools
import logging
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from operator import attrgetter
from typing import Any, NamedTuple, Protocol

import orjson

from schemas import (
    DLQ_KEY_CAP_BYTES,
    ORDER_STATUSES,
    VIEWER_TYPES,
    Invalid,
    Limits,
    Source,
    dead_letter,
    decode_gift_batch,
    decode_gift_batch_py,
    decode_order_batch,
    decode_order_batch_py,
    decode_viewer_batch,
    decode_viewer_batch_py,
    encode_dead_letter,
    native_bounds,
)

from ._fetch import RecordRun
from ._outbound import (  # the worker's record append and request encoding, for benchmarks that model them
    append_record,
    join_produce_requests,
)
from .core import (
    AlertEvent,
    CoreConfig,
    PartitionCache,
    TaskAggregator,
    iso_utc,
    leaderboard_progress,
    partition_for,
    to_alertmanager,
)
from .leaderboard import LeaderboardStage
from .metrics import Metrics
from .settings import Settings, Topics

log = logging.getLogger(__name__)

__all__ = [
    "MARKER_HEADER",
    "SOURCE_HEADER",
    "Message",
    "Record",
    "RecordSink",
    "Routing",
    "TaskPipeline",
    "append_record",
    "join_produce_requests",
]

VIEWER, ORDER, GIFT, REPARTITION = (int(source) for source in Source)  # plain ints on the hot path
#: on a re-routed event: the input topic it was first published to
SOURCE_HEADER = "livepulse-source"
#: on a repartition record: a watermark marker from the task numbered in the header's value
MARKER_HEADER = "livepulse-watermark"
#: no watermark marker written yet by this pipeline
_NOT_SENT = object()
#: an event-time bound that leaves only the 64-bit range the native decoders take: now +- 2^62
_NO_BOUND = 2**62
Decoders = dict[int, Callable[..., tuple[list[Any], list[Any]]]]
_DECODERS: Decoders = {VIEWER: decode_viewer_batch, ORDER: decode_order_batch, GIFT: decode_gift_batch}
#: ``native_decoders`` off: the Python loops alone
_PY_DECODERS: Decoders = {
    VIEWER: decode_viewer_batch_py,
    ORDER: decode_order_batch_py,
    GIFT: decode_gift_batch_py,
}

#: what the fused pass accepts of a viewer type, an order status (as the native decoders do)
_NAMES = {VIEWER: tuple(sorted(VIEWER_TYPES)), ORDER: tuple(sorted(ORDER_STATUSES)), GIFT: ()}

#: the messages the fused pass reads: a list, or a fetch read natively (``streams._fetch``)
_FUSED_INPUTS = (list, RecordRun)

Headers = Sequence[tuple[str, bytes]]


class RecordSink(Protocol):
    """Where a task's output records are queued (``streams._outbound.Outbound`` in the worker).

    A sink with an ``outbox`` attribute (a native ``_fastcore.Outbox``, or None) lets the native
    room table write its records into it directly."""

    def add(
        self, topic: str, partition: int, key: bytes | None, value: bytes | None, headers: Headers = ()
    ) -> None: ...


class Message(Protocol):
    """What the pipeline reads of a consumed message (aiokafka's ``ConsumerRecord`` has it)."""

    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]] | None: ...


class Record(NamedTuple):
    """A consumed message built by hand (tests, benchmarks)."""

    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


def _by_offset(messages: Sequence[Message], offset: int) -> Message:
    """The message at ``offset`` of one partition's ``messages`` (in offset order, as read)."""
    at = bisect_left(messages, offset, key=_offset_of)
    if at < len(messages) and messages[at].offset == offset:
        return messages[at]
    return next(msg for msg in messages if msg.offset == offset)  # not in order after all


_offset_of = attrgetter("offset")


class Routing:
    """What every task of a worker shares: topic names, source numbers and the room → partition map."""

    def __init__(self, topics: Topics, partitions: int) -> None:
        self.topics = topics
        self.partitions = partitions
        self.route = PartitionCache(partitions)
        self.names = {VIEWER: topics.viewer, ORDER: topics.order, GIFT: topics.gift}
        self.sources = {name: source for source, name in self.names.items()}
        self.sources[topics.repartition] = REPARTITION
        self.by_header = {name.encode(): source for source, name in self.names.items()}

    def task_core(self, partition: int, config: CoreConfig, *, detect_spikes: bool = True) -> TaskAggregator:
        """The aggregator of task ``partition``: held back by its direct inputs and by every other
        task, whose re-routed events and watermark markers reach it through the repartition topic.
        With ``config.native_rooms`` its rooms are in the native table (``NativeTaskAggregator``)."""
        cls = TaskAggregator
        if config.native_rooms:
            from .core._native_rooms import NativeTaskAggregator

            cls = NativeTaskAggregator
        return cls(
            config,
            sources=tuple(self.names),
            senders=[q for q in range(self.partitions) if q != partition],
            detect_spikes=detect_spikes,
        )


class TaskPipeline:
    """Decode, dead-letter, re-route, apply and publish for one task; outputs go into ``sink``."""

    def __init__(
        self,
        partition: int,
        core: TaskAggregator,
        sink: RecordSink,
        routing: Routing,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        self.partition = partition
        self.core = core
        self.sink = sink
        #: the native outbox behind ``sink``, which a native room table writes into directly
        self._outbox = getattr(sink, "outbox", None)
        self.routing = routing
        self.metrics = metrics
        self._topics = settings.topics
        self._limits: Limits = settings.limits
        #: for re-routed events, judged where they were first read, against that task's clock: an
        #: event near a bound (a week old, or seconds ahead) judged again here, later or on another
        #: host's clock, could turn ts_skew after it was taken
        self._rerouted_limits = replace(settings.limits, max_past_ms=_NO_BOUND, max_future_ms=_NO_BOUND)
        self._decoders = _DECODERS if settings.native_decoders else _PY_DECODERS
        #: a native room table with the native decoders: events applied as they are parsed
        #: (``NativeTaskAggregator.apply_raw``), up to the first message that takes the split way
        self._fused = settings.native_decoders and settings.fused_decode and hasattr(core, "apply_raw")
        self._max_rooms = settings.core.max_rooms
        self._resend_ms = settings.alert_resend_ms
        self._rollup_topics = {
            length: self._topics.rollup(length) for length in settings.core.rollup_windows_ms
        }
        self._leaderboard_size = settings.leaderboard_size
        #: bytes of records a publish or a checkpoint slice writes (None: all at once)
        self._slice_bytes = settings.output_slice_bytes or None
        self._currency = settings.currency
        #: currencies of the orders taken so far, when any is summed (a warning for each new one)
        self._currencies: set[str] = set()
        #: the leaderboard merge, in task 0 only (see ``streams.leaderboard``)
        self.merge: LeaderboardStage | None = None
        #: the last progress mark written (a new pipeline, e.g. after a restore, writes it again)
        self._progress_sent: int | None = None
        #: the frontier in the last watermark markers written (None: idle, never fed; _NOT_SENT)
        self._marker_sent: int | object | None = _NOT_SENT
        #: the core's outage holds and inputs fallen idle already counted in the metrics
        self._holds_seen = 0
        self._idled_seen = 0
        if partition == 0:
            self.merge = LeaderboardStage(
                routing.partitions, self._leaderboard_size, sink, self._topics, metrics
            )

    # -- input -------------------------------------------------------------------------------

    def process(self, topic: str, messages: Sequence[Message], now_ms: int) -> int:
        """Take one partition's messages of ``topic`` (in offset order); returns the windows published."""
        if type(messages) is RecordRun and not (
            self._fused and self.routing.sources.get(topic, REPARTITION) != REPARTITION
        ):
            messages = list(messages)  # read in place by the fused pass alone
        if topic == self._topics.leaderboard_partials:
            assert self.merge is not None, "the partials topic is read by task 0 only"
            self.merge.process(messages)
            return 0
        m = self.metrics
        source = self.routing.sources[topic]
        core = self.core
        m.events_consumed.labels(topic).inc(len(messages))
        markers: list[tuple[int, int | None]] = []
        if source == REPARTITION:
            for origin, origin_topic, group in self._split_repartitioned(messages, markers):
                self._take_split(origin, origin_topic, topic, group, now_ms)
        elif self._fused and type(messages) in _FUSED_INPUTS:
            self._take_fused(source, topic, messages, now_ms)
        else:
            passed_ts = self._take_split(source, topic, topic, messages, now_ms)
            if passed_ts is not None:
                core.passed_on(source, passed_ts, now_ms)
        # A marker follows every event its sender re-routed before it: apply them first.
        for sender, frontier in markers:
            core.sender_progress(sender, frontier)
        return self.publish_windows()

    def _take_split(
        self, origin: int, origin_topic: str, topic: str, group: Sequence[Message], now_ms: int
    ) -> int | None:
        """Decode, dead-letter, re-route and apply ``group``, messages of ``topic`` first published
        to input ``origin`` (``origin_topic``); returns the newest event time re-routed (None:
        none was), for ``passed_on`` once the batch's own events are applied."""
        source = self.routing.sources[topic]
        rerouted = source == REPARTITION
        good, bad = self._decoders[origin](group, now_ms, self._rerouted_limits if rerouted else self._limits)
        if bad:
            self._dead_letter(topic, group, bad, now_ms)
        passed_ts = None
        if not rerouted:  # checked once, where read
            if origin == ORDER and good:
                good = self._check_currency(topic, group, good, now_ms)
            good, passed_ts = self._keep_local(origin_topic, group, good)
        result = self.core.apply(source, good, now_ms)
        if result.overflow:
            self._refuse_overflow(topic, group, now_ms)
        self._count(origin_topic, result)
        return passed_ts

    def _take_fused(self, source: int, topic: str, messages: Sequence[Message], now_ms: int) -> None:
        """Apply ``messages`` of input ``source`` as they are parsed (``apply_raw``); each run of
        those it does not take (outside the decoders' fast path, rooms of other tasks, orders in
        a currency not yet taken) the split way in its place. The events re-routed are passed on
        once the batch's own are applied, as the split way does for a whole batch."""
        core = self.core
        bounds = native_bounds(now_ms, self._limits)
        partitions = self.routing.route.partitions
        newest: int | None = None
        at = 0
        while at < len(messages):
            if source == ORDER:  # a currency taken without a look: the one set, or one warned about
                currencies = [self._currency] if self._currency else sorted(self._currencies)
            else:
                currencies = []
            stop, resume, result = core.apply_raw(  # type: ignore[attr-defined]
                source, messages, at, now_ms, bounds, _NAMES[source], currencies, partitions, self.partition
            )
            if result.overflow:
                self._refuse_overflow(topic, messages, now_ms)
            self._count(topic, result)
            if stop < resume:
                passed_ts = self._take_split(source, topic, topic, messages[stop:resume], now_ms)
                if passed_ts is not None and (newest is None or passed_ts > newest):
                    newest = passed_ts
            at = resume
        if newest is not None:
            core.passed_on(source, newest, now_ms)

    def _count(self, topic: str, result: Any) -> None:
        """The events of ``topic`` applied, late, duplicate and replayed, in the metrics."""
        m = self.metrics
        if result.applied:
            m.events_applied.labels(topic).inc(result.applied)
        if result.late:
            m.events_late.labels(topic).inc(result.late)
        if result.duplicate:
            m.events_duplicate.labels(topic).inc(result.duplicate)
        if result.replayed:
            m.events_replayed.labels(topic).inc(result.replayed)

    def tick(self, now_ms: int, busy: Iterable[int] = (), behind: Iterable[int] = ()) -> int:
        """Advance the watermark on wall time (``busy``: sources not known to be caught up, of which
        ``behind``: known to have unread records); returns the windows published."""
        core = self.core
        core.tick(now_ms, busy, behind)
        holds = core.counters.outage_holds
        if holds != self._holds_seen:
            self.metrics.watermark_holds.inc(holds - self._holds_seen)
            self._holds_seen = holds
            log.warning(
                "task %d: input back after an outage, watermark held for %.1f s so buffered events "
                "are not late (LIVEPULSE_OUTAGE_HOLD_MS)",
                self.partition,
                ((core.holding_until_ms or now_ms) - now_ms) / 1000,
            )
        idled = core.counters.inputs_idled
        if idled != self._idled_seen:
            self.metrics.inputs_idled.inc(idled - self._idled_seen)
            self._idled_seen = idled
        return self.publish_windows()

    def _split_repartitioned(
        self, messages: Sequence[Message], markers: list[tuple[int, int | None]]
    ) -> list[tuple[int, str, list[Message]]]:
        """Group re-routed messages by the topic they were first published to (a header); collect
        watermark markers into ``markers``."""
        by_header = self.routing.by_header
        by_origin: dict[int, list[Message]] = {}
        for msg in messages:
            origin: int | None = None
            for key, value in msg.headers or ():
                if key == SOURCE_HEADER:
                    origin = by_header.get(value)
                elif key == MARKER_HEADER:
                    marker = self._marker(value, msg.value)
                    if marker is None:
                        log.error(
                            "task %d: repartition record at offset %d is no watermark marker (header %r, "
                            "value %r): skipped",
                            self.partition,
                            msg.offset,
                            (value or b"")[:40],
                            (msg.value or b"")[:40],
                        )
                    else:
                        markers.append(marker)
                    break
            else:
                by_origin.setdefault(VIEWER if origin is None else origin, []).append(msg)
        names = self.routing.names
        return [(origin, names[origin], group) for origin, group in by_origin.items()]

    def _marker(self, header: bytes, value: bytes | None) -> tuple[int, int | None] | None:
        """``(sender, frontier)`` of a watermark marker (frontier None: the sender is idle); None if
        the record is not one a livepulse task writes: only they write here, but a record that
        cannot be a marker must not stop the worker at every restart."""
        try:
            sender, frontier = int(header), orjson.loads(value or b"null")
        except (TypeError, ValueError, orjson.JSONDecodeError):  # (TypeError: a header of no value)
            return None
        if not 0 <= sender < self.routing.partitions or sender == self.partition:
            return None
        if frontier is not None and type(frontier) is not int:
            return None
        return sender, frontier

    def _keep_local(
        self, topic: str, messages: Sequence[Message], good: list[Any]
    ) -> tuple[list[Any], int | None]:
        """Events whose room belongs to this task; the others are re-routed to the right one.
        With the newest event time among those re-routed (None: none was).

        Rooms the task already aggregates are local by construction, so the murmur2 check runs
        only for rooms seen here for the first time.
        """
        route, here = self.routing.route, self.partition
        first = self.core.first_foreign(good, route, here)
        if first is None:
            return good, None
        keep = good[:first]
        header = [(SOURCE_HEADER, topic.encode())]
        add = self.sink.add
        repartition = self._topics.repartition
        rerouted = 0
        newest: int | None = None
        for offset, ev in good[first:]:
            target = route(ev.room_id)
            if target == here:
                keep.append((offset, ev))
            else:
                raw = _by_offset(messages, offset).value
                add(repartition, target, ev.room_id.encode(), raw, header)
                rerouted += 1
                if newest is None or ev.ts > newest:
                    newest = ev.ts
        self.metrics.events_rerouted.labels(topic).inc(rerouted)
        return keep, newest

    def _dead_letter(self, topic: str, messages: Sequence[Message], bad: list[Any], now_ms: int) -> None:
        """Dead-letter ``(offset, raw, Invalid)`` triples of ``messages`` (raw None: the message's
        value as read)."""
        dlq = self._topics.dlq
        add = self.sink.add
        for offset, raw, invalid in bad:
            msg = _by_offset(messages, offset)
            key = None if msg.key is None else msg.key[:DLQ_KEY_CAP_BYTES]
            letter = dead_letter(
                invalid,
                topic=topic,
                partition=self.partition,
                offset=offset,
                key=key,
                raw=msg.value or b"" if raw is None else raw,
                now_ms=now_ms,
            )
            add(dlq, self.partition, key, encode_dead_letter(letter))
            self.metrics.events_invalid.labels(topic, invalid.reason).inc()

    def _check_currency(
        self, topic: str, messages: Sequence[Message], orders: list[Any], now_ms: int
    ) -> list[Any]:
        """With ``LIVEPULSE_CURRENCY`` set, dead-letter the orders in another currency
        (``unsupported_currency``): GMV in minor units of one currency plus another means nothing.
        Without it, take them all and warn once for each currency after the first."""
        currencies = {ev.currency for _, ev in orders}
        if not self._currency:
            new = currencies - self._currencies
            if new and len(self._currencies) < 64:  # bounded: the codes come from the producers
                seen = self._currencies
                seen.update(new)
                if len(seen) > 1:
                    log.warning(
                        "task %d: orders in more than one currency (%s): GMV sums their minor units as "
                        "they come; set LIVEPULSE_CURRENCY to take one and dead-letter the others",
                        self.partition,
                        ", ".join(sorted(seen)),
                    )
            return orders
        if currencies == {self._currency}:
            return orders
        kept, refused = [], []
        for offset, ev in orders:
            if ev.currency == self._currency:
                kept.append((offset, ev))
            else:
                why = Invalid(
                    "unsupported_currency",
                    f"currency {ev.currency} is not LIVEPULSE_CURRENCY={self._currency}",
                )
                refused.append((offset, None, why))
        self._dead_letter(topic, messages, refused, now_ms)
        return kept

    def _refuse_overflow(self, topic: str, messages: Sequence[Message], now_ms: int) -> None:
        """Dead-letter the events the task refused at its room cap (reason ``room_cap``)."""
        why = Invalid("room_cap", f"task {self.partition} holds max_rooms={self._max_rooms} rooms")
        refused = [(offset, None, why) for offset in self.core.take_overflow()]
        self._dead_letter(topic, messages, refused, now_ms)

    # -- output ------------------------------------------------------------------------------

    def publish_windows(self) -> int:
        """Write the task's closed windows to the room-stats topic, with the rollup windows, the
        session records and the leaderboard partials since the last call; returns how many
        windows. A native core writes ``output_slice_bytes`` of them at a time: ``unpublished``
        tells whether a next call has more to write (the caller sends each slice first)."""
        core = self.core
        # Keyed by room on the task's own partition number: every room here hashes to it
        # (murmur2, re-routed otherwise), so this is partition_for(key) without the hashing.
        partition, topics = self.partition, self._topics
        written = None
        if self._outbox is not None:
            written = core.publish_into(
                self._outbox,
                partition,
                self._leaderboard_size,
                topics.room_stats,
                self._rollup_topics,
                topics.room_sessions,
                topics.leaderboard_partials,
                self._slice_bytes,
            )
        if written is None:
            written = self._publish_encoded()
        n, orders, gmv_minor = written
        if not n:
            return 0
        m = self.metrics
        m.windows_emitted.inc(n)
        m.orders_paid.inc(orders)
        m.gmv_minor.inc(gmv_minor)
        if core.detect_spikes:
            m.detector_evaluations.inc(n)
        return n

    def _publish_encoded(self) -> tuple[int, int, int]:
        """``publish_windows`` a record at a time (the core's records encoded in Python, or a sink
        without a native outbox)."""
        add, partition = self.sink.add, self.partition
        closed = self.core.drain_encoded(partition, self._leaderboard_size)
        topics = self._rollup_topics
        for length, key, record in closed.rollups:
            add(topics[length], partition, key, record)
        topic = self._topics.room_sessions
        for key, record in closed.sessions:
            add(topic, partition, key, record)
        topic = self._topics.room_stats
        for key, record in closed.windows:
            add(topic, partition, key, record)
        topic, task = self._topics.leaderboard_partials, b"%d" % partition
        for partial in closed.partials:
            add(topic, 0, task, partial)
        return closed.n_windows, closed.orders, closed.gmv_minor

    @property
    def unpublished(self) -> bool:
        """Whether closed windows are left for the next ``publish_windows``."""
        return self.core.unpublished

    def publish_alerts(self, now_ms: int) -> bool:
        """Run the spike detector over the windows published so far and write its transitions;
        returns whether there were any."""
        events = self.core.drain_alerts()
        self._write_alerts(events, now_ms, transitions=True)
        return bool(events)

    def firing(self, now_ms: int, *, resend: bool) -> list[AlertEvent]:
        """The alerts firing now; with ``resend``, written again (Alertmanager resolves an alert that
        is not refreshed before its endsAt)."""
        firing = self.core.firing_alerts()
        if resend:
            self._write_alerts(firing, now_ms, transitions=False)
        return firing

    def _write_alerts(self, events: list[AlertEvent], now_ms: int, *, transitions: bool) -> None:
        """Write alerts to the alerts topic, keyed by fingerprint; count fired/resolved transitions."""
        if not events:
            return
        topic = self._topics.alerts
        partitions = self.routing.partitions
        add = self.sink.add
        resend, cfg = self._resend_ms, self.core.config
        fresh = now_ms + 4 * resend
        m = self.metrics
        for event in events:
            key = event.fingerprint.encode()
            alert = to_alertmanager(event)
            if event.status == "firing":
                # Alertmanager resolves a firing alert not re-sent before its endsAt: 4 re-send
                # intervals from now (Prometheus' convention), but at most 8 past the time the
                # room's next window is due (latest end + window + grace). Live, the first bound
                # holds; in a catch-up after downtime an alert about a spike long over reaches
                # Alertmanager already over, instead of firing until its resolution is read.
                due = event.window_end_ms + cfg.window_ms + cfg.grace_ms
                alert["endsAt"] = iso_utc(min(fresh, due + 8 * resend))
            elif event.ends_at_ms is not None and event.ends_at_ms > now_ms:
                # Alertmanager would keep a resolution ending in the future active until then.
                alert["endsAt"] = iso_utc(now_ms)
            if event.starts_at_ms > now_ms:
                # Event time may run ahead of this clock (producers' clocks, up to max_future_ms):
                # the alert starts now, or a start after its endsAt (a resolution ending now, a
                # firing alert's start past 4 re-send intervals) is refused by Alertmanager.
                alert["startsAt"] = iso_utc(now_ms)
            add(topic, partition_for(key, partitions), key, orjson.dumps(alert))
            if transitions:
                (m.alerts_fired if event.status == "firing" else m.alerts_resolved).labels(event.metric).inc()

    # -- state -------------------------------------------------------------------------------

    def stage_checkpoint(self, now_ms: int, offsets: Mapping[int, int]) -> int:
        """Write the task's watermark marker to every other task, then its changed state and
        metadata (with ``offsets``, the next offset per source) to the changelog; returns the
        changelog records written. The caller commits them with the input offsets."""
        return sum(self.checkpoint_slices(now_ms, offsets, sliced=False))

    def checkpoint_slices(
        self, now_ms: int, offsets: Mapping[int, int], *, sliced: bool = True
    ) -> Iterator[int]:
        """``stage_checkpoint`` a slice at a time (``output_slice_bytes``; one slice: not
        ``sliced``): yields the changelog records each slice wrote, once it is in the sink. Any
        closed windows not yet published are written first (a checkpoint says they were)."""
        while self.unpublished:
            self.publish_windows()
            yield 0
        t = self._topics
        add = self.sink.add
        frontier = self._marker_sent = self.core.frontier_ms(now_ms)
        marker = orjson.dumps(frontier)
        header = [(MARKER_HEADER, b"%d" % self.partition)]
        for receiver in range(self.routing.partitions):
            if receiver != self.partition:
                add(t.repartition, receiver, None, marker, header)
        watermark = self.core.watermark_ms
        if watermark is not None and watermark != self._progress_sent:
            # Every window ending at or before the watermark is closed and its partial written.
            progress = orjson.dumps(leaderboard_progress(self.partition, watermark))
            add(t.leaderboard_partials, 0, b"%d" % self.partition, progress)
            self._progress_sent = watermark
        # each record into its producer batch as it is encoded (see TaskAggregator.write_checkpoint)
        write = functools.partial(add, t.changelog, self.partition)
        into = None if self._outbox is None else (self._outbox, t.changelog, self.partition)
        budget = self._slice_bytes if sliced else None
        yield from self.core.checkpoint_slices(write, offsets, into=into, budget=budget)
        if self.merge is not None:
            yield self.merge.stage_checkpoint()

    def marker_releases_windows(self, now_ms: int) -> bool:
        """Whether this task's frontier has passed a window's end + grace since the markers it last
        wrote: markers written now would let the tasks it re-routes to close that window."""
        if self.routing.partitions < 2:
            return False
        sent = self._marker_sent
        if sent is _NOT_SENT:
            return True
        frontier = self.core.frontier_ms(now_ms)
        if frontier is None or not isinstance(sent, int):
            # To or from idle (a task that never took an event holds no receiver): what the
            # receivers may close changes either way, e.g. at start from "nothing known yet".
            return frontier != sent
        cfg = self.core.config
        return (frontier - cfg.grace_ms) // cfg.window_ms > (sent - cfg.grace_ms) // cfg.window_ms

    def quarantine(self, key_offsets: Mapping[bytes, int], now_ms: int) -> list[tuple[bytes, str]]:
        """Dead-letter the changelog records the restore could not decode and delete them; returns
        their keys and reasons."""
        changelog = self._topics.changelog
        add = self.sink.add
        done = []
        for key, value, reason in self.core.quarantined:
            letter = dead_letter(
                Invalid("state_undecodable", reason),
                topic=changelog,
                partition=self.partition,
                offset=key_offsets.get(key, -1),
                key=key,
                raw=value,
                now_ms=now_ms,
            )
            add(self._topics.dlq, self.partition, key, encode_dead_letter(letter))
            add(changelog, self.partition, key, None)
            self.metrics.state_quarantined.inc()
            done.append((key, reason))
        self.core.quarantined.clear()
        return done
