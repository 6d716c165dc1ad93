"""The Alertmanager forwarder: what it lets the feeding consumer commit, and failures it survives."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from streams.alerting import AlertForwarder


def alert(name: str) -> bytes:
    return orjson.dumps({"labels": {"alertname": name}, "annotations": {}})


def forwarder(url: str = "http://127.0.0.1:1", **kwargs: object) -> tuple[AlertForwarder, CollectorRegistry]:
    registry = CollectorRegistry()
    counters = {n: Counter(f"t_{n}", n, registry=registry) for n in ("sent", "failed", "dropped", "skipped")}
    return AlertForwarder(url, **counters, **kwargs), registry  # type: ignore[arg-type]


def test_only_what_was_delivered_or_given_up_may_be_committed() -> None:
    fw, _ = forwarder(max_batch=2)
    fw.offer_records([(10, alert("a")), (11, b"not an alert"), (12, alert("b")), (13, alert("c"))], "p0")
    fw.offer_records([(5, b"junk")], "p1")
    assert fw.take_commit() == {"p0": 10, "p1": 6}  # p1 holds nothing to deliver
    # a batch in flight is not delivered yet
    fw._inflight = [fw._queue.popleft(), fw._queue.popleft()]
    assert fw.take_commit() == {}
    fw._inflight = []  # delivered (or given up on after every attempt)
    assert fw.take_commit() == {"p0": 13}
    fw._queue.popleft()
    assert fw.take_commit() == {"p0": 14}
    assert fw.take_commit() == {}
    fw.retry_commit({"p0": 14})  # the commit failed: given again
    assert fw.take_commit() == {"p0": 14}


def test_a_partition_given_up_leaves_its_queued_alerts_to_the_next_owner() -> None:
    fw, _ = forwarder()
    fw.offer_records([(0, alert("a")), (1, alert("b"))], "p0")
    fw.offer_records([(7, alert("c")), (8, alert("d"))], "p1")
    fw._inflight = [fw._queue.popleft(), fw._queue.pop()]  # p0's first and p1's last, being sent
    fw.forget(["p0"])  # the next owner sends p0's alerts from offset 0, in order: not this worker
    assert fw.queued == 1 and [(src, offset) for _, src, offset in fw._inflight] == [("p1", 8)]
    assert fw.take_commit() == {"p1": 7}


async def test_an_undecodable_error_page_is_a_failed_attempt_not_a_dead_forwarder(
    unused_tcp_port: int,
) -> None:
    """A proxy in front of Alertmanager answers 502 with a body that is not UTF-8."""
    answered = 0

    async def bad_gateway(_: web.Request) -> web.Response:
        nonlocal answered
        answered += 1
        return web.Response(status=502, body=b"\xe9\xff\xfe", content_type="text/html", charset="utf-8")

    app = web.Application()
    app.router.add_post("/api/v2/alerts", bad_gateway)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    fw, registry = forwarder(f"http://127.0.0.1:{unused_tcp_port}", attempts=2, backoff_s=0.01)
    running = asyncio.create_task(fw.run())
    try:
        fw.offer_records([(0, alert("a"))], "p0")
        async with asyncio.timeout(10):
            while registry.get_sample_value("t_failed_total") != 1:
                await asyncio.sleep(0.01)
        assert not running.done()
        assert answered == 2
        assert fw.take_commit() == {"p0": 1}  # given up on after every attempt: not read again
    finally:
        running.cancel()
        await runner.cleanup()
    with pytest.raises(asyncio.CancelledError):
        await running


def test_reading_the_alerts_topic_failing_is_counted_and_retried_not_fatal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No broker answers (as good as a refused group or a deleted topic for the feed): each attempt
    fails, is logged and counted, and the feed tries again after its backoff instead of ending
    (which used to stop the whole worker, room-stats included)."""
    from streams.app import _keep_feeding_alerts
    from streams.settings import Settings

    fw, registry = forwarder()
    failures = Counter("t_feed_failures", "feed failures", registry=registry)

    async def scenario() -> None:
        feed = asyncio.ensure_future(_keep_feeding_alerts(Settings(brokers="127.0.0.1:1"), fw, failures))
        await asyncio.sleep(2.5)  # a refused connection fails at once: attempts at 0 s and 1 s
        assert not feed.done()
        feed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await feed

    asyncio.run(scenario())
    assert (registry.get_sample_value("t_feed_failures_total") or 0) >= 1
    assert "alert forwarding: reading live.alerts failed" in caplog.text
    assert "retrying in 1 s" in caplog.text
