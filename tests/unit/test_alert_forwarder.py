"""The Alertmanager forwarder: what it lets the feeding consumer commit, and failures it survives."""

from __future__ import annotations

import asyncio
from typing import Any

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


async def serve(handler: Any, port: int) -> web.AppRunner:
    """An Alertmanager stand-in on 127.0.0.1:``port`` answering its alerts endpoint with ``handler``."""
    app = web.Application()
    app.router.add_post("/api/v2/alerts", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


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

    runner = await serve(bad_gateway, unused_tcp_port)
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


async def test_every_alertmanager_listed_gets_every_alert_and_one_down_holds_back_no_other(
    unused_tcp_port_factory: Any,
) -> None:
    """An HA Alertmanager cluster: each replica must get every alert (they share silences, not
    alerts). Two up and one that refuses connections: both up get the batch, the one down is
    counted as failed after its retries, and the records are then done with."""
    got: dict[int, list[Any]] = {}
    runners = []
    up = [unused_tcp_port_factory(), unused_tcp_port_factory()]
    down = unused_tcp_port_factory()
    for port in up:

        async def receive(request: web.Request, port: int = port) -> web.Response:
            got.setdefault(port, []).extend(await request.json())
            return web.Response(status=200)

        runners.append(await serve(receive, port))
    urls = f"http://127.0.0.1:{up[0]}/, http://127.0.0.1:{down},http://127.0.0.1:{up[1]}"
    fw, registry = forwarder(urls, attempts=2, backoff_s=0.01)
    assert len(fw.endpoints) == 3
    running = asyncio.create_task(fw.run())
    try:
        fw.offer_records([(0, alert("a")), (1, alert("b"))], "p0")
        async with asyncio.timeout(10):
            while registry.get_sample_value("t_failed_total") != 2 or fw._inflight:  # (counted, then done)
                await asyncio.sleep(0.01)
        assert {port: [a["labels"]["alertname"] for a in alerts] for port, alerts in got.items()} == {
            up[0]: ["a", "b"],
            up[1]: ["a", "b"],
        }
        assert registry.get_sample_value("t_sent_total") == 4  # two alerts to each of two
        assert fw.take_commit() == {"p0": 2}
    finally:
        running.cancel()
        for runner in runners:
            await runner.cleanup()
    with pytest.raises(asyncio.CancelledError):
        await running


def test_the_alertmanager_urls_are_checked_at_start() -> None:
    from streams.settings import ConfigError, Settings

    assert Settings(alertmanager_url="http://a:9093, https://b:9093").alertmanager_url
    for bad in ("a:9093", "http://a:9093,", "http://a:9093,b:9093"):
        with pytest.raises(ConfigError, match="alertmanager_url"):
            Settings(alertmanager_url=bad)
    with pytest.raises(ConfigError) as raised:
        Settings(alertmanager_url="http://ops:s3cret@a:9093,b")
    assert "s3cret" not in str(raised.value)


async def test_an_alertmanager_that_never_answers_gets_one_attempt_per_batch_once_another_took_it(
    unused_tcp_port_factory: Any,
) -> None:
    """A replica that takes connections and never answers (a node gone, its pod still listed): each
    batch waits for one timeout there, not for all its retries, so the others are not held back."""
    hits = {"healthy": 0, "hanging": 0}
    got: list[str] = []
    release = asyncio.Event()

    async def healthy(request: web.Request) -> web.Response:
        hits["healthy"] += 1
        got.extend(a["labels"]["alertname"] for a in await request.json())
        return web.Response(status=200)

    async def hanging(request: web.Request) -> web.Response:
        hits["hanging"] += 1
        await release.wait()
        return web.Response(status=200)

    ports = [unused_tcp_port_factory(), unused_tcp_port_factory()]
    runners = [await serve(handler, port) for handler, port in zip((healthy, hanging), ports, strict=True)]
    urls = ",".join(f"http://127.0.0.1:{port}" for port in ports)
    fw, registry = forwarder(urls, max_batch=1, attempts=5, backoff_s=0.05, timeout_s=0.5)
    running = asyncio.create_task(fw.run())
    try:
        fw.offer_records([(0, alert("a")), (1, alert("b"))], "p0")
        async with asyncio.timeout(20):
            while registry.get_sample_value("t_failed_total") != 2 or fw._inflight:  # (counted, then done)
                await asyncio.sleep(0.01)
        assert got == ["a", "b"]
        assert hits == {"healthy": 2, "hanging": 2}  # one attempt per batch (before: five)
        assert fw.take_commit() == {"p0": 2}
    finally:
        release.set()
        running.cancel()
        for runner in runners:
            await runner.cleanup()
    with pytest.raises(asyncio.CancelledError):
        await running


def test_a_partition_revoked_while_its_lookback_offset_is_asked_for_is_not_sought() -> None:
    """A rebalance can end while the forwarder asks for the lookback offsets (a rolling restart):
    a seek on a partition no longer assigned raises, and the feed would restart for nothing."""
    from aiokafka import TopicPartition
    from aiokafka.errors import NoOffsetForPartitionError

    from streams.app import _read_from_lookback

    kept, revoked, fresh = (TopicPartition("live.alerts", p) for p in range(3))

    class Consumer:
        def __init__(self) -> None:
            self.assigned = {kept, revoked, fresh}
            self.sought: dict[TopicPartition, object] = {}

        def assignment(self) -> set[TopicPartition]:
            return self.assigned

        async def offsets_for_times(self, wanted: dict[TopicPartition, int]) -> dict[TopicPartition, Any]:
            self.assigned = {kept, fresh}  # the rebalance lands meanwhile
            at = type("At", (), {"offset": 7})()
            return {kept: at, revoked: at, fresh: None}

        def seek(self, tp: TopicPartition, offset: int) -> None:
            assert tp in self.assigned, f"{tp} sought after its revocation"
            self.sought[tp] = offset

        async def seek_to_end(self, tp: TopicPartition) -> None:
            assert tp in self.assigned, f"{tp} sought after its revocation"
            self.sought[tp] = "end"

    consumer = Consumer()
    exc = NoOffsetForPartitionError([kept, revoked, fresh])
    asyncio.run(_read_from_lookback(consumer, exc, 60_000))  # type: ignore[arg-type]
    assert consumer.sought == {kept: 7, fresh: "end"}
