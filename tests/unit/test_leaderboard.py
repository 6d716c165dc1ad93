"""The platform leaderboard: per-task partials, the merge's completeness rule and tie-break, its
state, and four task pipelines feeding task 0's merge through list sinks — against a brute-force
ranking of every room's window."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

from loadtest.oracle import expected_leaderboards
from schemas import RoomStats, decode_room_stats
from streams.core import (
    LEADERBOARD_KEY,
    LeaderboardMerge,
    decode_leaderboard,
    encode_leaderboard,
    leaderboard_partials,
    leaderboard_progress,
    rank_rooms,
)
from streams.core._leaderboard import rank_group
from streams.exceptions import StateError
from streams.leaderboard import MAX_STATE_BYTES, LeaderboardStage
from streams.metrics import Metrics
from streams.pipeline import Record

from .test_pipeline import NOW_MS, PARTITIONS, T0, TOPICS, ListSink, close_everything, make, rooms_on, viewer

W = 10_000


def stats(room: str, ws: int, *, views: int = 0, gmv: int = 0, orders: int = 0, likes: int = 0) -> RoomStats:
    return RoomStats(room, ws, ws + W, views, 0, 0, likes, 0, orders, orders / 10, gmv, 0, 0, 0, 0, 0)


def brute_force(windows: Sequence[RoomStats], n: int) -> dict[int, dict[str, Any]]:
    """The load test's oracle: written apart from the core (same tie-break and live rule)."""
    return expected_leaderboards(windows, n)


def test_rank_breaks_ties_by_room_id_and_leaves_zero_out() -> None:
    assert rank_rooms([("b", 5), ("a", 5), ("c", 7), ("z", 0)], 10) == [("c", 7), ("a", 5), ("b", 5)]
    assert rank_rooms([("b", 5), ("a", 5), ("c", 7)], 2) == [("c", 7), ("a", 5)]


@pytest.mark.parametrize("seed", range(40))
def test_a_boundary_ranks_its_rooms_as_the_full_sort_does(seed: int) -> None:
    """rank_group (the partials' ranking) orders like rank_rooms: values with many ties at the cut,
    zeros, fewer rooms than n, and n of 1."""
    rng = random.Random(seed)
    spread = rng.choice([1, 3, 50, 10**6])
    group = [
        stats(f"r{rng.randrange(10**6)}-{i}", T0, views=rng.randrange(spread + 1))
        for i in range(rng.randrange(300))
    ]
    rng.shuffle(group)
    for n in (0, 1, 2, 10, 100, 1_000):
        assert rank_group(group, "views", n) == rank_rooms(((s.room_id, s.views) for s in group), n)


def test_windows_that_only_report_late_events_are_not_live() -> None:
    late_only = RoomStats("late", T0, T0 + W, 0, 0, 4, 0, 0, 0, 0.0, 0, 0, 0, 0, 3, 0)
    assert leaderboard_partials(0, [late_only], 5) == []
    (partial,) = leaderboard_partials(0, [late_only, stats("a", T0, likes=2)], 5)
    assert partial["totals"] == [2, 1, 0, 0] and partial["top_views"] == [] and partial["top_gmv"] == []
    assert brute_force([late_only], 5) == {}


def test_a_window_is_final_only_once_every_task_progressed_past_its_end() -> None:
    merge = LeaderboardMerge(tasks=3, n=2)
    for item in leaderboard_partials(0, [stats("a", T0, gmv=5)], 2):
        merge.add(item)
    merge.add(leaderboard_progress(0, T0 + W))
    merge.add(leaderboard_progress(2, T0 + W + 500))
    assert merge.take_final() == []  # task 1 never reported
    merge.add(leaderboard_progress(1, T0 + W - 1))
    assert merge.take_final() == []  # task 1 not past the end yet
    merge.add(leaderboard_progress(1, T0 + W))  # task 1 had no room in the window: its mark alone
    (record,) = merge.take_final()
    assert record["window_start"] == T0 and record["top_gmv"] == [{"rank": 1, "room_id": "a", "gmv_minor": 5}]
    assert merge.take_final() == []  # each window once


def test_progress_never_goes_back() -> None:
    merge = LeaderboardMerge(tasks=1, n=2)
    merge.add(leaderboard_progress(0, T0 + 2 * W))
    merge.add(leaderboard_progress(0, T0))
    assert merge.complete_before() == T0 + 2 * W


def test_a_partial_for_a_final_window_is_counted_late_and_changes_nothing() -> None:
    merge = LeaderboardMerge(tasks=1, n=2)
    merge.add(leaderboard_partials(0, [stats("a", T0, views=1)], 2)[0])
    merge.add(leaderboard_progress(0, T0 + W))
    (first,) = merge.take_final()
    merge.add(leaderboard_partials(0, [stats("b", T0, views=9)], 2)[0])
    assert merge.late_partials == 1 and merge.take_final() == [] and merge.latest == first


def test_a_merge_state_too_large_for_its_record_publishes_its_oldest_windows_without_the_late_task() -> None:
    """Task 2's progress stays behind while the others go on: the merge state, one changelog
    record, must stay within what the topic takes. Beyond MAX_STATE_BYTES the oldest pending
    window goes out as it is, naming the task it misses; task 2's partials for it come too late."""
    sink = ListSink()
    stage = LeaderboardStage(3, 1_000, sink, TOPICS, Metrics())
    merge = stage.merge
    for i in range(40):
        ws = T0 + i * W
        for task in (0, 1):
            rooms = [
                stats(f"room-{task}-{k:04d}-{'x' * 100}", ws, views=k + 1, gmv=k + 1) for k in range(1_000)
            ]
            for item in leaderboard_partials(task, rooms, 1_000):
                merge.add(item)
            merge.add(leaderboard_progress(task, ws + W))
        assert stage.publish() == 0  # task 2 has not reported: nothing final
        stage.stage_checkpoint()
        (state,) = [v for _, k, v, _ in sink.take(TOPICS.changelog) if k == LEADERBOARD_KEY]
        assert state is not None and len(state) <= MAX_STATE_BYTES
    shed = [orjson.loads(v) for _, _, v, _ in sink.take(TOPICS.leaderboard) if v is not None]
    assert 0 < len(shed) < 40 and all(r["missing_tasks"] == [2] for r in shed)
    assert [r["window_start"] for r in shed] == [T0 + i * W for i in range(len(shed))]
    assert merge.final_before == T0 + len(shed) * W
    merge.add(leaderboard_partials(2, [stats("late", T0, views=1)], 1_000)[0])
    assert merge.late_partials == 1
    merge.add(leaderboard_progress(2, T0 + 40 * W))  # task 2 caught up: the rest is complete
    assert stage.publish() == 40 - len(shed)
    rest = [orjson.loads(v) for _, _, v, _ in sink.take(TOPICS.leaderboard) if v is not None]
    assert not any("missing_tasks" in r for r in rest) and merge.pending == {}


def test_windows_held_for_a_task_without_progress_are_exported_and_the_task_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Task 2 never got an event, so it sends no progress: every board waits. The merge's worker
    exports how many windows wait and for how much event time (LivepulseLeaderboardStalled), and
    past 5 minutes of it names the task in the log, once in 5 minutes of wall time however the
    count moves; when task 2 reports, the boards go out and the gauges fall back."""
    metrics = Metrics()
    stage = LeaderboardStage(3, 10, ListSink(), TOPICS, metrics)

    def gauge(name: str) -> float | None:
        return metrics.registry.get_sample_value(f"livepulse_leaderboard_{name}")

    for i in range(45):
        ws = T0 + i * W
        for task in (0, 1):
            for item in leaderboard_partials(task, [stats(f"r{task}", ws, views=1)], 10):
                stage.merge.add(item)
            stage.merge.add(leaderboard_progress(task, ws + W))
        assert stage.publish() == 0
        assert gauge("pending_windows") == i + 1
        assert gauge("wait_seconds") == i * W / 1000
    assert caplog.text.count("for progress from tasks [2]") == 1
    stage.merge.add(leaderboard_progress(2, T0 + 45 * W))
    assert stage.publish() == 45
    assert gauge("pending_windows") == gauge("wait_seconds") == 0


@pytest.mark.parametrize("seed", range(8))
def test_merge_of_shuffled_partials_equals_the_brute_force_leaderboard(seed: int) -> None:
    """Rooms spread over 4 tasks, some windows with idle tasks, many ties; partials of different
    tasks interleaved at random (each task's own records in order), snapshot and restore midway."""
    rnd = random.Random(seed)
    tasks, n = 4, 3
    windows: list[RoomStats] = []
    streams: list[list[dict[str, Any]]] = []
    for task in range(tasks):
        rooms = [f"t{task}-r{i}" for i in range(rnd.randint(0, 6))]
        own: list[dict[str, Any]] = []
        for k in range(4):
            ws = T0 + k * W
            closed = [
                stats(
                    room,
                    ws,
                    views=rnd.randint(0, 3),
                    gmv=rnd.choice([0, 100, 100, 250]),
                    orders=rnd.randint(0, 2),
                )
                for room in rooms
                if rnd.random() < 0.7
            ]
            windows.extend(closed)
            own.extend(leaderboard_partials(task, closed, n))
            own.append(leaderboard_progress(task, ws + W + rnd.randint(0, 3) * 100))
        streams.append(own)
    merged: list[dict[str, Any]] = []
    merge = LeaderboardMerge(tasks, n)
    fed = 0
    while any(streams):
        own = rnd.choice([s for s in streams if s])
        merge.add(own.pop(0))
        merged.extend(merge.take_final())
        fed += 1
        if fed == 10:  # the merge moves to another worker: restore from its changelog record
            restored = LeaderboardMerge(tasks, n)
            decode_leaderboard(encode_leaderboard(merge), restored)
            merge = restored
    expected = brute_force(windows, n)
    assert [r["window_start"] for r in merged] == sorted(expected)
    for record in merged:
        assert record == expected[record["window_start"]]


def test_an_undecodable_or_unknown_version_state_raises() -> None:
    with pytest.raises(StateError):
        decode_leaderboard(b"\x00garbage", LeaderboardMerge(1, 1))
    with pytest.raises(StateError):
        decode_leaderboard(orjson.dumps([99, [], [], None, None, None, 0]), LeaderboardMerge(1, 1))


def test_range_assignment_puts_the_partials_partition_with_task_0() -> None:
    """The co-location the merge relies on: every member subscribes to the same topics, and the
    range assignor gives partition 0 of each topic to the first member in sorted order."""
    topics = [*TOPICS.inputs, TOPICS.repartition, TOPICS.leaderboard_partials]

    class Cluster:
        def partitions_for_topic(self, topic: str) -> set[int]:
            return {0} if topic == TOPICS.leaderboard_partials else set(range(PARTITIONS))

    for members in (1, 2, 3, 4, 5):
        ids = [f"member-{rnd}" for rnd in random.Random(members).sample(range(1000), members)]
        meta = {m: ConsumerProtocolMemberMetadata(0, topics, b"") for m in ids}
        assignment = RangePartitionAssignor.assign(Cluster(), meta)
        owners = {
            topic: member
            for member, a in assignment.items()
            for topic, partitions in a.assignment
            if 0 in partitions
        }
        assert len(set(owners.values())) == 1, owners


def feed(pipeline: Any, items: list[tuple[bytes | None, bytes | None]], first: int) -> None:
    pipeline.process(
        TOPICS.leaderboard_partials, [Record(first + i, k, v) for i, (k, v) in enumerate(items)], NOW_MS
    )


def test_four_task_pipelines_feed_task_0s_merge_exactly() -> None:
    """The whole path without a broker: each task's room-stats become partials and progress marks,
    task 0's merge reads them (interleaved across tasks) and publishes the brute-force leaderboard."""
    pipelines = [make(partition=p) for p in range(PARTITIONS)]
    rooms = {p: rooms_on(p, 3, prefix="lb") for p in range(PARTITIONS)}
    for p, (pipeline, _, _) in enumerate(pipelines):
        batch = []
        for i, room in enumerate(rooms[p]):
            for k in range(1 if p == 3 else 2):  # task 3 has no room in the second window
                batch += [viewer("join", room, f"u{j}", T0 + k * W + j) for j in range(1 + (i + p + k) % 3)]
        pipeline.process(TOPICS.viewer, [Record(i, b"k", v) for i, v in enumerate(batch)], NOW_MS)
        close_everything(pipeline)
        pipeline.stage_checkpoint(NOW_MS, {})
    room_stats: list[RoomStats] = []
    partial_streams = []
    for _, sink, _ in pipelines:
        room_stats += [decode_room_stats(v) for _, _, v, _ in sink.take(TOPICS.room_stats) if v is not None]
        taken = sink.take(TOPICS.leaderboard_partials)
        assert {partition for partition, *_ in taken} == {0}
        partial_streams.append([(k, v) for _, k, v, _ in taken])
    merge_pipeline, merge_sink, metrics = pipelines[0]
    merge_sink.take(TOPICS.changelog)
    assert metrics.registry.get_sample_value("livepulse_platform_events") is None
    offset = 0
    # tasks 1..3 first, task 0 last: nothing is final before task 0's progress arrives
    for items in [*partial_streams[1:], partial_streams[0][:-1]]:
        feed(merge_pipeline, items, offset)
        offset += len(items)
        assert merge_sink.take(TOPICS.leaderboard) == []
    feed(merge_pipeline, partial_streams[0][-1:], offset)
    published = merge_sink.take(TOPICS.leaderboard)
    expected = brute_force(room_stats, SETTINGS_SIZE)
    assert [k for _, k, _, _ in published] == [b"%d" % T0, b"%d" % (T0 + W)]
    assert [orjson.loads(v or b"") for _, _, v, _ in published] == [expected[T0], expected[T0 + W]]
    assert expected[T0]["rooms_live"] == 12 and expected[T0 + W]["rooms_live"] == 9
    assert expected[T0]["top_views"][0]["views"] == 3  # ties at 3, 2 and 1 views: room_id breaks them
    assert metrics.registry.get_sample_value("livepulse_platform_rooms_live") == 9
    assert metrics.registry.get_sample_value("livepulse_leaderboards_published_total") == 2
    # the merge's state goes to task 0's changelog at its next checkpoint, with the next offset
    merge_pipeline.stage_checkpoint(NOW_MS, {})
    (state,) = [v for _, k, v, _ in merge_sink.take(TOPICS.changelog) if k == LEADERBOARD_KEY]
    restored = LeaderboardMerge(PARTITIONS, SETTINGS_SIZE)
    decode_leaderboard(state or b"", restored)
    assert restored.next_offset == offset + 1 and restored.latest == expected[T0 + W]


SETTINGS_SIZE = 100


def test_platform_gauges_only_on_the_merge_worker() -> None:
    metrics = Metrics()
    names = ("livepulse_platform_events", "livepulse_platform_gmv_minor", "livepulse_platform_orders")
    assert all(metrics.registry.get_sample_value(n) is None for n in names)
    metrics.platform.set({"events": 3, "rooms_live": 1, "gmv_minor": 7, "orders": 1, "window_start": T0})
    assert [metrics.registry.get_sample_value(n) for n in names] == [3, 7, 1]
    metrics.platform.clear()  # task 0 moved to another worker
    assert all(metrics.registry.get_sample_value(n) is None for n in names)
