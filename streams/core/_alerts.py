"""Alert transitions of the spike detector and their Alertmanager-shaped record (``live.alerts``).

:class:`AlertEvent` is what :func:`streams.core.observe` returns;
:func:`to_alertmanager` turns it into the JSON-able dict published on the
alerts topic and POSTed to Alertmanager's ``/api/v2/alerts``. Everything is
derived from event time (window bounds), never from the wall clock.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson

ALERT_SPIKE: Final = "RoomSpike"
ALERT_SURGE: Final = "RoomSurge"
ALERT_DROP: Final = "OrdersDrop"
#: the mirror of RoomSpike for metrics with two-sided rules (gauges)
ALERT_DIP: Final = "RoomDip"
FIRING: Final = "firing"
RESOLVED: Final = "resolved"
#: value/baseline at or above this (or at or below its inverse, for drops) makes an alert critical
CRITICAL_RATIO: Final = 10.0


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One alert transition (or, from :func:`streams.core.firing`, a still-firing alert).

    ``starts_at_ms`` is the start of the first window that met the rule;
    ``ends_at_ms`` is the end of the window in which the alert resolved (``None``
    while firing); ``window_end_ms`` is the end of the latest window evaluated.
    ``value``, ``baseline`` (the expected value) and ``zscore`` (the score of
    the test) are from that latest window. ``test`` names the test that fired
    and ``basis`` the baseline it compared against; both, like ``severity``, are
    fixed when the alert fires. ``severity`` is a label, and labels identify
    the alert, so it must not change while the alert lives.
    """

    room_id: str
    alertname: str
    metric: str
    severity: str
    status: str
    starts_at_ms: int
    ends_at_ms: int | None
    window_end_ms: int
    value: float
    baseline: float
    zscore: float
    test: str = ""
    basis: str = ""

    @property
    def ratio(self) -> float:
        """value / baseline (``inf`` for a rise from a zero baseline)."""
        if self.baseline > 0:
            return self.value / self.baseline
        return math.inf if self.value > 0 else 1.0

    @property
    def labels(self) -> dict[str, str]:
        return {
            "alertname": self.alertname,
            "room_id": self.room_id,
            "metric": self.metric,
            "severity": self.severity,
        }

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.labels)


def severity_for(alertname: str, value: float, baseline: float) -> str:
    """``critical`` for any surge and for a change of 10x or more either way, else ``warning``."""
    if alertname == ALERT_SURGE:
        return "critical"
    if alertname in (ALERT_DROP, ALERT_DIP):
        return "critical" if value * CRITICAL_RATIO <= baseline else "warning"
    return "critical" if value >= CRITICAL_RATIO * baseline else "warning"


def fingerprint(labels: Mapping[str, str]) -> str:
    """Deterministic identity of an alert: first 16 hex digits of sha256 over the sorted labels."""
    canonical = orjson.dumps(dict(labels), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:16]


def iso_utc(ms: int) -> str:
    """RFC 3339 UTC timestamp with milliseconds, as Alertmanager expects."""
    seconds, millis = divmod(ms, 1_000)
    return f"{datetime.fromtimestamp(seconds, UTC):%Y-%m-%dT%H:%M:%S}.{millis:03d}Z"


def _num(x: float) -> str:
    if math.isinf(x):
        return "inf"
    text = f"{x:.3f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def shown(text: str) -> str:
    """``text`` as alert text may show it: every non-printable character escaped (``\\x1b``,
    ``\\u202e``), so an id cannot forge lines, terminal escapes or reversed text downstream."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _summary(event: AlertEvent) -> str:
    value, base, room, metric = _num(event.value), _num(event.baseline), shown(event.room_id), event.metric
    if event.alertname == ALERT_SURGE:
        return f"{metric} in new room {room} surged to {value} before it had a baseline"
    if event.alertname == ALERT_DROP:
        head = f"{metric} in room {room} fell to {value} from an expected {base} while viewers stayed"
    elif event.alertname == ALERT_DIP:
        head = f"{metric} in room {room} fell to {value}, {_num(event.ratio)}x the expected {base}"
    else:
        head = f"{metric} in room {room} spiked to {value}, {_num(event.ratio)}x the expected {base}"
    if not event.test:
        return head
    return f"{head} ({event.basis}); {event.test} score {_num(event.zscore)}"


def to_alertmanager(event: AlertEvent, *, expires_after_ms: int | None = None) -> dict[str, Any]:
    """The ``live.alerts`` record: Alertmanager API v2 alert plus ``status`` and ``fingerprint``.

    Annotations are strings, as Alertmanager requires. A resolved alert carries
    ``endsAt`` = end of the window where it resolved. A firing alert omits
    ``endsAt`` (Alertmanager then expires it after its ``resolve_timeout`` unless
    re-sent) unless ``expires_after_ms`` is given: then ``endsAt`` = end of the
    latest evaluated window + that much, the Prometheus convention (it uses
    4 x the re-send interval) so a stalled sender's alerts expire on their own.
    Alertmanager ignores ``status`` and ``fingerprint`` on POST; strip them if a
    stricter receiver objects.
    """
    record: dict[str, Any] = {
        "labels": event.labels,
        "annotations": {
            "summary": _summary(event),
            "value": _num(event.value),
            "baseline": _num(event.baseline),
            "ratio": _num(event.ratio),
            "zscore": _num(event.zscore),
            "expected": _num(event.baseline),
            "score": _num(event.zscore),
            "test": event.test or "n/a",
            "baseline_model": event.basis or "n/a",
        },
        "startsAt": iso_utc(event.starts_at_ms),
        "status": event.status,
        "fingerprint": event.fingerprint,
    }
    if event.ends_at_ms is not None:
        record["endsAt"] = iso_utc(event.ends_at_ms)
    elif expires_after_ms is not None:
        record["endsAt"] = iso_utc(event.window_end_ms + expires_after_ms)
    return record
