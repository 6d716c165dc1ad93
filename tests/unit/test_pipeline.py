"""The per-batch pipeline (``streams.pipeline``) driven with a list sink and a fixed clock: what a
worker writes for a batch — room-stats, dead letters, re-routed events, markers, changelog — with no
broker."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import orjson
import pytest

from schemas import Source, decode_dead_letter, decode_room_session, decode_room_stats
from streams.core import CoreConfig, PartitionCache, TaskAggregator, iso_utc
from streams.core._state_codec import room_state
from streams.metrics import Metrics
from streams.pipeline import (
    _DECODERS,
    _PY_DECODERS,
    MARKER_HEADER,
    SOURCE_HEADER,
    Record,
    Routing,
    TaskPipeline,
)
from streams.settings import Settings

NOW_MS = 1_700_001_000_000
T0 = 1_700_000_000_000  # a window boundary (multiple of 10 s)
PARTITIONS = 4
#: the Python rooms (``test_native_task`` runs these tests again on the native table)
SETTINGS = Settings(
    partitions=PARTITIONS, core=CoreConfig(room_idle_ms=10**9, max_rooms=3, native_rooms=False)
)
TOPICS = SETTINGS.topics
ROUTE = PartitionCache(PARTITIONS)


class ListSink:
    def __init__(self) -> None:
        self.records: list[tuple[str, int, bytes | None, bytes | None, tuple[tuple[str, bytes], ...]]] = []

    def add(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        self.records.append((topic, partition, key, value, tuple(headers)))

    def take(self, topic: str) -> list[tuple[int, bytes | None, bytes | None, tuple[tuple[str, bytes], ...]]]:
        mine = [(p, k, v, h) for t, p, k, v, h in self.records if t == topic]
        self.records = [r for r in self.records if r[0] != topic]
        return mine


def rooms_on(partition: int, n: int, prefix: str = "room") -> list[str]:
    found = []
    i = 0
    while len(found) < n:
        room = f"{prefix}-{i}"
        if ROUTE(room) == partition:
            found.append(room)
        i += 1
    return found


def viewer(kind: str, room: str, user: str, ts: int) -> bytes:
    return orjson.dumps({"type": kind, "room_id": room, "user_id": user, "ts": ts})


def records(payloads: list[bytes], first_offset: int = 0) -> list[Record]:
    return [Record(first_offset + i, b"k", payload) for i, payload in enumerate(payloads)]


def make(partition: int = 0, settings: Settings = SETTINGS) -> tuple[TaskPipeline, ListSink, Metrics]:
    sink, metrics = ListSink(), Metrics()
    routing = Routing(TOPICS, PARTITIONS)
    pipeline = TaskPipeline(
        partition, routing.task_core(partition, settings.core), sink, routing, settings, metrics
    )
    return pipeline, sink, metrics


def counter(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return value or 0.0


def close_everything(pipeline: TaskPipeline) -> None:
    """Markers from every sender far ahead, inputs idle: the watermark passes every window."""
    for sender in range(PARTITIONS):
        if sender != pipeline.partition:
            pipeline.core.sender_progress(sender, NOW_MS)
    pipeline.tick(NOW_MS + 1_000_000)  # after any tick of the tests (wall time never goes back)
    pipeline.tick(NOW_MS + 2_000_000)


def test_a_batch_becomes_room_stats_keyed_by_room_on_the_task_partition() -> None:
    pipeline, sink, metrics = make(partition=1)
    (a, b) = rooms_on(1, 2)
    batch = [viewer("join", a, f"u{i}", T0 + i) for i in range(5)] + [viewer("like", b, "v", T0 + 7)]
    pipeline.process(TOPICS.viewer, records(batch), NOW_MS)
    close_everything(pipeline)
    stats = {k: decode_room_stats(v) for p, k, v, _ in sink.take(TOPICS.room_stats) if v is not None}
    assert set(stats) == {a.encode(), b.encode()}
    assert stats[a.encode()].views == 5 and stats[a.encode()].unique_viewers == 5
    assert stats[b.encode()].likes == 1 and stats[b.encode()].views == 0
    assert counter(metrics, "livepulse_events_applied_total", topic=TOPICS.viewer) == 6
    assert counter(metrics, "livepulse_windows_emitted_total") == 2


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_invalid_messages_are_dead_lettered_with_their_reason_and_the_rest_applied(native: bool) -> None:
    pipeline, sink, metrics = make(partition=0, settings=replace(SETTINGS, native_decoders=native))
    assert (pipeline._decoders is _DECODERS) is native and (pipeline._decoders is _PY_DECODERS) is not native
    (room,) = rooms_on(0, 1)
    batch = [
        viewer("join", room, "u1", T0),
        b"{not json",
        viewer("teleport", room, "u2", T0),
        viewer("join", room, "u\u00e9", T0),  # valid, not ASCII: the native pass hands it back
    ]
    pipeline.process(TOPICS.viewer, records(batch, first_offset=40), NOW_MS)
    letters = sink.take(TOPICS.dlq)
    assert [(p, k) for p, k, _, _ in letters] == [(0, b"k"), (0, b"k")]
    decoded = [decode_dead_letter(v) for _, _, v, _ in letters if v is not None]
    assert [(d.reason, d.offset, d.topic) for d in decoded] == [
        ("invalid_json", 41, TOPICS.viewer),
        ("unknown_enum:type", 42, TOPICS.viewer),
    ]
    assert counter(metrics, "livepulse_events_invalid_total", topic=TOPICS.viewer, reason="invalid_json") == 1
    assert counter(metrics, "livepulse_events_applied_total", topic=TOPICS.viewer) == 2
    close_everything(pipeline)
    (stats,) = [decode_room_stats(v) for _, _, v, _ in sink.take(TOPICS.room_stats) if v is not None]
    assert stats.views == 2 and stats.unique_viewers == 2


def test_events_of_another_task_are_re_routed_with_their_origin_and_not_applied() -> None:
    pipeline, sink, metrics = make(partition=0)
    (here,) = rooms_on(0, 1)
    (there,) = rooms_on(2, 1)
    raw_there = viewer("join", there, "u", T0)
    pipeline.process(TOPICS.viewer, records([viewer("join", here, "u", T0), raw_there]), NOW_MS)
    rerouted = sink.take(TOPICS.repartition)
    assert rerouted == [(2, there.encode(), raw_there, ((SOURCE_HEADER, TOPICS.viewer.encode()),))]
    assert set(pipeline.core.rooms) == {here}
    assert counter(metrics, "livepulse_events_rerouted_total", topic=TOPICS.viewer) == 1


@pytest.mark.parametrize("local_first", [True, False], ids=["one local event first", "never a local event"])
def test_an_input_of_other_tasks_rooms_moves_the_frontier_with_the_events_it_passes_on(
    local_first: bool,
) -> None:
    """A producer without murmur2 (librdkafka's crc32, sarama) puts a hot room on this task's
    partition: the input is busy with events that all go elsewhere. They are the input's progress
    all the same, or the frontier this task publishes (and every receiver's watermark) would stay
    at its last local event, or at no time at all."""
    pipeline, _, _ = make(partition=0)
    (hot,) = rooms_on(1, 1, "hot")
    (quiet,) = rooms_on(0, 1, "quiet")
    offset = 0
    if local_first:
        pipeline.process(TOPICS.viewer, records([viewer("join", quiet, "u", T0)], offset), NOW_MS)
        offset += 1
    for step in range(1, 601):  # 60 s of the hot room only, the input never caught up
        now = NOW_MS + step * 100
        event = viewer("join", hot, f"u{step}", T0 + step * 100)
        pipeline.process(TOPICS.viewer, records([event], offset), now)
        pipeline.tick(now, busy={Source.VIEWER})
        offset += 1
    # the order and gift inputs are idle (silent, caught up): the viewer input is the slowest
    assert pipeline.core.frontier_ms(now) == T0 + 60_000


def test_a_repartition_record_that_is_no_marker_is_skipped_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Only livepulse's tasks write the repartition topic, but a record there that cannot be a
    marker must not stop the worker (and every worker that takes the partition next)."""
    pipeline, _, _ = make(partition=0)
    hostile = [
        Record(0, None, b"5", ((MARKER_HEADER, b"x"),)),  # no task number
        Record(1, None, b'"abc"', ((MARKER_HEADER, b"1"),)),  # no time
        Record(2, None, b"[1]", ((MARKER_HEADER, b"2"),)),
        Record(3, None, b"true", ((MARKER_HEADER, b"3"),)),
        Record(4, None, b"{", ((MARKER_HEADER, b"3"),)),
        Record(5, None, b"5", ((MARKER_HEADER, b"0"),)),  # from itself
        Record(6, None, b"5", ((MARKER_HEADER, b"9"),)),  # no such task
        Record(7, None, b"5", ((MARKER_HEADER, None),)),  # a header with no value  # type: ignore[arg-type]
    ]
    pipeline.process(TOPICS.repartition, hostile, NOW_MS)
    pipeline.tick(NOW_MS + 100 * SETTINGS.core.idle_partition_ms)
    assert caplog.text.count("is no watermark marker") == len(hostile)
    good = Record(8, None, b"%d" % T0, ((MARKER_HEADER, b"1"),))
    pipeline.process(TOPICS.repartition, [good], NOW_MS)
    assert pipeline.core._sender_frontier[1] == T0


def test_re_routed_events_are_applied_under_their_origin_and_markers_hold_the_watermark() -> None:
    sender, sink_s, _ = make(partition=3)
    receiver, sink, metrics = make(partition=0)
    (room,) = rooms_on(0, 1)
    order = orjson.dumps(
        {
            "order_id": "o1",
            "room_id": room,
            "user_id": "u",
            "ts": T0 + 1,
            "status": "paid",
            "amount_minor": 1_500,
            "currency": "CNY",
        }
    )
    sender.process(TOPICS.order, records([order]), NOW_MS)
    later_ms = NOW_MS + 100 * SETTINGS.core.idle_partition_ms
    sender.tick(NOW_MS)
    sender.tick(later_ms)  # its inputs fall idle: its frontier moves on with wall time
    sender.stage_checkpoint(later_ms, {Source.ORDER: 1})
    outgoing = [
        Record(i, k, v, h) for i, (p, k, v, h) in enumerate(sink_s.take(TOPICS.repartition)) if p == 0
    ]
    assert len(outgoing) == 2  # the event, then the sender's marker
    assert outgoing[1].headers == ((MARKER_HEADER, b"3"),)
    for other in (1, 2):
        receiver.core.sender_progress(other, NOW_MS)
    # Until sender 3's marker arrives, its frontier is unknown: the window stays open whatever
    # wall time says (the receiver's own inputs fall idle).
    receiver.process(TOPICS.repartition, outgoing[:1], NOW_MS)
    receiver.tick(NOW_MS + 1_000)
    receiver.tick(NOW_MS + 100 * SETTINGS.core.idle_partition_ms)
    assert sink.take(TOPICS.room_stats) == []
    assert counter(metrics, "livepulse_events_applied_total", topic=TOPICS.order) == 1
    receiver.process(TOPICS.repartition, outgoing[1:], NOW_MS)
    receiver.tick(NOW_MS + 101 * SETTINGS.core.idle_partition_ms)
    (stats,) = [decode_room_stats(v) for _, _, v, _ in sink.take(TOPICS.room_stats) if v is not None]
    assert (stats.room_id, stats.orders, stats.gmv_minor) == (room, 1, 1_500)
    assert counter(metrics, "livepulse_orders_paid_total") == 1
    assert counter(metrics, "livepulse_gmv_minor_total") == 1_500


def test_re_routed_events_are_not_judged_again_against_the_receivers_clock() -> None:
    """An event is judged once, where it is first read: one a week old to the millisecond, or
    seconds ahead, taken by its sender, is applied by the task it is re-routed to although that
    task reads it later, or on a host whose clock is behind, where it would be ts_skew."""
    limits = SETTINGS.limits
    sender, sink_s, _ = make(partition=3)
    receiver, sink, metrics = make(partition=0)
    old_room, new_room = rooms_on(0, 2)
    week_old = NOW_MS - limits.max_past_ms + 50
    ahead = NOW_MS + limits.max_future_ms
    raw = [viewer("join", old_room, "u1", week_old), viewer("join", new_room, "u2", ahead)]
    sender.process(TOPICS.viewer, records(raw), NOW_MS)
    assert sink_s.take(TOPICS.dlq) == []
    outgoing = [
        Record(i, k, v, h) for i, (p, k, v, h) in enumerate(sink_s.take(TOPICS.repartition)) if p == 0
    ]
    assert [r.value for r in outgoing] == raw
    receiver.process(TOPICS.repartition, outgoing[:1], NOW_MS + 200)  # read 200 ms later
    receiver.process(TOPICS.repartition, outgoing[1:], NOW_MS - 1_000)  # a clock 1 s behind
    assert sink.take(TOPICS.dlq) == []
    assert counter(metrics, "livepulse_events_applied_total", topic=TOPICS.viewer) == 2
    assert set(receiver.core.rooms) == {old_room, new_room}
    # what no sender could have taken is still refused
    bad = Record(2, b"k", b'{"type": "join"}', ((SOURCE_HEADER, TOPICS.viewer.encode()),))
    receiver.process(TOPICS.repartition, [bad], NOW_MS)
    (letter,) = [decode_dead_letter(v) for _, _, v, _ in sink.take(TOPICS.dlq) if v is not None]
    assert letter.reason == "missing_field:room_id"


def test_a_checkpoint_writes_markers_to_every_other_task_and_state_that_restores() -> None:
    pipeline, sink, _ = make(partition=1)
    rooms = rooms_on(1, 2)
    pipeline.process(TOPICS.viewer, records([viewer("join", r, "u", T0) for r in rooms]), NOW_MS)
    written = pipeline.stage_checkpoint(NOW_MS, {Source.VIEWER: 2})
    markers = sink.take(TOPICS.repartition)
    assert sorted(p for p, *_ in markers) == [0, 2, 3]
    assert all(h == ((MARKER_HEADER, b"1"),) and k is None for _, k, _, h in markers)
    changelog = [(k, v) for p, k, v, _ in sink.take(TOPICS.changelog) if p == 1 and k is not None]
    assert len(changelog) == written >= len(rooms) + 1
    restored = TaskAggregator(SETTINGS.core, sources=(0, 1, 2), senders=[0, 2, 3])
    assert restored.restore(changelog) == len(rooms)
    assert restored.restored_offsets == {Source.VIEWER: 2}
    assert set(restored.rooms) == set(rooms)


def test_a_dead_letter_keeps_at_most_256_bytes_of_a_huge_input_key() -> None:
    """An input of the broker's default 1 MiB limit, nearly all key, with a bad value: its dead
    letter must stay well under that limit, or the broker refuses it at every restart."""
    pipeline, sink, _ = make(partition=0)
    huge = Record(7, b"k" * 1_048_000, b"{not json")
    pipeline.process(TOPICS.viewer, [huge], NOW_MS)
    ((_, key, value, _),) = sink.take(TOPICS.dlq)
    assert key == b"k" * 256 and value is not None and len(value) < 2_000
    assert decode_dead_letter(value).key == "k" * 256


def paid(room: str, order_id: str, amount: int, currency: str) -> bytes:
    return orjson.dumps(
        {
            "order_id": order_id,
            "room_id": room,
            "user_id": "u",
            "ts": T0,
            "status": "paid",
            "amount_minor": amount,
            "currency": currency,
        }
    )


def test_with_a_currency_set_orders_in_another_are_dead_lettered_not_summed() -> None:
    pipeline, sink, metrics = make(partition=0, settings=replace(SETTINGS, currency="CNY"))
    (room,) = rooms_on(0, 1)
    batch = [paid(room, "o1", 1_999, "CNY"), paid(room, "o2", 500_000, "JPY"), paid(room, "o3", 7, "CNY")]
    pipeline.process(TOPICS.order, records(batch), NOW_MS)
    letters = [decode_dead_letter(v) for _, _, v, _ in sink.take(TOPICS.dlq) if v is not None]
    assert [(d.reason, d.offset) for d in letters] == [("unsupported_currency", 1)]
    assert "JPY" in letters[0].error
    reason = "unsupported_currency"
    assert counter(metrics, "livepulse_events_invalid_total", topic=TOPICS.order, reason=reason) == 1
    close_everything(pipeline)
    (stats,) = [decode_room_stats(v) for _, _, v, _ in sink.take(TOPICS.room_stats) if v is not None]
    assert (stats.orders, stats.gmv_minor) == (2, 2_006)


def test_without_a_currency_set_a_second_one_is_summed_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pipeline, sink, _ = make(partition=0)
    (room,) = rooms_on(0, 1)
    pipeline.process(TOPICS.order, records([paid(room, "o1", 1_999, "CNY")]), NOW_MS)
    assert not caplog.records
    pipeline.process(TOPICS.order, records([paid(room, "o2", 100, "USD")], first_offset=1), NOW_MS)
    assert "orders in more than one currency (CNY, USD)" in caplog.text
    assert "LIVEPULSE_CURRENCY" in caplog.text
    close_everything(pipeline)
    (stats,) = [decode_room_stats(v) for _, _, v, _ in sink.take(TOPICS.room_stats) if v is not None]
    assert stats.gmv_minor == 2_099
    assert sink.take(TOPICS.dlq) == []


def test_rooms_past_the_cap_are_dead_lettered_as_room_cap() -> None:
    pipeline, sink, metrics = make(partition=0)
    rooms = rooms_on(0, 5)  # max_rooms=3
    pipeline.process(TOPICS.viewer, records([viewer("join", r, "u", T0) for r in rooms]), NOW_MS)
    letters = [decode_dead_letter(v) for _, _, v, _ in sink.take(TOPICS.dlq) if v is not None]
    assert [(d.reason, d.offset) for d in letters] == [("room_cap", 3), ("room_cap", 4)]
    assert len(pipeline.core.rooms) == 3
    assert counter(metrics, "livepulse_events_invalid_total", topic=TOPICS.viewer, reason="room_cap") == 2


def test_undecodable_state_is_quarantined_to_the_dead_letter_topic_and_deleted() -> None:
    pipeline, sink, metrics = make(partition=2)
    (room,) = rooms_on(2, 1)
    pipeline.core.restore([(b"r/" + room.encode(), b"\x00garbage")])
    quarantined = pipeline.quarantine({b"r/" + room.encode(): 17}, NOW_MS)
    assert [key for key, _ in quarantined] == [b"r/" + room.encode()]
    (letter,) = [decode_dead_letter(v) for _, _, v, _ in sink.take(TOPICS.dlq) if v is not None]
    assert (letter.reason, letter.topic, letter.offset) == ("state_undecodable", TOPICS.changelog, 17)
    assert sink.take(TOPICS.changelog) == [(2, b"r/" + room.encode(), None, ())]
    assert counter(metrics, "livepulse_state_quarantined_total") == 1
    assert pipeline.core.quarantined == []


def feed_joins(pipeline: TaskPipeline, per_window: list[int]) -> str:
    """Feed one room of partition 0 ``per_window[w]`` distinct joins spread over window ``w``
    (10 s windows from T0), close every window and return the room."""
    (room,) = rooms_on(0, 1)
    offset = 0
    for w, n in enumerate(per_window):
        batch = [viewer("join", room, f"u{w}-{i}", T0 + w * 10_000 + i * 10_000 // n) for i in range(n)]
        pipeline.process(TOPICS.viewer, records(batch, offset), NOW_MS)
        offset += n
    close_everything(pipeline)
    return room


@pytest.mark.parametrize("resend", [False, True])
def test_alerts_are_written_keyed_by_fingerprint_and_expire_unless_re_sent(resend: bool) -> None:
    pipeline, sink, metrics = make(partition=0)
    # 400 s at 20 joins/window, then 60 s at 400: a spike in views.
    room = feed_joins(pipeline, [20] * 40 + [400] * 6)
    live = T0 + 475_000  # the wall clock just after the spike's last window closed
    assert pipeline.publish_alerts(live)
    alerts = sink.take(TOPICS.alerts)
    assert alerts, "a 20x step in views fires"
    for partition, key, value, _ in alerts:
        assert value is not None and key is not None
        alert = orjson.loads(value)
        assert alert["labels"]["room_id"] == room
        assert 0 <= partition < PARTITIONS
        if alert["status"] == "firing":  # live: 4 re-send intervals (60 s) from now
            assert alert["endsAt"] == iso_utc(live + 240_000)
    firing = pipeline.firing(NOW_MS, resend=resend)
    resent = sink.take(TOPICS.alerts)
    assert len(resent) == (len(firing) if resend else 0)
    # NOW_MS is 1 000 s after the data (a catch-up after downtime): no later than 8 intervals past
    # the time the room's next window was due (the last window's end + window + grace)
    for _, _, value, _ in resent:
        assert value is not None
        assert orjson.loads(value)["endsAt"] == iso_utc(T0 + 460_000 + 12_000 + 480_000)
    fired = {orjson.loads(v)["labels"]["metric"] for _, _, v, _ in alerts if v is not None}
    assert sum(counter(metrics, "livepulse_alerts_fired_total", metric=m) for m in fired) >= 1


def test_an_alert_resolved_ahead_of_the_wall_clock_is_sent_resolved_now() -> None:
    """Event time may run ahead of the worker's clock (producers' clocks, up to max_future_ms):
    the end of the window where an alert resolved can lie in the future. Alertmanager keeps an
    alert whose endsAt is in the future active until then, so a resolution is sent ending now
    (and starting no later than it ends, or Alertmanager refuses it)."""
    pipeline, sink, _ = make(partition=0)
    feed_joins(pipeline, [20] * 40 + [400] * 3 + [20] * 60)
    events = pipeline.core.drain_alerts()
    resolved = [e for e in events if e.status == "resolved"]
    assert resolved and resolved[0].ends_at_ms is not None, "the spike fires and resolves"
    now = min(e.ends_at_ms or 0 for e in resolved) - 4_000
    pipeline._write_alerts(events, now, transitions=True)
    sent = [orjson.loads(v) for _, _, v, _ in sink.take(TOPICS.alerts) if v is not None]
    ahead = [a for a in sent if a["status"] == "resolved"]
    assert len(ahead) == len(resolved)
    for alert in ahead:
        assert alert["endsAt"] == iso_utc(now)
        assert alert["startsAt"] <= alert["endsAt"]
    # the wall clock behind even the alert's start: it starts and ends now
    early = min(e.starts_at_ms for e in resolved) - 1_000
    pipeline._write_alerts(resolved, early, transitions=False)
    for _, _, value, _ in sink.take(TOPICS.alerts):
        assert value is not None
        assert orjson.loads(value)["startsAt"] == orjson.loads(value)["endsAt"] == iso_utc(early)
    # the wall clock past the window's end: the end as recorded
    pipeline._write_alerts(resolved, now + 1_000_000, transitions=False)
    behind = [orjson.loads(v)["endsAt"] for _, _, v, _ in sink.take(TOPICS.alerts) if v is not None]
    assert behind == [iso_utc(e.ends_at_ms or 0) for e in resolved]


def test_an_alert_firing_ahead_of_the_wall_clock_starts_now() -> None:
    """An alert whose window starts ahead of the worker's clock (event time up to max_future_ms
    ahead) is sent starting now: with re-sends every 2 s its endsAt (now + 8 s) would lie before
    a start 60 s ahead, and Alertmanager refuses an alert that starts after it ends."""
    pipeline, sink, _ = make(partition=0)
    pipeline._resend_ms = 2_000
    feed_joins(pipeline, [20] * 40 + [400] * 6)
    firing = [e for e in pipeline.core.drain_alerts() if e.status == "firing"]
    assert firing, "a 20x step in views fires"
    now = min(e.starts_at_ms for e in firing) - 60_000
    pipeline._write_alerts(firing, now, transitions=False)
    sent = [orjson.loads(v) for _, _, v, _ in sink.take(TOPICS.alerts) if v is not None]
    assert len(sent) == len(firing)
    for alert in sent:
        assert alert["startsAt"] == iso_utc(now)
        assert alert["endsAt"] == iso_utc(now + 8_000)
    # the clock past the start: the start as recorded
    later = max(e.starts_at_ms for e in firing) + 1_000
    pipeline._write_alerts(firing, later, transitions=False)
    starts = [orjson.loads(v)["startsAt"] for _, _, v, _ in sink.take(TOPICS.alerts) if v is not None]
    # keyed by fingerprint: alerts on different partitions have no order between them
    assert sorted(starts) == sorted(iso_utc(e.starts_at_ms) for e in firing)


def test_rollups_and_sessions_are_published_with_their_keys_and_ended_sessions_leave_the_room_state() -> None:
    pipeline, sink, _ = make(partition=2)
    (room,) = rooms_on(2, 1)
    batch = [viewer("join", room, f"u{i}", T0 + i * 5_000) for i in range(14)]  # 65 s of joins
    pipeline.process(TOPICS.viewer, records(batch), NOW_MS)
    for sender in range(PARTITIONS):
        if sender != 2:
            pipeline.core.sender_progress(sender, NOW_MS)
    pipeline.tick(NOW_MS + 3_000)  # every window and minute closes; the hour and the session go on
    pipeline.stage_checkpoint(NOW_MS, {})
    log = [(k, v) for _, k, v, _ in sink.take(TOPICS.changelog)]
    state = room_state(dict(log), room)  # the session and open rollups in its records
    assert state.session is not None and state.session.start == T0
    assert [r.length for r in state.rollups or ()] == [3_600_000]  # the minutes closed, the hour is open
    for sender in range(PARTITIONS):  # past the end of the hour and of the session's gap
        if sender != 2:
            pipeline.core.sender_progress(sender, NOW_MS + 5_000_000)
    pipeline.tick(NOW_MS + 5_000_000)
    one_minute = [decode_room_stats(v) for p, k, v, _ in sink.take(TOPICS.rollup(60_000)) if v is not None]
    minute = T0 - T0 % 60_000  # T0 is 20 s into a minute: 8 joins in that minute, 6 in the next
    assert [(s.window_start, s.views, s.unique_viewers) for s in one_minute] == [
        (minute, 8, 8),
        (minute + 60_000, 6, 6),
    ]
    assert len(sink.take(TOPICS.rollup(3_600_000))) == 1
    sessions = [
        (p, k, decode_room_session(v)) for p, k, v, _ in sink.take(TOPICS.room_sessions) if v is not None
    ]
    assert {(p, k) for p, k, _ in sessions} == {(2, b"%s:%d" % (room.encode(), T0))}
    *live, (_, _, ended) = sessions
    assert all(s.status == "live" for _, _, s in live) and len(live) == 7  # one per closed window
    assert (ended.status, ended.views, ended.unique_viewers, ended.session_end) == (
        "ended",
        14,
        14,
        T0 + 66_000,
    )
    pipeline.stage_checkpoint(NOW_MS + 5_000_000, {})
    log += [(k, v) for _, k, v, _ in sink.take(TOPICS.changelog)]
    # Ending a session or closing a rollup does not rewrite the room's record: a restore drops what
    # was due at the checkpointed watermark, so nothing is published twice.
    restored = TaskAggregator(pipeline.core.config, pipeline.core.sources)
    restored.restore(log)
    assert (restored.rooms[room].session, restored.rooms[room].rollups) == (None, None)
    restored.tick(NOW_MS + 6_000_000)
    assert restored.drain_sessions() == [] and restored.drain_rollups() == []


def test_markers_are_due_when_the_frontier_passes_a_window_end_plus_grace() -> None:
    """The other tasks close a window once this task's markers say its inputs passed the window's
    end + grace; until its frontier gets there, new markers would release nothing."""
    pipeline, _, _ = make(partition=0)
    (room,) = rooms_on(0, 1)
    window, grace = SETTINGS.core.window_ms, SETTINGS.core.grace_ms
    assert pipeline.marker_releases_windows(NOW_MS)  # none written yet
    topics = (TOPICS.viewer, TOPICS.order, TOPICS.gift)

    def feed(ts: int, offset: int) -> None:  # every input at ``ts``
        for topic in topics:
            payload = (
                viewer("like", room, "u", ts)
                if topic == TOPICS.viewer
                else orjson.dumps(
                    {
                        "order_id": f"o{offset}",
                        "room_id": room,
                        "user_id": "u",
                        "ts": ts,
                        "status": "created",
                        "amount_minor": 100,
                        "currency": "CNY",
                    }
                    if topic == TOPICS.order
                    else {
                        "gift_id": f"g{offset}",
                        "room_id": room,
                        "user_id": "u",
                        "ts": ts,
                        "count": 1,
                        "value_minor": 10,
                    }
                )
            )
            pipeline.process(topic, records([payload], first_offset=offset), NOW_MS)

    feed(T0 + grace, 0)  # releases the window before [T0, T0 + 10 s)
    pipeline.stage_checkpoint(NOW_MS, {})
    assert not pipeline.marker_releases_windows(NOW_MS)
    feed(T0 + window + grace - 1, 1)  # the window [T0, T0 + 10 s) is not released yet
    assert not pipeline.marker_releases_windows(NOW_MS)
    feed(T0 + window + grace, 2)  # now it is
    assert pipeline.marker_releases_windows(NOW_MS)
    pipeline.stage_checkpoint(NOW_MS, {})
    assert not pipeline.marker_releases_windows(NOW_MS)


def test_an_idle_task_that_never_got_an_event_writes_idle_markers_and_none_are_due() -> None:
    """Its markers say ``null`` (idle: it holds no receiver and moves none), and being idle is
    nothing to hurry a checkpoint for; its first events make its markers hold again."""
    pipeline, sink, _ = make(partition=0)
    idle_ms = SETTINGS.core.idle_partition_ms
    pipeline.tick(NOW_MS)
    pipeline.tick(NOW_MS + idle_ms)  # every input caught up and silent
    assert pipeline.marker_releases_windows(NOW_MS + idle_ms)  # none written yet
    pipeline.stage_checkpoint(NOW_MS + idle_ms, {})
    markers = sink.take(TOPICS.repartition)
    assert len(markers) == PARTITIONS - 1 and {v for _, _, v, _ in markers} == {b"null"}
    assert not pipeline.marker_releases_windows(NOW_MS + 10 * idle_ms)
    (room,) = rooms_on(0, 1)
    pipeline.process(TOPICS.viewer, records([viewer("like", room, "u", T0)]), NOW_MS + 10 * idle_ms)
    assert pipeline.marker_releases_windows(NOW_MS + 10 * idle_ms)  # a receiver fed by it alone waits
    pipeline.stage_checkpoint(NOW_MS + 10 * idle_ms, {})
    assert {v for _, _, v, _ in sink.take(TOPICS.repartition)} == {b"%d" % T0}


def test_the_markers_are_due_at_once_when_a_task_that_never_got_an_event_turns_idle() -> None:
    """At start a task's inputs are not known to be idle: its first markers say "nothing known
    yet" and hold every receiver. Once they turn idle, the "idle" markers release them: they are
    due at once, not at the next regular checkpoint."""
    pipeline, sink, _ = make(partition=0)
    pipeline.tick(NOW_MS)
    pipeline.stage_checkpoint(NOW_MS, {})
    assert {v for _, _, v, _ in sink.take(TOPICS.repartition)} == {b"%d" % -(2**62)}
    assert not pipeline.marker_releases_windows(NOW_MS + 1)
    pipeline.tick(NOW_MS + SETTINGS.core.idle_partition_ms)
    assert pipeline.marker_releases_windows(NOW_MS + SETTINGS.core.idle_partition_ms)
