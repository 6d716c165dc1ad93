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
