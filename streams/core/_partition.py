"""Kafka's default key partitioning (the Java client's murmur2), to find misrouted events.

Rooms are expected on partition ``toPositive(murmur2(room_id)) % P``; a
producer using another partitioner (librdkafka's crc32, sarama's fnv) puts
them elsewhere, and the data plane re-routes them.
"""

from __future__ import annotations

_M = 0x5BD1E995
_SEED = 0x9747B28C
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """32-bit murmur2 as in ``org.apache.kafka.common.utils.Utils.murmur2`` (unsigned result)."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    body = length & ~3
    for i in range(0, body, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    extra = length & 3
    if extra == 3:
        h ^= data[body + 2] << 16
    if extra >= 2:
        h ^= data[body + 1] << 8
    if extra >= 1:
        h ^= data[body]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition the Java client's default partitioner picks for a non-null key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class PartitionCache:
    """Memoised ``partition_for`` over room ids; cleared whole when it grows past a bound."""

    __slots__ = ("_cache", "_max_entries", "partitions")

    def __init__(self, partitions: int, max_entries: int = 1_000_000) -> None:
        self.partitions = partitions
        self._max_entries = max_entries
        self._cache: dict[str, int] = {}

    def __call__(self, room_id: str) -> int:
        partition = self._cache.get(room_id)
        if partition is None:
            if len(self._cache) >= self._max_entries:
                self._cache.clear()
            partition = self._cache[room_id] = partition_for(room_id.encode(), self.partitions)
        return partition
