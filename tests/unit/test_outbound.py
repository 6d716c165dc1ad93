"""``append_record``: the producer batch's compiled builder called directly must write the records
the public ``BatchBuilder.append`` writes, and refuse a record the same way when the batch is full."""

from __future__ import annotations

from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch

from streams._outbound import append_record

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
