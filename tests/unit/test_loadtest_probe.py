"""The latency probe's file: records read back as written, the first arrival per window kept.

The probe process itself reads a real broker in the quick load test
(``tests/integration/test_loadtest_quick.py``).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from loadtest import _packed, probe


def _write(path: Path, rows: list[tuple[float, int, str]]) -> None:
    with path.open("wb") as out:
        for arrival, ws, room in rows:
            probe.write_record(out, arrival, ws, room.encode())


def test_records_read_back_in_order_a_cut_record_left_out(tmp_path: Path) -> None:
    rows = [(1.5, 10_000, "r1"), (1.75, -20_000, "r-ü"), (2.0, 2**40, ""), (2.25, 0, "r" * 300)]
    path = tmp_path / "probe.bin"
    _write(path, rows)
    whole = path.read_bytes()
    assert [(a, w, r) for r, w, a in probe.read_records(path)] == rows
    for cut in (1, 5, len("r" * 300)):  # killed mid-record: header or room id cut short
        path.write_bytes(whole[:-cut])
        assert [(a, w, r) for r, w, a in probe.read_records(path)] == rows[:-1]


@pytest.mark.parametrize("spill_at", [None, 1_000])
def test_first_arrival_per_window_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spill_at: int | None
) -> None:
    if spill_at is not None:  # on disk, as at 100 000 rooms
        monkeypatch.setattr(_packed, "SPILL_AT", spill_at)
    rng = random.Random(7)
    rows: list[tuple[float, int, str]] = []
    first: dict[tuple[str, int], float] = {}
    for i in range(45_000):  # more than one batch of 20 000; repeats across batches
        room, ws = f"r{rng.randrange(3_000)}", rng.randrange(12) * 10_000
        arrival = 1_000.0 + i / 100
        rows.append((arrival, ws, room))
        first.setdefault((room, ws), arrival)
    path = tmp_path / "probe.bin"
    _write(path, rows)
    got = probe.arrivals_of(path)
    assert got.spilled == (spill_at is not None)
    assert len(got) == len(first)
    assert dict(got.items()) == first
