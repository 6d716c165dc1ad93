"""A window boundary written in slices (``output_slice_bytes``): the native table's records of
closed windows (``TaskPipeline.publish_windows`` until ``unpublished`` is false) and its
checkpoint (``TaskPipeline.checkpoint_slices``) a budget of bytes at a time, each slice handed to
the producer before the next is encoded. The records, and their order on every topic, are the
ones written all at once."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import pytest

from loadtest.bench_boundary import BUSY, Feed, room_ids, window_events
from streams.core import CoreConfig
from streams.metrics import Metrics
from streams.pipeline import Routing, TaskPipeline
from streams.settings import Settings
from tests.unit.test_native_task import OutboxSink

NOW_MS = 1_700_001_000_000
WINDOW_MS = 10_000
#: one task: every room is local and no other task's markers hold the watermark
SETTINGS = Settings(partitions=1, core=CoreConfig(rollup_windows_ms=(20_000,), native_rooms=True))

Written = dict[str, list[tuple[int, bytes | None, bytes | None]]]


def run(slice_bytes: int, windows: int = 4, rooms: int = 40) -> tuple[Written, int, int]:
    """Every room with a join, a like, a paid order and a gift in each of ``windows`` windows,
    each boundary published and checkpointed in slices of ``slice_bytes`` (0: all at once);
    returns the records by topic, the publish calls that found more left, and the checkpoint
    slices."""
    settings = replace(SETTINGS, output_slice_bytes=slice_bytes)
    routing = Routing(settings.topics, 1)
    sink = OutboxSink()
    pipeline = TaskPipeline(0, routing.task_core(0, settings.core), sink, routing, settings, Metrics())
    assert type(pipeline.core).__name__ == "NativeTaskAggregator"
    feed, names, ids = Feed(), routing.names, room_ids(rooms)
    positions: dict[int, int] = {}
    more = slices = 0

    def publish_rest() -> None:
        nonlocal more
        while pipeline.unpublished:
            more += 1
            pipeline.publish_windows()

    start = NOW_MS - 100 * WINDOW_MS
    for w in range(windows + 1):  # the last window's events close the one before
        events = window_events(ids if w < windows else ids[:1], start + w * WINDOW_MS, w)
        for source, values in enumerate(events):
            pipeline.process(names[source], feed.batch(source, values), NOW_MS)
            publish_rest()
            positions[source] = feed.offsets[source]
        pipeline.tick(NOW_MS, BUSY)
        publish_rest()
        for _ in pipeline.checkpoint_slices(NOW_MS, positions):
            slices += 1
    written: Written = defaultdict(list)
    for topic, partition, key, value, _ in sink.records:
        written[topic].append((partition, key, value))
    return written, more, slices


def test_a_boundary_in_slices_writes_the_records_written_at_once_in_the_same_order() -> None:
    whole, more, slices = run(0)
    assert more == 0 and slices == 2 * 5  # the rooms' and the leaderboard merge's, per checkpoint
    sliced, more, slices = run(600)
    assert more > 20 and slices > 40
    topics = SETTINGS.topics
    for topic in (topics.room_stats, topics.rollup(20_000), topics.room_sessions, topics.changelog):
        assert len(whole[topic]) >= 40, topic
    assert set(sliced) == set(whole)
    for topic, records in whole.items():
        assert sliced[topic] == records, topic


@pytest.mark.parametrize("slice_bytes", [1, 5_000])
def test_each_slice_stops_once_its_budget_is_spent(slice_bytes: int) -> None:
    """A budget below one record still writes one record a slice; a larger one writes about
    its bytes (the last record may pass it)."""
    settings = replace(SETTINGS, output_slice_bytes=slice_bytes)
    routing = Routing(settings.topics, 1)
    sink = OutboxSink()
    pipeline = TaskPipeline(0, routing.task_core(0, settings.core), sink, routing, settings, Metrics())
    feed, names, ids = Feed(), routing.names, room_ids(30)
    sizes: list[tuple[int, int]] = []  # records and bytes of each call that wrote any

    def taken() -> None:
        records = [r for r in sink.records if r[0] != settings.topics.leaderboard_partials]
        sink.records = []
        if records:
            sizes.append((len(records), sum(len(k or b"") + len(v or b"") for _, _, k, v, _ in records)))

    start = NOW_MS - 100 * WINDOW_MS
    # the window's events, then one past its end + grace (2 s) on each input, which close it
    for ws, some in ((start, ids), (start + WINDOW_MS + 2_000, ids[:1])):
        for source, values in enumerate(window_events(some, ws, ws)):
            pipeline.process(names[source], feed.batch(source, values), NOW_MS)
            taken()
        pipeline.tick(NOW_MS, BUSY)
        taken()
    while pipeline.unpublished:
        pipeline.publish_windows()
        taken()
    assert sum(n for n, _ in sizes) == 2 * 30  # a room-stats and a session record a room
    for n, size in sizes[:-1]:
        if slice_bytes == 1:
            assert n == 1
        else:
            assert slice_bytes <= size < slice_bytes + 1_000


def test_a_checkpoint_publishes_the_windows_left_first() -> None:
    """The changelog says which windows are closed: a checkpoint staged with windows still to
    publish writes them first, in its own transaction."""
    settings = replace(SETTINGS, output_slice_bytes=1)
    routing = Routing(settings.topics, 1)
    sink = OutboxSink()
    pipeline = TaskPipeline(0, routing.task_core(0, settings.core), sink, routing, settings, Metrics())
    feed, names, ids = Feed(), routing.names, room_ids(30)
    start = NOW_MS - 100 * WINDOW_MS
    positions: dict[int, int] = {}
    for ws, some in ((start, ids), (start + WINDOW_MS + 2_000, ids[:1])):
        for source, values in enumerate(window_events(some, ws, ws)):
            pipeline.process(names[source], feed.batch(source, values), NOW_MS)
            positions[source] = feed.offsets[source]
    assert pipeline.unpublished
    written = sum(pipeline.checkpoint_slices(NOW_MS, positions))
    assert not pipeline.unpublished and written > 30
    topics = [topic for topic, *_ in sink.records]
    stats = [i for i, topic in enumerate(topics) if topic == settings.topics.room_stats]
    assert len(stats) == 30
    assert max(stats) < topics.index(settings.topics.changelog)
