"""Forwarding alerts to Alertmanager: a bounded queue drained in batches, with retries.

The alerts topic is the system of record; this is a delivery side channel.
Nothing is dropped silently: when the queue is full the oldest alert goes and
``livepulse_alerts_forward_dropped_total`` counts it; a batch that still fails
after every retry is logged and counted in ``livepulse_alerts_forward_failed_total``.
A firing alert is re-sent at an interval anyway, so one lost delivery heals.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp
import orjson
from prometheus_client import Counter

from ._redact import redact_url

log = logging.getLogger(__name__)

#: fields of Alertmanager's v2 ``postableAlert``; our records carry more (status, fingerprint)
POSTABLE_FIELDS = ("labels", "annotations", "startsAt", "endsAt", "generatorURL")


def alert_from_record(raw: bytes | None) -> dict[str, Any] | None:
    """The alert in one record of the alerts topic, or None if it is not one (null, not JSON, not an
    object with string ``labels``, non-string annotations or times): anyone can write to a topic."""
    if raw is None:
        return None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict:
        return None
    labels, annotations = obj.get("labels"), obj.get("annotations", {})
    if type(labels) is not dict or not labels or type(annotations) is not dict:
        return None
    for mapping in (labels, annotations):
        if not all(type(v) is str for v in mapping.values()):
            return None
    if any(k in obj and type(obj[k]) is not str for k in ("startsAt", "endsAt", "generatorURL")):
        return None
    return obj


class AlertForwarder:
    """Posts alerts to ``<url>/api/v2/alerts``; ``offer`` never blocks, ``run`` delivers."""

    def __init__(
        self,
        url: str,
        *,
        sent: Counter,
        failed: Counter,
        dropped: Counter,
        skipped: Counter,
        max_queue: int = 10_000,
        max_batch: int = 500,
        attempts: int = 5,
        backoff_s: float = 0.5,
        timeout_s: float = 10.0,
    ) -> None:
        self.endpoint = url.rstrip("/") + "/api/v2/alerts"
        #: the endpoint as logs may show it (a credential in the URL masked)
        self.shown_endpoint = redact_url(self.endpoint)
        self._queue: deque[dict[str, Any]] = deque()
        self._max_queue = max_queue
        self._max_batch = max_batch
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._wakeup = asyncio.Event()
        self._sent, self._failed, self._dropped, self._skipped = sent, failed, dropped, skipped

    def offer_records(self, raws: Iterable[bytes | None]) -> None:
        """Queue the alerts among raw records of the alerts topic; anything else is counted, skipped."""
        alerts = []
        for raw in raws:
            alert = alert_from_record(raw)
            if alert is None:
                self._skipped.inc()
                log.warning("skipped a record of the alerts topic, not an alert: %r", (raw or b"")[:120])
            else:
                alerts.append(alert)
        if alerts:
            self.offer(alerts)

    def offer(self, alerts: Iterable[Mapping[str, Any]]) -> None:
        """Queue alerts for delivery, dropping (and counting) the oldest when full."""
        for alert in alerts:
            if len(self._queue) >= self._max_queue:
                self._queue.popleft()
                self._dropped.inc()
                log.warning("alert forward queue full (%d): dropped the oldest alert", self._max_queue)
            self._queue.append({k: alert[k] for k in POSTABLE_FIELDS if k in alert})
        self._wakeup.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def run(self) -> None:
        """Deliver until cancelled."""
        # The raw endpoint: the process's log redaction (streams._redact) masks any credential in it.
        log.info("forwarding alerts to %s", self.endpoint)
        async with aiohttp.ClientSession(timeout=self._timeout) as session:
            while True:
                if not self._queue:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                batch = [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]
                await self._deliver(session, batch)

    async def _deliver(self, session: aiohttp.ClientSession, batch: list[dict[str, Any]]) -> None:
        delay = self._backoff_s
        for attempt in range(1, self._attempts + 1):
            try:
                async with session.post(self.endpoint, json=batch) as response:
                    if response.status < 300:
                        self._sent.inc(len(batch))
                        return
                    error = f"HTTP {response.status}: {(await response.text())[:200]}"
                    if 400 <= response.status < 500:
                        break  # Alertmanager rejected the payload: retrying will not help
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = repr(exc)
            if attempt < self._attempts:
                log.warning("alertmanager delivery attempt %d failed (%s); retrying", attempt, error)
                await asyncio.sleep(delay)
                delay *= 2
        self._failed.inc(len(batch))
        log.error("could not deliver %d alerts to %s: %s", len(batch), self.shown_endpoint, error)
