"""Watermarks across the repartition shuffle, the checkpoint metadata, and quarantine at restore."""

from __future__ import annotations

import dataclasses
import random

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadtest.oracle import expected_windows
from schemas import RoomStats, ViewerEvent
from streams.core import CoreConfig, TaskAggregator
from streams.core._state_codec import META_KEY
from streams.exceptions import ConfigError

BASE_MS = 1_700_000_000_000
CFG = CoreConfig(bucket_ms=1_000, window_ms=10_000, grace_ms=2_000, room_idle_ms=10**9, dedup_ttl_ms=10**9)
REROUTED = 3
#: what a task that has read nothing publishes (the core's NO_TIME): it holds receivers back
NOTHING_YET = -(2**62)


def join(room: str, user: str, ts: int) -> ViewerEvent:
    return ViewerEvent("join", room, user, ts)


def receiver() -> TaskAggregator:
    """Task 0 of three: one direct input (source 0), senders 1 and 2 re-route to it."""
    return TaskAggregator(CFG, sources=(0,), senders=(1, 2))


def test_watermark_waits_for_every_sender_then_holds_to_the_slowest() -> None:
    agg = receiver()
    agg.apply(0, [(1, join("r", "u", BASE_MS + 30_000))], now_ms=0)
    assert agg.watermark_ms is None  # senders have published nothing: they may hold re-routes
    agg.sender_progress(1, BASE_MS + 20_000)
    agg.tick(now_ms=1)
    assert agg.watermark_ms is None  # sender 2 still unheard
    agg.sender_progress(2, BASE_MS + 25_000)
    agg.tick(now_ms=2)
    assert agg.watermark_ms == BASE_MS + 20_000 - CFG.grace_ms
    agg.sender_progress(1, None)  # sender 1 idle: no longer holds
    agg.tick(now_ms=3)
    assert agg.watermark_ms == BASE_MS + 25_000 - CFG.grace_ms


def test_rerouted_events_in_flight_are_not_late() -> None:
    """After a crash the direct input races ahead; re-routed events of the past still count."""
    agg = receiver()
    agg.sender_progress(2, None)
    agg.sender_progress(1, BASE_MS + 5_000)
    agg.apply(0, [(i, join("r", f"d{i}", BASE_MS + i * 1_000)) for i in range(60)], now_ms=0)
    after_hold = CFG.first_event_hold_ms  # its first event, with sender 2 idle: held that long
    agg.tick(now_ms=after_hold, busy={0})
    assert agg.watermark_ms == BASE_MS + 5_000 - CFG.grace_ms  # held by sender 1, not by the direct input
    agg.apply(
        REROUTED, [(i, join("r", f"x{i}", BASE_MS + 4_000 + i)) for i in range(5)], now_ms=after_hold + 1
    )
    assert agg.counters.late == {}
    agg.sender_progress(1, BASE_MS + 60_000)
    agg.tick(now_ms=after_hold + 2)
    first = {s.window_start: s for s in agg.drain()}[BASE_MS]
    assert first.views == 10 + 5 and first.late_events == 0


def test_rerouted_events_never_move_the_watermark() -> None:
    agg = receiver()
    agg.sender_progress(1, None)
    agg.sender_progress(2, None)
    agg.apply(0, [(1, join("r", "u", BASE_MS))], now_ms=0)
    before = agg.watermark_ms
    agg.apply(REROUTED, [(1, join("r", "v", BASE_MS + 90_000))], now_ms=0)
    assert agg.watermark_ms == before


def test_frontier_is_the_slowest_direct_input_without_senders() -> None:
    agg = TaskAggregator(CFG, sources=(0, 1), senders=(2,))
    agg.apply(0, [(1, join("r", "u", BASE_MS + 9_000))], now_ms=0)
    agg.apply(1, [(1, join("r", "u", BASE_MS + 7_000))], now_ms=0)
    agg.sender_progress(2, BASE_MS)  # holds the watermark, not the frontier it publishes
    assert agg.frontier_ms(now_ms=0) == BASE_MS + 7_000
    agg.tick(now_ms=CFG.idle_partition_ms)
    # Every direct input idle: the newest event time, moved on by the silence since (as the
    # task's own watermark moves) — a time the receivers hold to, never "no opinion".
    assert (
        agg.frontier_ms(now_ms=CFG.idle_partition_ms + 500) == BASE_MS + 9_000 + CFG.idle_partition_ms + 500
    )


def test_a_sender_idle_at_its_last_commit_still_holds_receivers_after_it_dies() -> None:
    """The sender's worker dies after publishing while idle; its backlog re-routed later is not late."""
    sender = TaskAggregator(CFG, sources=(0,), senders=(0,))
    sender.apply(0, [(1, join("far-room", "u", BASE_MS + 1_000))], now_ms=0)
    sender.tick(now_ms=CFG.idle_partition_ms)  # caught up and silent: idle
    published = sender.frontier_ms(now_ms=CFG.idle_partition_ms)
    r = receiver()
    r.sender_progress(1, published)
    r.sender_progress(2, None)
    # The receiver's own input runs on for 30 s while the sender's task is down.
    r.apply(0, [(i, join("r", f"u{i}", BASE_MS + i * 1_000)) for i in range(1, 31)], now_ms=1)
    r.tick(now_ms=1 + CFG.first_event_hold_ms, busy={0})  # its first event, with sender 2 idle: held
    assert r.watermark_ms == published - CFG.grace_ms
    # The sender's next owner re-routes the backlog that arrived meanwhile.
    r.apply(REROUTED, [(1, join("far-room", "v", BASE_MS + 3_500))], now_ms=2 + CFG.first_event_hold_ms)
    assert r.counters.late == {}


def test_metadata_round_trip_keeps_offsets_and_sender_frontiers() -> None:
    agg = receiver()
    agg.sender_progress(1, BASE_MS + 1_000)
    agg.sender_progress(2, None)
    agg.apply(0, [(7, join("r", "u", BASE_MS + 3_000))], now_ms=0)
    records = agg.checkpoint({0: 8, REROUTED: 41}).upserts
    restored = receiver()
    restored.restore(records)
    assert restored.restored_offsets == {0: 8, REROUTED: 41}
    assert restored.watermark_ms == agg.watermark_ms
    restored.apply(0, [(8, join("r", "v", BASE_MS + 30_000))], now_ms=1)
    assert restored.watermark_ms == BASE_MS + 1_000 - CFG.grace_ms  # still held by sender 1


def test_version_2_metadata_still_restores() -> None:
    agg = receiver()
    meta = orjson.dumps([2, BASE_MS + 5_000, BASE_MS + 3_000, [[0, BASE_MS + 5_000]]])
    agg.restore([(META_KEY, meta)])
    assert agg.watermark_ms == BASE_MS + 3_000
    assert agg.restored_offsets == {}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (b"r/bad", b"\x00not json"),
        (b"r/bad", orjson.dumps([99, "bad"])),  # a version this code does not know
        (b"r/bad", orjson.dumps([3, "other-room"])),  # truncated record
        (b"d/notanumber/good", b"[]"),
        (b"d/1000/good", b'{"not": "a list"}'),
        (META_KEY, b"[3, 1]"),
    ],
)
def test_undecodable_records_are_quarantined_and_the_rest_restored(key: bytes, value: bytes) -> None:
    agg = TaskAggregator(CFG)
    agg.apply(0, [(1, join("good", "u", BASE_MS)), (2, join("bad", "u", BASE_MS))], now_ms=0)
    records = [*agg.checkpoint({0: 3}).upserts, (key, value)]
    restored = TaskAggregator(CFG)
    restored.restore(records)
    assert [k for k, _, _ in restored.quarantined] == [key]
    assert "good" in restored.rooms
    if key.startswith(b"r/"):
        assert "bad" not in restored.rooms  # starts fresh


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), commit_every=st.integers(1, 40))
def test_any_delivery_order_through_the_shuffle_matches_the_oracle(seed: int, commit_every: int) -> None:
    """Task 0 gets its own rooms directly and the rest from two senders, in transactions.

    Sender ``q`` forwards what it reads and, at each of its commits, a marker with its input
    frontier; task 0 sees a sender's events only after that sender's commit (read_committed)
    and in any interleaving with its direct input. Its windows equal the oracle's over the
    ideal, unshuffled stream: nothing re-routed is counted late or lost.
    """
    rng = random.Random(seed)
    rooms = [f"room-{i}" for i in range(9)]
    stream = []
    t = BASE_MS
    for i in range(600):
        t += rng.randint(0, 120)
        stream.append((rng.choice(rooms), f"u{rng.randint(0, 30)}", t - rng.randint(0, 1_500), i))
    # Room k goes to input partition k % 3, but every room belongs to task 0 (the receiver).
    inputs: dict[int, list[tuple[int, ViewerEvent]]] = {0: [], 1: [], 2: []}
    for room, user, ts, i in stream:
        inputs[int(room[-1]) % 3].append((i, join(room, user, ts)))
    agg = receiver()
    in_flight: dict[int, list[tuple[int, ViewerEvent]]] = {1: [], 2: []}
    committed: list[tuple[int, list[tuple[int, ViewerEvent]], int | None]] = []
    pos = {0: 0, 1: 0, 2: 0}
    newest: dict[int, int] = {1: NOTHING_YET, 2: NOTHING_YET}
    step = 0
    finished: set[int] = set()
    while any(pos[p] < len(inputs[p]) for p in inputs) or committed:
        choice = rng.random()
        if choice < 0.4 and pos[0] < len(inputs[0]):
            n = rng.randint(1, 20)
            batch = inputs[0][pos[0] : pos[0] + n]
            pos[0] += len(batch)
            agg.apply(0, batch, now_ms=0)
        elif choice < 0.8:
            q = rng.choice((1, 2))
            if pos[q] < len(inputs[q]):
                batch = inputs[q][pos[q] : pos[q] + rng.randint(1, 20)]
                pos[q] += len(batch)
                in_flight[q].extend(batch)
                newest[q] = max(newest[q], *(ev.ts for _, ev in batch))
            step += 1
            drained = pos[q] >= len(inputs[q])
            if q not in finished and (step % commit_every == 0 or drained):
                # the sender's commit: its forwarded events, then its frontier
                committed.append((q, in_flight[q], newest[q]))
                in_flight[q] = []
                if drained:
                    finished.add(q)
        elif committed:
            q, events, frontier = committed.pop(0)
            if events:
                agg.apply(REROUTED, [(k, ev) for k, (_, ev) in enumerate(events)], now_ms=0)
            agg.sender_progress(q, frontier)
            agg.tick(now_ms=0, busy={0} if pos[0] < len(inputs[0]) else ())
    # Both senders drained and idle: their frontiers move on with wall time.
    agg.sender_progress(1, BASE_MS + 10**9)
    agg.sender_progress(2, BASE_MS + 10**9)
    agg.tick(now_ms=10**9)
    got: dict[tuple[str, int], RoomStats] = {(s.room_id, s.window_start): s for s in agg.drain()}
    ideal = [(0, i + 1, join(room, user, ts)) for i, (room, user, ts, _) in enumerate(stream)]
    want = expected_windows(ideal, window_ms=CFG.window_ms, grace_ms=CFG.grace_ms, sources=(0,))
    assert agg.counters.late == {}
    assert {k: s.views for k, s in got.items()} == {k: s.views for k, s in want.items()}


def test_an_idle_input_that_turns_busy_holds_the_watermark_again() -> None:
    """E.g. the broker is unreachable: nothing is known, so wall time must not move event time."""
    agg = TaskAggregator(CFG, sources=(0, 1))
    agg.apply(0, [(1, join("r", "u", BASE_MS))], now_ms=0)
    agg.apply(1, [(1, join("r", "v", BASE_MS))], now_ms=0)
    agg.tick(now_ms=CFG.idle_partition_ms - 1)
    assert agg.counters.inputs_idled == 0
    agg.tick(now_ms=CFG.idle_partition_ms)  # both idle: wall time moves event time on
    held = agg.watermark_ms
    assert held == BASE_MS  # newest event - grace + the idle time
    agg.tick(now_ms=CFG.idle_partition_ms + 1_000)  # still idle (counted once each), moving on
    assert agg.counters.inputs_idled == 2
    held = agg.watermark_ms
    assert held == BASE_MS + 1_000
    agg.tick(now_ms=CFG.idle_partition_ms + 5_000, busy={0, 1})
    assert agg.watermark_ms == held
    agg.tick(now_ms=CFG.idle_partition_ms + 6_000, busy={1})  # 0 caught up again; 1 still holds
    assert agg.watermark_ms == held
    agg.tick(now_ms=2 * CFG.idle_partition_ms + 6_000, busy={1})  # 0 silent again since then
    assert agg.counters.inputs_idled == 3


def test_a_broker_outage_is_not_silence() -> None:
    """The broker comes back, the consumer finds both inputs caught up, and the producers' events
    buffered during the outage arrive a moment later: the outage did not count as idle time, so
    none of them is late and no window closed early."""
    agg = TaskAggregator(CFG, sources=(0, 1))
    agg.apply(0, [(1, join("r", "u", BASE_MS))], now_ms=0)
    agg.apply(1, [(1, join("r", "v", BASE_MS))], now_ms=0)
    for now in range(500, 10_001, 500):  # unreachable for 10 s: nothing known, both busy
        agg.tick(now_ms=now, busy={0, 1})
    held = agg.watermark_ms
    agg.tick(now_ms=10_100)  # reachable again, nothing new yet: both read to their log end
    agg.tick(now_ms=10_000 + CFG.idle_partition_ms - 1)
    assert agg.watermark_ms == held
    buffered = [(k + 2, join("r", f"u{k}", BASE_MS + k * 1_000)) for k in range(1, 11)]
    result = agg.apply(0, buffered, now_ms=10_000 + CFG.idle_partition_ms - 1)
    assert (result.applied, result.late) == (10, 0)
    # silent from then on: after idle_partition_ms the watermark moves on with wall time again
    agg.tick(now_ms=20_000)
    agg.tick(now_ms=20_000 + CFG.idle_partition_ms)
    assert agg.watermark_ms > held


def _through_outage(cfg: CoreConfig) -> tuple[TaskAggregator, int]:
    """Two inputs live, then 10 s with the broker unreachable (both busy, nothing delivered);
    returns the task and the wall time the broker is back."""
    agg = TaskAggregator(cfg, sources=(0, 1))
    agg.apply(0, [(1, join("r", "u", BASE_MS))], now_ms=0)
    agg.apply(1, [(1, join("r", "v", BASE_MS))], now_ms=0)
    for now in range(500, 10_001, 500):
        agg.tick(now_ms=now, busy={0, 1})
    return agg, 10_000


@pytest.mark.parametrize("hold_ms", [10_000, 0])
def test_after_an_outage_the_watermark_waits_for_the_producer_that_reconnects_last(hold_ms: int) -> None:
    """One producer is back at once and sends fresh events on both inputs; the other reconnects
    5 s later with what it buffered through the outage. Held, none of that is late; with the hold
    switched off, the fresh events move the watermark past the buffered ones."""
    cfg = CoreConfig(
        bucket_ms=1_000, window_ms=10_000, grace_ms=2_000, room_idle_ms=10**9, outage_hold_ms=hold_ms
    )
    agg, back = _through_outage(cfg)
    for step in range(1, 11):  # the fast producer: events at wall time, ~10 s on from the last ones
        now = back + step * 500
        for source in (0, 1):
            agg.apply(source, [(step + 1, join("r", f"fast{step}", BASE_MS + now))], now_ms=now)
        agg.tick(now_ms=now)
    buffered = [(20 + k, join("r", f"slow{k}", BASE_MS + k * 1_000)) for k in range(1, 10)]
    result = agg.apply(0, buffered, now_ms=back + 5_000)
    if hold_ms:
        assert (result.applied, result.late) == (9, 0)
        assert agg.counters.outage_holds == 1
        agg.tick(now_ms=back + 500 + hold_ms)  # held from the first delivery; over now
        closed = {s.window_start: s.views for s in agg.drain()}
        assert closed[BASE_MS] == 2 + 9
    else:
        assert result.late == 9
        assert agg.counters.outage_holds == 0


def test_a_blind_spot_is_an_outage_too() -> None:
    """The runtime's loop waited on the unreachable broker, so no tick saw the inputs busy: it
    says so (``hold_after_outage``) before the first events after it, and the inputs' silence
    before the outage does not make them idle at once."""
    agg = TaskAggregator(CFG, sources=(0, 1))
    agg.apply(0, [(1, join("r", "u", BASE_MS))], now_ms=0)
    agg.apply(1, [(1, join("r", "v", BASE_MS))], now_ms=0)
    agg.tick(now_ms=500)
    held = agg.watermark_ms
    agg.hold_after_outage(now_ms=11_000)  # nothing seen from 500 to 11 000
    agg.tick(now_ms=11_000)
    assert agg.watermark_ms == held  # not idle: silent 0 s, not 10.5 s
    fresh = agg.apply(1, [(2, join("r", "w", BASE_MS + 11_000))], now_ms=11_000)
    buffered = agg.apply(0, [(k + 2, join("r", f"b{k}", BASE_MS + k * 1_000)) for k in range(1, 10)], 15_000)
    assert (fresh.late, buffered.late, buffered.applied) == (0, 0, 9)
    assert agg.holding_until_ms == 11_000 + CFG.outage_hold_ms


def test_no_hold_for_a_slow_start_or_a_backlog_read_without_pause() -> None:
    """Busy before the task ever saw an input caught up (startup), or busy but delivering (a
    backlog): neither is an outage, so the first windows after a restart are not delayed."""
    agg = TaskAggregator(CFG, sources=(0,))
    for now in range(0, 5_001, 500):  # the first fetch takes 5 s
        agg.tick(now_ms=now, busy={0})
    for step in range(1, 30):  # then a backlog, read a batch per tick
        now = 5_000 + step * 500
        agg.apply(0, [(step, join("r", f"u{step}", BASE_MS + step * 1_000))], now_ms=now)
        agg.tick(now_ms=now, busy={0})
    agg.tick(now_ms=20_000)
    assert agg.counters.outage_holds == 0
    assert agg.holding_until_ms is None
    assert BASE_MS in {s.window_start for s in agg.drain()}


def test_no_hold_for_slow_rounds_that_each_deliver() -> None:
    """A backlog read in rounds of 3 s (a big window boundary, a checkpoint waiting on a busy
    broker): the input delivered at every round, so it never stalled and nothing is held. Only
    ticks that find it busy with nothing delivered since the tick before count towards a stall."""
    agg = TaskAggregator(CFG, sources=(0,))
    for step in range(1, 14):
        now = step * 3_000
        agg.apply(0, [(step, join("r", f"u{step}", BASE_MS + step * 1_000))], now_ms=now)
        agg.tick(now_ms=now, busy={0})
    assert agg.counters.outage_holds == 0
    assert BASE_MS in {s.window_start for s in agg.drain()}
    # records known to be waiting (``behind``), handed over only 4 s later: the loop was busy
    for wait in (1_000, 2_000, 3_000, 4_000):
        agg.tick(now_ms=now + wait, busy={0}, behind={0})
    now += 4_000
    agg.apply(0, [(14, join("r", "u14", BASE_MS + 13_500))], now_ms=now)
    assert agg.counters.outage_holds == 0
    agg.tick(now_ms=now, busy={0})  # the round of that delivery
    # then a round that delivered nothing, nothing known to wait: a stall of 3 s from its tick
    now += 3_000
    agg.tick(now_ms=now, busy={0})
    agg.apply(0, [(20, join("r", "late-comer", BASE_MS + 14_000))], now_ms=now + 3_000)
    assert agg.counters.outage_holds == 1


def test_a_task_that_never_got_an_event_does_not_hold_receivers_once_idle() -> None:
    quiet = TaskAggregator(CFG, sources=(0, 1), senders=(0,))
    assert quiet.frontier_ms(now_ms=0) == NOTHING_YET  # nothing known yet: holds
    quiet.tick(now_ms=0)
    quiet.tick(now_ms=CFG.idle_partition_ms)  # caught up and silent
    assert quiet.frontier_ms(now_ms=CFG.idle_partition_ms) is None  # idle: holds no receiver
    receiver = TaskAggregator(CFG, sources=(0,), senders=(1,))
    receiver.apply(0, [(1, join("r", "u", BASE_MS + 30_000))], now_ms=0)
    receiver.sender_progress(1, quiet.frontier_ms(now_ms=CFG.idle_partition_ms))
    receiver.tick(now_ms=1)
    assert receiver.watermark_ms == BASE_MS + 30_000 - CFG.grace_ms


def test_a_deployment_that_never_got_an_event_keeps_its_watermarks_off_the_wall_clock() -> None:
    """Every task idle from the start and exchanging markers for a minute: no watermark moves,
    so the first backlog the producers send, half a minute old, is counted, none of it late.
    (Publishing the wall clock as an idle task's frontier made it all late.)"""
    tasks = [
        TaskAggregator(CFG, sources=(0, 1, 2), senders=tuple(s for s in range(3) if s != p)) for p in range(3)
    ]
    start = BASE_MS
    for now in range(start, start + 60_000, 500):
        frontiers = [task.frontier_ms(now) for task in tasks]
        for p, task in enumerate(tasks):
            for sender, frontier in enumerate(frontiers):
                if sender != p:
                    task.sender_progress(sender, frontier)
            task.tick(now)
    assert [task.watermark_ms for task in tasks] == [None, None, None]
    now = start + 60_000
    backlog = [(i, join(f"r{i % 4}", f"u{i}", now - 30_000 + i * 100)) for i in range(100)]
    task = tasks[0]
    for source in (0, 1):  # the fetch brought records of inputs 0 and 1
        task.arriving(source, now)
    task.apply(0, backlog[:50], now_ms=now)
    task.apply(1, backlog[50:], now_ms=now)
    assert task.counters.late == {}
    assert task.watermark_ms is None  # its first events, the other tasks idle: held
    task.tick(now + CFG.first_event_hold_ms, busy={0, 1})
    assert task.watermark_ms == min(backlog[49][1].ts, backlog[-1][1].ts) - CFG.grace_ms


def test_inputs_with_records_in_one_round_hold_the_watermark_before_the_first_is_applied() -> None:
    """All inputs idle after a quiet spell; one fetch brings two inputs' records, applied one after
    the other. Announced as arriving first, the second's events are not late behind the first's."""
    agg = TaskAggregator(CFG, sources=(0, 1))
    agg.apply(0, [(1, join("r", "u0", BASE_MS))], now_ms=0)
    agg.apply(1, [(1, join("r", "v0", BASE_MS))], now_ms=0)
    agg.tick(now_ms=0)
    agg.tick(now_ms=CFG.idle_partition_ms)  # both caught up and silent: idle
    wm_idle = agg.watermark_ms
    now = CFG.idle_partition_ms + 1
    first = [(2 + i, join("r", f"u{i}", BASE_MS + 1_000 + i * 1_000)) for i in range(20)]
    second = [(2 + i, join("r", f"v{i}", BASE_MS + 1_000 + i * 1_000)) for i in range(20)]
    agg.arriving(0, now)
    agg.arriving(1, now)
    agg.apply(0, first, now_ms=now)
    assert agg.watermark_ms == wm_idle  # input 1 holds it at its last event, as any live input
    agg.apply(1, second, now_ms=now)
    assert agg.counters.late == {}
    assert agg.watermark_ms == BASE_MS + 20_000 - CFG.grace_ms
    # without the announcement the first input's events take the watermark on alone
    alone = TaskAggregator(CFG, sources=(0, 1))
    alone.apply(0, [(1, join("r", "u0", BASE_MS))], now_ms=0)
    alone.apply(1, [(1, join("r", "v0", BASE_MS))], now_ms=0)
    alone.tick(now_ms=0)
    alone.tick(now_ms=CFG.idle_partition_ms)
    alone.apply(0, first, now_ms=now)
    alone.apply(1, second, now_ms=now)
    assert sum(alone.counters.late.values()) > 0


def test_an_input_announced_that_brings_no_event_neither_holds_nor_stays_busy() -> None:
    """A producer sending only garbage to an otherwise silent input: every round announces it,
    none of its records is an event. It stays idle, and the other input's events close windows
    as before (holding on to it froze every window of the task)."""
    agg = TaskAggregator(CFG, sources=(0, 1))
    agg.apply(0, [(1, join("r", "u0", BASE_MS))], now_ms=0)
    agg.apply(1, [(1, join("r", "v0", BASE_MS))], now_ms=0)
    agg.tick(now_ms=0)
    agg.tick(now_ms=CFG.idle_partition_ms)  # both idle
    for step in range(1, 40):
        now = CFG.idle_partition_ms + step * 500
        agg.arriving(1, now)  # garbage only: nothing applied from it
        agg.arriving(0, now)
        agg.apply(0, [(1 + step, join("r", f"u{step}", BASE_MS + step * 500))], now_ms=now)
        agg.tick(now_ms=now)
    assert agg.watermark_ms == BASE_MS + 39 * 500 - CFG.grace_ms
    assert [s.window_start for s in agg.drain()] == [BASE_MS]


def test_a_backlog_misrouted_after_the_deployment_sat_idle_is_not_late_at_its_rooms_task() -> None:
    """Producers without murmur2 start after the worker: every task idle, never fed, their markers
    "idle". Task 1 applies the rooms that landed on its own partition; the half of its rooms that
    landed on partition 0 reaches it only after task 0's next commit. Its first event holds its
    watermark (first_event_hold_ms) until they and task 0's marker are in: none is late."""
    tasks = [TaskAggregator(CFG, sources=(0, 1, 2), senders=(1 - p,)) for p in range(2)]
    wall = BASE_MS + 30_000  # the backlog is 30 s old
    for now in (wall, wall + 2_000, wall + 4_000):
        frontiers = [task.frontier_ms(now) for task in tasks]
        for p, task in enumerate(tasks):
            task.sender_progress(1 - p, frontiers[1 - p])
            task.tick(now)
    assert [task.frontier_ms(wall + 4_000) for task in tasks] == [None, None]
    now = wall + 6_000
    own = [(i, join(f"room{i % 5}", f"u{i}", BASE_MS + i * 10)) for i in range(0, 3_000, 2)]
    misrouted = [(i, join(f"room{i % 5}", f"u{i}", BASE_MS + i * 10)) for i in range(1, 3_000, 2)]
    sender, receiver = tasks
    sender.arriving(0, now)
    sender.passed_on(0, misrouted[-1][1].ts, now)
    sender.tick(now)
    receiver.arriving(0, now)
    receiver.apply(0, own, now)
    receiver.tick(now)
    assert receiver.watermark_ms is None  # held: task 0 may be re-routing its first events here
    now += 300  # task 0's commit (the re-routed events, then its marker) is read
    receiver.apply(REROUTED, misrouted, now)
    receiver.sender_progress(0, sender.frontier_ms(now))
    receiver.tick(now + CFG.first_event_hold_ms)
    assert receiver.counters.late == {} and receiver.counters.outage_holds == 0
    assert receiver.watermark_ms == BASE_MS + 2_999 * 10 - CFG.grace_ms


def test_a_task_quiet_for_an_hour_then_moved_does_not_publish_a_frontier_an_hour_back() -> None:
    """Its partition quiet for an hour, the task is restored elsewhere (a deploy, a scale-out).
    The wall time since its last delivery now counts from the restore: without a floor at its own
    watermark its frontier fell an hour back, and every receiver waited an hour behind."""
    cfg = CoreConfig(room_idle_ms=10**9)

    def task(p: int) -> TaskAggregator:
        return TaskAggregator(cfg, sources=(0, 1, 2), senders=(1 - p,))

    busy, quiet = task(0), task(1)
    quiet.apply(0, [(0, join("q-room", "u", BASE_MS))], now_ms=BASE_MS)  # its last event
    now = BASE_MS
    for s in range(1, 3_601):  # an hour of live traffic on the busy task only
        now = BASE_MS + s * 1_000
        busy.apply(0, [(s, join("b-room", f"u{s}", now - 300))], now_ms=now)
        for t in (busy, quiet):
            t.tick(now)
        busy.sender_progress(1, quiet.frontier_ms(now))
        quiet.sender_progress(0, busy.frontier_ms(now))
    moved = task(1)
    moved.restore(quiet.checkpoint({0: 1}).upserts)
    for s in range(5, 66):
        t = now + s * 1_000
        busy.apply(0, [(4_000 + s, join("b-room", f"w{s}", t - 300))], now_ms=t)
        moved.sender_progress(0, busy.frontier_ms(t))
        moved.tick(t)
        frontier = moved.frontier_ms(t)
        if s >= 5 + cfg.idle_partition_ms // 1_000:  # its inputs known idle again ("nothing known" till then)
            assert frontier is not None and t - frontier < 10_000, (s, t - (frontier or 0))
        busy.sender_progress(1, frontier)
        busy.tick(t)
    assert t - (busy.watermark_ms or 0) < 5_000


@pytest.mark.parametrize(("bucket_ms", "window_ms"), [(1_000, 5_000), (1_000, 20_000), (500, 10_000)])
def test_state_cut_with_other_buckets_or_windows_is_refused_naming_the_settings(
    bucket_ms: int, window_ms: int
) -> None:
    """Restored as it was, state of 10 s windows published misaligned windows under 5 s or 20 s
    ones and lost buckets of another length, without a word."""
    agg = receiver()
    agg.apply(0, [(i, join("r", f"u{i}", BASE_MS + i * 1_000)) for i in range(10)], now_ms=0)
    records = agg.checkpoint({0: 10}).upserts
    other = CoreConfig(bucket_ms=bucket_ms, window_ms=window_ms, grace_ms=2_000, room_idle_ms=10**9)
    with pytest.raises(ConfigError, match=r"LIVEPULSE_WINDOW_MS=10000.*Reset state"):
        TaskAggregator(other, sources=(0,), senders=(1, 2)).restore(records)
    assert TaskAggregator(CFG, sources=(0,), senders=(1, 2)).restore(records) == 1  # same settings: fine


def test_sessions_turned_off_since_the_checkpoint_are_ended_once_then_not_folded_or_published() -> None:
    """The live session's record goes out once more, ended as of its last closed window (on the
    compacted topic the live one would stay for good); then no session is folded or published."""
    agg = receiver()
    agg.sender_progress(1, None)
    agg.sender_progress(2, None)
    agg.apply(0, [(i, join("r", f"u{i}", BASE_MS + i * 1_000)) for i in range(30)], now_ms=0)
    agg.tick(now_ms=CFG.first_event_hold_ms, busy={0})
    live = agg.drain_sessions()
    assert live and live[-1].status == "live"  # sessions on: published
    records = agg.checkpoint({0: 30}).upserts
    off = TaskAggregator(
        CoreConfig(bucket_ms=1_000, window_ms=10_000, grace_ms=2_000, room_idle_ms=10**9, sessions=False),
        sources=(0,),
        senders=(1, 2),
    )
    off.restore(records)
    (ended,) = off.drain_sessions()
    # ended at the last active second of its closed windows (the open one is not folded any more)
    assert ended == dataclasses.replace(live[-1], status="ended", session_end=BASE_MS + 20_000)
    off.apply(0, [(30 + i, join("r", f"v{i}", BASE_MS + 30_000 + i * 1_000)) for i in range(30)], now_ms=1)
    off.tick(now_ms=CFG.first_event_hold_ms + 1, busy={0})
    assert off.drain() and off.drain_sessions() == []
    again = TaskAggregator(off.config, sources=(0,), senders=(1, 2))
    again.restore([*records, *off.checkpoint({0: 60}).upserts])
    assert again.drain_sessions() == []  # ended once: its state is gone from the checkpoint
