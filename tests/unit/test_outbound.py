"""``append_record``: the producer batch's compiled builder called directly must write the records
the public ``BatchBuilder.append`` writes, and refuse a record the same way when the batch is full.
``OnePassProduceRequest``: the bytes aiokafka's produce request encodes, for every version."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import DefaultRecordBatch
from aiokafka.structs import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from streams._outbound import OnePassProduceRequest, Outbound, _OnePassHandler, append_record

RECORDS = [
    (b"room-1", b'{"views":1}', ()),
    (None, b'{"marker":true}', [("livepulse-sender", b"3")]),
    (b"room-2", None, ()),  # a tombstone
    (b"k", b"v" * 300, [("a", b"1"), ("b", b"")]),
]


Record = tuple[int, bytes | None, bytes | None, list[tuple[str, bytes]]]


def records_of(builder: BatchBuilder) -> list[Record]:
    batch = DefaultRecordBatch(bytes(builder._build()))
    return [(r.offset, r.key, r.value, list(r.headers)) for r in batch]


def public_append(builder: BatchBuilder, key: bytes | None, value: bytes | None, headers: object) -> bool:
    return builder.append(key=key, value=value, timestamp=None, headers=list(headers)) is not None  # type: ignore[call-overload]


def test_same_records_as_the_public_append() -> None:
    fast = BatchBuilder(1 << 20, 0, is_transactional=True)
    public = BatchBuilder(1 << 20, 0, is_transactional=True)
    for key, value, headers in RECORDS:
        assert append_record(fast, key, value, headers)
        assert public_append(public, key, value, headers)
    assert fast.record_count() == public.record_count() == len(RECORDS)
    got = records_of(fast)
    assert got == records_of(public)
    assert [(k, v, list(h)) for _, k, v, h in got] == [(k, v, list(h)) for k, v, h in RECORDS]
    assert [offset for offset, *_ in got] == [0, 1, 2, 3]


def test_a_full_batch_refuses_and_closes_as_the_public_append_does() -> None:
    value = b"x" * 200
    fast, public = BatchBuilder(1024, 0), BatchBuilder(1024, 0)
    taken = [append_record(fast, b"k", value) for _ in range(10)]
    taken_public = [public_append(public, b"k", value, ()) for _ in range(10)]
    assert taken == taken_public
    assert taken.index(False) > 0
    # refused once, always refused: the caller starts a new batch
    assert not append_record(fast, b"k", b"")
    assert fast.record_count() == public.record_count() == taken.index(False)
    assert records_of(fast) == records_of(public)


def test_a_batch_with_serializers_takes_the_public_append() -> None:
    builder = BatchBuilder(1 << 20, 0, key_serializer=str.encode, value_serializer=str.encode)
    assert append_record(builder, "room", "payload")  # type: ignore[arg-type]
    assert [(k, v) for _, k, v, _ in records_of(builder)] == [(b"room", b"payload")]


# -- one-pass produce requests --------------------------------------------------------------------

VERSIONS = {0: (0, 8)}  # the broker's Produce versions: aiokafka takes its newest, 7

records = st.one_of(st.none(), st.binary(max_size=64), st.binary(max_size=64).map(bytearray))
topics = st.lists(
    st.tuples(
        st.text(min_size=1, max_size=12),
        st.lists(st.tuples(st.integers(0, 2**31 - 1), records), max_size=4),
    ),
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(
    txn=st.one_of(st.none(), st.text(max_size=20)),
    acks=st.sampled_from([-1, 0, 1]),
    timeout=st.integers(0, 2**31 - 1),
    topics=topics,
    top=st.integers(3, 8),
)
def test_a_one_pass_request_encodes_the_bytes_aiokafka_does(
    txn: str | None, acks: int, timeout: int, topics: Any, top: int
) -> None:
    versions = {0: (0, top)}
    ours = OnePassProduceRequest(txn, acks, timeout, topics).prepare(versions)
    theirs = ProduceRequest(txn, acks, timeout, topics).prepare(versions)
    assert ours.API_VERSION == theirs.API_VERSION
    assert ours.RESPONSE_TYPE is theirs.RESPONSE_TYPE
    assert type(ours) is not type(theirs)  # the one-pass encoder, not aiokafka's
    assert ours.encode() == theirs.encode()


@pytest.mark.parametrize("top", [0, 1, 2])
def test_versions_before_transactions_keep_aiokafka_s_encoder(top: int) -> None:
    request = OnePassProduceRequest(None, 1, 1000, [("t", [(0, b"x")])]).prepare({0: (0, top)})
    assert type(request) is type(ProduceRequest(None, 1, 1000, [("t", [(0, b"x")])]).prepare({0: (0, top)}))


class Batch:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def get_data_buffer(self) -> bytes:
        return self.data


def test_a_producer_s_sender_makes_one_pass_requests() -> None:
    async def check(producer: AIOKafkaProducer) -> None:
        before = producer._sender._send_produce_req
        Outbound(producer)  # as every task producer's
        assert producer._sender._send_produce_req != before
        batches = {TopicPartition("a", 1): Batch(b"one"), TopicPartition("a", 0): Batch(b"two")}
        request = _OnePassHandler(producer._sender, batches).create_request()
        assert isinstance(request, OnePassProduceRequest)
        built = request.prepare(VERSIONS)
        assert built.transactional_id == "t-1"
        assert built.topics == [("a", [(1, b"one"), (0, b"two")])]
        theirs = ProduceRequest("t-1", built.required_acks, built.timeout, built.topics)
        assert built.encode() == theirs.prepare(VERSIONS).encode()

    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", transactional_id="t-1")  # never connects
        try:
            await check(producer)
        finally:
            await producer.stop()

    asyncio.run(run())
