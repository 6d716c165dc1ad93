"""Forwarding alerts to Alertmanager: a bounded queue drained in batches, with retries.

Each batch goes to every Alertmanager listed (an HA cluster's replicas share silences and
notifications, not alerts: a sender must reach each, as Prometheus does; behind one
load-balanced name each re-send would reach one replica, and the others would let the alert
expire and notify a false "resolved").

The alerts topic is the system of record; this is a delivery side channel.
Nothing is dropped silently: when the queue is full the oldest alert goes and
``livepulse_alerts_forward_dropped_total`` counts it; a batch that still fails
after every retry is logged and counted in ``livepulse_alerts_forward_failed_total``.
A firing alert is re-sent at an interval anyway, so one lost delivery heals.

At least once: each queued alert keeps the partition and offset of its record,
and :meth:`AlertForwarder.take_commit` gives, per partition, the offset below
which every record was delivered (or given up on): the feeding consumer commits
only that. A restarted worker's queue is lost, and the records it held are read
again; a partition moved to another worker leaves its queued alerts behind
(:meth:`AlertForwarder.forget`), so the two never deliver one partition's
alerts out of order.
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


def alertmanager_endpoints(urls: str) -> list[str]:
    """``<url>/api/v2/alerts`` for each of the comma-separated ``urls``."""
    return [url.strip().rstrip("/") + "/api/v2/alerts" for url in urls.split(",") if url.strip()]


class AlertForwarder:
    """Posts alerts to ``<url>/api/v2/alerts`` of each Alertmanager in ``urls`` (comma-separated);
    ``offer`` never blocks, ``run`` delivers."""

    def __init__(
        self,
        urls: str,
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
        self.endpoints = alertmanager_endpoints(urls)
        if not self.endpoints:
            raise ValueError("no Alertmanager URL given")
        #: (alert, source, offset): source is the record's partition (None: not from a record)
        self._queue: deque[tuple[dict[str, Any], Any, int]] = deque()
        #: the batch being delivered
        self._inflight: list[tuple[dict[str, Any], Any, int]] = []
        #: source -> the offset after the newest record offered; and what take_commit last gave
        self._offered: dict[Any, int] = {}
        self._committed: dict[Any, int] = {}
        self._max_queue = max_queue
        self._max_batch = max_batch
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._wakeup = asyncio.Event()
        self._sent, self._failed, self._dropped, self._skipped = sent, failed, dropped, skipped

    def offer_records(self, records: Iterable[tuple[int, bytes | None]], source: Any = None) -> None:
        """Queue the alerts among ``(offset, raw)`` records of the alerts topic, read in offset
        order from partition ``source``; anything else is counted and skipped."""
        alerts = []
        for offset, raw in records:
            alert = alert_from_record(raw)
            if alert is None:
                self._skipped.inc()
                log.warning("skipped a record of the alerts topic, not an alert: %r", (raw or b"")[:120])
            else:
                alerts.append((alert, offset))
            if source is not None:
                self._offered[source] = offset + 1
        if alerts:
            self.offer(alerts, source)

    def offer(self, alerts: Iterable[tuple[Mapping[str, Any], int]], source: Any = None) -> None:
        """Queue ``(alert, offset)`` pairs for delivery, dropping (and counting) the oldest when full."""
        for alert, offset in alerts:
            if len(self._queue) >= self._max_queue:
                self._queue.popleft()
                self._dropped.inc()
                log.warning("alert forward queue full (%d): dropped the oldest alert", self._max_queue)
            self._queue.append(({k: alert[k] for k in POSTABLE_FIELDS if k in alert}, source, offset))
        self._wakeup.set()

    def take_commit(self) -> dict[Any, int]:
        """Per source, the offset below which every record was delivered, given up on or skipped,
        where it moved since the last call: what the feeding consumer may commit."""
        pending: dict[Any, int] = {}
        for _, source, offset in (*self._inflight, *self._queue):
            if source is not None and offset < pending.get(source, offset + 1):
                pending[source] = offset
        moved = {}
        for source, offered in self._offered.items():
            done = pending.get(source, offered)
            if done > self._committed.get(source, -1):
                moved[source] = self._committed[source] = done
        return moved

    def retry_commit(self, offsets: Mapping[Any, int]) -> None:
        """``offsets`` from :meth:`take_commit` were not committed: give them again next time."""
        for source, offset in offsets.items():
            if self._committed.get(source) == offset:
                del self._committed[source]

    def forget(self, sources: Iterable[Any]) -> None:
        """Leave the queued alerts of ``sources`` (partitions given up) to their next reader."""
        gone = set(sources)
        if gone:
            self._queue = deque(entry for entry in self._queue if entry[1] not in gone)
            self._inflight = [entry for entry in self._inflight if entry[1] not in gone]
            for source in gone:
                self._offered.pop(source, None)
                self._committed.pop(source, None)

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def run(self) -> None:
        """Deliver until cancelled."""
        # The raw endpoints: the process's log redaction (streams._redact) masks any credential in them.
        log.info("forwarding alerts to %s", ", ".join(self.endpoints))
        async with aiohttp.ClientSession(timeout=self._timeout) as session:
            while True:
                if not self._queue:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                self._inflight = [
                    self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))
                ]
                try:
                    await self._deliver(session)
                finally:
                    self._inflight = []

    async def _deliver(self, session: aiohttp.ClientSession) -> None:
        """Post the batch in flight to every Alertmanager, side by side; done when each took it or
        was given up on. Once one took it, the others get no further attempt: an Alertmanager
        down (a timeout per attempt) would otherwise hold every batch, for the others too, for
        all its retries; the re-send of firing alerts brings it up to date once it is back."""
        taken = asyncio.Event()
        await asyncio.gather(*(self._deliver_to(session, endpoint, taken) for endpoint in self.endpoints))

    async def _deliver_to(self, session: aiohttp.ClientSession, endpoint: str, taken: asyncio.Event) -> None:
        """Post the batch in flight to one Alertmanager, with retries until it or another one
        (``taken``) took it. Each attempt posts what is left of it: alerts of a partition given up
        meanwhile (``forget``) are its next owner's to send, in order. Counts alerts sent (or
        failed) per Alertmanager."""
        delay = self._backoff_s
        shown = redact_url(endpoint)  # as logs may show it (a credential in the URL masked)
        batch: list[dict[str, Any]] = []
        for attempt in range(1, self._attempts + 1):
            batch = [alert for alert, _, _ in self._inflight]
            if not batch:
                return
            try:
                async with session.post(endpoint, json=batch) as response:
                    if response.status < 300:
                        self._sent.inc(len(batch))
                        taken.set()
                        return
                    body = (await response.read())[:200].decode(errors="replace")
                    error = f"HTTP {response.status}: {body}"
                    if 400 <= response.status < 500:
                        break  # Alertmanager rejected the payload: retrying will not help
            except Exception as exc:  # whatever a proxy in front answers: a failed attempt, not a dead worker
                error = repr(exc)
            if attempt < self._attempts and not taken.is_set():
                log.warning(
                    "alertmanager delivery attempt %d to %s failed (%s); retrying", attempt, shown, error
                )
                try:  # the backoff, cut short when another Alertmanager takes the batch
                    async with asyncio.timeout(delay):
                        await taken.wait()
                except TimeoutError:
                    pass
                delay *= 2
                if not taken.is_set():
                    continue
            break
        self._failed.inc(len(batch))
        log.error("could not deliver %d alerts to %s: %s", len(batch), shown, error)
