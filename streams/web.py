"""HTTP views on faust's web server: metrics, health, readiness and room queries."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import faust

from .core import RANKABLE_METRICS, TaskAggregator, partition_for, room_view, top_rooms
from .dataplane import DataPlane

EXPOSITION_CONTENT_TYPE = "text/plain; version=0.0.4"
METRIC_ALIASES = {"gmv": "gmv_minor", "gift_value": "gift_value_minor", "refunds": "refunds_minor"}
MAX_TOP_N = 1_000
#: seconds a ``/rooms/top`` answer is served again (rankings change only at window closes)
TOP_CACHE_S = 1.0


class AnswerCache:
    """Answers kept for ``ttl_s`` (all of them dropped together when that passed): a ranking scans
    every room of the worker on the event loop (~30 ms per 100 000 rooms), so dashboards polling it
    from many tabs, or asking for every ``n``, must not each pay for a scan (one per metric)."""

    def __init__(self, ttl_s: float = TOP_CACHE_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._since = clock()
        self._answers: dict[Any, Any] = {}

    def get(self, key: Any, compute: Callable[[], Any]) -> Any:
        now = self._clock()
        if now - self._since >= self.ttl_s:
            self._answers.clear()
            self._since = now
        answer = self._answers.get(key)
        if answer is None:
            answer = self._answers[key] = compute()
        return answer


def top_answer(
    cache: AnswerCache, tasks: Mapping[int, TaskAggregator], metric: str, n: int
) -> dict[str, Any]:
    """``/rooms/top``'s answer: the longest ranking (``MAX_TOP_N``), cut to ``n``, so one scan per
    metric serves every ``n`` clients ask for."""

    def rank() -> tuple[list[int], list[dict[str, Any]]]:
        ranked = top_rooms(tasks.values(), metric, MAX_TOP_N)
        rooms = [
            {"room_id": s.room_id, metric: getattr(s, metric), "window_start": s.window_start} for s in ranked
        ]
        return sorted(tasks), rooms

    partitions, rooms = cache.get(metric, rank)
    return {"metric": metric, "scope": {"partitions": partitions}, "rooms": rooms[:n]}


def register_views(app: faust.App, plane: DataPlane, healthy: Callable[[], bool]) -> None:
    """Add livepulse's pages to ``app`` (``/rooms/top`` before ``/rooms/{room_id}``)."""
    top_answers = AnswerCache()

    @app.page("/metrics")
    async def metrics(self: faust.web.View, request: Any) -> Any:
        # aiohttp takes the charset separately; the exposition format is UTF-8 text 0.0.4.
        return self.bytes(plane.metrics.exposition(), content_type=EXPOSITION_CONTENT_TYPE)

    @app.page("/healthz")
    async def healthz(self: faust.web.View, request: Any) -> Any:
        ok = healthy()
        return self.json({"status": "ok" if ok else "failed"}, status=200 if ok else 503)

    @app.page("/readyz")
    async def readyz(self: faust.web.View, request: Any) -> Any:
        body = {"ready": plane.ready, "partitions": sorted(plane.tasks)}
        return self.json(body, status=200 if plane.ready else 503)

    @app.page("/leaderboard")
    async def leaderboard(self: faust.web.View, request: Any) -> Any:
        stage = plane.leaderboard
        if stage is None:
            return self.json({"error": "the leaderboard merge (task 0) is not on this worker"}, status=404)
        raw = request.query.get("window_start")
        if raw is None:
            record = stage.latest
        else:
            try:
                record = stage.window(int(raw))
            except ValueError:
                return self.json(
                    {"error": "window_start must be an integer (ms since the epoch)"}, status=400
                )
        if record is None:
            return self.json({"error": "no final leaderboard window (yet, or any more)"}, status=404)
        return self.json(record)

    @app.page("/rooms/top")
    async def rooms_top(self: faust.web.View, request: Any) -> Any:
        metric = request.query.get("metric", "gmv_minor")
        metric = METRIC_ALIASES.get(metric, metric)
        try:
            n = int(request.query.get("n", "20"))
        except ValueError:
            n = -1
        if metric not in RANKABLE_METRICS or not 0 < n <= MAX_TOP_N:
            return self.json(
                {
                    "error": "bad query",
                    "metrics": sorted([*RANKABLE_METRICS, *METRIC_ALIASES]),
                    "max_n": MAX_TOP_N,
                },
                status=400,
            )

        return self.json(top_answer(top_answers, plane.tasks, metric, n))

    @app.page("/rooms/{room_id}")
    async def room(self: faust.web.View, request: Any, room_id: str) -> Any:
        partition = partition_for(room_id.encode(), plane.partitions) if plane.partitions else -1
        task = plane.tasks.get(partition)
        view = None if task is None else room_view(task, room_id)
        if view is None:
            owned = task is not None
            reason = "no recent events for this room" if owned else "room's partition is not on this worker"
            return self.json({"room_id": room_id, "partition": partition, "error": reason}, status=404)
        return self.json({**view, "partition": partition})
