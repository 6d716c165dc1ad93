"""Fetched record batches read natively (``fetched.rs``, ``streams._fetch``) against aiokafka.

The reference is aiokafka's own reader of a fetch response, ``PartitionRecords`` over its
``MemoryRecords``: for the same bytes, fetch offset, aborted transactions and isolation level,
``FetchedRecords`` must return the same records (offset, timestamp, key, value, headers) and
leave the position where aiokafka's would be once they are read. Batches are written by
aiokafka's builder; control batches (commit and abort markers) by hand, as the broker writes
them.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from aiokafka.consumer.fetcher import READ_COMMITTED, READ_UNCOMMITTED, PartitionRecords
from aiokafka.record._crc32c import crc as crc32c
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import _fetch
from streams.core import _fastcore

TP = TopicPartition("t", 0)
RecordSpec = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]


def batch(
    base: int,
    records: list[RecordSpec],
    *,
    producer: int = -1,
    transactional: bool = False,
    compression: int = 0,
    log_append_time: bool = False,
) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=compression,
        is_transactional=int(transactional),
        producer_id=producer,
        producer_epoch=0 if producer >= 0 else -1,
        base_sequence=0 if producer >= 0 else -1,
        batch_size=1 << 20,
    )
    for i, (key, value, headers) in enumerate(records):
        builder.append(i, timestamp=1_700_000_000_000 + base + i, key=key, value=value, headers=headers)
    raw = bytearray(builder.build())
    struct.pack_into(">q", raw, 0, base)
    if log_append_time:
        rewrite(raw, lambda attributes: attributes | 0x08)
        struct.pack_into(">q", raw, 35, 1_800_000_000_000)
        reseal(raw)
    return bytes(raw)


def rewrite(raw: bytearray, change: Any) -> None:
    (attributes,) = struct.unpack_from(">h", raw, 21)
    struct.pack_into(">h", raw, 21, change(attributes))


def reseal(raw: bytearray) -> None:
    struct.pack_into(">I", raw, 17, crc32c(bytes(raw[21:])))


def marker(base: int, producer: int, *, abort: bool) -> bytes:
    """A control batch as the broker writes it: one record, key (version 0, type 0 abort / 1 commit)."""
    key = struct.pack(">hh", 0, 0 if abort else 1)
    raw = bytearray(batch(base, [(key, struct.pack(">hi", 0, 0), [])], producer=producer, transactional=True))
    rewrite(raw, lambda attributes: attributes | 0x20)
    reseal(raw)
    return bytes(raw)


def aiokafka_reads(
    raw: bytes, fetch_offset: int, aborted: list[tuple[int, int]], committed: bool
) -> tuple[list[tuple[Any, ...]], int]:
    records = PartitionRecords(
        TP,
        MemoryRecords(raw),
        aborted,
        fetch_offset,
        None,
        None,
        True,
        READ_COMMITTED if committed else READ_UNCOMMITTED,
    )
    got = [(r.offset, r.timestamp, r.key, r.value, tuple(r.headers)) for r in records]
    return got, records.next_fetch_offset


def native_reads(
    raw: bytes, fetch_offset: int, aborted: list[tuple[int, int]], committed: bool, step: int
) -> tuple[list[tuple[Any, ...]], int]:
    reader = _fetch.FetchedRecords(raw, fetch_offset, aborted, committed, True)
    got: list[tuple[Any, ...]] = []
    while not reader.exhausted:
        run = reader.take(step)
        assert len(run) <= step
        got += [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in run]
    assert len(reader.take(step)) == 0
    return got, reader.next_offset


values = st.one_of(st.none(), st.binary(max_size=40))
headers = st.lists(st.tuples(st.text(max_size=6), st.binary(max_size=6)), max_size=2)
record_lists = st.lists(st.tuples(values, values, headers), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(record_lists, min_size=1, max_size=5),
    st.data(),
    st.sampled_from([1, 3, 1000]),
    st.booleans(),
)
def test_plain_batches_as_aiokafka_reads_them(
    batches: list[list[RecordSpec]], data: Any, step: int, cut: bool
) -> None:
    raw, base = b"", 100
    for records in batches:
        raw += batch(base, records)
        base += len(records)
    if cut:  # a response cut at the fetch size bound: the last batch is left out
        raw = raw[: len(raw) - data.draw(st.integers(1, 20))]
    fetch_offset = data.draw(st.integers(100, 100 + len(batches[0]) - 1))
    assert native_reads(raw, fetch_offset, [], False, step) == aiokafka_reads(raw, fetch_offset, [], False)


@pytest.mark.parametrize("committed", [True, False])
@pytest.mark.parametrize("step", [1, 2, 100])
def test_transactions_as_aiokafka_reads_them(committed: bool, step: int) -> None:
    one = [(b"k", b"a", []), (b"k", b"b", [])]
    raw = (
        batch(0, one, producer=7, transactional=True)  # 0-1 aborted
        + batch(2, one, producer=8, transactional=True)  # 2-3 committed
        + batch(4, one)  # 4-5 not transactional
        + marker(6, 7, abort=True)
        + marker(7, 8, abort=False)
        + batch(8, one, producer=7, transactional=True)  # 8-9 committed after its abort
        + marker(10, 7, abort=False)
    )
    aborted = [(7, 0)]
    got = native_reads(raw, 0, aborted, committed, step)
    assert got == aiokafka_reads(raw, 0, aborted, committed)
    offsets = [r[0] for r in got[0]]
    assert offsets == ([2, 3, 4, 5, 8, 9] if committed else [0, 1, 2, 3, 4, 5, 8, 9])
    assert got[1] == 11  # past the last marker


def test_log_append_time_and_a_batch_emptied_by_compaction() -> None:
    raw = batch(0, [(b"k", b"v", [])] * 3, log_append_time=True)
    got = native_reads(raw, 0, [], False, 10)
    assert got == aiokafka_reads(raw, 0, [], False)
    assert {r[1] for r in got[0]} == {1_800_000_000_000}
    # compaction keeps a batch's last offset: records 0-2 gone, the position passes them
    empty = bytearray(batch(0, [(b"k", b"v", [])]))
    struct.pack_into(">i", empty, 23, 2)  # lastOffsetDelta
    struct.pack_into(">i", empty, 57, 0)  # no records
    body = bytes(empty[:61])
    raw2 = struct.pack(">qi", 0, len(body) - 12) + body[12:]
    raw2 = bytearray(raw2)
    reseal(raw2)
    raw2 = bytes(raw2) + batch(3, [(b"k", b"v", [])])
    assert native_reads(raw2, 0, [], False, 10) == aiokafka_reads(raw2, 0, [], False)


def test_what_it_does_not_read_is_left_to_aiokafka() -> None:
    compressed = batch(0, [(b"k", b"v" * 50, [])] * 3, compression=1)  # gzip
    assert not _fastcore.readable(compressed)
    assert not _fastcore.readable(batch(0, [(b"k", b"v", [])]) + compressed)
    assert _fastcore.readable(batch(0, [(b"k", b"v", [])]) + compressed[:30])  # cut: not a batch yet
    with pytest.raises(ValueError, match="aiokafka's to read"):
        _fetch.FetchedRecords(compressed, 0, [], False, True)


@pytest.mark.parametrize("length", [-1, -(2**31), 0, 48])
def test_a_batch_length_shorter_than_its_header_is_left_to_aiokafka(length: int) -> None:
    raw = bytearray(batch(0, [(b"k", b"v", [])]) + batch(1, [(b"k", b"v", [])]))
    second = len(raw) // 2
    struct.pack_into(">i", raw, second + 8, length)  # the length is outside the CRC
    assert not _fastcore.readable(bytes(raw))  # aiokafka raises on it; a cut would re-fetch forever
    with pytest.raises(ValueError, match="aiokafka's to read"):
        _fetch.FetchedRecords(bytes(raw), 0, [], False, True)


def test_corruption_is_an_error() -> None:
    raw = bytearray(batch(0, [(b"k", b"value", [])] * 2))
    raw[-3] ^= 0xFF
    with pytest.raises(ValueError, match="CRC"):
        _fetch.FetchedRecords(bytes(raw), 0, [], False, True).take(10)
    records = _fetch.FetchedRecords(bytes(raw), 0, [], False, False).take(10)  # unchecked: read as is
    assert len(records) == 2
    bad = bytearray(batch(0, [(b"k", b"value", [])]))
    bad[61] = 0x7F  # a record length past the batch
    reseal(bad)
    with pytest.raises(ValueError, match="corrupt record batch"):
        _fetch.FetchedRecords(bytes(bad), 0, [], False, True).take(10)


def test_a_run_reads_as_a_sequence_of_messages() -> None:
    raw = batch(5, [(b"a", b"1", [("h", b"x")]), (None, None, []), (b"c", b"3", [])])
    run = _fetch.FetchedRecords(raw, 5, [], False, True).take(10)
    assert len(run) == 3 and run
    assert [m.offset for m in run] == run.offsets == [5, 6, 7]
    assert run[-1].value == b"3" and run[1].key is None and run[1].value is None
    assert run[0].headers == (("h", b"x"),)
    assert [m.offset for m in run[1:]] == [6, 7] and run[::2][1].offset == 7
    with pytest.raises(IndexError):
        run[3]
