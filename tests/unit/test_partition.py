"""murmur2 partitioning matches the Java client (via aiokafka's port of it), natively too."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import murmur2 as reference_murmur2
from hypothesis import given
from hypothesis import strategies as st

from streams.core import _fastcore
from streams.core._partition import PartitionCache, murmur2, partition_for


@given(st.binary(max_size=200))
def test_murmur2_matches_reference(data: bytes) -> None:
    assert murmur2(data) == reference_murmur2(data) & 0xFFFFFFFF


def test_known_java_partitions() -> None:
    # Values from the Java client: Utils.toPositive(Utils.murmur2(key)) % 100.
    assert murmur2(b"21") == (-973932308) & 0xFFFFFFFF
    assert murmur2(b"foobar") == (-790332482) & 0xFFFFFFFF
    assert partition_for(b"a-little-bit-long-string", 1000) == (-985981536 & 0x7FFFFFFF) % 1000


def test_cache_agrees_and_is_bounded() -> None:
    cache = PartitionCache(12, max_entries=10)
    for i in range(50):
        assert cache(f"room-{i}") == partition_for(f"room-{i}".encode(), 12)
    assert len(cache._cache) <= 10


@given(st.binary(max_size=200), st.integers(min_value=1, max_value=5_000))
def test_the_native_partitioner_agrees(data: bytes, partitions: int) -> None:
    assert _fastcore.partition_for(data, partitions) == partition_for(data, partitions)


def test_the_native_partitioner_refuses_no_partitions() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        _fastcore.partition_for(b"room", 0)
