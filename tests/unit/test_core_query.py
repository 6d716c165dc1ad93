"""The query view (/rooms/{id}) reports a partial window exactly as its closed record will read;
shares are counted per window and reach both."""

from __future__ import annotations

from schemas import ROOM_STATS_FIELDS, GiftEvent, OrderEvent, ViewerEvent
from streams.core import CoreConfig, TaskAggregator, room_view

BASE_MS = 1_700_000_000_000
CFG = CoreConfig(bucket_ms=1_000, window_ms=10_000, grace_ms=2_000, room_idle_ms=10**9)


def test_the_partial_window_reads_as_its_closed_record_will() -> None:
    agg = TaskAggregator(CFG, sources=(0, 1, 2))
    ts = BASE_MS + 1_000
    agg.apply(1, [(1, OrderEvent("o1", "r", "u1", ts, "paid", 990, "CNY"))], now_ms=0)
    agg.apply(2, [(1, GiftEvent("g1", "r", "u2", ts, 5, 500))], now_ms=0)
    viewers = [
        ("join", "u1"),
        ("join", "u2"),
        ("leave", "u1"),
        ("like", "u2"),
        ("comment", "u3"),
        ("share", "u2"),
    ]
    agg.apply(
        0, [(i, ViewerEvent(kind, "r", user, ts + i)) for i, (kind, user) in enumerate(viewers)], now_ms=0
    )

    view = room_view(agg, "r")
    assert view is not None and view["last_closed"] is None
    current = view["current"]
    assert current["complete"] is False
    assert current["orders_per_sec"] == 0.1
    assert current["shares"] == 1

    for source in (0, 1, 2):  # every input moves past the window: it closes
        agg.apply(source, [(99, ViewerEvent("heartbeat", "other", "u", ts + 20_000))], now_ms=0)
    closed = room_view(agg, "r")
    assert closed is not None
    fields = [f for f in ROOM_STATS_FIELDS if f != "room_id"]
    assert {f: current[f] for f in fields} == {f: closed["last_closed"][f] for f in fields}
    assert list(current) == ["window_start", "window_end", "complete", *fields[2:]]


def test_shares_are_counted_per_window() -> None:
    agg = TaskAggregator(CFG)
    shares = {BASE_MS: 3, BASE_MS + 10_000: 0, BASE_MS + 20_000: 1}
    offset = 0
    for ws, n in shares.items():
        for kind in ["share"] * n + ["join", "like"]:
            offset += 1
            agg.apply(0, [(offset, ViewerEvent(kind, "r", f"u{offset}", ws + offset))], now_ms=0)
    agg.apply(0, [(offset + 1, ViewerEvent("heartbeat", "r", "u", BASE_MS + 40_000))], now_ms=0)
    closed = {s.window_start: s for s in agg.drain()}
    assert {ws: s.shares for ws, s in closed.items()} == shares
    assert {s.likes for s in closed.values()} == {1}  # a share is no like
    view = room_view(agg, "r")
    assert view is not None and view["last_closed"]["shares"] == 1
