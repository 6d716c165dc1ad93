"""Packed output records (``loadtest._packed``): a dict of records that keeps each as bytes."""

from __future__ import annotations

import random
import tracemalloc
from typing import Any

import pytest

from loadtest import _packed
from loadtest._collect import _keep_first
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


@pytest.mark.parametrize("spill_at", [1_000_000, 0, 3], ids=["in-memory", "on-disk", "spills-midway"])
def test_the_mapping_behaves_as_a_dict_in_memory_and_on_disk(
    monkeypatch: pytest.MonkeyPatch, spill_at: int
) -> None:
    """Random writes, replacements, deletes and reads, against a dict: the same entries, whether the
    writes are buffered or in the database, and in memory in the same order."""
    monkeypatch.setattr(_packed, "_BATCH", 4)
    records: PackedRecords[tuple[str, int], RoomStats] = PackedRecords(RoomStats, spill_at=spill_at)
    model: dict[tuple[str, int], RoomStats] = {}
    rng = random.Random(5)
    for step in range(600):
        key = (f"r{rng.randrange(12)}", 10_000 * rng.randrange(5))
        op = rng.random()
        if op < 0.6:
            model[key] = records[key] = _stats(key[0], key[1], views=step)
        elif op < 0.75:
            assert (key in records) is (key in model)
            if key in model:
                del model[key], records[key]
            else:
                with pytest.raises(KeyError):
                    del records[key]
        else:
            assert records.get(key) == model.get(key)
            if key not in model:
                with pytest.raises(KeyError):
                    records[key]
        if step % 37 == 0:
            probe = [(f"r{i % 13}", 10_000 * (i % 6)) for i in range(step % 50)]
            assert records.get_many(probe) == [model.get(k) for k in probe]
            assert records.absent(probe) == [k for k in probe if k not in model]
            assert dict(records.items()) == model and len(records) == len(model)
            assert sorted(map(repr, records.values())) == sorted(map(repr, model.values()))
            if not records.spilled:  # in memory, a dict's order too (on disk, the keys' order)
                assert list(records.items()) == list(model.items())
    assert set(records) == set(model) and all(type(k) is tuple for k in records)
    assert records.spilled is (spill_at < 600)


def test_arrival_times_come_back_as_the_same_floats() -> None:
    times = _packed.packed_floats(spill_at=2)
    values = {("r1", 0): 1_767_225_612.345678, ("r2", 0): 0.1, ("r1", 10_000): 2.0**60 + 0.5}
    for key, value in values.items():
        times[key] = value
    assert times.spilled and dict(times.items()) == values and times.get(("r9", 0)) is None


def test_records_on_disk_hold_next_to_nothing_in_memory() -> None:
    """Past ``spill_at`` the records are in SQLite's temporary file: Python holds only a batch of
    writes (the page cache, a few MB at most, is SQLite's own and not traced here)."""
    records: PackedRecords[tuple[str, int], RoomStats] = PackedRecords(RoomStats, spill_at=1_000)
    count = 120_000  # ~27 MB in memory
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(count):
            room = "room-" + str(i % 500)
            records[(room, 10_000 * i)] = _stats(room, 10_000 * i)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert records.spilled and len(records) == count
    # at most one batch of writes waiting (its keys as tuples, ~400 bytes each), never all of them
    assert held < _packed._BATCH * 400
    assert records[("room-7", 70_000)] == _stats("room-7", 70_000)


@pytest.mark.parametrize("spill_at", [1_000_000, 0], ids=["in-memory", "on-disk"])
def test_the_collector_keeps_the_first_record_and_tells_repeats_from_conflicts(spill_at: int) -> None:
    """A replayed window must repeat the record it replays: the same record is a duplicate, another
    one a conflict, whether it comes in the same fetch or a later one."""
    held: PackedRecords[tuple[str, int], RoomStats] = PackedRecords(RoomStats, spill_at=spill_at)
    conflicts: list[tuple[RoomStats, RoomStats]] = []
    a, b, a2 = _stats("r1", 0), _stats("r2", 0), _stats("r1", 0, views=99)
    fresh, duplicates = _keep_first(held, [("r1", 0), ("r2", 0), ("r1", 0)], [a, b, a], conflicts)
    assert fresh == [True, True, False] and duplicates == 1 and conflicts == []
    fresh, duplicates = _keep_first(held, [("r1", 0), ("r2", 0), ("r3", 0)], [a2, b, a], conflicts)
    assert fresh == [False, False, True] and duplicates == 1 and conflicts == [(a, a2)]
    assert dict(held.items()) == {("r1", 0): a, ("r2", 0): b, ("r3", 0): a}


@pytest.mark.parametrize("spill_at", [1_000_000, 0], ids=["in-memory", "on-disk"])
@pytest.mark.parametrize("key", [("r1", 1.0), ("r1", True), (("r1", 1), 2), ("r1", b"x"), 1.5])
def test_keys_that_would_not_come_back_from_disk_as_they_went_are_refused(spill_at: int, key: object) -> None:
    """A float or a bool equals an int in a dict but not on disk, and a nested tuple comes back as
    a list: such keys are refused in memory too, so a run does not change behaviour as it grows."""
    records: PackedRecords[Any, RoomStats] = PackedRecords(RoomStats, spill_at=spill_at)
    records[("r0", 0)] = _stats("r0", 0)
    with pytest.raises(TypeError):
        records[key] = _stats("r1", 0)
    assert len(records) == 1 and dict(records.items()) == {("r0", 0): _stats("r0", 0)}


def test_clearing_a_mapping_on_disk_takes_it_back_to_memory() -> None:
    records: PackedRecords[tuple[str, int], RoomStats] = PackedRecords(RoomStats, spill_at=10)
    for i in range(5_000):
        records[("r", i)] = _stats("r", i)
    assert records.spilled
    records.clear()
    assert not records.spilled and len(records) == 0
    records[("r", 1)] = _stats("r", 1)
    assert dict(records.items()) == {("r", 1): _stats("r", 1)}
