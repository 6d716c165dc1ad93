"""Order dedup memory: chunked by window, checkpointed per chunk, expired whole, restored."""

from __future__ import annotations

import orjson

from schemas import OrderEvent, ViewerEvent
from streams.core import CoreConfig, TaskAggregator
from streams.core._room import CHUNK_KEYS
from streams.core._state_codec import ROOM_FORMAT_VERSION

BASE_MS = 1_700_000_000_000  # a multiple of 10 s
W = 10_000


def order(order_id: str, ts: int, status: str = "paid", room: str = "r") -> OrderEvent:
    return OrderEvent(order_id, room, "u", ts, status, 100, "CNY")


def dedup_keys(keys: list[bytes]) -> set[bytes]:
    return {k for k in keys if k.startswith(b"d/")}


def chunk(room: str, ws: int) -> bytes:
    return b"d/%d/%s" % (ws, room.encode())


def test_checkpoint_writes_only_the_dedup_chunks_that_changed() -> None:
    agg = TaskAggregator(CoreConfig())
    agg.apply(0, [(1, order("o1", BASE_MS)), (2, order("o2", BASE_MS + 1))], 0)
    first = agg.checkpoint()
    assert dedup_keys([k for k, _ in first.upserts]) == {chunk("r", BASE_MS)}
    assert sorted(orjson.loads(dict(first.upserts)[chunk("r", BASE_MS)])) == ["paid:o1", "paid:o2"]
    agg.apply(0, [(3, ViewerEvent("join", "r", "u", BASE_MS + 2))], 0)
    assert dedup_keys([k for k, _ in agg.checkpoint().upserts]) == set()  # room written, no chunk
    agg.apply(0, [(4, order("o3", BASE_MS + W))], 0)
    assert dedup_keys([k for k, _ in agg.checkpoint().upserts]) == {chunk("r", BASE_MS + W)}


def test_duplicates_are_caught_after_a_restore() -> None:
    agg = TaskAggregator(CoreConfig())
    agg.apply(0, [(1, order("o1", BASE_MS)), (2, order("o1", BASE_MS, "created"))], 0)
    restored = TaskAggregator(CoreConfig())
    restored.restore(agg.checkpoint().upserts)
    result = restored.apply(0, [(3, order("o1", BASE_MS + 5)), (4, order("o2", BASE_MS + 6))], 0)
    assert (result.applied, result.duplicate) == (1, 1)


def test_a_chunk_is_forgotten_whole_once_older_than_the_ttl_and_tombstoned() -> None:
    agg = TaskAggregator(CoreConfig(dedup_ttl_ms=20_000))
    agg.apply(0, [(1, order("o1", BASE_MS + 9_999))], 0)
    agg.checkpoint()
    # Watermark at BASE + 3W - 1: the chunk's newest possible key is exactly 20 s old: still kept.
    agg.apply(0, [(2, order("o2", BASE_MS + 3 * W + 1_999))], 0)
    assert BASE_MS in agg.rooms["r"].seen_chunks
    agg.apply(0, [(3, order("o3", BASE_MS + 3 * W + 2_001))], 0)  # watermark passes: next close forgets it
    agg.apply(0, [(4, order("o4", BASE_MS + 4 * W + 2_000))], 0)
    room = agg.rooms["r"]
    assert BASE_MS not in room.seen_chunks and "paid:o1" not in room.seen
    assert "paid:o2" in room.seen
    assert chunk("r", BASE_MS) in agg.checkpoint().deletes


def test_a_retried_payment_after_a_quiet_spell_is_a_duplicate() -> None:
    """Room expiry (300 s) is shorter than the dedup TTL (600 s): the keys outlive the room's activity."""
    agg = TaskAggregator(CoreConfig())  # the defaults: room_idle_ms 300 s, dedup_ttl_ms 600 s
    agg.apply(0, [(1, order("o1", BASE_MS)), (2, ViewerEvent("join", "r", "u", BASE_MS))], 0)
    offset = 3
    for step in range(1, 45):  # 440 s in which only "other" talks: "r" expires
        agg.apply(0, [(offset, ViewerEvent("join", "other", "u", BASE_MS + step * W))], 0)
        offset += 1
    room = agg.rooms["r"]
    assert room.concurrent == 0 and room.detector is None  # expired: its activity is forgotten
    result = agg.apply(0, [(offset, order("o1", BASE_MS + 45 * W))], 0)  # the payment, retried
    assert (result.applied, result.duplicate) == (0, 1)


def test_an_expired_room_takes_its_chunks_with_it_once_past_the_ttl() -> None:
    # no rollups and a one-window session gap: nothing but the dedup memory keeps the room
    cfg = CoreConfig(room_idle_ms=30_000, dedup_ttl_ms=60_000, session_gap_ms=W, rollup_windows_ms=())
    agg = TaskAggregator(cfg)
    agg.apply(0, [(1, order("o1", BASE_MS)), (2, order("o9", BASE_MS, room="other"))], 0)
    agg.checkpoint()
    for step in range(1, 6):  # "r" silent past room_idle_ms but not past the dedup TTL: kept
        agg.apply(0, [(2 + step, order(f"x{step}", BASE_MS + step * W, room="other"))], 0)
    assert "paid:o1" in agg.rooms["r"].seen
    for step in range(6, 12):  # now past the TTL too
        agg.apply(0, [(2 + step, order(f"x{step}", BASE_MS + step * W, room="other"))], 0)
    assert "r" not in agg.rooms
    deletes = agg.checkpoint().deletes
    assert b"r/r" in deletes and chunk("r", BASE_MS) in deletes


def test_the_cap_forgets_the_oldest_chunks_first() -> None:
    agg = TaskAggregator(CoreConfig(dedup_max_per_room=3, dedup_ttl_ms=10**9))
    for k in range(4):  # two keys per window
        ts = BASE_MS + k * W
        agg.apply(0, [(2 * k + 1, order(f"a{k}", ts)), (2 * k + 2, order(f"b{k}", ts))], 0)
    room = agg.rooms["r"]
    assert len(room.seen) <= 3 + 2  # a close trims to the cap; the open window may add to it
    assert BASE_MS not in room.seen_chunks and "paid:a0" not in room.seen


def test_a_version_2_room_moves_its_dedup_memory_into_chunks() -> None:
    bucket = [BASE_MS // 1000, 0, 0, 0, 0, 1, 100, 0, 0, 0, 0]
    seen = [["o1", "paid", BASE_MS + 5], ["o0", "created", BASE_MS - 1]]
    v2 = orjson.dumps([2, "r", 0, BASE_MS, [[0, 2]], [bucket], [], [BASE_MS], seen, None])
    agg = TaskAggregator(CoreConfig())
    agg.restore([(b"r/r", v2)])
    result = agg.apply(0, [(3, order("o1", BASE_MS + 6)), (4, order("o0", BASE_MS + 7, "created"))], 0)
    assert result.duplicate == 2
    written = dict(agg.checkpoint().upserts)
    assert orjson.loads(written[b"r/r"])[0] == ROOM_FORMAT_VERSION
    assert orjson.loads(written[chunk("r", BASE_MS)]) == ["paid:o1"]
    assert orjson.loads(written[chunk("r", BASE_MS - W)]) == ["created:o0"]


def test_rooms_without_orders_share_an_empty_dedup_memory_and_a_restored_one_still_forgets() -> None:
    agg = TaskAggregator(CoreConfig(dedup_ttl_ms=60_000))
    viewers = [(i, ViewerEvent("join", f"v{i}", "u", BASE_MS)) for i in range(1, 3)]
    agg.apply(0, viewers, 0)
    assert agg.rooms["v1"].seen is agg.rooms["v2"].seen  # one shared empty set, not one each
    agg.apply(0, [(3, order("o1", BASE_MS))], 0)
    assert agg.rooms["r"].seen == {"paid:o1"} and agg.rooms["v1"].seen == frozenset()
    restored = TaskAggregator(CoreConfig(dedup_ttl_ms=60_000, room_idle_ms=30_000))
    restored.restore(agg.checkpoint().upserts)  # the chunk comes back into a fresh room
    # another room moves the watermark past the TTL: r, idle, forgets its restored chunk without
    # having taken an order since (its set of changed chunks is still the shared empty one)
    for step in range(1, 9):
        restored.apply(0, [(3 + step, order(f"x{step}", BASE_MS + step * W, room="other"))], 0)
    assert "paid:o1" not in restored.rooms["r"].seen
    assert chunk("r", BASE_MS) in restored.checkpoint().deletes
    assert restored.apply(0, [(20, order("o1", BASE_MS + 9 * W))], 0).applied == 1  # forgotten


def test_a_flash_sale_splits_its_window_into_chunks_that_stay_small_records() -> None:
    """~1 250 orders/s in one room (created + paid): one window's dedup memory would be one
    changelog record of over 1 MB, the broker's default record limit (a crash loop: the restart
    replays the same orders). It is split into chunks of CHUNK_KEYS, each its own record, written
    when it changes; duplicates are still caught across every chunk after a restore, and every
    chunk of the window goes at the TTL."""
    long_id = "o" * 120  # ids up to the 128-character limit
    orders = [
        (i + 1, order(f"{long_id}{i:06d}", BASE_MS + i * W // 12_500, status))
        for i in range(12_500)
        for status in ("created", "paid")
    ]
    orders = [(n, ev) for n, (_, ev) in enumerate(orders, 1)]
    cfg = CoreConfig(dedup_ttl_ms=20_000, grace_ms=W)  # the retries below are not late
    agg = TaskAggregator(cfg)
    written: dict[bytes, bytes] = {}
    for start in range(0, len(orders), 5_000):  # a checkpoint every 5 000 orders (~2 s)
        assert agg.apply(0, orders[start : start + 5_000], 0).applied == 5_000
        upserts = agg.checkpoint().upserts
        assert max(len(v) for _, v in upserts) < 200_000
        written.update(upserts)
    chunks = {k: orjson.loads(v) for k, v in written.items() if k.startswith(b"d/")}
    assert len(chunks) == -(-25_000 // CHUNK_KEYS)
    assert all(len(keys) <= CHUNK_KEYS for keys in chunks.values())
    assert sorted(k for keys in chunks.values() for k in keys) == sorted(
        f"{ev.status}:{ev.order_id}" for _, ev in orders
    )

    restored = TaskAggregator(cfg)
    restored.restore(written.items())
    retried = [(len(orders) + 1 + i, ev) for i, (_, ev) in enumerate(orders[::997])]
    result = restored.apply(0, retried, 0)
    assert (result.applied, result.duplicate) == (0, len(retried))

    # past the TTL every chunk of the window is forgotten and tombstoned
    restored.apply(0, [(10**6, order("late-comer", BASE_MS + 4 * W + 2_000))], 0)
    restored.apply(0, [(10**6 + 1, order("later", BASE_MS + 5 * W + 2_000))], 0)
    room = restored.rooms["r"]
    assert not any(BASE_MS <= ws < BASE_MS + W for ws in room.seen_chunks)
    assert set(chunks) <= set(restored.checkpoint().deletes)
