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
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from schemas import Event, GiftEvent, OrderEvent, RoomSession, RoomStats, ViewerEvent


def expected_windows(
    stream: Iterable[tuple[int, int, Event | int]],
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
    return _windows_of(_classify(stream, window_ms=window_ms, grace_ms=grace_ms, sources=sources), window_ms)


def expected_all(
    stream: Collection[tuple[int, int, Event | int]],
    *,
    window_ms: int,
    grace_ms: int,
    bucket_ms: int,
    gap_ms: int,
    lengths_ms: Iterable[int],
    sources: Iterable[int] = (0,),
) -> tuple[
    dict[tuple[str, int], RoomStats],
    dict[tuple[int, str, int], RoomStats],
    dict[tuple[str, int], RoomSession],
]:
    """:func:`expected_windows`, :func:`expected_rollups` and :func:`expected_sessions` of one stream,
    which is replayed once for the three."""
    classified = _classify(stream, window_ms=window_ms, grace_ms=grace_ms, sources=sources)
    windows = _windows_of(classified, window_ms)
    return (
        windows,
        _rollups_of(classified, windows, lengths_ms),
        _sessions_of(classified, windows, window_ms=window_ms, bucket_ms=bucket_ms, gap_ms=gap_ms),
    )


def _windows_of(classified: _Classified, window_ms: int) -> dict[tuple[str, int], RoomStats]:
    accepted, late_at, _ = classified
    late: dict[tuple[str, int], int] = defaultdict(int)
    moves: dict[tuple[str, int], int] = defaultdict(int)  # late joins (+1) minus late leaves (-1)
    for room_id, wm, move in late_at:
        late[(room_id, wm - wm % window_ms)] += 1
        moves[(room_id, wm - wm % window_ms)] += move
    out: dict[tuple[str, int], RoomStats] = {}
    concurrent: dict[str, int] = defaultdict(int)
    for room_id, ws in sorted(set(accepted) | set(late)):
        totals = _totals(accepted.get((room_id, ws), []))
        late_moves = moves.get((room_id, ws), 0)  # they arrived before this window closed
        concurrent[room_id] = max(
            0, concurrent[room_id] + late_moves + totals["views"] - totals.pop("leaves")
        )
        out[(room_id, ws)] = _stats(
            room_id, ws, window_ms, totals, concurrent[room_id], late.get((room_id, ws), 0)
        )
    return out


def _totals(events: Iterable[Event]) -> dict[str, int]:
    """Every metric of a set of accepted events, unique viewers exact (and leaves, for concurrency)."""
    events = list(events)
    viewer = [e for e in events if isinstance(e, ViewerEvent)]
    orders = [e for e in events if isinstance(e, OrderEvent)]
    gifts = [e for e in events if isinstance(e, GiftEvent)]
    paid = [e for e in orders if e.status == "paid"]
    return {
        "views": sum(1 for e in viewer if e.type == "join"),
        "leaves": sum(1 for e in viewer if e.type == "leave"),
        "unique_viewers": len({e.user_id for e in viewer}),
        "likes": sum(1 for e in viewer if e.type == "like"),
        "comments": sum(1 for e in viewer if e.type == "comment"),
        "shares": sum(1 for e in viewer if e.type == "share"),
        "orders": len(paid),
        "gmv_minor": sum(e.amount_minor for e in paid),
        "refunds_minor": sum(e.amount_minor for e in orders if e.status == "refunded"),
        "gifts": sum(e.count for e in gifts),
        "gift_value_minor": sum(e.value_minor for e in gifts),
    }


def _stats(
    room_id: str, start: int, length_ms: int, totals: dict[str, int], concurrent: int, late: int
) -> RoomStats:
    return RoomStats(
        room_id=room_id,
        window_start=start,
        window_end=start + length_ms,
        views=totals["views"],
        unique_viewers=totals["unique_viewers"],
        concurrent_viewers=concurrent,
        likes=totals["likes"],
        comments=totals["comments"],
        orders=totals["orders"],
        orders_per_sec=totals["orders"] / (length_ms / 1000),
        gmv_minor=totals["gmv_minor"],
        refunds_minor=totals["refunds_minor"],
        gifts=totals["gifts"],
        gift_value_minor=totals["gift_value_minor"],
        late_events=late,
        shares=totals["shares"],
    )


def expected_sessions(
    stream: Collection[tuple[int, int, Event | int]],
    *,
    window_ms: int,
    grace_ms: int,
    bucket_ms: int,
    gap_ms: int,
    sources: Iterable[int] = (0,),
    final_watermark_ms: int | None = None,
) -> dict[tuple[str, int], RoomSession]:
    """Expected latest record of every broadcast session, keyed by (room_id, session_start).

    A room's activity is the set of ``bucket_ms`` buckets holding an accepted event or a late
    event's charge (at the watermark of its arrival); a silence of ``gap_ms`` or more between two
    active buckets separates sessions. A session has ended when a later one exists or when
    ``final_watermark_ms`` (default: the stream's own) reached the first window end at or after its
    last active bucket's end plus the gap. ``unique_viewers`` is exact here. Peak concurrent viewers
    come from the expected windows (concurrency at a window end depends on every earlier window).
    Same assumptions as :func:`expected_windows`.
    """
    classified = _classify(stream, window_ms=window_ms, grace_ms=grace_ms, sources=sources)
    return _sessions_of(
        classified,
        _windows_of(classified, window_ms),
        window_ms=window_ms,
        bucket_ms=bucket_ms,
        gap_ms=gap_ms,
        final_watermark_ms=final_watermark_ms,
    )


def _sessions_of(
    classified: _Classified,
    windows: dict[tuple[str, int], RoomStats],
    *,
    window_ms: int,
    bucket_ms: int,
    gap_ms: int,
    final_watermark_ms: int | None = None,
) -> dict[tuple[str, int], RoomSession]:
    accepted, late_at, wm = classified
    final = wm if final_watermark_ms is None else final_watermark_ms
    events: dict[str, list[Event]] = defaultdict(list)
    for (room_id, _), evs in accepted.items():
        events[room_id].extend(evs)
    late: dict[str, list[int]] = defaultdict(list)
    for room_id, at, _ in late_at:
        late[room_id].append(at // bucket_ms)
    room_windows: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for (r, ws), w in windows.items():
        room_windows[r].append((ws, w.concurrent_viewers))
    out: dict[tuple[str, int], RoomSession] = {}
    for room_id in sorted(set(events) | set(late)):
        active = sorted({e.ts // bucket_ms for e in events[room_id]} | set(late[room_id]))
        spans: list[list[int]] = [[active[0], active[0]]]
        for b in active[1:]:
            if (b - spans[-1][1] - 1) * bucket_ms >= gap_ms:
                spans.append([b, b])
            else:
                spans[-1][1] = b
        for i, (first, last) in enumerate(spans):
            start, last_end = first * bucket_ms, (last + 1) * bucket_ms
            totals = _totals(e for e in events[room_id] if first <= e.ts // bucket_ms <= last)
            mine = sorted(
                (ws, c) for ws, c in room_windows[room_id] if start - start % window_ms <= ws < last_end
            )
            peak = max(c for _, c in mine)
            due = -(-(last_end + gap_ms) // window_ms) * window_ms
            ended = i < len(spans) - 1 or (final is not None and final >= due)
            out[(room_id, start)] = RoomSession(
                room_id=room_id,
                session_start=start,
                session_end=last_end if ended else None,
                status="ended" if ended else "live",
                views=totals["views"],
                unique_viewers=totals["unique_viewers"],
                peak_concurrent_viewers=peak,
                peak_window_start=next(ws for ws, c in mine if c == peak),
                likes=totals["likes"],
                comments=totals["comments"],
                shares=totals["shares"],
                orders=totals["orders"],
                gmv_minor=totals["gmv_minor"],
                refunds_minor=totals["refunds_minor"],
                gifts=totals["gifts"],
                gift_value_minor=totals["gift_value_minor"],
                late_events=sum(1 for b in late[room_id] if first <= b <= last),
                updated_at=due if ended else mine[-1][0] + window_ms,
            )
    return out


def expected_rollups(
    stream: Collection[tuple[int, int, Event | int]],
    *,
    window_ms: int,
    grace_ms: int,
    lengths_ms: Iterable[int],
    sources: Iterable[int] = (0,),
) -> dict[tuple[int, str, int], RoomStats]:
    """Expected closed rollup windows keyed by (length ms, room_id, window_start).

    Every metric is recomputed from the accepted events of the longer window (unique viewers
    exactly); concurrent viewers are those at the end of the room's last base window in it (they
    depend on every earlier window). Same assumptions as :func:`expected_windows`.
    """
    classified = _classify(stream, window_ms=window_ms, grace_ms=grace_ms, sources=sources)
    return _rollups_of(classified, _windows_of(classified, window_ms), lengths_ms)


def _rollups_of(
    classified: _Classified, windows: dict[tuple[str, int], RoomStats], lengths_ms: Iterable[int]
) -> dict[tuple[int, str, int], RoomStats]:
    accepted, late_at, _ = classified
    out: dict[tuple[int, str, int], RoomStats] = {}
    for length in lengths_ms:
        events: dict[tuple[str, int], list[Event]] = defaultdict(list)
        for (room_id, ws), evs in accepted.items():
            events[(room_id, ws - ws % length)].extend(evs)
        late: dict[tuple[str, int], int] = defaultdict(int)
        for room_id, at, _ in late_at:
            late[(room_id, at - at % length)] += 1
        last_window: dict[tuple[str, int], tuple[int, int]] = {}
        for (room_id, ws), stats in windows.items():
            key = (room_id, ws - ws % length)
            last_window[key] = max(last_window.get(key, (ws, 0)), (ws, stats.concurrent_viewers))
        for room_id, start in sorted(set(events) | set(late)):
            totals = _totals(events.get((room_id, start), []))
            concurrent = last_window[(room_id, start)][1]
            out[(length, room_id, start)] = _stats(
                room_id, start, length, totals, concurrent, late.get((room_id, start), 0)
            )
    return out


#: accepted events by (room, window); (room, watermark, move) of each late event; the final watermark
_Classified = tuple[dict[tuple[str, int], list[Event]], list[tuple[str, int, int]], int | None]


def _classify(
    stream: Iterable[tuple[int, int, Event | int]], *, window_ms: int, grace_ms: int, sources: Iterable[int]
) -> _Classified:
    """Replay the processing order: accepted events by (room, window); the room, the watermark
    and the move of the concurrent level (+1 a join, -1 a leave, else 0) of each late event of
    a room already open (one that had an event in time: a late event opens no room, and no
    room closes here), in order; and the final watermark.

    An event may be given as its event time alone: an event of a room this replay leaves out (the
    load test computes a large partition's rooms in several replays). It moves the watermark, as
    every event does, and nothing else: each room's outcome depends on its own events and the
    watermark only."""
    wm: int | None = None
    source_max: dict[int, int] = {}
    expected = set(sources)
    last_offset: dict[tuple[str, int], int] = {}
    seen_orders: set[tuple[str, str, str]] = set()
    accepted: dict[tuple[str, int], list[Event]] = defaultdict(list)
    late: list[tuple[str, int, int]] = []
    opened: set[str] = set()
    for source, offset, ev in stream:
        ts = ev if isinstance(ev, int) else ev.ts
        source_max[source] = max(source_max.get(source, ts), ts)
        if all(s in source_max for s in expected | {source}):
            slowest = min(source_max[s] for s in expected | set(source_max))
            wm = slowest - grace_ms if wm is None else max(wm, slowest - grace_ms)
        if isinstance(ev, int):
            continue
        guard = (ev.room_id, source)
        if offset <= last_offset.get(guard, -1):
            continue
        last_offset[guard] = offset
        if wm is not None and ev.ts < wm:
            if ev.room_id in opened:
                move = 0
                if isinstance(ev, ViewerEvent):
                    move = 1 if ev.type == "join" else -1 if ev.type == "leave" else 0
                late.append((ev.room_id, wm, move))
            continue
        opened.add(ev.room_id)
        if isinstance(ev, OrderEvent):
            key = (ev.room_id, ev.order_id, ev.status)
            if key in seen_orders:
                continue
            seen_orders.add(key)
        accepted[(ev.room_id, ev.ts - ev.ts % window_ms)].append(ev)
    return accepted, late, wm


def expected_leaderboards(windows: Iterable[RoomStats], n: int) -> dict[int, dict[str, Any]]:
    """The platform leaderboard record of every window, by window start, from every room's window.

    Brute force, apart from the core: per window, the rooms with any activity (not only late events,
    not only a concurrent-viewer level), all of them sorted by value descending then room_id
    ascending (zero values unranked), cut at ``n``; totals summed over those rooms.
    """
    by_window: dict[int, list[RoomStats]] = defaultdict(list)
    for s in windows:
        counted = (s.views, s.unique_viewers, s.likes, s.comments, s.shares, s.orders, s.gmv_minor)
        if any(counted) or s.refunds_minor or s.gifts or s.gift_value_minor:
            by_window[s.window_start].append(s)
    out: dict[int, dict[str, Any]] = {}
    for ws, group in by_window.items():
        record: dict[str, Any] = {"window_start": ws, "window_end": group[0].window_end, "size": n}
        for name, attr in (("top_gmv", "gmv_minor"), ("top_views", "views")):
            ranked = sorted(
                (s for s in group if getattr(s, attr) > 0), key=lambda s: (-getattr(s, attr), s.room_id)
            )
            record[name] = [
                {"rank": i, "room_id": s.room_id, attr: getattr(s, attr)} for i, s in enumerate(ranked[:n], 1)
            ]
        record["events"] = sum(s.views + s.likes + s.comments + s.shares + s.orders + s.gifts for s in group)
        record["rooms_live"] = len(group)
        record["gmv_minor"] = sum(s.gmv_minor for s in group)
        record["orders"] = sum(s.orders for s in group)
        out[ws] = record
    return out


#: the most viewers the worker's sketch (HyperLogLog, lg_k 12: the default, and the load test's)
#: holds as coupons, one per viewer: up to here its rounded estimate is the exact count, or one
#: under when two viewers' hashes share a coupon (about one pair in 2**26)
COUPON_VIEWERS = 384
#: viewer pairs per shared coupon, on average
_PAIRS_PER_SHARED_COUPON = 2**26


def unique_viewers_close(estimate: int, exact: int, *, rse: float = 0.016) -> bool:
    """Whether an HLL estimate fits the exact count: equal, or one under (a shared coupon), up to
    ``COUPON_VIEWERS``; above, within 4 relative standard errors (+1). One under in many records
    is a defect, not chance: ``UniqueTally`` tells."""
    if exact <= COUPON_VIEWERS:
        return estimate == exact or estimate == exact - 1
    return abs(estimate - exact) <= 4 * rse * exact + 1


@dataclass
class UniqueTally:
    """Unique-viewer estimates of many records against their exact counts: each must fit
    (``unique_viewers_close``), and of those up to ``COUPON_VIEWERS`` no more may come out one
    under than shared coupons explain (3, plus ten times the number expected)."""

    small: int = 0
    under: int = 0
    pairs: float = 0.0

    def close(self, estimate: int, exact: int) -> bool:
        if exact <= COUPON_VIEWERS:
            self.small += 1
            self.pairs += exact * (exact - 1) / 2
            self.under += estimate == exact - 1
        return unique_viewers_close(estimate, exact)

    def failure(self) -> str | None:
        allowed = 3 + 10 * self.pairs / _PAIRS_PER_SHARED_COUPON
        if self.under <= allowed:
            return None
        return (
            f"unique viewers one under the exact count in {self.under:,} of {self.small:,} records of up to "
            f"{COUPON_VIEWERS} viewers (shared coupons explain at most {allowed:.0f})"
        )
