"""The fused pass (``NativeTaskAggregator.apply_raw``: events applied as the native parser reads
them) against the split way it stands in for (the batch decoders, dead letters, re-routing, then
``apply``), on the same native table: the same batches through two pipelines, one with the fused
pass and one without, must write the same records (room-stats, rollups, sessions, dead letters,
re-routed events, markers, changelog; dead letters in any order) and count the same metrics.

The batches mix what the fused pass takes with everything that sends the rest of a batch the split
way: messages outside the decoders' fast path (floats, nested values, escapes, bad JSON, no value,
oversized), invalid events, rooms of other tasks, orders in a currency not yet seen, and events
late, duplicated, replayed or past the room cap.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import Limits
from streams.core import CoreConfig
from streams.core._native_rooms import NativeTaskAggregator
from streams.metrics import Metrics
from streams.pipeline import Record, Routing, TaskPipeline
from streams.settings import Settings
from tests.unit.test_pipeline import PARTITIONS, TOPICS, ListSink, rooms_on

T0 = 1_700_000_000_000
NOW_MS = T0 + 30_000
HERE = 1
LOCAL = rooms_on(HERE, 4)
FOREIGN = rooms_on(2, 2, "far") + rooms_on(0, 1, "far")
TOPIC_OF = {0: TOPICS.viewer, 1: TOPICS.order, 2: TOPICS.gift}


def make(
    *, fused: bool, currency: str, max_rooms: int, sink: ListSink | None = None
) -> tuple[TaskPipeline, ListSink, Metrics]:
    config = CoreConfig(max_rooms=max_rooms, room_idle_ms=40_000)
    limits = Limits(max_message_bytes=180, max_id_len=12)
    setup = Settings(partitions=PARTITIONS, core=config, currency=currency, limits=limits, fused_decode=fused)
    sink, metrics = sink or ListSink(), Metrics()
    routing = Routing(TOPICS, PARTITIONS)
    core = routing.task_core(HERE, config)
    assert isinstance(core, NativeTaskAggregator)
    pipeline = TaskPipeline(HERE, core, sink, routing, setup, metrics)
    assert pipeline._fused == fused  # the native decoders are on by default
    return pipeline, sink, metrics


rooms = st.sampled_from(LOCAL * 3 + FOREIGN + ["x" * 13, "", "r\u00e9\u0301", "r\\u0041"])
times = st.integers(-3_000, 26_000).map(lambda d: T0 + d) | st.sampled_from([T0 + 10**12, 0, "1", 1.5])
users = st.sampled_from(["u1", "u2", "u3", "u4", "u5", "\u00fc\u00df", "u\\n", "", None])


@st.composite
def payload(draw: Any, kind: int) -> bytes | None:
    """One message of input ``kind``: usually a valid event, sometimes anything but."""
    shape = draw(st.sampled_from(["event"] * 6 + ["raw", "none", "float", "nested", "dup-key"]))
    if shape == "none":
        return None
    if shape == "raw":
        return draw(st.sampled_from([b"", b"{", b"[]", b"null", b'{"type": "join"', b"\xff\xfe", b"{}" * 3]))
    room, ts, user = draw(rooms), draw(times), draw(users)
    if kind == 0:
        obj: dict[str, Any] = {
            "type": draw(
                st.sampled_from(["join", "leave", "heartbeat", "like", "comment", "share", "bogus"])
            ),
            "room_id": room,
            "user_id": user,
            "ts": ts,
        }
    elif kind == 1:
        obj = {
            "order_id": draw(st.sampled_from(["o1", "o2", "o3", "o4"])),
            "room_id": room,
            "user_id": user,
            "ts": ts,
            "status": draw(st.sampled_from(["created", "paid", "cancelled", "refunded", "lost"])),
            "amount_minor": draw(st.sampled_from([0, 1_999, 5, -1, 10**15, 2.5])),
            "currency": draw(st.sampled_from(["CNY", "CNY", "USD", "cny", "EURO"])),
        }
    else:
        obj = {
            "gift_id": draw(st.sampled_from(["g1", "g2"])),
            "room_id": room,
            "user_id": user,
            "ts": ts,
            "count": draw(st.sampled_from([1, 3, 0, 10**9])),
            "value_minor": draw(st.sampled_from([0, 100, -5])),
        }
    if shape == "float":
        obj["extra"] = 1.25
    elif shape == "nested":
        obj["extra"] = {"a": [1, 2]}
    raw = orjson.dumps(obj)
    if shape == "dup-key":
        raw = raw[:-1] + b',"room_id":"' + LOCAL[0].encode() + b'"}'
    if draw(st.booleans()):
        raw = b" " + raw.replace(b":", b" : ") + b"\n"  # whitespace the parser skips
    return raw


@st.composite
def rounds(draw: Any) -> list[tuple[int, list[bytes | None], int]]:
    """Batches of one input each, with the wall clock at each: (kind, payloads, now step)."""
    out = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from([0, 0, 0, 1, 2]))
        out.append((kind, draw(st.lists(payload(kind), max_size=14)), draw(st.integers(0, 6_000))))
    return out


def run(
    batches: list[tuple[int, list[bytes | None], int]], *, fused: bool, currency: str, max_rooms: int
) -> tuple[Any, ...]:
    """The batches through one pipeline, which crashes after the fourth and restarts from its
    changelog, reading every input again from its start (the state's offsets skip what it holds)."""
    pipeline, sink, metrics = make(fused=fused, currency=currency, max_rooms=max_rooms)
    now = NOW_MS

    def feed(upto: int) -> None:
        nonlocal now
        offsets = {0: 0, 1: 0, 2: 0}
        for sender in range(PARTITIONS):  # the other tasks far ahead: the inputs move the watermark
            if sender != HERE:
                pipeline.core.sender_progress(sender, T0 + 10**9)
        for i, (kind, payloads, step) in enumerate(batches[:upto]):
            now += step
            messages = [Record(offsets[kind] + j, b"k", p) for j, p in enumerate(payloads)]
            pipeline.process(TOPIC_OF[kind], messages, now)
            offsets[kind] += len(payloads)
            pipeline.tick(now)
            if i % 3 == 1:
                pipeline.stage_checkpoint(now, dict(offsets))

    feed(4)
    changelog = [(k, v) for t, p, k, v, _ in sink.records if t == TOPICS.changelog and k is not None]
    pipeline, _, metrics = make(fused=fused, currency=currency, max_rooms=max_rooms, sink=sink)
    pipeline.core.restore(changelog)
    feed(len(batches))
    pipeline.tick(now + 120_000)
    pipeline.stage_checkpoint(now + 120_000, {})
    by_topic: dict[str, list[Any]] = {}
    for topic, partition, key, value, headers in sink.records:
        by_topic.setdefault(topic, []).append((partition, key, value, headers))
    # a batch's dead letters come in another order: the room cap's of the fused part before
    # the split part's invalid ones, where the split way writes the invalid ones first
    by_topic[TOPICS.dlq] = sorted(by_topic.get(TOPICS.dlq, []), key=repr)
    samples = sorted(
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name.startswith("livepulse_events") or s.name.startswith("livepulse_windows")
    )
    c = pipeline.core.counters
    counters = (c.applied, c.late, c.duplicate, c.replayed, c.overflow, c.windows_emitted)
    return by_topic, samples, counters, pipeline.core._consumed, pipeline.core.watermark_ms


@given(batches=rounds(), currency=st.sampled_from(["", "CNY"]), max_rooms=st.sampled_from([2, 100]))
@settings(max_examples=300, deadline=None)
def test_the_fused_pass_writes_and_counts_what_the_split_way_does(
    batches: list[tuple[int, list[bytes | None], int]], currency: str, max_rooms: int
) -> None:
    fused = run(batches, fused=True, currency=currency, max_rooms=max_rooms)
    split = run(batches, fused=False, currency=currency, max_rooms=max_rooms)
    assert fused == split


def test_a_batch_of_valid_local_events_is_taken_whole_by_the_fused_pass() -> None:
    """No message of it goes the split way: the batch decoders never see it."""
    pipeline, _, _ = make(fused=True, currency="", max_rooms=100)
    batch = [
        Record(
            i, b"k", orjson.dumps({"type": "join", "room_id": LOCAL[i % 2], "user_id": f"u{i}", "ts": T0 + i})
        )
        for i in range(50)
    ]
    taken: list[int] = []

    def refuse(group: Any, now_ms: int, limits: Any) -> Any:
        taken.append(len(group))
        raise AssertionError("the split way was taken")

    pipeline._decoders = {0: refuse, 1: refuse, 2: refuse}
    pipeline.process(TOPICS.viewer, batch, NOW_MS)
    assert taken == []
    assert pipeline.core.counters.applied == {0: 50}
    assert pipeline.core._consumed == {0: 49}


@pytest.mark.parametrize(
    ("odd", "dead"),
    [
        (orjson.dumps({"type": "join", "room_id": LOCAL[1], "user_id": "u", "ts": T0, "x": 1.5}), 0),
        (None, 1),
        (b"not json", 1),
    ],
    ids=["valid with a float", "no value", "garbage"],
)
def test_a_run_of_messages_outside_the_fast_path_goes_the_split_way_in_its_place(
    odd: bytes | None, dead: int
) -> None:
    pipeline, sink, _ = make(fused=True, currency="", max_rooms=100)
    good = [
        orjson.dumps({"type": "join", "room_id": LOCAL[0], "user_id": f"u{i}", "ts": T0 + i})
        for i in range(4)
    ]
    seen: list[list[int]] = []
    decode = pipeline._decoders[0]

    def spy(group: Any, now_ms: int, limits: Any) -> Any:
        seen.append([m.offset for m in group])
        return decode(group, now_ms, limits)

    pipeline._decoders = {**pipeline._decoders, 0: spy}
    foreign = orjson.dumps({"type": "join", "room_id": FOREIGN[0], "user_id": "u", "ts": T0})
    payloads = [*good[:2], odd, foreign, *good[2:], odd]
    pipeline.process(TOPICS.viewer, [Record(i, b"k", p) for i, p in enumerate(payloads)], NOW_MS)
    assert seen == [[2, 3], [6]]
    assert pipeline.core.counters.applied == {0: 4 + 2 * (1 - dead)}
    assert len(sink.take(TOPICS.dlq)) == 2 * dead
    assert len(sink.take(TOPICS.repartition)) == 1


def test_an_input_whose_batch_is_all_garbage_is_not_delivered() -> None:
    """No event taken: the input stays as it was (its silence goes on counting)."""
    pipeline, _, _ = make(fused=True, currency="", max_rooms=100)
    core = pipeline.core
    before = dict(core._src_wall), set(core._live)
    pipeline.process(TOPICS.viewer, [Record(0, b"k", b"{"), Record(1, b"k", None)], NOW_MS)
    assert (dict(core._src_wall), set(core._live)) == before


def test_limits_reach_the_fused_pass() -> None:
    """An event over the size bound, or with an id over the length bound, goes the split way and is
    dead-lettered; one within is taken."""
    pipeline, sink, _ = make(fused=True, currency="", max_rooms=100)
    pipeline._limits = replace(pipeline._limits, max_message_bytes=80)
    short = orjson.dumps({"type": "join", "room_id": LOCAL[0], "user_id": "u", "ts": T0})
    long = orjson.dumps({"type": "join", "room_id": LOCAL[0], "user_id": "u" * 40, "ts": T0})
    pipeline.process(TOPICS.viewer, [Record(0, b"k", short), Record(1, b"k", long)], NOW_MS)
    assert pipeline.core.counters.applied == {0: 1}
    assert [v is not None for _, _, v, _ in sink.take(TOPICS.dlq)] == [True]
