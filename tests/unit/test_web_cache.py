"""``/rooms/top`` answers are computed at most once per query and second."""

from __future__ import annotations

from streams.web import AnswerCache


def test_an_answer_is_served_again_until_the_cache_expires_then_computed_afresh() -> None:
    now = [100.0]
    cache = AnswerCache(1.0, clock=lambda: now[0])
    scans: list[str] = []

    def scan(label: str) -> dict[str, str]:
        scans.append(label)
        return {"answer": label}

    assert cache.get(("gmv_minor", 20), lambda: scan("a")) == {"answer": "a"}
    now[0] += 0.5
    assert cache.get(("gmv_minor", 20), lambda: scan("b")) == {"answer": "a"}
    assert cache.get(("views", 20), lambda: scan("c")) == {"answer": "c"}  # another query
    now[0] += 0.6
    assert cache.get(("gmv_minor", 20), lambda: scan("d")) == {"answer": "d"}
    assert scans == ["a", "c", "d"]


def test_every_n_of_one_metric_is_served_by_one_scan() -> None:
    """A client asking for n = 1..1000 in turn made as many scans of every room, on the event loop
    the data plane shares; now one ranking per metric is cut to each n."""
    from schemas import ViewerEvent
    from streams.core import CoreConfig, TaskAggregator
    from streams.web import MAX_TOP_N, top_answer

    agg = TaskAggregator(CoreConfig(window_ms=10_000, grace_ms=2_000, room_idle_ms=10**9), (0,))
    t0 = 1_700_000_000_000
    joins = [
        (100 * i + j, ViewerEvent("join", f"r{i:03d}", f"u{j}", t0)) for i in range(50) for j in range(i)
    ]
    agg.apply(0, joins, t0)
    agg.tick(now_ms=t0 + 60_000)  # the window closes on wall time (an idle input)
    agg.tick(now_ms=t0 + 120_000)
    scans = []
    cache = AnswerCache(1.0, clock=lambda: 0.0)
    original = cache.get

    def counting(key: object, compute: object) -> object:
        return original(key, lambda: scans.append(key) or compute())  # type: ignore[operator]

    cache.get = counting  # type: ignore[method-assign]
    answers = [top_answer(cache, {0: agg}, "views", n) for n in range(1, MAX_TOP_N + 1)]
    assert scans == ["views"]
    assert [room["room_id"] for room in answers[2]["rooms"]] == ["r049", "r048", "r047"]
    assert answers[-1]["rooms"] == answers[48]["rooms"] and len(answers[-1]["rooms"]) == 49
