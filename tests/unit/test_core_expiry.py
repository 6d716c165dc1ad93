"""Room expiry inside a batch keeps the checkpoint complete."""

from __future__ import annotations

from schemas import ViewerEvent
from streams.core import CoreConfig, TaskAggregator

BASE_MS = 1_700_000_000_000


def test_a_room_opened_after_an_expiry_in_the_same_batch_is_checkpointed() -> None:
    # An expiry scan inside apply() once replaced the dirty list apply() was appending to: a room
    # created later in that batch never reached the changelog (lost at the next restore).
    # no rollups and a one-window session gap: neither keeps a silent room past room_idle_ms
    agg = TaskAggregator(CoreConfig(room_idle_ms=20_000, session_gap_ms=10_000, rollup_windows_ms=()), (0,))
    t = BASE_MS
    agg.apply(
        0, [(1, ViewerEvent("join", "a", "u", t)), (2, ViewerEvent("join", "b", "u", t + 100_000))], now_ms=0
    )
    assert "a" not in agg.rooms  # expired inside the batch
    assert b"r/b" in dict(agg.checkpoint().upserts)
