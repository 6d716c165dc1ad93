"""Packed output records (``loadtest._packed``): a dict of records that keeps each as bytes."""

from __future__ import annotations

import tracemalloc

from loadtest._packed import PackedRecords
from schemas import RoomSession, RoomStats


def _stats(room: str, ws: int, **change: object) -> RoomStats:
    base = RoomStats(room, ws, ws + 10_000, 12, 7, 3, 4, 1, 2, 0.2, 129_900, 0, 5, 1_990, 1, 2)
    for name, value in change.items():
        setattr(base, name, value)
    return base


def test_records_come_back_equal_and_behave_as_a_dict() -> None:
    records: PackedRecords[tuple[str, int], RoomStats] = PackedRecords(RoomStats)
    one, two = _stats("r1", 0), _stats("r2", 10_000, orders_per_sec=0.3, gmv_minor=2**40)
    records[("r1", 0)] = one
    records[("r2", 10_000)] = two
    assert records[("r1", 0)] == one and records[("r2", 10_000)] == two
    assert type(records[("r2", 10_000)].orders_per_sec) is float
    assert ("r1", 0) in records and ("r1", 10_000) not in records and len(records) == 2
    assert dict(records.items()) == {("r1", 0): one, ("r2", 10_000): two}
    assert records.get(("r3", 0)) is None
    records[("r1", 0)] = two  # a replacement, as the latest record of a session is
    assert records[("r1", 0)] == two and len(records) == 2
    del records[("r1", 0)]
    assert list(records) == [("r2", 10_000)]


def test_a_session_with_no_end_yet_comes_back() -> None:
    live = RoomSession("r1", 0, None, "live", 9, 5, 3, 0, 1, 0, 0, 2, 3_980, 0, 1, 100, 0, 20_000)
    records: PackedRecords[tuple[str, int], RoomSession] = PackedRecords(RoomSession)
    records[("r1", 0)] = live
    assert records[("r1", 0)] == live and records[("r1", 0)].session_end is None


def test_a_packed_record_takes_a_fraction_of_the_object() -> None:
    """A room-stats record and its key as objects took ~500 bytes in the load test; packed, under 250."""
    records: PackedRecords[tuple[str, int], RoomStats] = PackedRecords(RoomStats)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):
            room = "room-" + str(i % 500)  # a new string per record, as decoded from the wire
            records[(room, 1_767_225_600_000 + 10_000 * i)] = _stats(room, 1_767_225_600_000 + 10_000 * i)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held / len(records) < 250
