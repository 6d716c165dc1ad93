"""The data plane and its host: steps of the wall clock, free memory handed back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from schemas import ViewerEvent
from streams._transactions import BrokerSilence
from streams.dataplane import DataPlane, _Task
from streams.metrics import Metrics
from streams.pipeline import Routing
from streams.settings import Settings
from tests.unit.test_pipeline import NOW_MS, PARTITIONS, T0, TOPICS, counter, make


def test_a_step_of_the_wall_clock_moves_the_tasks_wall_instants_and_is_counted() -> None:
    metrics = Metrics()
    plane = DataPlane(Settings(partitions=4), metrics)
    pipeline, _, _ = make(partition=0)
    plane.runtime = {0: _Task(pipeline, producer=None)}  # type: ignore[arg-type]
    core = pipeline.core
    core.apply(0, [(1, ViewerEvent("join", "r", "u", T0))], NOW_MS)
    before = dict(core._src_wall)

    plane._follow_clock_steps(NOW_MS / 1000, 1_000.0)
    plane._follow_clock_steps(NOW_MS / 1000 + 0.5, 1_000.4)  # 0.1 s of drift: no step
    assert core._src_wall == before
    plane._follow_clock_steps(NOW_MS / 1000 + 301.0, 1_001.0)  # 0.6 s passed, the clock moved 300.5 s
    assert core._src_wall == {s: t + 299_900 for s, t in before.items()}
    assert metrics.clock_steps._value.get() == 1


def test_free_pages_inside_a_fragmented_heap_go_back_to_the_system() -> None:
    """Records of a few KB made and dropped between long-lived objects (a checkpoint's work) leave
    the heap full of free pages glibc keeps; malloc_trim(0) hands them back."""
    from loadtest.bench_memory import rss
    from streams.dataplane import release_free_memory

    release_free_memory()
    kept, dropped = [], []
    for i in range(30_000):
        dropped.append(bytes(5_000) + b"%d" % i)  # over pymalloc's 512 B: malloc'd
        kept.append(bytes(600) + b"%d" % i)  # long-lived, between them
    del dropped
    before = rss()
    assert release_free_memory()
    assert before - rss() > 100 * 1024 * 1024  # of the ~150 MB freed
    assert len(kept) == 30_000


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_round_after_the_broker_was_silent_for_idle_partition_ms_holds_every_watermark() -> None:
    """A wait on a broker that answers nothing for ``idle_partition_ms`` (2 s) makes the next round
    hold every watermark. Time without a wait does not (a long computation, a freeze: no producer
    buffered meanwhile), nor a long wait on a slow broker that answers as it goes (a catch-up's
    first checkpoint, 120 000 changelog records), nor a silence of less than 2 s."""
    plane = DataPlane(Settings(partitions=4), Metrics())
    clock = _Clock()
    plane._silence = BrokerSilence(clock)
    pipeline, _, _ = make(partition=0)
    plane.runtime = {0: _Task(pipeline, producer=None)}  # type: ignore[arg-type]
    core = pipeline.core
    silence = plane._silence

    plane._after_blind_spot(NOW_MS)
    clock.now += 10.0  # 10 s of computation or a freeze
    plane._after_blind_spot(NOW_MS + 10_000)
    assert core.holding_until_ms is None
    with silence.waiting():  # 6 s waiting on a slow broker, an acknowledgement every 0.5 s
        for _ in range(12):
            clock.now += 0.5
            silence.heard()
    plane._after_blind_spot(NOW_MS + 16_000)
    assert core.holding_until_ms is None
    with silence.waiting():  # 1.9 s without an answer
        clock.now += 1.9
    plane._after_blind_spot(NOW_MS + 18_000)
    assert core.holding_until_ms is None
    with silence.waiting():  # acknowledged at first, then nothing for 9 s
        clock.now += 0.1
        silence.heard()
        clock.now += 9.0
    plane._after_blind_spot(NOW_MS + 27_100)
    assert core.holding_until_ms == NOW_MS + 27_100 + plane.settings.core.outage_hold_ms
    assert core.counters.outage_holds == 1
    plane._after_blind_spot(NOW_MS + 27_200)  # counted once
    assert core.counters.outage_holds == 1


class _SlowBroker:
    """A task producer whose commit waits ``seconds`` for a broker that answers nothing, timed
    as :class:`TaskProducer` times its waits."""

    def __init__(self, seconds: float, silence: BrokerSilence) -> None:
        self.seconds = seconds
        self.silence = silence

    async def settle(self, limit: int) -> None:
        pass  # nothing gathered to wait for: the staging writes into the pipeline's list sink

    async def commit(self, offsets: Mapping[Any, int], group_id: str) -> None:
        with self.silence.waiting():
            await asyncio.sleep(self.seconds)


def test_a_checkpoint_counts_its_commits_waiting_as_silence_and_its_staging_as_work() -> None:
    """Two tasks, each staging for 0.4 s (synchronous work), each commit waiting 0.3 s for the
    broker, side by side: 0.3 s of silence, not the ~1.1 s the checkpoint took nor the ~0.4 s the
    first commit waited (the second task's staging ran inside it)."""
    plane = DataPlane(Settings(partitions=4), Metrics())
    plane._routing = Routing(TOPICS, PARTITIONS)
    plane.runtime = {}
    for p in range(2):
        pipeline = make(partition=p)[0]
        pipeline.core.apply(
            0, [(i, ViewerEvent("join", f"room-{p}", f"u{i}", T0)) for i in range(100)], NOW_MS
        )
        stage = pipeline.checkpoint_slices

        def slow_stage(now_ms: int, offsets: Mapping[int, int], stage: Any = stage) -> Iterator[int]:
            time.sleep(0.4)
            yield from stage(now_ms, offsets)

        pipeline.checkpoint_slices = slow_stage  # type: ignore[method-assign]
        plane.runtime[p] = _Task(pipeline, _SlowBroker(0.3, plane._silence))  # type: ignore[arg-type]

    started = time.perf_counter()
    asyncio.run(plane._checkpoint(plane.runtime))
    assert time.perf_counter() - started >= 1.1
    assert 0.3 <= plane._silence.longest < 0.6


def test_broker_silence_counts_from_the_last_answer_within_waits_only() -> None:
    clock = _Clock()
    silence = BrokerSilence(clock)
    silence.heard()  # an acknowledgement while nothing waits: no silence
    clock.now += 5.0
    silence.heard()
    assert silence.longest == 0.0
    clock.now += 3.0  # time between waits is not silence
    with silence.waiting():
        clock.now += 0.25
        silence.heard()
        clock.now += 1.5  # work of the worker's own (another task's staging) inside the wait
        with silence.waiting():  # that task begins to wait
            clock.now += 0.5
        clock.now += 0.25
    assert silence.longest == 0.5
    assert silence.take() == 0.5
    assert silence.longest == 0.0


def test_a_batch_that_failed_for_want_of_an_answer_is_no_answer() -> None:
    from aiokafka.errors import NotLeaderForPartitionError, TopicAuthorizationFailedError

    async def answers() -> list[float]:
        clock = _Clock()
        silence = BrokerSilence(clock)
        loop = asyncio.get_running_loop()
        seen = []
        # acknowledged; refused by the broker; failed by the client, which knew no leader for
        # request_timeout_ms (what a transactional producer's batch fails with when no broker
        # answers: it retries every retriable error a broker sends); cancelled
        for outcome in ("ok", TopicAuthorizationFailedError(), NotLeaderForPartitionError(), "cancel"):
            batch: asyncio.Future[Any] = loop.create_future()
            batch.add_done_callback(silence.acked)
            with silence.waiting():
                clock.now += 1.0
                if outcome == "ok":
                    batch.set_result(None)
                elif outcome == "cancel":
                    batch.cancel()
                else:
                    assert isinstance(outcome, Exception)
                    batch.set_exception(outcome)
                await asyncio.sleep(0)  # the done-callback runs
                clock.now += 2.0
            seen.append(silence.take())
        return seen

    # an answer, even a refusal, splits the wait's 3 s; the client's own failure and a
    # cancellation do not
    assert asyncio.run(answers()) == [2.0, 2.0, 3.0, 3.0]


def test_an_assignment_no_task_layout_fits_is_refused_by_name() -> None:
    """Partitions added to inputs while the workers ran: tasks past the changelog's partitions, or
    (only one input grew, two workers) a task whose inputs went to different workers."""
    import pytest
    from aiokafka import TopicPartition

    from streams.exceptions import TopologyError

    plane = DataPlane(Settings(partitions=4), Metrics())
    plane._routing = Routing(TOPICS, PARTITIONS)
    plane.partitions = 4

    def tasks(*spec: tuple[int, tuple[str, ...]]) -> dict[int, list[TopicPartition]]:
        return {p: [TopicPartition(t, p) for t in topics] for p, topics in spec}

    inputs = tuple(TOPICS.inputs)
    plane._check_assignment(
        tasks((0, (*inputs, TOPICS.repartition, TOPICS.leaderboard_partials)), (3, inputs))
    )
    with pytest.raises(TopologyError, match="assigned partition 5"):
        plane._check_assignment(tasks((1, inputs), (5, (TOPICS.viewer,))))
    with pytest.raises(TopologyError, match="assigned partition 2 of"):
        plane._check_assignment(tasks((2, (TOPICS.viewer, TOPICS.gift))))


class _Fetched:
    """The consumer's knowledge from its last fetch responses: log ends per partition."""

    def __init__(self, ends: Mapping[Any, int]) -> None:
        self.ends = ends

    def highwater(self, tp: Any) -> int | None:
        return self.ends.get(tp)

    def last_stable_offset(self, tp: Any) -> int | None:
        return self.ends.get(tp)


def _paid(room: str, i: int, ts: int) -> bytes:
    return orjson.dumps(
        {"order_id": f"o{i}", "room_id": room, "user_id": "u", "ts": ts, "status": "paid"}
        | {"amount_minor": 100, "currency": "CNY"}
    )


def test_a_backlog_read_over_two_rounds_after_every_input_fell_idle_is_not_late() -> None:
    """Every input idle after a quiet spell; then a backlog on two inputs. The first round brings
    only the viewer records (the client's ``max_records`` used up), but the last fetch response
    showed the order input's records past its position: both are announced, so the viewer events
    do not take the watermark past the orders of the next round."""
    from aiokafka import TopicPartition

    from tests.unit.test_pipeline import records, rooms_on, viewer

    plane = DataPlane(Settings(partitions=PARTITIONS), Metrics())
    plane._routing = Routing(TOPICS, PARTITIONS)
    pipeline, _, _ = make(partition=0)
    plane.runtime = {0: _Task(pipeline, producer=None)}  # type: ignore[arg-type]
    views, orders, gifts = (TopicPartition(t, 0) for t in (TOPICS.viewer, TOPICS.order, TOPICS.gift))
    task = plane.runtime[0]
    (room,) = rooms_on(0, 1)
    pipeline.process(TOPICS.viewer, records([viewer("like", room, "u", T0 - 1_000)]), NOW_MS)
    pipeline.process(TOPICS.order, records([_paid(room, 0, T0 - 1_000)]), NOW_MS)
    for sender in range(1, PARTITIONS):  # the other tasks idle, never fed: they hold nothing
        pipeline.core.sender_progress(sender, None)
    task.positions = {views: 1, orders: 1, gifts: 0}
    plane._consumer = _Fetched({views: 301, orders: 301, gifts: 0})  # type: ignore[assignment]
    now = NOW_MS + plane.settings.core.idle_partition_ms
    pipeline.tick(NOW_MS)
    pipeline.tick(now)  # every input caught up and silent since: idle
    backlog = records([viewer("like", room, f"u{i}", T0 + i * 100) for i in range(300)], first_offset=1)
    plane._arriving({views: backlog}, now)
    pipeline.process(TOPICS.viewer, backlog, now)
    task.positions[views] = 301
    pipeline.tick(now, busy={1}, behind={1})
    order_backlog = records([_paid(room, 1 + i, T0 + i * 100) for i in range(300)], first_offset=1)
    plane._arriving({orders: order_backlog}, now)
    pipeline.process(TOPICS.order, order_backlog, now)
    assert pipeline.core.counters.late == {}
    assert pipeline.core.watermark_ms == T0 + 29_900 - plane.settings.core.grace_ms


class _Committing:
    """A task producer that records its commits and whether it was closed."""

    def __init__(self, commits: list[int], partition: int) -> None:
        self.commits, self.partition, self.closed = commits, partition, False

    async def send(self) -> None:
        pass

    async def settle(self, limit: int) -> None:
        pass

    async def commit(self, offsets: Any, group_id: str) -> None:
        self.commits.append(self.partition)

    async def close(self) -> None:
        self.closed = True


class _Leaving:
    """A consumer that leaves its group at once."""

    async def stop(self) -> None:
        pass


def _plane_of_two_tasks(commits: list[int]) -> DataPlane:
    """A data plane running tasks 0 and 1, whose commits are recorded in ``commits``."""
    plane = DataPlane(Settings(partitions=PARTITIONS), Metrics())
    plane._routing = Routing(TOPICS, PARTITIONS)
    plane._consumer = _Leaving()  # type: ignore[assignment]
    plane.runtime = {p: _Task(make(partition=p)[0], _Committing(commits, p)) for p in (0, 1)}  # type: ignore[arg-type]
    return plane


def test_a_revocation_between_sigterm_and_the_last_checkpoint_still_commits_it() -> None:
    """SIGTERM lands, then the group's revocation callback takes the lock before ``stop()``:
    the revocation's checkpoint is the last one (``stop()`` finds no task after it)."""

    commits: list[int] = []
    plane = _plane_of_two_tasks(commits)
    plane.request_stop()

    async def shutdown() -> None:
        await plane._revoke()
        await plane.stop()

    asyncio.run(shutdown())
    assert sorted(commits) == [0, 1]


def test_an_assignment_handed_over_while_the_worker_stops_opens_no_task() -> None:
    """aiokafka finishes a join in flight while the consumer stops and calls the assignment
    callback: a stopping worker opens nothing (no producer fencing the next owner, no restore
    within the shutdown budget) and does not report ready again."""
    from aiokafka import TopicPartition

    plane = DataPlane(Settings(partitions=PARTITIONS), Metrics())
    plane._routing = Routing(TOPICS, PARTITIONS)
    plane.partitions = PARTITIONS
    opened: list[int] = []

    async def open_task(partition: int, tps: list[TopicPartition]) -> _Task:
        opened.append(partition)
        return _Task(make(partition=partition)[0], _Committing([], partition))  # type: ignore[arg-type]

    plane._open_task = open_task  # type: ignore[method-assign]

    class _JoinInFlight:
        async def stop(self) -> None:
            await plane.on_assigned([TopicPartition(t, p) for p in (0, 1) for t in TOPICS.inputs])

    plane._consumer = _JoinInFlight()  # type: ignore[assignment]
    plane.request_stop()
    asyncio.run(plane.stop())
    assert (opened, plane.runtime, plane.ready) == ([], {}, False)


class _PausingConsumer:
    def __init__(self) -> None:
        self.paused: set[Any] = set()

    def pause(self, *tps: Any) -> None:
        self.paused.update(tps)

    def resume(self, *tps: Any) -> None:
        self.paused.difference_update(tps)

    def seek(self, tp: Any, offset: int) -> None:
        pass


class _TakeOver:
    """A data plane over a pausing consumer whose task opening (the restore) waits for
    ``release`` (set at once unless ``blocked``), recording the tasks opened and their commits."""

    def __init__(self, *, blocked: bool) -> None:
        from aiokafka import TopicPartition

        self.commits: list[int] = []
        self.opened: list[_Task] = []
        self.plane = plane = DataPlane(Settings(partitions=PARTITIONS), Metrics())
        plane._routing = Routing(TOPICS, PARTITIONS)
        plane.partitions = PARTITIONS
        self.consumer = _PausingConsumer()
        plane._consumer = self.consumer  # type: ignore[assignment]
        plane._open_task = self._open_task  # type: ignore[method-assign]
        self.restoring = asyncio.Event()
        self.release = asyncio.Event()
        if not blocked:
            self.release.set()
        self.assigned = [TopicPartition(t, p) for p in (0, 1) for t in TOPICS.inputs]

    async def _open_task(self, partition: int, tps: list[Any]) -> _Task:
        self.restoring.set()
        await self.release.wait()
        task = _Task(make(partition=partition)[0], _Committing(self.commits, partition))  # type: ignore[arg-type]
        self.opened.append(task)
        return task


def test_the_assignment_callback_only_pauses_and_the_main_loop_opens_the_tasks() -> None:
    """aiokafka sends no heartbeat until the assignment callback returns: the callback opens no
    task (no restore), it pauses the partitions; the take-over opens them and resumes them. A
    revocation before the take-over leaves nothing to open."""
    t = _TakeOver(blocked=False)
    plane, assigned = t.plane, t.assigned

    def opened() -> list[int]:
        return sorted(task.partition for task in t.opened)

    async def scenario() -> None:
        await plane.on_assigned(assigned)
        assert (opened(), plane.runtime, plane.ready, t.consumer.paused) == ([], {}, False, set(assigned))
        await plane._take_over()
        assert (opened(), sorted(plane.runtime), plane.ready, t.consumer.paused) == (
            [0, 1],
            [0, 1],
            True,
            set(),
        )
        await plane._revoke()
        t.opened.clear()
        await plane.on_assigned(assigned)
        await plane._revoke()  # before the main loop took the assignment over
        await plane._take_over()
        assert (opened(), plane.runtime, plane.ready) == ([], {}, False)

    asyncio.run(scenario())


def test_a_task_is_live_only_while_its_own_inputs_are_within_a_window_and_grace_of_the_clock() -> None:
    """Per-task early commits are for live traffic: a task whose inputs' newest events are older
    than a window plus grace is catching up (and one that has seen no event is not live)."""
    plane = DataPlane(Settings(partitions=PARTITIONS), Metrics())
    cfg = plane.settings.core
    pipeline = make(partition=0)[0]
    task = _Task(pipeline, _Committing([], 0))  # type: ignore[arg-type]
    assert not plane._live(task, NOW_MS)
    newest = T0 + 5_000
    for source in (0, 1, 2):  # every input seen: the frontier is the slowest one's newest event
        pipeline.core.apply(source, [(1, ViewerEvent("join", "r", "u", newest))], newest + 100)
    assert plane._live(task, newest + cfg.window_ms + cfg.grace_ms)
    assert not plane._live(task, newest + cfg.window_ms + cfg.grace_ms + 1)


def test_an_early_commit_asked_for_within_the_gap_is_owed_then_taken() -> None:
    """At most one early commit per task every PROMPT_COMMIT_GAP_MS: one asked for sooner is not
    dropped but owed, and the next commit pays it."""
    from streams.dataplane import PROMPT_COMMIT_GAP_MS

    commits: list[int] = []
    plane = DataPlane(Settings(partitions=PARTITIONS), Metrics())
    plane._routing = Routing(TOPICS, PARTITIONS)
    task = _Task(make(partition=1)[0], _Committing(commits, 1))  # type: ignore[arg-type]

    async def scenario() -> None:
        assert (await plane._commit_task(task, NOW_MS))[0]
        assert (commits, task.owed) == ([1], False)
        assert not (await plane._commit_task(task, NOW_MS))[0]  # within the gap
        assert (commits, task.owed) == ([1], True)
        task.committed_at -= PROMPT_COMMIT_GAP_MS / 1000
        assert (await plane._commit_task(task, NOW_MS))[0]
        assert (commits, task.owed) == ([1, 1], False)

    asyncio.run(scenario())


def test_a_revocation_during_a_take_over_waits_for_it_then_commits_and_closes_the_tasks() -> None:
    """The group revokes while the main loop is restoring: the revocation waits for the restore
    (under the lock), then checkpoints and closes every task it opened; nothing is left open."""
    t = _TakeOver(blocked=True)
    plane = t.plane

    async def scenario() -> None:
        await plane.on_assigned(t.assigned)
        take_over = asyncio.create_task(plane._take_over())
        await t.restoring.wait()
        revoke = asyncio.create_task(plane.on_revoked(t.assigned))
        await asyncio.sleep(0.05)
        assert not revoke.done() and t.commits == []  # waits for the restore
        t.release.set()
        await asyncio.gather(take_over, revoke)

    asyncio.run(scenario())
    assert sorted(t.commits) == [0, 1]
    assert all(task.producer.closed for task in t.opened)  # type: ignore[attr-defined]
    assert (plane.runtime, plane.ready, plane._pending) == ({}, False, None)


def test_a_stop_asked_for_during_a_take_over_closes_what_it_opened_and_reports_nothing_ready() -> None:
    """SIGTERM while the main loop restores: the restored tasks are closed as they are (no
    checkpoint of state just read, within the shutdown budget), nothing resumes, not ready."""
    t = _TakeOver(blocked=True)
    plane = t.plane

    async def scenario() -> None:
        await plane.on_assigned(t.assigned)
        take_over = asyncio.create_task(plane._take_over())
        await t.restoring.wait()
        plane.request_stop()
        t.release.set()
        await take_over

    asyncio.run(scenario())
    assert len(t.opened) == 2 and all(task.producer.closed for task in t.opened)  # type: ignore[attr-defined]
    assert (t.commits, plane.runtime, plane.ready, t.consumer.paused) == ([], {}, False, set(t.assigned))


def test_partitions_given_up_take_their_firing_alerts_and_the_merge_out_of_the_gauges() -> None:
    """After a rebalance the next owner counts the moved rooms' firing alerts: the worker that gave
    them up must not go on counting them until its next re-send (the sum over workers would count
    them twice). Nor may it go on showing a leaderboard merge it no longer runs."""
    metrics = Metrics()
    plane = DataPlane(Settings(partitions=4), metrics)
    metrics.alerts_firing.labels("views_per_sec").set(3)  # counted while it held the rooms
    metrics.leaderboard_pending_windows.set(40)
    metrics.leaderboard_wait_seconds.set(400)
    asyncio.run(plane._revoke())
    sample = metrics.registry.get_sample_value
    assert sample("livepulse_alerts_firing", {"metric": "views_per_sec"}) == 0
    assert (
        sample("livepulse_leaderboard_pending_windows") == sample("livepulse_leaderboard_wait_seconds") == 0
    )


def test_a_failed_round_is_never_followed_by_a_checkpoint_at_revocation_or_stop() -> None:
    """A commit failed in the main loop: the tasks' dirty rooms were already staged into the
    aborted transaction, so a later checkpoint (the group's revocation taking the lock as the loop
    unwinds, or ``stop()``) would commit offsets past changes never written."""
    from streams.exceptions import InfrastructureError

    commits: list[int] = []
    plane = _plane_of_two_tasks(commits)

    async def failing_round() -> None:
        raise InfrastructureError("committing transaction livepulse-task-0: broker gone")

    plane._run = failing_round  # type: ignore[method-assign]

    async def scenario() -> None:
        try:
            await plane.run()
        except InfrastructureError:
            pass
        else:
            raise AssertionError("the round's failure was swallowed")
        await plane._revoke()
        await plane.stop()

    asyncio.run(scenario())
    assert commits == []


def test_a_producer_id_that_never_comes_ends_the_take_over_with_an_error() -> None:
    """The client retries for the producer id without a bound while the broker cannot end the
    previous owner's transaction; the task's start gives up with an error the worker exits on."""
    import pytest

    from streams._transactions import TaskProducer
    from streams.exceptions import InfrastructureError

    class _NoProducerId:
        async def start(self) -> None:
            pass

        async def begin_transaction(self) -> None:
            await asyncio.Event().wait()

    async def start() -> None:
        producer = TaskProducer(
            {"bootstrap_servers": "127.0.0.1:9"},
            "app",
            3,
            transaction_timeout_ms=60_000,
            silence=BrokerSilence(),
        )
        client, producer._producer = producer._producer, _NoProducerId()  # type: ignore[assignment]
        try:
            await producer.start(timeout_s=0.05)
        finally:
            await client.stop()  # never started: nothing to close but the object

    with pytest.raises(InfrastructureError, match="app-task-3 got no producer id"):
        asyncio.run(start())


class _Logs:
    """The consumer's view of the input logs: where each starts and ends, and where it was moved."""

    def __init__(self, starts: Mapping[Any, int], ends: Mapping[Any, int]) -> None:
        self.starts, self.ends = starts, ends
        self.seeks: dict[Any, int] = {}

    async def beginning_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tp: self.starts[tp] for tp in tps}

    async def end_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tp: self.ends[tp] for tp in tps}

    def seek(self, tp: Any, offset: int) -> None:
        self.seeks[tp] = offset


def test_skip_counters_are_exported_at_zero_for_every_topic_read_from_the_start() -> None:
    """Prometheus sees no increase in a series whose first sample is already non-zero: the skip
    counters of every topic the worker reads exist at 0 before anything is read."""
    metrics = Metrics()
    DataPlane(Settings(partitions=PARTITIONS), metrics)
    topics = [*TOPICS.inputs, TOPICS.repartition, TOPICS.leaderboard_partials]
    text = metrics.exposition().decode()
    for name in ("livepulse_inputs_rebased_total", "livepulse_input_records_expired_total"):
        for topic in topics:
            assert f'{name}{{topic="{topic}"}} 0.0' in text


def test_positions_outside_the_log_while_reading_are_rebased_or_counted_as_expired() -> None:
    """The client no longer resets a position outside its log on its own (it went back to the log's
    start, and the records below the old position were then dropped as read). Past the end (a
    truncated or recreated log): read on at the end, and the records from there count as new, not
    as replays. Below the start (retention deleted them unread): read on at the start, counted.
    Back within the log by now (truncated and refilled past it): read on from the position, the
    truncation logged and counted as a rebase."""
    from aiokafka import TopicPartition

    from streams.pipeline import VIEWER

    metrics = Metrics()
    plane = DataPlane(Settings(partitions=PARTITIONS), metrics)
    plane._routing = Routing(TOPICS, PARTITIONS)
    pipeline = make(partition=0)[0]
    core = pipeline.core
    viewer, order, gift = (TopicPartition(t, 0) for t in (TOPICS.viewer, TOPICS.order, TOPICS.gift))
    other = TopicPartition(TOPICS.viewer, 1)  # not this worker's
    core.apply(VIEWER, [(o, ViewerEvent("join", "r", f"u{o}", T0 + o)) for o in range(1000)], NOW_MS)
    task = _Task(pipeline, producer=None)  # type: ignore[arg-type]
    task.positions = {viewer: 1000, order: 50, gift: 70}
    plane.runtime = {0: task}
    logs = _Logs({viewer: 0, order: 120, gift: 0}, {viewer: 200, order: 400, gift: 90})
    plane._consumer = logs  # type: ignore[assignment]

    asyncio.run(plane._out_of_range({viewer: 1000, order: 50, gift: 70, other: 5}))

    assert logs.seeks == {viewer: 200, order: 120, gift: 70}
    assert task.positions == {viewer: 200, order: 120, gift: 70}
    assert counter(metrics, "livepulse_inputs_rebased_total", topic=TOPICS.viewer) == 1
    assert counter(metrics, "livepulse_input_records_expired_total", topic=TOPICS.order) == 70
    assert counter(metrics, "livepulse_input_records_expired_total", topic=TOPICS.gift) == 0
    assert counter(metrics, "livepulse_inputs_rebased_total", topic=TOPICS.gift) == 1
    # the new log's records 200.. are new events, not replays of the offsets the state held
    result = core.apply(
        VIEWER, [(o, ViewerEvent("join", "r", f"n{o}", T0 + 1000 + o)) for o in range(200, 260)], NOW_MS
    )
    assert result.replayed == 0


def test_every_input_held_after_taking_events_asks_for_a_checkpoint() -> None:
    """The watermarks then wait for the markers of the next checkpoint: nothing else would move
    before the commit interval. Not before the tasks took anything since the last one (its
    markers said all there is), nor while one input of one task may still be read."""
    plane = DataPlane(Settings(partitions=4), Metrics())
    plane.runtime = {p: _Task(make(partition=p)[0], producer=None) for p in range(2)}  # type: ignore[arg-type]
    for task in plane.runtime.values():
        task.held = frozenset(task.core.sources)
    assert not plane._starved()
    plane._taken = 20_000
    assert plane._starved()
    plane.runtime[1].held = frozenset(list(plane.runtime[1].core.sources)[1:])
    assert not plane._starved()
