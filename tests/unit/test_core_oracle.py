"""The task aggregator against the brute-force oracle, including crash and replay."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadtest.oracle import expected_windows, unique_viewers_close
from schemas import Event, GiftEvent, OrderEvent, RoomStats, ViewerEvent
from streams.core import CoreConfig, TaskAggregator
from tests.records import assert_records_match

BASE_MS = 1_700_000_000_000
CFG = CoreConfig(bucket_ms=1_000, window_ms=10_000, grace_ms=2_000, room_idle_ms=10**9, dedup_ttl_ms=10**9)
SOURCE = {ViewerEvent: 0, OrderEvent: 1, GiftEvent: 2}
SOURCES = (0, 1, 2)


def make_stream(
    rng: random.Random, n: int, rooms: int, span_ms: int, disorder_ms: int
) -> list[tuple[int, int, Event]]:
    """A random interleaving of the three topics, with out-of-order times and duplicate orders."""
    offsets = {0: 0, 1: 0, 2: 0}
    out: list[tuple[int, int, Event]] = []
    t = BASE_MS
    orders: list[OrderEvent] = []
    for _ in range(n):
        t += rng.randint(0, max(1, span_ms // max(n, 1) * 2))
        ts = t - rng.randint(0, disorder_ms)
        room = f"room-{min(int(rng.paretovariate(1.2)) - 1, rooms - 1)}"
        user = f"u{rng.randint(0, 40)}"
        roll = rng.random()
        ev: Event
        if roll < 0.7:
            kind = rng.choice(["join", "join", "leave", "heartbeat", "like", "comment", "share"])
            ev = ViewerEvent(kind, room, user, ts)
        elif roll < 0.85:
            if orders and rng.random() < 0.2:
                ev = orders[rng.randrange(len(orders))]  # a producer retry: same order, same status
            else:
                status = rng.choice(["created", "paid", "paid", "cancelled", "refunded"])
                ev = OrderEvent(
                    f"o{rng.randint(0, 60)}", room, user, ts, status, rng.randint(0, 50_000), "CNY"
                )
                orders.append(ev)
        else:
            ev = GiftEvent(f"g{len(out)}", room, user, ts, rng.randint(1, 5), rng.randint(0, 10_000))
        source = SOURCE[type(ev)]
        offsets[source] += 1
        out.append((source, offsets[source], ev))
    return out


def run(agg: TaskAggregator, stream: list[tuple[int, int, Event]], rng: random.Random) -> list[RoomStats]:
    """Feed the stream in random-size batches of consecutive same-source items."""
    i = 0
    out: list[RoomStats] = []
    while i < len(stream):
        source = stream[i][0]
        j = i
        limit = i + rng.randint(1, 50)
        while j < len(stream) and j < limit and stream[j][0] == source:
            j += 1
        agg.apply(source, [(off, ev) for _, off, ev in stream[i:j]], now_ms=0)
        out.extend(agg.drain())
        i = j
    return out


def finish(agg: TaskAggregator) -> list[RoomStats]:
    # Long silence: wall clock releases every source, then closes every open window.
    agg.tick(now_ms=10**13)
    agg.tick(now_ms=2 * 10**13)
    return agg.drain()


def assert_matches_oracle(emitted: list[RoomStats], stream: list[tuple[int, int, Event]]) -> None:
    expected = expected_windows(stream, window_ms=CFG.window_ms, grace_ms=CFG.grace_ms, sources=SOURCES)
    got: dict[tuple[str, int], RoomStats] = {}
    for stats in emitted:
        key = (stats.room_id, stats.window_start)
        assert got.setdefault(key, stats) == stats, f"conflicting duplicate for {key}"
    assert_records_match(got, expected)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    n=st.integers(1, 600),
    rooms=st.integers(1, 30),
    disorder_ms=st.sampled_from([0, 500, 1_900, 4_000, 15_000]),
    span_ms=st.sampled_from([5_000, 60_000, 400_000]),
)
def test_windows_equal_oracle(seed: int, n: int, rooms: int, disorder_ms: int, span_ms: int) -> None:
    rng = random.Random(seed)
    stream = make_stream(rng, n, rooms, span_ms, disorder_ms)
    agg = TaskAggregator(CFG, SOURCES)
    emitted = run(agg, stream, rng) + finish(agg)
    assert_matches_oracle(emitted, stream)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    n=st.integers(20, 500),
    cut=st.floats(0.0, 1.0),
    rewind=st.floats(0.0, 1.0),
)
def test_crash_restore_replay_equals_uninterrupted(seed: int, n: int, cut: float, rewind: float) -> None:
    stream = make_stream(random.Random(seed), n, rooms=12, span_ms=120_000, disorder_ms=3_000)
    clean = TaskAggregator(CFG, SOURCES)
    reference = run(clean, stream, random.Random(seed)) + finish(clean)

    # Run until a checkpoint at `cut`, keep going a little, then crash.
    k = int(cut * len(stream))
    crashed = TaskAggregator(CFG, SOURCES)
    before = run(crashed, stream[:k], random.Random(seed + 1))
    changelog = list(crashed.checkpoint().upserts)
    run(crashed, stream[k : k + 40], random.Random(seed + 2))  # work lost in the crash
    committed: dict[int, int] = {}
    for source, offset, _ in stream[:k]:
        committed[source] = offset

    # Restore, then replay from offsets at or before the committed ones (a lost commit).
    restored = TaskAggregator(CFG, SOURCES)
    restored.restore(changelog)
    replay_from = {s: int(o * rewind) for s, o in committed.items()}
    replay = [item for item in stream if item[1] > replay_from.get(item[0], 0)]
    after = run(restored, replay, random.Random(seed + 3)) + finish(restored)

    assert_same_windows(before + after, reference)


def assert_same_windows(emitted: list[RoomStats], reference: list[RoomStats]) -> None:
    ref = {(s.room_id, s.window_start): s for s in reference}
    got: dict[tuple[str, int], RoomStats] = {}
    for stats in emitted:
        key = (stats.room_id, stats.window_start)
        assert got.setdefault(key, stats) == stats, f"replayed window differs: {key}"
        assert ref.get(key) == stats, f"window differs from the uninterrupted run: {key}"
    assert sorted(got) == sorted(ref)


def test_checkpoint_writes_only_dirty_rooms_and_tombstones_expired() -> None:
    # no rollups and a one-window session gap: neither keeps a silent room past room_idle_ms
    cfg = CoreConfig(room_idle_ms=30_000, session_gap_ms=10_000, rollup_windows_ms=())
    agg = TaskAggregator(cfg)
    agg.apply(
        0, [(1, ViewerEvent("join", "a", "u", BASE_MS)), (2, ViewerEvent("join", "b", "u", BASE_MS))], 0
    )
    first = agg.checkpoint()
    assert {k for k, _ in first.upserts} == {b"r/a", b"r/b", b"m/task"}
    agg.apply(0, [(3, ViewerEvent("like", "a", "u", BASE_MS + 1))], 0)
    second = agg.checkpoint()
    assert {k for k, _ in second.upserts} == {b"r/a", b"m/task"}
    # b goes silent for longer than room_idle_ms while a keeps talking.
    offset = 4
    for step in range(1, 8):
        agg.apply(0, [(offset, ViewerEvent("heartbeat", "a", "u", BASE_MS + step * 10_000))], 0)
        offset += 1
    third = agg.checkpoint()
    assert b"r/b" in third.deletes
    assert "b" not in agg.rooms and "a" in agg.rooms


def test_late_event_is_counted_not_applied() -> None:
    agg = TaskAggregator(CFG)  # one source: its own newest event drives the watermark
    agg.apply(0, [(1, ViewerEvent("join", "r", "u1", BASE_MS + 25_000))], 0)
    agg.apply(0, [(2, ViewerEvent("join", "r", "u2", BASE_MS + 1_000))], 0)  # far behind the watermark
    out = finish(agg)
    assert [s.views for s in out] == [1]
    assert out[0].late_events == 1
    assert agg.counters.late == {0: 1}


def test_late_joins_and_leaves_still_move_the_concurrent_level() -> None:
    """Ten viewers join; their leaves arrive 20 s late (a mobile client's retry backlog). They count
    in no window, but the level they moved is the room's state: it drops to 0, as the oracle says,
    instead of staying at 10 until the room expires."""
    agg = TaskAggregator(CFG)
    joins = [(i, ViewerEvent("join", "r", f"u{i}", BASE_MS + i)) for i in range(1, 11)]
    agg.apply(0, joins, 0)
    agg.apply(0, [(11, ViewerEvent("like", "r", "u1", BASE_MS + 22_500))], 0)  # watermark 20.5 s
    leaves = [(11 + i, ViewerEvent("leave", "r", f"u{i}", BASE_MS + 500 + i)) for i in range(1, 11)]
    agg.apply(0, leaves, 0)
    agg.apply(0, [(22, ViewerEvent("like", "r", "u1", BASE_MS + 41_000))], 0)
    out = finish(agg)
    assert [(s.window_start - BASE_MS, s.concurrent_viewers, s.late_events) for s in out] == [
        (0, 10, 0),
        (20_000, 0, 10),
        (40_000, 0, 0),
    ]
    stream = [(0, o, e) for o, e in joins] + [(0, 11, ViewerEvent("like", "r", "u1", BASE_MS + 22_500))]
    stream += [(0, o, e) for o, e in leaves] + [(0, 22, ViewerEvent("like", "r", "u1", BASE_MS + 41_000))]
    expected = expected_windows(stream, window_ms=CFG.window_ms, grace_ms=CFG.grace_ms)
    assert [expected[("r", s.window_start)].concurrent_viewers for s in out] == [10, 0, 0]


def test_a_late_leave_whose_join_is_in_a_window_still_open_still_counts() -> None:
    """Ten joins in the window [10 s, 20 s) while the watermark passes 12 s, then their leaves
    (at ~12 s) late: the level the window closes with is 0, not 10; and a late leave taken before
    its late join nets 0 too. The floor at 0 applies when a window closes, not at each late event."""
    agg = TaskAggregator(CFG)
    joins = [(i, ViewerEvent("join", "r", f"u{i}", BASE_MS + 10_000 + i)) for i in range(1, 11)]
    agg.apply(0, joins, 0)
    agg.apply(0, [(11, ViewerEvent("like", "r", "u1", BASE_MS + 17_000))], 0)  # watermark 15 s
    leaves = [(11 + i, ViewerEvent("leave", "r", f"u{i}", BASE_MS + 12_000 + i)) for i in range(1, 11)]
    agg.apply(0, leaves, 0)
    agg.apply(0, [(22, ViewerEvent("leave", "r", "v", BASE_MS + 12_500))], 0)  # its join comes later
    agg.apply(0, [(23, ViewerEvent("join", "r", "v", BASE_MS + 12_400))], 0)
    agg.apply(0, [(24, ViewerEvent("like", "r", "u1", BASE_MS + 31_000))], 0)
    out = finish(agg)
    assert [(s.window_start - BASE_MS, s.concurrent_viewers) for s in out] == [(10_000, 0), (30_000, 0)]
    stream = [(0, o, e) for o, e in joins] + [(0, 11, ViewerEvent("like", "r", "u1", BASE_MS + 17_000))]
    stream += [(0, o, e) for o, e in leaves]
    stream += [
        (0, 22, ViewerEvent("leave", "r", "v", BASE_MS + 12_500)),
        (0, 23, ViewerEvent("join", "r", "v", BASE_MS + 12_400)),
        (0, 24, ViewerEvent("like", "r", "u1", BASE_MS + 31_000)),
    ]
    expected = expected_windows(stream, window_ms=CFG.window_ms, grace_ms=CFG.grace_ms)
    assert [expected[("r", s.window_start)].concurrent_viewers for s in out] == [0, 0]


def test_unique_viewer_sketches_survive_restore() -> None:
    cfg = CoreConfig()
    agg = TaskAggregator(cfg)
    events = [(i + 1, ViewerEvent("heartbeat", "r", f"user-{i % 3000}", BASE_MS + i)) for i in range(6000)]
    agg.apply(0, events[:3000], 0)
    restored = TaskAggregator(cfg)
    restored.restore(agg.checkpoint().upserts)
    restored.apply(0, events, 0)  # the first half is skipped as replay
    (stats,) = finish(restored)
    assert unique_viewers_close(stats.unique_viewers, 3000)
    assert restored.counters.replayed == {0: 3000}


def test_an_input_log_that_ends_below_the_state_is_rebased_and_its_new_records_count() -> None:
    """The state holds viewer offsets 1..3000, but the log now ends at 1000 (truncated by an
    unclean leader election, or recreated): the records from 1000 on are new ones, not replays."""
    agg = TaskAggregator(CFG)
    agg.apply(0, [(i, ViewerEvent("join", "r", f"u{i}", BASE_MS + i)) for i in range(1, 3001)], 0)
    checkpoint = agg.checkpoint({0: 3001})
    new = [(1000 + i, ViewerEvent("join", "r", f"v{i}", BASE_MS + 3001 + i)) for i in range(500)]

    unaware = TaskAggregator(CFG)
    unaware.restore(checkpoint.upserts)
    assert unaware.apply(0, new, 0).replayed == 500  # what would happen without the rebase

    restored = TaskAggregator(CFG)
    restored.restore(checkpoint.upserts)
    assert restored.restored_offsets[0] == 3001
    restored.rebase(0, 1000)
    assert (restored.restored_offsets[0], restored.rooms["r"].offsets[0]) == (1000, 999)
    restored.rebase(0, 1200)  # a log end above what the state holds now: nothing more to forget
    assert restored.rooms["r"].offsets[0] == 999
    assert restored.apply(0, new, 0).applied == 500
    (stats,) = finish(restored)
    assert stats.views == 3500


def test_a_rebase_is_in_the_next_checkpoint() -> None:
    """A checkpoint right after a rebase (before any new record) writes the lowered offsets: a
    restore from it must not take the new records up to the old offsets for replays."""
    agg = TaskAggregator(CFG)
    agg.apply(0, [(i, ViewerEvent("join", "r", f"u{i}", BASE_MS + i)) for i in range(1, 3001)], 0)
    first = agg.checkpoint({0: 3001})
    rebased = TaskAggregator(CFG)
    rebased.restore(first.upserts)
    rebased.rebase(0, 1000)
    second = rebased.checkpoint({0: 1000})
    restored = TaskAggregator(CFG)
    restored.restore([*first.upserts, *second.upserts])
    assert restored.rooms["r"].offsets[0] == 999
    new = [(1000 + i, ViewerEvent("join", "r", f"v{i}", BASE_MS + 3001 + i)) for i in range(500)]
    assert restored.apply(0, new, 0).applied == 500


def test_a_wall_clock_step_is_no_time_that_passed_for_the_idle_advance() -> None:
    """Idle inputs let event time move on like wall time; the host's clock stepping 5 min forward
    (NTP) is no 5 min of silence: the minutes of events after it would all count late."""

    def idle_task() -> TaskAggregator:
        agg = TaskAggregator(CFG, sources=(0,))
        agg.apply(0, [(1, ViewerEvent("join", "r", "u1", BASE_MS + 1_000))], now_ms=1_000)
        agg.tick(now_ms=1_000 + CFG.idle_partition_ms)  # idle
        return agg

    unaware = idle_task()
    unaware.tick(now_ms=1_000 + CFG.idle_partition_ms + 300_000)
    assert unaware.watermark_ms == BASE_MS + 1_000 - CFG.grace_ms + CFG.idle_partition_ms + 300_000

    agg = idle_task()
    agg.clock_stepped(300_000)
    agg.tick(now_ms=1_000 + CFG.idle_partition_ms + 300_000 + 500)  # 0.5 s later, after the step
    assert agg.watermark_ms == BASE_MS + 1_000 - CFG.grace_ms + CFG.idle_partition_ms + 500
    result = agg.apply(0, [(2, ViewerEvent("join", "r", "u2", BASE_MS + 4_000))], now_ms=302_000)
    assert (result.applied, result.late) == (1, 0)


def test_slowest_source_holds_the_watermark_until_idle() -> None:
    agg = TaskAggregator(CFG, sources=(0, 1))
    agg.apply(0, [(1, ViewerEvent("join", "r", "u1", BASE_MS + 60_000))], now_ms=0)
    assert agg.watermark_ms is None  # source 1 has sent nothing yet: it may still be behind
    agg.apply(1, [(1, OrderEvent("o", "r", "u", BASE_MS + 1_000, "paid", 5, "CNY"))], now_ms=10)
    assert agg.watermark_ms == BASE_MS + 1_000 - CFG.grace_ms  # not late although 59 s behind source 0
    agg.tick(now_ms=10 + CFG.idle_partition_ms, busy={1})
    assert agg.watermark_ms == BASE_MS + 1_000 - CFG.grace_ms  # lagging sources are never idle
    agg.tick(now_ms=10 + CFG.idle_partition_ms)
    assert agg.watermark_ms == BASE_MS + 1_000 - CFG.grace_ms  # 1's silence starts when it caught up
    agg.tick(now_ms=10 + 2 * CFG.idle_partition_ms)
    # Both idle: event time moves on like wall time since 1 was last seen busy.
    assert agg.watermark_ms == BASE_MS + 60_000 - CFG.grace_ms + CFG.idle_partition_ms
    closed = agg.drain()
    assert [(s.window_start, s.orders, s.views) for s in closed] == [(BASE_MS, 1, 0)]


def test_idle_rooms_own_no_empty_containers_and_share_their_checkpoint_offsets() -> None:
    """At 100 000 rooms every empty dict, list and set a room keeps is ~6 MB of state: an idle room
    holds the shared empty ones, and the rooms one checkpoint writes share one offsets dict. A room
    that becomes active again gets containers of its own, and the shared ones stay empty."""
    agg = TaskAggregator(CFG)
    rooms = ("a", "b", "c")
    agg.apply(0, [(i, ViewerEvent("join", room, "u", BASE_MS + i)) for i, room in enumerate(rooms, 1)], 0)
    agg.apply(1, [(1, OrderEvent("o1", "a", "u", BASE_MS + 5, "paid", 100, "CNY"))], 0)
    agg.checkpoint({0: 4, 1: 2})
    a, b, c = (agg.rooms[room] for room in rooms)
    assert a.offsets is b.offsets is c.offsets and a.offsets == {0: 3, 1: 1}
    agg.tick(now_ms=10**6)  # the inputs fall idle: every window closes, no room is old enough to expire
    agg.tick(now_ms=2 * 10**6)
    (stats,) = [s for s in agg.drain() if s.room_id == "a"]
    assert stats.orders == 1 and set(agg.rooms) == set(rooms)
    agg.checkpoint()
    for room in (a, b, c):
        assert type(room.buckets) is not dict and type(room.uniques) is not dict  # the shared empty one
        assert room.open_ws == () and room.seen_gone == ()
    assert type(b.seen_chunks) is not dict and type(a.seen_chunks) is dict  # a's holds its order
    assert type(a.seen_dirty) is frozenset  # written: no set of its own until its next order
    # active again: its own containers; the shared ones stay empty for the other rooms
    later = BASE_MS + 3_600_000
    agg.apply(0, [(4, ViewerEvent("join", "b", "v", later))], 0)
    agg.apply(1, [(2, OrderEvent("o2", "b", "u", later, "paid", 7, "CNY"))], 0)
    assert type(b.buckets) is dict and type(b.uniques) is dict and b.open_ws == [later - later % 10_000]
    assert len(c.buckets) == len(c.uniques) == len(c.seen_chunks) == 0 and c.open_ws == ()
    agg.rebase(0, 2)  # a log that ends below the state: every room's offset is lowered, one by one
    assert (a.offsets[0], b.offsets[0], c.offsets[0], a.offsets[1]) == (1, 1, 1, 1)
    (stats,) = [s for s in finish(agg) if s.room_id == "b"]
    assert (stats.orders, stats.gmv_minor, stats.unique_viewers) == (1, 7, 1)


def test_rooms_restored_together_go_on_sharing_offsets_while_an_input_is_silent() -> None:
    """After a restore the orders input has delivered nothing yet: the rooms the next checkpoint
    writes keep its restored offset, in one dict for all of them, not one each."""
    agg = TaskAggregator(CFG)
    rooms = [f"r{i}" for i in range(50)]
    agg.apply(0, [(i, ViewerEvent("join", room, "u", BASE_MS + i)) for i, room in enumerate(rooms, 1)], 0)
    agg.apply(1, [(1, OrderEvent("o1", "r0", "u", BASE_MS + 5, "paid", 100, "CNY"))], 0)
    restored = TaskAggregator(CFG)
    restored.restore(agg.checkpoint({0: 51, 1: 2}).upserts)
    assert len({id(restored.rooms[room].offsets) for room in rooms}) == 1
    restored.apply(
        0, [(51 + i, ViewerEvent("join", room, "v", BASE_MS + 100 + i)) for i, room in enumerate(rooms)], 0
    )
    restored.checkpoint()
    assert len({id(restored.rooms[room].offsets) for room in rooms}) == 1
    assert restored.rooms["r7"].offsets == {0: 100, 1: 1}
    restored.rebase(0, 60)
    assert len({id(restored.rooms[room].offsets) for room in rooms}) == 1
    assert restored.rooms["r7"].offsets == {0: 59, 1: 1}
