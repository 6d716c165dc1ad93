"""Brute-force recomputation of room-stats from a full event list: the ground truth.

The oracle knows nothing of buckets, rings or incremental closing. It replays
the processing order only to classify events (replayed, late, duplicate),
because lateness is defined against the watermark at arrival, then groups the
accepted events per (room, window) and recomputes every metric from scratch,
counting unique viewers exactly. Used by the property tests and by the load
test's correctness check.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from schemas import Event, GiftEvent, OrderEvent, RoomStats, ViewerEvent


def expected_windows(
    stream: Iterable[tuple[int, int, Event]],
    *,
    window_ms: int,
    grace_ms: int,
    sources: Iterable[int] = (0,),
) -> dict[tuple[str, int], RoomStats]:
    """Expected closed windows keyed by (room_id, window_start) for ``(source, offset, event)`` in order.

    ``unique_viewers`` is exact here; the pipeline's is a HyperLogLog estimate.

    The watermark is the slowest of ``sources`` (newest event time per
    source) minus grace; a source that has sent nothing holds it back. Assumes
    no wall-clock idleness during the stream, that every window eventually
    closes, and that no room expires or forgets an order key.
    """
    wm: int | None = None
    source_max: dict[int, int] = {}
    expected = set(sources)
    last_offset: dict[tuple[str, int], int] = {}
    seen_orders: set[tuple[str, str, str]] = set()
    accepted: dict[tuple[str, int], list[Event]] = defaultdict(list)
    late: dict[tuple[str, int], int] = defaultdict(int)
    for source, offset, ev in stream:
        source_max[source] = max(source_max.get(source, ev.ts), ev.ts)
        if all(s in source_max for s in expected | {source}):
            slowest = min(source_max[s] for s in expected | set(source_max))
            wm = slowest - grace_ms if wm is None else max(wm, slowest - grace_ms)
        guard = (ev.room_id, source)
        if offset <= last_offset.get(guard, -1):
            continue
        last_offset[guard] = offset
        if wm is not None and ev.ts < wm:
            late[(ev.room_id, wm - wm % window_ms)] += 1
            continue
        if isinstance(ev, OrderEvent):
            key = (ev.room_id, ev.order_id, ev.status)
            if key in seen_orders:
                continue
            seen_orders.add(key)
        accepted[(ev.room_id, ev.ts - ev.ts % window_ms)].append(ev)

    out: dict[tuple[str, int], RoomStats] = {}
    concurrent: dict[str, int] = defaultdict(int)
    for room_id, ws in sorted(set(accepted) | set(late)):
        events = accepted.get((room_id, ws), [])
        viewer = [e for e in events if isinstance(e, ViewerEvent)]
        orders = [e for e in events if isinstance(e, OrderEvent)]
        gifts = [e for e in events if isinstance(e, GiftEvent)]
        joins = sum(1 for e in viewer if e.type == "join")
        leaves = sum(1 for e in viewer if e.type == "leave")
        concurrent[room_id] = max(0, concurrent[room_id] + joins - leaves)
        paid = [e for e in orders if e.status == "paid"]
        out[(room_id, ws)] = RoomStats(
            room_id=room_id,
            window_start=ws,
            window_end=ws + window_ms,
            views=joins,
            unique_viewers=len({e.user_id for e in viewer}),
            concurrent_viewers=concurrent[room_id],
            likes=sum(1 for e in viewer if e.type == "like"),
            comments=sum(1 for e in viewer if e.type == "comment"),
            orders=len(paid),
            orders_per_sec=len(paid) / (window_ms / 1000),
            gmv_minor=sum(e.amount_minor for e in paid),
            refunds_minor=sum(e.amount_minor for e in orders if e.status == "refunded"),
            gifts=sum(e.count for e in gifts),
            gift_value_minor=sum(e.value_minor for e in gifts),
            late_events=late.get((room_id, ws), 0),
            shares=sum(1 for e in viewer if e.type == "share"),
        )
    return out


def unique_viewers_close(estimate: int, exact: int, *, rse: float = 0.016) -> bool:
    """Whether an HLL estimate is within 4 relative standard errors (+1) of the exact count."""
    return abs(estimate - exact) <= 4 * rse * exact + 1
