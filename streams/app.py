"""The faust application: ``create_app(settings)`` builds it; ``faust -A streams.app worker`` finds it.

Faust hosts the worker (lifecycle, logging, web server); the batch data plane
runs inside it as one background task. If that task fails, the process exits
at once with status 3, so a supervisor (Kubernetes, systemd, compose)
restarts it and the restarted worker resumes from the last committed
checkpoint: a half-dead worker that answers 503 forever helps no one. A stop
(SIGTERM) commits a last checkpoint when it can and is bounded by
``shutdown_timeout_ms``, after which the process exits regardless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import faust
import mode
import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError, NoOffsetForPartitionError, OffsetOutOfRangeError
from prometheus_client import Counter

from ._logstorm import limit_repeats
from ._redact import install_log_redaction
from ._rules import fold
from ._topology import prepare_topics
from .alerting import AlertForwarder
from .core import SpikeRuleError
from .dataplane import DataPlane
from .metrics import Metrics
from .settings import Settings, describe, settings_from_env
from .web import register_views

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> faust.App:
    """A faust app hosting a data plane configured by ``settings``."""
    install_log_redaction()
    limit_repeats()  # the Kafka client's retry errors while a broker is away
    metrics = Metrics()
    plane = DataPlane(settings, metrics)
    Path(settings.faust_data_dir).parent.mkdir(parents=True, exist_ok=True)  # faust makes only the leaf
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{host}:{port}" for host, port in settings.broker_addresses],
        broker_credentials=_credentials(settings),
        web_host=settings.web_host,
        web_port=settings.web_port,
        # faust listens on web_bind (default 0.0.0.0), not web_host: bind exactly where configured
        web_bind=settings.web_host,
        store="memory://",
        datadir=settings.faust_data_dir,
        autodiscover=False,
        topic_replication_factor=settings.replication_factor,
        # faust's own group (agents, rules table): a killed worker's partitions move after 10 s, not 60 s
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
    )
    rules_table = app.GlobalTable("spike-rules", default=None, partitions=1)
    _control_agent(app, settings, rules_table, metrics)
    forwarder = _alert_forwarding(settings, metrics) if settings.alertmanager_url else None
    hosted = _hosted_service(
        plane, settings, lambda: dict(rules_table.items()), forwarder, settings.shutdown_timeout_ms / 1000
    )
    app.service(hosted)
    register_views(app, plane, healthy=lambda: not hosted.failed)
    app.livepulse_plane = plane  # type: ignore[attr-defined]
    log.info("livepulse settings: %s", describe(settings))
    return app


def _credentials(settings: Settings) -> Any:
    sec = settings.security
    if sec.sasl_mechanism:
        return faust.SASLCredentials(
            username=sec.sasl_username,
            password=sec.sasl_password,
            mechanism=sec.sasl_mechanism,
            ssl_context=sec.client_kwargs().get("ssl_context"),
        )
    if sec.security_protocol in ("SSL", "SASL_SSL"):
        return faust.SSLCredentials(sec.client_kwargs()["ssl_context"])
    return None


def _control_agent(app: faust.App, settings: Settings, table: Any, metrics: Metrics) -> None:
    """Fold spike-rule control messages into the global table every worker reads."""
    control = app.topic(settings.topics.control, value_serializer="raw", partitions=1)

    @app.agent(control, name="spike-rule-control")
    async def apply_control(stream: Any) -> None:
        async for raw in stream:
            try:
                entry, value = fold(orjson.loads(raw), table)
            except (orjson.JSONDecodeError, SpikeRuleError) as exc:
                metrics.control_invalid.inc()
                log.warning("ignored control message %r: %s", bytes(raw or b"")[:200], exc)
                continue
            if value is None:
                table.pop(entry, None)
            else:
                table[entry] = value
            log.info("spike rule %r = %r", entry, value)  # (repr: no line or escape forged by a key)


def _alert_forwarding(settings: Settings, metrics: Metrics) -> AlertForwarder:
    """An Alertmanager forwarder fed by :func:`_feed_alerts`."""
    assert settings.alertmanager_url is not None
    return AlertForwarder(
        settings.alertmanager_url,
        sent=metrics.alerts_forward_sent,
        failed=metrics.alerts_forward_failed,
        dropped=metrics.alerts_forward_dropped,
        skipped=metrics.alerts_forward_skipped,
    )


async def _feed_alerts(settings: Settings, forwarder: AlertForwarder) -> None:
    """Hand every committed record of the alerts topic to the forwarder.

    ``read_committed``: an alert of a checkpoint that was aborted (a crash, a fenced worker) never
    reaches Alertmanager. One consumer group for all workers, so each alert goes out once, and at
    least once across restarts and rebalances (Alertmanager takes repeats): the group's offsets
    are committed only up to what the forwarder delivered (``AlertForwarder.take_commit``), and a
    partition given up leaves its queued alerts to the next owner. Anything can be written to a
    topic: a record that is not an alert is counted and skipped.

    A partition the group has no offset for yet (forwarding just turned on, or a new app id) is
    read from ``FIRST_START_LOOKBACK_RESENDS`` re-send intervals back (by record time). From the
    start of the topic's retention, a first start posted up to 7 days of alerts that had all ended,
    and past the forward queue's bound dropped them, which ``LivepulseAlertForwardingFailing``
    watches for. The client's own reset is off: it would read before this could seek.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.brokers,
        group_id=f"{settings.app_id}-alert-forwarder",
        isolation_level="read_committed",
        auto_offset_reset="none",  # positioned by _read_from_lookback instead
        enable_auto_commit=False,
        **settings.security.client_kwargs(),
    )
    try:
        await consumer.start()
        consumer.subscribe([settings.topics.alerts], listener=_ForwarderRebalance(consumer, forwarder))
        lookback_ms = FIRST_START_LOOKBACK_RESENDS * settings.alert_resend_ms
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=1_000, max_records=500)
            except (NoOffsetForPartitionError, OffsetOutOfRangeError) as exc:
                await _read_from_lookback(consumer, exc, lookback_ms)
                continue
            for tp, messages in batches.items():
                forwarder.offer_records(((m.offset, m.value) for m in messages), tp)
            await _commit_delivered(consumer, forwarder)
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await _commit_delivered(consumer, forwarder)
        forwarder.forget(consumer.assignment())  # what is queued is read again from the commit
        with contextlib.suppress(Exception):
            await consumer.stop()


#: seconds between attempts to read the alerts topic again after a failure, at most
FEED_BACKOFF_MAX_S = 60.0


async def _keep_feeding_alerts(
    settings: Settings,
    forwarder: AlertForwarder,
    failures: Counter,
    backoff_max_s: float = FEED_BACKOFF_MAX_S,
) -> None:
    """:func:`_feed_alerts` again after any failure, with backoff (1 s doubling to ``backoff_max_s``;
    back to 1 s after a minute without one). Forwarding is optional: a refused group (a missing
    ACL), a deleted alerts topic or a broker gone must not stop the room-stats. Each failure is
    logged and counted in ``failures``; the alerts wait on their topic."""
    backoff = 1.0
    while True:
        started = time.monotonic()
        try:
            await _feed_alerts(settings, forwarder)
            return
        except Exception as exc:
            failures.inc()
            if time.monotonic() - started >= 60:
                backoff = 1.0
            log.error(
                "alert forwarding: reading %s failed (%r); room-stats go on, retrying in %.0f s",
                settings.topics.alerts,
                exc,
                backoff,
            )
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, backoff_max_s)


async def _commit_delivered(consumer: AIOKafkaConsumer, forwarder: AlertForwarder) -> None:
    """Commit the alert records delivered since the last call (a failed commit is retried later)."""
    done = forwarder.take_commit()
    if not done:
        return
    try:
        await consumer.commit(done)
    except KafkaError as exc:  # a rebalance under way, the coordinator moving: the next call commits
        log.warning("alert forwarder: could not commit delivered offsets (%r); will retry", exc)
        forwarder.retry_commit(done)


#: re-send intervals of history a first start reads: every alert still firing was written (re-sent)
#: within one, and any record older than the bound on a firing alert's endsAt (8 intervals past its
#: room's next window) has ended
FIRST_START_LOOKBACK_RESENDS = 10


class _ForwarderRebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Commit what was delivered of the partitions given up, and leave their queued alerts to the
    next owner (it reads them again from there): one partition's alerts never go out of order."""

    def __init__(self, consumer: AIOKafkaConsumer, forwarder: AlertForwarder) -> None:
        self._consumer, self._forwarder = consumer, forwarder

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await _commit_delivered(self._consumer, self._forwarder)
        self._forwarder.forget(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        pass


async def _read_from_lookback(consumer: AIOKafkaConsumer, exc: Exception, lookback_ms: int) -> None:
    """Position the alerts partitions ``exc`` names (no committed offset, or one outside the log)
    at the first record written in the last ``lookback_ms`` (the log's end if none was)."""
    named = exc.args[0] if exc.args else None
    tps = [named] if isinstance(named, TopicPartition) else list(named or ())
    tps = [tp for tp in tps if tp in consumer.assignment()]
    if not tps:
        return
    since_ms = int(time.time() * 1000) - lookback_ms
    found = await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
    for tp in tps:
        if tp not in consumer.assignment():
            # revoked while the offsets were asked for: a seek would raise, and its next owner
            # positions it from its own lookback
            continue
        at = found.get(tp)
        if at is None:  # nothing written since
            await consumer.seek_to_end(tp)
        else:
            consumer.seek(tp, at.offset)
    log.info(
        "alert forwarder: %s has no committed offset or one outside its log (%s); reading it from %d s back",
        ", ".join(f"{tp.topic}[{tp.partition}]" for tp in tps),
        type(exc).__name__,
        lookback_ms // 1000,
    )


EXIT_DATA_PLANE_FAILED = 3
EXIT_STOP_TIMED_OUT = 4


def _exit_now(code: int, why: str) -> None:
    """Leave the process at once (no cleanup that could hang), logs flushed."""
    log.critical("exiting with status %d: %s", code, why)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(code)


def _hosted_service(
    plane: DataPlane,
    settings: Settings,
    rules: Callable[[], Mapping[str, Any]],
    forwarder: AlertForwarder | None,
    shutdown_timeout_s: float,
) -> Any:
    """A mode service that starts the data plane (and alert delivery) with the worker, stops it cleanly."""

    class HostedDataPlane(mode.Service):
        failed = False
        _run: asyncio.Task[None] | None = None
        _deliver: asyncio.Task[None] | None = None
        _feed: asyncio.Task[None] | None = None

        async def on_start(self) -> None:
            await plane.start()
            plane.use_rules(rules)
            self._run = asyncio.ensure_future(plane.run())
            self._run.add_done_callback(self._on_done)
            if forwarder is not None:
                self._deliver = asyncio.ensure_future(forwarder.run())
                self._deliver.add_done_callback(self._on_done)
                self._feed = asyncio.ensure_future(
                    _keep_feeding_alerts(settings, forwarder, plane.metrics.alerts_feed_failures)
                )
                self._feed.add_done_callback(self._on_done)

        def _on_done(self, task: asyncio.Task[None]) -> None:
            if task.cancelled() or task.exception() is None:
                return
            exc = task.exception()
            assert exc is not None
            HostedDataPlane.failed = True
            log.critical("data plane failed: %r", exc, exc_info=exc)
            # Nothing past the last committed checkpoint is kept: exit for a supervisor to restart us.
            _exit_now(EXIT_DATA_PLANE_FAILED, f"data plane failed: {exc!r}")

        async def on_stop(self) -> None:
            # However the rest of the shutdown goes (a broker that is gone, a stuck faust
            # service), the process ends within the bound.
            watchdog = threading.Timer(
                shutdown_timeout_s + 5,
                _exit_now,
                (EXIT_STOP_TIMED_OUT, f"stop took longer than {shutdown_timeout_s:.0f} s"),
            )
            watchdog.daemon = True
            watchdog.start()
            for task in (self._deliver, self._feed):
                if task is not None:
                    task.cancel()
            plane.request_stop()
            try:
                async with asyncio.timeout(shutdown_timeout_s):
                    if self._run is not None and not self._run.done():
                        await asyncio.shield(self._run)
                    await plane.stop()
            except TimeoutError:
                log.error(
                    "data plane did not stop within %.0f s; its last work is not committed",
                    shutdown_timeout_s,
                )
                if self._run is not None:
                    self._run.cancel()

    return HostedDataPlane


_from_env: faust.App | None = None


def __getattr__(name: str) -> Any:
    # `faust -A streams.app worker` looks up `app`: built on first access, from the environment.
    global _from_env
    if name == "app":
        if _from_env is None:
            settings = settings_from_env()
            prepare_topics(settings)
            _from_env = create_app(settings)
        return _from_env
    raise AttributeError(name)
