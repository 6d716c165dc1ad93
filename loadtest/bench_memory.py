"""Memory and restore cost of room state (run by hand; not a test).

    python -m loadtest.bench_memory [--rooms 100000] [--events-per-room 20]

Builds one task with ``--rooms`` active rooms (viewer events from distinct
users, some orders and gifts, all inside open windows), reports process RSS
growth per room while windows are open and after they closed (idle rooms),
then checkpoints every room and times a restore from those records (decode
only; reading the changelog from Kafka is measured by the load test).
"""

from __future__ import annotations

import argparse
import gc
import random
import time

import psutil

from schemas import GiftEvent, OrderEvent, ViewerEvent
from streams.core import CoreConfig, TaskAggregator

MB = 1024 * 1024


def rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=100_000)
    parser.add_argument("--events-per-room", type=int, default=20)
    args = parser.parse_args()
    rng = random.Random(1)
    start_ms = int(time.time() * 1000) - 60_000
    task = TaskAggregator(CoreConfig(), sources=(0, 1, 2))
    events: dict[int, list] = {0: [], 1: [], 2: []}
    for room in range(args.rooms):
        room_id = f"room-{room}"
        for i in range(args.events_per_room):
            ts = start_ms + rng.randrange(8_000)  # all inside one or two open windows
            roll = rng.random()
            if roll < 0.8:
                kind = rng.choice(("join", "heartbeat", "like", "leave"))
                events[0].append(ViewerEvent(kind, room_id, f"user-{rng.randrange(10**7)}", ts))
            elif roll < 0.9:
                events[1].append(OrderEvent(f"o-{room}-{i}", room_id, "u", ts, "paid", 1_990, "CNY"))
            else:
                events[2].append(GiftEvent(f"g-{room}-{i}", room_id, "u", ts, 1, 100))
    batches = {
        source: [(n + 1, ev) for n, ev in enumerate(sorted(evs, key=lambda e: e.ts))]
        for source, evs in events.items()
    }
    del events
    base = rss()
    for start in range(0, max(len(b) for b in batches.values()), 5_000):
        for source, items in batches.items():
            task.apply(source, items[start : start + 5_000], now_ms=0)
    del batches
    counters = task.counters
    assert not counters.late, counters.late
    open_rss = rss() - base
    print(
        f"{args.rooms} rooms, {args.events_per_room} events each, windows open: "
        f"RSS +{open_rss / MB:.0f} MB ({open_rss / args.rooms:.0f} B/room)"
    )

    t0 = time.perf_counter()
    checkpoint = task.checkpoint()
    encode_s = time.perf_counter() - t0
    size = sum(len(k) + len(v) for k, v in checkpoint.upserts)
    print(
        f"checkpoint of {len(checkpoint.upserts)} records: {encode_s:.2f}s, {size / MB:.0f} MB "
        f"({size / args.rooms:.0f} B/room)"
    )

    t0 = time.perf_counter()
    restored = TaskAggregator(CoreConfig(), sources=(0, 1, 2))
    restored.restore(checkpoint.upserts)
    restore_s = time.perf_counter() - t0
    print(f"restore of {len(restored.rooms)} rooms from records: {restore_s:.2f}s")
    del restored, checkpoint

    task.tick(now_ms=10**13)
    task.tick(now_ms=2 * 10**13)
    closed = task.drain()
    idle_rss = rss() - base
    print(
        f"after closing {len(closed)} windows (rooms idle, state kept): RSS +{idle_rss / MB:.0f} MB "
        f"({idle_rss / args.rooms:.0f} B/room, including each room's last-closed record)"
    )


if __name__ == "__main__":
    main()
