"""The native outbox (``streams/native/src/batches.rs``) writes the record batches aiokafka's own
builder writes for the same records, byte for byte (its compiled builder, which the producer
uses), splits them where it splits them, and aiokafka's reader reads them back."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import pytest
from aiokafka.record import default_records
from aiokafka.record.default_records import DefaultRecordBatch
from hypothesis import given, settings
from hypothesis import strategies as st

from streams._outbound import Outbound
from streams.core import _fastcore

#: the compiled builder, not the pure-Python fallback (which lets a batch reach its size exactly)
BUILDER = default_records.DefaultRecordBatchBuilder

Headers = list[tuple[str, bytes | None]]
Record = tuple[str, int, int, bytes | None, bytes | None, Headers]

optional_bytes = st.one_of(st.none(), st.binary(max_size=300))
records = st.lists(
    st.tuples(
        st.sampled_from(["live.room-stats", "changelog", "dlq"]),
        st.integers(0, 2),
        st.integers(1_700_000_000_000, 1_700_000_100_000),  # timestamps in any order
        optional_bytes,
        optional_bytes,
        st.lists(st.tuples(st.text(max_size=12), optional_bytes), max_size=3),
    ),
    max_size=120,
)


def reference(
    builder_type: type, batch_size: int, transactional: bool, recs: list[Record]
) -> dict[tuple[str, int], list[Any]]:
    """aiokafka's builders, a new one whenever a record is refused (what ``Outbound`` does)."""

    def new() -> Any:
        return builder_type(2, 0, int(transactional), -1, -1, 0, batch_size)

    batches: dict[tuple[str, int], list[Any]] = defaultdict(list)
    offsets: dict[tuple[str, int], int] = defaultdict(int)
    for topic, partition, ts, key, value, headers in recs:
        tp = (topic, partition)
        if not batches[tp]:
            batches[tp].append(new())
        if batches[tp][-1].append(offsets[tp], ts, key, value, headers) is None:
            batches[tp].append(new())
            offsets[tp] = 0
            assert batches[tp][-1].append(0, ts, key, value, headers) is not None
        offsets[tp] += 1
    return batches


def native(batch_size: int, transactional: bool, recs: list[Record]) -> dict[tuple[str, int], list[Any]]:
    outbox = _fastcore.Outbox(batch_size, transactional)
    for topic, partition, ts, key, value, headers in recs:
        outbox.add_at(topic, partition, ts, key, value, headers)
    batches: dict[tuple[str, int], list[Any]] = defaultdict(list)
    for topic, partition, batch in outbox.take():
        batches[(topic, partition)].append(batch)
    assert not outbox.pending
    return batches


@settings(max_examples=150, deadline=None)
@given(
    recs=records,
    batch_size=st.sampled_from([100, 400, 2_000, 1 << 20]),
    transactional=st.booleans(),
    state=st.tuples(st.integers(0, 2**40), st.integers(0, 2**15 - 1), st.integers(0, 2**31 - 1)),
)
def test_the_same_batches_as_aiokafkas_builder(
    recs: list[Record], batch_size: int, transactional: bool, state: tuple[int, int, int]
) -> None:
    assert BUILDER.__module__.startswith("aiokafka.record._crecords")  # the producer's
    expected = reference(BUILDER, batch_size, transactional, recs)
    got = native(batch_size, transactional, recs)
    assert got.keys() == expected.keys()
    for tp, batches in expected.items():
        assert len(got[tp]) == len(batches)
        for mine, theirs in zip(got[tp], batches, strict=True):
            theirs.set_producer_state(*state)
            mine._set_producer_state(*state)
            built = bytes(theirs.build())
            assert mine.size() == len(built)
            assert mine.build_bytes() == built
            assert mine.size() == len(built)


@settings(max_examples=50, deadline=None)
@given(recs=records, batch_size=st.sampled_from([150, 1_000, 1 << 20]))
def test_what_aiokafkas_reader_reads_back(recs: list[Record], batch_size: int) -> None:
    """Read by aiokafka's consumer-side decoder (its CRC check included): every record, in order,
    each partition's offsets counting from 0 in every batch."""
    got = native(batch_size, True, recs)
    read: dict[tuple[str, int], list[tuple[int, bytes | None, bytes | None, Headers]]] = defaultdict(list)
    for tp, batches in got.items():
        for batch in batches:
            decoded = DefaultRecordBatch(batch.build_bytes())
            assert decoded.validate_crc()
            assert decoded.is_transactional
            assert decoded.magic == 2
            rows = list(decoded)
            assert [r.offset for r in rows] == list(range(len(rows)))
            assert len(rows) == batch.record_count()
            read[tp] += [(r.timestamp, r.key, r.value, list(r.headers)) for r in rows]
    sent: dict[tuple[str, int], list[tuple[int, bytes | None, bytes | None, Headers]]] = defaultdict(list)
    for topic, partition, ts, key, value, headers in recs:
        sent[(topic, partition)].append((ts, key, value, headers))
    assert read == sent


def test_a_record_larger_than_a_batch_gets_a_batch_of_its_own() -> None:
    outbox = _fastcore.Outbox(200, False)
    outbox.add("t", 0, b"a", b"x" * 10)
    outbox.add("t", 0, b"b", b"y" * 1_000)
    outbox.add("t", 0, b"c", b"z" * 10)
    batches = [batch for _, _, batch in outbox.take()]
    assert [b.record_count() for b in batches] == [1, 1, 1]
    assert [[r.key for r in DefaultRecordBatch(b.build_bytes())] for b in batches] == [[b"a"], [b"b"], [b"c"]]


def test_a_handed_over_batch_is_built_once_and_takes_no_record() -> None:
    outbox = _fastcore.Outbox(1 << 20, False)
    outbox.add("t", 1, b"k", bytearray(b"v"), [("h", b"1")])  # bytes-like values, as the producer takes
    ((topic, partition, batch),) = outbox.take()
    assert (topic, partition, batch.record_count(), batch.closed()) == ("t", 1, 1, True)
    assert batch.append(timestamp=None, key=b"k", value=b"v", headers=[]) is None
    first = batch._build()
    assert batch._build() is first  # a retry sends the same bytes
    with pytest.raises(ValueError, match="built already"):
        batch._set_producer_state(1, 0, 0)


def test_outbound_uses_the_native_outbox_unless_the_producer_compresses() -> None:
    from aiokafka import AIOKafkaProducer

    async def outbox_of(**config: Any) -> Any:
        producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", **config)  # never connects
        try:
            return Outbound(producer).outbox
        finally:
            await producer.stop()

    assert asyncio.run(outbox_of()) is not None
    assert asyncio.run(outbox_of(transactional_id="t-1")) is not None
    assert asyncio.run(outbox_of(compression_type="gzip")) is None
    assert asyncio.run(outbox_of(value_serializer=str.encode)) is None


produce_partitions = st.lists(
    st.tuples(
        st.integers(-(2**31), 2**31 - 1),
        st.one_of(st.none(), st.binary(max_size=200), st.binary(max_size=50).map(bytearray)),
    ),
    max_size=4,
)
# None: a null array, which aiokafka encodes as -1 (its sender never sends one)
produce_topics = st.one_of(
    st.none(),
    st.lists(st.tuples(st.text(max_size=20), st.one_of(st.none(), produce_partitions)), max_size=4),
)


@settings(max_examples=200, deadline=None)
@given(
    transactional_id=st.one_of(st.none(), st.text(max_size=30)),
    acks=st.sampled_from([-1, 0, 1]),
    timeout=st.integers(0, 2**31 - 1),
    topics=produce_topics,
)
def test_a_joined_produce_request_is_the_bytes_aiokafka_encodes(
    transactional_id: str | None, acks: int, timeout: int, topics: list[Any]
) -> None:
    from aiokafka.protocol.produce import ProduceRequest

    from streams._outbound import JoinedProduceRequest

    for struct_class in ProduceRequest._CLASSES:
        if transactional_id and struct_class.API_VERSION < 3:
            continue
        theirs = ProduceRequest(transactional_id, acks, timeout, topics).build(struct_class)
        ours = JoinedProduceRequest(transactional_id, acks, timeout, topics).build(struct_class)
        assert ours.encode() == theirs.encode()
        assert (ours.API_VERSION, ours.RESPONSE_TYPE) == (theirs.API_VERSION, theirs.RESPONSE_TYPE)
        if struct_class.API_VERSION >= 3:
            assert type(ours) is not struct_class  # joined, not aiokafka's encoding


def test_a_native_outbound_has_the_producers_sender_join_its_requests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from aiokafka import AIOKafkaProducer
    from aiokafka.producer import sender
    from aiokafka.protocol.produce import ProduceRequest
    from aiokafka.structs import TopicPartition

    monkeypatch.setattr(sender, "ProduceRequest", ProduceRequest)  # as if nothing installed it yet

    async def outbound() -> None:
        producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")  # never connects
        try:
            Outbound(producer)
        finally:
            await producer.stop()

    asyncio.run(outbound())
    # the request aiokafka's sender builds for two batches, as a broker offering v0-v7 gets it
    txn = SimpleNamespace(transactional_id="livepulse-3")
    owner = SimpleNamespace(
        client=None, _retry_backoff=0.1, _txn_manager=txn, _acks=-1, _request_timeout_ms=40_000
    )
    batches = {
        TopicPartition("out", 1): SimpleNamespace(get_data_buffer=lambda: b"batch-one"),
        TopicPartition("changelog", 0): SimpleNamespace(get_data_buffer=lambda: bytearray(b"two")),
    }
    request = sender.SendProduceReqHandler(owner, batches).create_request()
    built = request.prepare({ProduceRequest.API_KEY: (0, 7)})
    topics = [("out", [(1, b"batch-one")]), ("changelog", [(0, bytearray(b"two"))])]
    expected = ProduceRequest("livepulse-3", -1, 40_000, topics).prepare({ProduceRequest.API_KEY: (0, 7)})
    assert type(built).__module__ == "streams._outbound"
    assert built.encode() == expected.encode()


def test_a_sender_this_was_not_written_against_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiokafka.producer import sender

    from streams._outbound import join_produce_requests

    class Other:
        pass

    monkeypatch.setattr(sender, "ProduceRequest", Other)
    assert join_produce_requests() is False
    assert sender.ProduceRequest is Other
