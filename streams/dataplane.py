"""The batch data plane: aiokafka in, the pure core in the middle, batched outputs out.

One consumer in its own group, range-assigned over the co-partitioned input
topics and the repartition topic, so partition ``p`` of every input belongs to
the same worker and feeds one :class:`TaskAggregator`. Each fetched batch is
decoded (invalid messages dead-lettered), checked for misrouting (re-routed
through the repartition topic), applied in one loop, and the closed windows
queued for publishing.

Exactly once (``streams._transactions``): each task writes everything —
room-stats, alerts, dead letters, re-routed events, changelog — through its
own transactional producer; every ``commit_interval_ms`` (and before
partitions are given up; and at once when, caught up with few rooms
changed, a round published windows or moved a task's frontier past a
window's end: readers see windows only at a commit, and other tasks see
the markers that let them close theirs only then) a checkpoint adds the
task's watermark markers,
its changed rooms and metadata (with the input offsets) and commits the
transaction with the input offsets. On assignment a task's producer is
started first (fencing a previous owner), then the changelog is read
``read_committed`` and the consumer seeks to the offsets the restored
checkpoint recorded. A failed commit is never followed by another: the data
plane raises and the worker exits, and whoever runs the task next resumes from
the last committed checkpoint.

Re-routed events reach their task through the repartition topic after their
sender's commit. So that the receiver's watermark does not pass them while
they are in flight, each task publishes its input frontier into every other
repartition partition at each checkpoint (a marker record, after the events it
re-routed), and receivers hold their watermark to the minimum over senders.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import IllegalStateError, NoOffsetForPartitionError, OffsetOutOfRangeError

from schemas import NATIVE_DECODERS

from ._changelog import read_partition
from ._errors import kafka_errors
from ._fetch import NativeFetch, keep_fetched_bytes
from ._rules import RuleSet, rules_from_entries
from ._topology import ensure_topology
from ._transactions import BrokerSilence, TaskProducer
from .core import NATIVE_CORE, SPIKE_METRICS, TaskAggregator, top_rooms
from .exceptions import LivepulseError, TopologyError
from .leaderboard import LeaderboardStage
from .metrics import Metrics
from .pipeline import REPARTITION, Routing, TaskPipeline
from .settings import Settings

log = logging.getLogger(__name__)

Clock = Callable[[], float]

#: a change of wall minus monotonic time between two rounds taken for a step of the wall clock
CLOCK_STEP_S = 1.0

#: the least time between two checkpoints taken early because windows closed while caught up: a
#: window boundary reaches the tasks' watermarks a round or two apart
PROMPT_COMMIT_GAP_MS = 100
#: ... and the most rooms such a checkpoint may have to write (~10 µs each): with 100 000 rooms a
#: boundary dirties tens of thousands, and an early checkpoint then delays the windows it would
#: release (measured: p99 13.4 -> 13.9 s at the worker); those wait for the interval
PROMPT_COMMIT_MAX_ROOMS = 5_000

#: the least time between two checkpoints taken early because every input was held, waiting for the
#: markers of a checkpoint (``_starved``): a catch-up reads 100-300 s of event time in well under
#: the commit interval, and then waited for the rest of it, all its inputs held
STARVED_COMMIT_GAP_MS = 200

#: aiokafka's default, set explicitly: a member that fetches nothing this long leaves the group. The
#: main loop fetches nothing while it restores an assignment (``_take_over``)
MAX_POLL_INTERVAL_MS = 300_000
#: how long the group waits for a member to give its partitions up in a rebalance: that waits for a
#: restore under way and for the checkpoint. aiokafka's default is the session timeout: a member
#: restoring while another joined missed it, was dropped (its checkpoint fenced), joined again and
#: started another rebalance the others missed while they restored, and so on. Below aiokafka's
#: request timeout (40 s), which its JoinGroup requests wait under (the Java client waits the
#: rebalance timeout + 5 s); a member stuck giving its partitions up holds the group this long
REBALANCE_TIMEOUT_MS = 30_000


class _Task:
    """One task at run time: its pipeline (over the pure aggregator), its transactional producer,
    its input positions."""

    __slots__ = ("committed_at", "held", "owed", "pipeline", "positions", "producer")

    def __init__(self, pipeline: TaskPipeline, producer: TaskProducer) -> None:
        self.pipeline = pipeline
        self.producer = producer
        #: next offset to read per input topic-partition (known after seek or fetch)
        self.positions: dict[TopicPartition, int] = {}
        #: input sources paused for running ahead of what the task's watermark waits for (``_align``)
        self.held: frozenset[int] = frozenset()
        #: monotonic time of its last committed checkpoint (0: none yet)
        self.committed_at = 0.0
        #: an early commit was due while the last was under PROMPT_COMMIT_GAP_MS ago (``_commit_task``)
        self.owed = False

    @property
    def partition(self) -> int:
        return self.pipeline.partition

    @property
    def core(self) -> TaskAggregator:
        return self.pipeline.core


class DataPlane:
    """Consumes, aggregates and publishes for the partitions this worker owns."""

    def __init__(self, settings: Settings, metrics: Metrics, clock: Clock = time.time) -> None:
        self.settings = settings
        self.metrics = metrics
        self._clock = clock
        self._client: dict[str, Any] = {
            "bootstrap_servers": settings.brokers,
            **settings.security.client_kwargs(),
        }
        self.runtime: dict[int, _Task] = {}
        #: how long the tasks' producers waited on the broker without an answer (_blind_spot)
        self._silence = BrokerSilence()
        #: partitions whose per-partition metric series this worker exports
        self._held: set[int] = set()
        self.partitions = 0
        self.ready = False
        self._rebalancing = False
        #: bumped at every revocation and assignment: a fetch that spans one is discarded
        self._generation = 0
        #: an error raised inside a rebalance callback (aiokafka would only log it)
        self._failure: BaseException | None = None
        self._consumer: AIOKafkaConsumer | None = None
        #: the consumer's fetched records read natively (``streams._fetch``); None: its getmany
        self._fetch: NativeFetch | None = None
        self._routing: Routing | None = None
        self._lock = asyncio.Lock()
        self._last_checkpoint = 0.0
        #: caught up, a round published windows or passed a window boundary: checkpoint early (see _run)
        self._commit_soon = False
        #: records taken since the last checkpoint (see _starved)
        self._taken = 0
        self._last_top = 0.0
        self._stopping = False
        self._last_resend = 0.0
        self._last_trim = 0.0
        #: the rounds had stopped for a while (an outage) when the last revocation came
        self._outage_before_rebalance = False
        #: an assignment whose tasks the main loop has yet to open (``_take_over``), and when it came
        self._pending: tuple[dict[int, list[TopicPartition]], float] | None = None
        #: wall minus monotonic time at the last round (see _follow_clock_steps)
        self._wall_offset: float | None = None
        #: where rule overrides come from (a faust table in the worker); polled at checkpoints
        self._rules_source: Callable[[], Mapping[str, Any]] | None = None
        self._rules_seen: dict[str, Any] = {}
        self._rules = RuleSet()
        for topic in _read_topics(settings):
            # Series at 0 from the start, so that a later skip is an increase Prometheus sees (a
            # series whose first sample is already 70 shows none); LivepulseInputRecordsSkipped
            # also catches one born non-zero, as after a restart that counts at its first fetch.
            metrics.inputs_rebased.labels(topic)
            metrics.input_records_expired.labels(topic)

    @property
    def tasks(self) -> dict[int, TaskAggregator]:
        """The aggregators of the tasks this worker runs, by partition number."""
        return {p: task.core for p, task in self.runtime.items()}

    @property
    def leaderboard(self) -> LeaderboardStage | None:
        """The leaderboard merge, when this worker runs task 0."""
        task = self.runtime.get(0)
        return None if task is None else task.pipeline.merge

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        if s.gc_threshold:
            # Room state is millions of long-lived lists, dicts and sets; with Python's default
            # (a young collection every 700 allocations, promoting into frequent full passes over
            # all of them) the collector took ~35 % of the data plane's CPU in a 100 k-room catch-up.
            gc.set_threshold(s.gc_threshold, 50, 100)
        with kafka_errors("starting the data plane"):
            await self._start_clients()
        log.info("data plane started: %d partitions per input, group %s", self.partitions, s.group_id)
        if not s.native_decoders:
            log.info("native decoders off (LIVEPULSE_NATIVE_DECODERS): inputs decoded by the Python loops")
        elif not NATIVE_DECODERS:
            log.warning(
                "native decoders not built (schemas/native): inputs decoded by the Python loops, slower"
            )
        if not s.core.native_core:
            log.info("native core off (LIVEPULSE_NATIVE_CORE): every window through the Python detector")
        elif not NATIVE_CORE:
            log.warning(
                "native core not built (streams/native): every window through the Python detector, slower"
            )

    async def _start_clients(self) -> None:
        s = self.settings
        admin = AIOKafkaAdminClient(**self._client)
        await admin.start()
        try:
            self.partitions = await ensure_topology(admin, s)  # normally done by prepare_topics already
        finally:
            await admin.close()
        self._routing = Routing(s.topics, self.partitions)
        self._consumer = AIOKafkaConsumer(
            **self._client,
            group_id=s.group_id,
            enable_auto_commit=False,
            # A position outside its log raises (``_out_of_range``): the client's own reset went
            # back to the log's start unannounced, and the records below the old position were
            # then dropped as already read.
            auto_offset_reset="none",
            # Re-routed events and markers are written in transactions: only committed ones count.
            isolation_level="read_committed",
            partition_assignment_strategy=(RangePartitionAssignor,),
            max_partition_fetch_bytes=s.fetch_partition_bytes,
            fetch_max_bytes=64 * 1024 * 1024,
            session_timeout_ms=s.group_session_timeout_ms,
            heartbeat_interval_ms=min(3_000, s.group_session_timeout_ms // 3),
            max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
            rebalance_timeout_ms=REBALANCE_TIMEOUT_MS,
        )
        # before it starts: the fetcher keeps the bytes of every response from the first
        self._fetch = NativeFetch(self._consumer) if s.native_fetch and keep_fetched_bytes() else None
        await self._consumer.start()
        # The one-partition leaderboard partials topic: range assignment gives its partition 0 to the
        # member that gets partition 0 of the inputs, so the leaderboard merge runs with task 0.
        self._consumer.subscribe(_read_topics(s), listener=_Rebalance(self))
        self._last_checkpoint = time.monotonic()

    async def run(self) -> None:
        """Fetch and process until :meth:`stop`; infrastructure errors propagate as
        :class:`~streams.exceptions.LivepulseError`.

        A failure is kept (``_failure``): a round that failed may have staged the tasks' changed
        rooms into a transaction that was then aborted, so no checkpoint may follow it, neither
        the group's revocation (which may take the lock as this unwinds) nor :meth:`stop`."""
        try:
            with kafka_errors("consuming"):
                await self._run()
        except Exception as exc:
            if self._failure is None:
                self._failure = exc
            raise

    async def _run(self) -> None:
        assert self._consumer is not None
        s = self.settings
        while not self._stopping:
            if self._failure is not None:  # a rebalance callback failed: take nothing over
                raise self._failure
            if self._pending is not None:
                with kafka_errors("taking over partitions"):
                    await self._take_over()
            generation = self._generation
            try:
                if self._fetch is not None:
                    batches = await self._fetch.getmany(s.fetch_timeout_ms, s.max_batch_records)
                else:
                    batches = await self._consumer.getmany(
                        timeout_ms=s.fetch_timeout_ms, max_records=s.max_batch_records
                    )
            except OffsetOutOfRangeError as exc:
                async with self._lock:
                    await self._out_of_range(exc.args[0] if exc.args else {})
                continue
            except NoOffsetForPartitionError as exc:
                # Said of a partition just assigned that has no committed offset (the leaderboard
                # partials before the first checkpoint of the task that merges them, a new group),
                # and raised once even when the take-over has set its position since. Where a task
                # stands decides; otherwise it is not taken over yet.
                async with self._lock:
                    await self._without_offset(exc.args[0] if exc.args else None)
                continue
            if self._failure is not None:
                raise self._failure
            async with self._lock:
                if self._stopping:
                    break
                if self._rebalancing or generation != self._generation:
                    await self._rewind(batches)  # fetched across a rebalance: read it again
                    continue
                if await self._process(batches):
                    self._commit_soon = True
                since_ms = (time.monotonic() - self._last_checkpoint) * 1000
                prompt = self._commit_soon and since_ms >= PROMPT_COMMIT_GAP_MS and self._few_dirty()
                starved = since_ms >= STARVED_COMMIT_GAP_MS and self._starved()
                if prompt or starved or since_ms >= s.commit_interval_ms:
                    await self._checkpoint(self.runtime)

    async def _rewind(self, batches: Mapping[TopicPartition, Sequence[Any]]) -> None:
        """Put the consumer back where the tasks stand for partitions of a discarded fetch.

        The fetch may have been drained before or after the seeks of an assignment: either way
        the tasks' positions say what comes next.
        """
        assert self._consumer is not None
        for tp in batches:
            task = self.runtime.get(tp.partition)
            if task is None:
                continue
            position = task.positions.get(tp)
            if position is None:
                await self._consumer.seek_to_beginning(tp)  # opened without a recorded offset
            else:
                self._consumer.seek(tp, position)

    def request_stop(self) -> None:
        """Make :meth:`run` return after the batch in hand."""
        self._stopping = True

    async def stop(self) -> None:
        """Commit a last checkpoint when possible, then close the clients.

        A checkpoint that fails here is not retried: its transaction is aborted
        and the next owner resumes from the last committed one.
        """
        self._stopping = True
        try:
            async with self._lock:
                try:
                    if self.runtime and self._failure is None:
                        await self._checkpoint(self.runtime)
                except LivepulseError as exc:
                    log.error("last checkpoint failed, nothing committed past the previous one: %r", exc)
                finally:
                    self.ready = False
                    await self._close_tasks()
        finally:
            # Outside the lock: leaving the group may run the revocation callback, which takes it.
            if self._consumer is not None:
                await self._consumer.stop()

    # -- processing ------------------------------------------------------------------------

    async def _process(self, batches: Mapping[TopicPartition, Sequence[Any]]) -> bool:
        """One fetch round: each partition through its task's pipeline, then a tick, the windows
        and alerts sent (the caller commits at checkpoints; a task reading live traffic commits its
        own at once, ``_commit_task``). Returns whether, in a round that did not fill its fetch
        (caught up), windows were published or a task's frontier passed a window's end + grace,
        and no task commit of the round covered them: then a checkpoint should come now, to make
        the windows visible or to write the markers that let the other tasks close theirs (a
        catch-up, whose fetches are full, goes on at the commit interval). The consumer's
        positions against its ends would not tell what is caught up: it prefetches, so in live
        traffic it nearly always knows of records it has not handed over yet."""
        now = self._clock()
        now_ms = int(now * 1000)
        steady = time.monotonic()
        self._follow_clock_steps(now, steady)
        self._after_blind_spot(now_ms)
        m = self.metrics
        started = time.perf_counter()
        total = 0
        waited = 0.0
        windows = 0
        #: windows published by tasks that did not commit at once; alert transitions staged early
        uncommitted = 0
        transitions = False
        self._arriving(batches, now_ms)
        # caught up (the fetch did not fill) with live traffic: a task that publishes windows, or
        # whose markers would let others close theirs, commits at once (see _commit_task)
        caught_up = sum(len(messages) for messages in batches.values()) < self.settings.max_batch_records
        inputs = self._routing.sources if self._routing is not None else {}
        for tp, messages in batches.items():
            task = self.runtime.get(tp.partition)
            if task is None:
                continue  # revoked while the fetch was in flight; the new owner re-reads it
            messages = _unread(task, tp, messages)  # checked here: a send above may have let a
            if not messages:  # rebalance in, and a new owner restored at other positions
                continue
            total += len(messages)
            if tp.topic in inputs:  # not the repartition topic: its markers come back at every checkpoint
                self._taken += len(messages)
            published = task.pipeline.process(tp.topic, messages, now_ms)
            task.positions[tp] = messages[-1].offset + 1
            if task.pipeline.unpublished:
                published += await self._publish_rest(task)
            if published:
                windows += published
                waited += await self._send()  # out before the next partition's work
                left, alerted = await self._commit_if_live(task, now_ms, caught_up, published)
                uncommitted += left
                transitions = transitions or alerted
        busy, behind = await self._lagging(now_ms)
        for partition, task in self.runtime.items():
            if task.held:  # not read on purpose: they hold the watermark and are no outage
                busy.setdefault(partition, set()).update(task.held)
                behind.setdefault(partition, set()).update(task.held)
            published = task.pipeline.tick(now_ms, busy.get(partition, ()), behind.get(partition, ()))
            if task.pipeline.unpublished:
                published += await self._publish_rest(task)
            windows += published
            due = caught_up and bool(published or task.owed or task.pipeline.marker_releases_windows(now_ms))
            left, alerted = await self._commit_if_live(task, now_ms, due, published)
            uncommitted += left
            transitions = transitions or alerted
            watermark = task.core.watermark_ms
            if watermark is not None:
                m.watermark_delay.labels(str(partition)).set(max(0.0, now - watermark / 1000))
        self._align()
        # Closed windows go to the producer before the spike detector evaluates them: at a window
        # boundary tens of thousands of rooms close at once, and their records need not wait for it.
        waited += await self._send()
        m.publish_wait_seconds.observe(waited)
        await asyncio.sleep(0)
        for task in self.runtime.values():
            transitions = task.pipeline.publish_alerts(now_ms) or transitions
        resend = steady - self._last_resend >= self.settings.alert_resend_ms / 1000
        if transitions or resend:
            self._count_firing(now_ms, resend=resend)
        await self._send()
        if total:
            m.batch_size.observe(total)
            m.batch_seconds.observe(time.perf_counter() - started)
        m.active_rooms.set(sum(len(task.core.rooms) for task in self.runtime.values()))
        if steady - self._last_top >= self.settings.core.window_seconds:
            self._last_top = steady
            self._export_top_rooms()
        if total >= self.settings.max_batch_records:
            return False
        runtime = self.runtime.values()
        return bool(uncommitted) or any(t.pipeline.marker_releases_windows(now_ms) for t in runtime)

    def _align(self) -> None:
        """Pause the inputs that ran ahead of their task's watermark (its slowest input or
        re-routing sender), resume those back within reach (``TaskAggregator.sources_to_hold``).
        A paused partition's prefetched records are dropped by the client and fetched again after
        it resumes."""
        assert self._consumer is not None and self._routing is not None
        names = self._routing.names
        for partition, task in self.runtime.items():
            held = task.pipeline.core.sources_to_hold(task.held)
            if held == task.held:
                continue
            paused = [TopicPartition(names[s], partition) for s in held - task.held]
            resumed = [TopicPartition(names[s], partition) for s in task.held - held]
            if paused:
                self._consumer.pause(*paused)
                for tp in paused:
                    self.metrics.input_holds.labels(tp.topic).inc()
            if resumed:
                self._consumer.resume(*resumed)
            task.held = held
        self.metrics.inputs_held.set(sum(len(task.held) for task in self.runtime.values()))

    def _starved(self) -> bool:
        """Whether every input of every task is held (``_align``) and the tasks took events since
        the last checkpoint: the watermarks wait for markers the next checkpoint writes, and
        until then the loop has nothing to read (``STARVED_COMMIT_GAP_MS``)."""
        tasks = self.runtime.values()
        return bool(self._taken) and all(len(t.held) == len(t.core.sources) for t in tasks)

    def _few_dirty(self) -> bool:
        """Whether a checkpoint now would write few rooms (see ``PROMPT_COMMIT_MAX_ROOMS``)."""
        return sum(task.core.dirty_rooms for task in self.runtime.values()) <= PROMPT_COMMIT_MAX_ROOMS

    def _follow_clock_steps(self, wall: float, steady: float) -> None:
        """Tell every task when the wall clock stepped (NTP setting it, a resume from suspend):
        wall minus monotonic time moved by over a second since the last round. Intervals are
        measured on the monotonic clock; the tasks keep wall-clock instants, which move with it."""
        offset = wall - steady
        last, self._wall_offset = self._wall_offset, offset
        if last is None or abs(offset - last) < CLOCK_STEP_S:
            return
        step_ms = round((offset - last) * 1000)
        log.warning(
            "the wall clock stepped by %+.1f s: silences and holds leave the step out", step_ms / 1000
        )
        self.metrics.clock_steps.inc()
        for task in self.runtime.values():
            task.core.clock_stepped(step_ms)

    def _arriving(self, batches: Mapping[TopicPartition, Sequence[Any]], now_ms: int) -> None:
        """Before any of the round is applied, tell each task which of its inputs will deliver
        (``TaskAggregator.arriving``): those with records in this round, and those the client's
        last fetch response showed readable records of past the position (left in its buffer by
        this round's ``max_records``, or on their way in the next fetch). Without the latter, a
        backlog read over several rounds after every input fell idle made the inputs of the
        later rounds late behind the first round's."""
        assert self._consumer is not None and self._routing is not None
        consumer, sources = self._consumer, self._routing.sources
        for tp, messages in batches.items():
            task = self.runtime.get(tp.partition)
            source = sources.get(tp.topic)
            if task is None or source is None or source == REPARTITION:
                continue
            if _unread(task, tp, messages):
                task.core.arriving(source, now_ms)
        for task in self.runtime.values():
            for tp, position in task.positions.items():
                source = sources.get(tp.topic)
                if source is None or source == REPARTITION or source in task.held or tp in batches:
                    continue
                _, readable = log_ends(consumer.highwater(tp), consumer.last_stable_offset(tp))
                if readable is not None and readable > position:
                    task.core.arriving(source, now_ms)

    def _after_blind_spot(self, now_ms: int) -> None:
        """Before a round's first event: if since the last round the loop waited on a broker that
        did not answer for ``idle_partition_ms`` or more (a send or commit waiting for an
        unreachable broker; a long computation or a slow broker does not count), every task holds
        its watermark (``outage_hold_ms``): the producers buffered through the same outage and come
        back at their own pace."""
        outage = self._blind_spot()
        self._silence.take()
        if outage:
            for task in self.runtime.values():
                task.core.hold_after_outage(now_ms)

    def _blind_spot(self) -> bool:
        """Whether, since the last round, the loop waited on the broker and heard nothing from it
        for ``idle_partition_ms`` or more (the silence after which an input counts as gone; see
        :class:`BrokerSilence`).

        Timed silence, not the process's idle CPU: while the broker is unreachable the clients keep
        trying to reconnect and may log thousands of errors a second, work that made a blocked
        checkpoint look like a busy process and hid the outage. Nor the time spent waiting: a
        slow broker answers as it goes. A catch-up's window boundary at 100 000 rooms sends tens
        of megabytes at once, and a broker sharing two cores with the worker took 1.3-1.6 s of a
        2.1-2.4 s round to take them (the load test, session 33); its first checkpoint over 2 s
        (session 36). Each held every watermark for ``outage_hold_ms`` and kept all windows open
        meanwhile (0.9-1 GB instead of 0.5)."""
        return self._silence.longest * 1000 >= self.settings.core.idle_partition_ms

    async def _send(self) -> float:
        """Hand what every task queued to its producer; returns the seconds that took."""
        started = time.perf_counter()
        for task in self.runtime.values():
            await task.producer.send()
        return time.perf_counter() - started

    @property
    def _in_flight_bytes(self) -> int:
        """What a task's producer may hold unacknowledged before its next slice is encoded: the
        slice just sent and about one more, so encoding the next overlaps sending the last."""
        return 2 * self.settings.output_slice_bytes

    async def _publish_rest(self, task: _Task) -> int:
        """The rest of the windows ``task`` closed, a slice at a time (``output_slice_bytes``),
        each once the producer holds at most two slices unacknowledged; returns how many windows.
        At 100 000 rooms one task's boundary wrote ~40 MB of records before the producer took
        any, on top of the steady state (RESULTS, session 39)."""
        published = 0
        while task.pipeline.unpublished:
            await task.producer.settle(self._in_flight_bytes)
            published += task.pipeline.publish_windows()
        return published

    def _export_top_rooms(self, n: int = 10) -> None:
        """Bounded business view for Prometheus: the top-n rooms by GMV and by views, by rank (not a
        series per room)."""
        m = self.metrics
        for field, gauge in (("gmv_minor", m.top_room_value), ("views", m.top_room_views)):
            ranked = top_rooms(self.tasks.values(), field, n)
            for rank in range(1, n + 1):
                value = getattr(ranked[rank - 1], field) if rank <= len(ranked) else 0
                gauge.labels(str(rank)).set(value)

    async def _lagging(self, now_ms: int) -> tuple[dict[int, set[int]], dict[int, set[int]]]:
        """Input sources behind their last stable offset, or not known to be caught up, by partition;
        and of those, the ones known to be behind (the last fetch response showed records past the
        position: a busy loop has not read them yet, the broker is not the reason).

        A source counts as caught up only if a fetch response said so within
        ``idle_partition_ms``: while the broker is unreachable nothing is known,
        so no input turns idle and wall time does not move the watermark past
        events still on their way. Updates the lag gauge. The repartition topic
        is not a watermark source (its senders' markers are).
        """
        assert self._consumer is not None and self._routing is not None
        consumer = self._consumer
        sources = self._routing.sources
        fresh_ms = self.settings.core.idle_partition_ms
        busy: dict[int, set[int]] = {}
        behind: dict[int, set[int]] = {}
        for tp in consumer.assignment():
            if tp.topic not in sources:
                continue  # the leaderboard partials: not a watermark source
            try:
                # Immediate while the position is valid; after a reset it may wait for the broker.
                async with asyncio.timeout(0.05):
                    position = await consumer.position(tp)
            except IllegalStateError:  # revoked meanwhile
                continue
            except TimeoutError:
                busy.setdefault(tp.partition, set()).add(sources[tp.topic])
                continue
            high, stable = consumer.highwater(tp), consumer.last_stable_offset(tp)
            source = sources[tp.topic]
            if source != REPARTITION:
                is_busy, is_behind = input_state(
                    position, high, stable, consumer.last_poll_timestamp(tp), now_ms, fresh_ms
                )
                if is_busy:
                    busy.setdefault(tp.partition, set()).add(source)
                if is_behind:
                    behind.setdefault(tp.partition, set()).add(source)
            end, readable = log_ends(high, stable)
            if end is not None and readable is not None:
                label = (tp.topic, str(tp.partition))
                self.metrics.consumer_lag.labels(*label).set(max(0, readable - position))
                self.metrics.uncommitted.labels(*label).set(max(0, end - readable))
        return busy, behind

    def _count_firing(self, now_ms: int, *, resend: bool) -> None:
        """Update the firing gauge; with ``resend``, re-publish every firing alert."""
        by_metric = dict.fromkeys(SPIKE_METRICS, 0)
        if resend:
            self._last_resend = time.monotonic()
        for task in self.runtime.values():
            for event in task.pipeline.firing(now_ms, resend=resend):
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
        for task in self.runtime.values():
            task.core.rules, task.core.categories = self._rules.rules, self._rules.categories
        self.metrics.rule_overrides.set(self._rules.overrides)
        log.info(
            "spike rules updated: %d overrides, %d room categories",
            self._rules.overrides,
            len(self._rules.categories),
        )

    # -- checkpoints and rebalances ------------------------------------------------------------

    async def _checkpoint(self, tasks: Mapping[int, _Task]) -> None:
        """Commit one transaction per task: markers, changelog and offsets (caller holds the lock).

        Raises if any task's transaction failed; the others are committed.
        """
        started = time.perf_counter()
        commits = (self._commit(task) for task in tasks.values())
        results = await asyncio.gather(*commits, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        for failure in failures:
            self.metrics.checkpoint_failures.labels(type(failure).__name__).inc()
        if failures:
            raise failures[0]
        self.metrics.checkpoint_rooms.inc(sum(r for r in results if isinstance(r, int)))
        self._last_checkpoint = time.monotonic()
        self._commit_soon = False
        self._taken = 0
        self._refresh_rules()
        self.metrics.checkpoint_seconds.observe(time.perf_counter() - started)
        trim_s = self.settings.malloc_trim_ms / 1000
        if trim_s and self._last_checkpoint - self._last_trim >= trim_s:
            self._last_trim = self._last_checkpoint
            release_free_memory()  # the records just sent were the last use of much of the heap

    def _live(self, task: _Task, now_ms: int) -> bool:
        """Whether ``task`` reads live traffic: its own inputs' progress (``frontier_ms``) is within
        a window (plus grace) of the wall clock. A fetch that did not fill says little in a
        catch-up (the client hands over what it has prefetched), and a commit per task at every
        boundary of a backlog cost up to a quarter of its throughput. Not the watermark: that
        waits for the other tasks' markers, and a task holding back on them would hold back its
        own markers too, each task waiting for the others until the commit interval."""
        frontier = task.core.frontier_ms(now_ms)
        cfg = self.settings.core
        return frontier is not None and now_ms - frontier <= cfg.window_ms + cfg.grace_ms

    async def _commit_if_live(self, task: _Task, now_ms: int, due: bool, published: int) -> tuple[int, bool]:
        """Commit ``task`` at once if a commit is ``due`` and it reads live traffic (``_live``);
        returns how many of the ``published`` windows are left for a later checkpoint, and
        whether alert transitions were written."""
        if not (due and self._live(task, now_ms)):
            return published, False
        committed, alerted = await self._commit_task(task, now_ms)
        return (0 if committed else published), alerted

    async def _commit_task(self, task: _Task, now_ms: int) -> tuple[bool, bool]:
        """Commit one task's transaction now: while caught up, it just published windows, or its
        frontier passed a window's end + grace.

        Readers (``read_committed``) see a window only once its transaction commits, and a task
        closes a window only once every other task's marker says its frontier passed the window's
        end + grace; markers go out with their task's commit. With many rooms changed, the whole
        worker's early checkpoint is skipped (``PROMPT_COMMIT_MAX_ROOMS``), so at each boundary
        the markers waited for the commit interval, and the first task's windows for the other
        tasks' boundary work too. A task's own checkpoint writes only its rooms (a few thousand
        at 100 000 rooms). At most one such commit per task every ``PROMPT_COMMIT_GAP_MS``: one
        asked for sooner is owed (``_Task.owed``), and taken in a later round.

        The checkpoint runs the spike detector over the windows closed so far (its state goes into
        the changelog), so the task's alert transitions are written first, into the same
        transaction. Returns whether it committed, and whether there were alert transitions."""
        if (time.monotonic() - task.committed_at) * 1000 < PROMPT_COMMIT_GAP_MS:
            task.owed = True
            return False, False
        alerted = task.pipeline.publish_alerts(now_ms)
        started = time.perf_counter()
        try:
            written = await self._commit(task)
        except BaseException as exc:
            self.metrics.checkpoint_failures.labels(type(exc).__name__).inc()
            raise
        self.metrics.checkpoint_rooms.inc(written)
        self.metrics.checkpoint_seconds.observe(time.perf_counter() - started)
        return True, alerted

    async def _commit(self, task: _Task) -> int:
        """One task's checkpoint transaction; returns the changelog records written."""
        assert self._routing is not None
        sources = self._routing.sources
        offsets = {sources[tp.topic]: offset for tp, offset in task.positions.items() if tp.topic in sources}
        written = 0
        for staged in task.pipeline.checkpoint_slices(int(self._clock() * 1000), offsets):
            written += staged
            await task.producer.settle(self._in_flight_bytes)  # sent before the next is encoded
        await task.producer.commit(task.positions, self.settings.group_id)
        task.committed_at = time.monotonic()
        task.owed = False
        return written

    async def on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        try:
            with kafka_errors("giving up partitions"):
                await self._revoke()
        except BaseException as exc:
            self._failure = exc
            raise

    async def on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        try:
            with kafka_errors("taking over partitions"):
                await self._assign(assigned)
        except BaseException as exc:
            self._failure = exc
            raise

    async def _revoke(self) -> None:
        """Commit every task and close it; its next owner (maybe this worker) restores it.

        A commit that fails here (another worker fenced this one while it was
        frozen, or the broker is gone) loses nothing: the transaction is
        aborted and the next owner resumes from the last committed checkpoint.
        """
        async with self._lock:
            # A rebalance after a blind spot (the broker unreachable past the session timeout: the
            # group dropped this member) is still an outage: the next owners hold (see _assign).
            self._outage_before_rebalance = self._outage_before_rebalance or self._blind_spot()
            self.ready = False
            self._rebalancing = True
            self._pending = None  # not opened yet: nothing to give up
            self._generation += 1
            if self.runtime and self._failure is None:  # stopping too: stop() finds no task after this
                try:
                    await self._checkpoint(self.runtime)
                except LivepulseError as exc:
                    log.warning("checkpoint at revocation failed; uncommitted work discarded: %r", exc)
            await self._close_tasks()
            # none until the next assignment: a group that cannot settle shows 0, and its alert fires
            self.metrics.assigned_partitions.set(0)
            self._count_firing(0, resend=False)  # their next owner counts the rooms' alerts now
            self.metrics.leaderboard_pending_windows.set(0)  # the merge too, if task 0 was here
            self.metrics.leaderboard_wait_seconds.set(0)

    async def _close_tasks(self) -> None:
        tasks, self.runtime = self.runtime, {}
        for task in tasks.values():
            await task.producer.close()

    async def _assign(self, assigned: Iterable[TopicPartition]) -> None:
        """Take note of the assignment and pause its partitions; the main loop opens the tasks
        (``_take_over``) once this callback has returned.

        aiokafka starts a member's heartbeats only after its assignment callback returns: a
        restore inside it that outlasted the session timeout had the member dropped, assigned
        again and restoring again, round after round (seen with 7.6 s restores of 100 000 rooms
        under a 10 s session timeout). Outside it, the heartbeats go on while the tasks restore.
        """
        async with self._lock:
            await self._close_tasks()  # normally done at revocation
            self._pending = None
            if self._stopping:
                # Leaving the group: aiokafka finishes a join in flight on its way out and hands
                # over partitions. Opening them would fence their next owners' producers and
                # restore state within the shutdown budget, for a worker that reads nothing more.
                self.metrics.assigned_partitions.set(0)
                return
            tps = list(assigned)
            by_partition: dict[int, list[TopicPartition]] = {}
            for tp in tps:
                by_partition.setdefault(tp.partition, []).append(tp)
            self._check_assignment(by_partition)
            assert self._consumer is not None
            if tps:
                self._consumer.pause(*tps)  # nothing is read before its task is restored and seeked
            self._pending = (by_partition, time.monotonic())

    async def _take_over(self) -> None:
        """Open the tasks of the assignment noted by ``_assign``: restore each (side by side), seek
        its inputs to the offsets its checkpoint recorded, resume them. Runs in the main loop,
        between fetches, under the lock: a revocation meanwhile waits for it, then gives the tasks
        up; one before it cancels it (``_revoke`` drops the pending assignment)."""
        async with self._lock:
            if self._pending is None or self._stopping:
                return
            (by_partition, started), self._pending = self._pending, None
            assert self._consumer is not None
            for gone in self._held - set(by_partition):
                self.metrics.forget_partition(gone)  # no stale lag or watermark series for moved partitions
            self._held = set(by_partition)
            if 0 not in by_partition:
                self.metrics.platform.clear()  # the leaderboard merge runs elsewhere now
            opened = await asyncio.gather(
                *(self._open_task(partition, tps) for partition, tps in sorted(by_partition.items()))
            )
            if self._stopping:  # asked to stop while restoring: no checkpoint of state just read
                for task in opened:
                    await task.producer.close()
                self.metrics.assigned_partitions.set(0)
                return
            self.runtime = {task.partition: task for task in opened}
            self._consumer.resume(*(tp for tps in by_partition.values() for tp in tps))
            self.metrics.assigned_partitions.set(len(by_partition))
            if self.settings.gc_threshold:
                gc.collect()
                gc.freeze()  # restored state is long-lived: keep it out of every later collection
            self._last_checkpoint = time.monotonic()
            # The rebalance (revoke, join, restore) was no round and mostly waiting: not an outage
            # the next round should hold every watermark for (_after_blind_spot) - unless the
            # rounds had stopped before it (_revoke).
            self._silence.take()
            if self._outage_before_rebalance:
                self._outage_before_rebalance = False
                now_ms = int(self._clock() * 1000)
                for task in self.runtime.values():
                    task.core.hold_after_outage(now_ms)
            self._generation += 1
            self._rebalancing = False
            self.ready = True
            self._count_firing(int(self._clock() * 1000), resend=False)  # the restored rooms' alerts
            took = time.monotonic() - started
            self.metrics.assignment_seconds.observe(took)
            log.info("assigned partitions %s; state restored in %.1f s", sorted(by_partition), took)
            if took > REBALANCE_TIMEOUT_MS / 2000:
                # A member still restoring when the next rebalance starts makes the group wait for it
                # (up to REBALANCE_TIMEOUT_MS, then it is dropped and joins again).
                log.warning(
                    "taking over partitions took %.1f s, over half the group's rebalance timeout "
                    "(%.0f s): spread the rooms over more partitions and workers",
                    took,
                    REBALANCE_TIMEOUT_MS / 1000,
                )

    def _check_assignment(self, by_partition: Mapping[int, list[TopicPartition]]) -> None:
        """Refuse an assignment no task layout fits: partitions were added to an input topic while
        the workers ran (tasks past the changelog's partitions; or, when only some inputs grew, one
        task's inputs split across workers, which would fence each other)."""
        inputs = set(self.settings.topics.inputs)
        for partition, tps in sorted(by_partition.items()):
            topics = {tp.topic for tp in tps}
            if partition >= self.partitions or not inputs <= topics:
                raise TopologyError(
                    f"assigned partition {partition} of {sorted(topics & inputs)} but the tasks were laid "
                    f"out for {self.partitions} partitions of every input {sorted(inputs)}: partitions "
                    "added to an input topic while the workers ran (the RUNBOOK's 'Add a worker (scale out)' "
                    "says how to change the count), or a topic's metadata missing for a moment (the "
                    "restarted worker checks every topic at start)"
                )

    async def _open_task(self, partition: int, tps: list[TopicPartition]) -> _Task:
        """Fence the previous owner, restore the committed state, seek to the offsets it recorded."""
        assert self._consumer is not None and self._routing is not None
        s = self.settings
        sources = self._routing.sources
        producer = TaskProducer(
            self._client,
            s.app_id,
            partition,
            transaction_timeout_ms=s.transaction_timeout_ms,
            native_batches=s.native_batches,
            silence=self._silence,
        )
        await producer.start()
        records, key_offsets, seconds = await read_partition(s, partition)
        # The first-event hold waits for the other tasks' next checkpoint and the fetch that reads
        # it (see first_event_hold_ms); here now_ms is the wall clock, which caps the watermark.
        config = replace(s.core, first_event_hold_ms=2 * s.commit_interval_ms, max_watermark_lead_ms=0)
        core = self._routing.task_core(partition, config)
        core.rules, core.categories = self._rules.rules, self._rules.categories
        rooms = core.restore(records)
        await asyncio.sleep(0)  # heartbeats between one partition's decoding and the next's
        pipeline = TaskPipeline(partition, core, producer.outbound, self._routing, s, self.metrics)
        task = _Task(pipeline, producer)
        for key, reason in pipeline.quarantine(key_offsets, int(self._clock() * 1000)):
            log.error("partition %d: quarantined changelog record %r: %s", partition, key, reason)
        if pipeline.merge is not None:
            pipeline.merge.restore(records)
        ends = await self._consumer.end_offsets(
            [tp for tp in tps if tp.topic != s.topics.leaderboard_partials]
        )
        for tp in tps:
            if tp.topic == s.topics.leaderboard_partials:
                offset = None if pipeline.merge is None else pipeline.merge.merge.next_offset
                if offset is None:  # nothing merged yet: from the start
                    await self._consumer.seek_to_beginning(tp)
                else:
                    self._consumer.seek(tp, offset)
                    task.positions[tp] = offset
                continue
            offset = core.restored_offsets.get(sources[tp.topic])
            if offset is not None and ends[tp] < offset:
                offset = self._rebase(core, tp, offset, ends[tp])
            if offset is None:  # no checkpoint recorded it (first start, or a quarantined metadata record)
                offset = await self._consumer.committed(tp)
            if offset is None:
                await self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, offset)
                task.positions[tp] = offset
        self.metrics.restore_seconds.observe(seconds)
        log.info(
            "partition %d: restored %d rooms from %d changelog keys in %.2fs",
            partition,
            rooms,
            len(records),
            seconds,
        )
        return task

    async def _without_offset(self, tp: TopicPartition | None) -> None:
        """Give a partition the client found without a committed offset a position: the task's, or
        the log's start (the take-over seeks it again when it opens the task)."""
        assert self._consumer is not None
        if not isinstance(tp, TopicPartition) or tp not in self._consumer.assignment():
            return
        task = self.runtime.get(tp.partition)
        position = None if task is None else task.positions.get(tp)
        if position is None:
            await self._consumer.seek_to_beginning(tp)
        else:
            self._consumer.seek(tp, position)

    async def _out_of_range(self, positions: Mapping[TopicPartition, int]) -> None:
        """Fetch ``positions`` that fell outside their partition's log (caller holds the lock).

        Below the log's start: retention deleted records before they were read; they are
        counted (``livepulse_input_records_expired_total``) and reading goes on at the start.
        Past its end: the log was truncated (an unclean leader election) or the topic recreated
        while it was read; as at a restore (``_rebase``), reading goes on at the log end and the
        records from there on count as new. Back within the log by now (truncated and refilled
        since): read on from the position, logged and counted as a rebase."""
        assert self._consumer is not None and self._routing is not None
        tps = [tp for tp in positions if tp.partition in self.runtime]
        if not tps:
            return
        with kafka_errors("finding the logs of out-of-range positions"):
            starts = await self._consumer.beginning_offsets(tps)
            ends = await self._consumer.end_offsets(tps)
        for tp in tps:
            task, held = self.runtime[tp.partition], positions[tp]
            start, end = starts[tp], ends[tp]
            resume = held
            if held < start:
                log.error(
                    "%s[%d]: records %d to %d were deleted (retention) before this worker read them; "
                    "they are not counted. Reading on at %d",
                    tp.topic,
                    tp.partition,
                    held,
                    start - 1,
                    start,
                )
                self.metrics.input_records_expired.labels(tp.topic).inc(start - held)
                resume = start
            elif held <= end:
                # Within the log again: truncated below ``held`` (an unclean leader election) and
                # refilled past it before the log's end was asked for. The records from the
                # truncation point up to ``held`` are new ones this worker will not read: not
                # knowing where the truncation was, it cannot count them, but it says so.
                log.error(
                    "%s[%d]: position %d was out of range and is within the log again (ends at %d): "
                    "the log was most likely truncated and refilled; records below %d written since "
                    "are not counted",
                    tp.topic,
                    tp.partition,
                    held,
                    end,
                    held,
                )
                self.metrics.inputs_rebased.labels(tp.topic).inc()
            else:
                if tp.topic in self._routing.sources:
                    resume = self._rebase(task.pipeline.core, tp, held, end)
                else:  # the leaderboard partials: written by the tasks' own transactions
                    log.error("%s[%d] ends at %d, below %d", tp.topic, tp.partition, end, held)
                    self.metrics.inputs_rebased.labels(tp.topic).inc()
                    resume = end
            self._consumer.seek(tp, resume)
            task.positions[tp] = resume

    def _rebase(self, core: TaskAggregator, tp: TopicPartition, held: int, end: int) -> int:
        """The log of ``tp`` ends below the offset the state holds: resume at its end."""
        log.error(
            "%s[%d] ends at offset %d but the state holds it up to %d: the log was truncated "
            "(an unclean leader election) or the topic recreated. Resuming at %d: records from there "
            "on count as new. If the topic was recreated, its records below %d are not counted: "
            "reset the state (RUNBOOK: Reset state) to count them",
            tp.topic,
            tp.partition,
            end,
            held,
            end,
            end,
        )
        self.metrics.inputs_rebased.labels(tp.topic).inc()
        assert self._routing is not None
        core.rebase(self._routing.sources[tp.topic], end)
        return end


def _read_topics(settings: Settings) -> list[str]:
    """The topics the data plane's consumer reads."""
    t = settings.topics
    return [*t.inputs, t.repartition, t.leaderboard_partials]


def _unread(task: _Task, tp: TopicPartition, messages: Sequence[Any]) -> Sequence[Any]:
    """The fetched ``messages`` of ``tp`` at or past the task's position: a fetch in flight
    across a seek (a restore) may bring records the task's state already holds."""
    position = task.positions.get(tp)
    if position is None or not messages or messages[0].offset >= position:
        return messages
    return [msg for msg in messages if msg.offset >= position]


def _find_malloc_trim() -> Callable[[int], int] | None:
    libc = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(libc).malloc_trim if libc else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None
    return trim


_MALLOC_TRIM = _find_malloc_trim()


def release_free_memory() -> bool:
    """Hand the allocator's free pages back to the system (glibc ``malloc_trim(0)``: every arena,
    whole free pages anywhere in the heap, not only at its top); False where there is no such call."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


def log_ends(high: int | None, stable: int | None) -> tuple[int | None, int | None]:
    """``(end, readable)`` of an input partition from its last fetch response: the high watermark
    and the last stable offset, each standing in for the other when a response lacks it."""
    return (high if high is not None else stable), (stable if stable is not None else high)


def input_state(
    position: int, high: int | None, stable: int | None, polled_ms: int | None, now_ms: int, fresh_ms: int
) -> tuple[bool, bool]:
    """Whether an input partition read ``read_committed`` is busy (holds its task's watermark) and
    whether it is behind (busy for a reason other than an outage), from the consumer's position, the
    high watermark and last stable offset of its last fetch response, and when that came.

    The position stops at the last stable offset; records of an open upstream transaction lie
    between it and the high watermark. They are events on their way (a transactional producer
    commits once per checkpoint: seconds), not silence: the input is busy until the position reaches
    the high watermark (aborted records are skipped over). Without a fetch response within
    ``fresh_ms`` nothing is known (the broker may be unreachable): busy, and behind only if the last
    response showed records it could read.
    """
    end, readable = log_ends(high, stable)
    if end is None or readable is None:  # no fetch response yet
        return True, False
    fresh = polled_ms is not None and now_ms - polled_ms <= fresh_ms
    if fresh and position >= end:
        return False, False
    return True, position < readable or (fresh and position < end)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._plane.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._plane.on_assigned(assigned)
