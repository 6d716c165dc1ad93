"""Small measurement helpers: rates from samples, percentiles, Prometheus histograms, event latencies."""

from __future__ import annotations

import bisect
import math
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .deployment import Sample
from .traffic import Message

WindowKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Rate:
    """Messages consumed between two samples, per CPU-second of the process and per wall second."""

    messages: float
    cpu_s: float
    wall_s: float

    @property
    def per_cpu_s(self) -> float:
        return self.messages / self.cpu_s if self.cpu_s > 0 else math.nan

    @property
    def per_s(self) -> float:
        return self.messages / self.wall_s if self.wall_s > 0 else math.nan


def catch_up_rate(samples: Sequence[Sample], total: float) -> Rate:
    """From the last sample before consumption started (or the first): messages per CPU-second up
    to the first sample that saw the last window closed (the work of the whole backlog, the windows
    closed by wall time after its end included), per wall second up to the first that saw the
    ``total`` messages of the backlog consumed (the read rate; the last windows wait for wall time,
    not for the worker, and the worker's own topics go on trickling into the consumed count)."""
    idle = [s for s in samples if s.consumed == 0]
    start = idle[-1] if idle else samples[0]
    read = next(s for s in samples if s.consumed >= total)
    windows = samples[-1].windows
    done = next(s for s in samples if s.consumed >= total and s.windows >= windows)
    return Rate(read.consumed - start.consumed, done.cpu_s - start.cpu_s, read.t - start.t)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (``q`` in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True, slots=True)
class Histogram:
    count: float
    total: float
    #: upper bound of the bucket holding the 99th percentile
    p99_bound: float
    max_bound: float

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan


def histogram(metrics: Mapping[str, float], name: str) -> Histogram:
    """A Prometheus histogram from parsed /metrics (see ``deployment.parse_metrics``)."""
    buckets = []
    for key, value in metrics.items():
        if key.startswith(name + "_bucket{") and 'le="' in key:
            le = key.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((math.inf if le == "+Inf" else float(le), value))
    buckets.sort()
    count = metrics.get(name + "_count", 0.0)
    p99 = highest = math.nan
    for bound, cumulative in buckets:
        if math.isnan(p99) and count and cumulative >= 0.99 * count:
            p99 = bound
        if math.isnan(highest) and count and cumulative >= count:
            highest = bound
    return Histogram(count, metrics.get(name + "_sum", 0.0), p99, highest)


class SenderLag:
    """How late the real-time sender put out the messages of each moment of event time, from
    ``SendStats.lags``: on a shared machine the load generator falls behind the clock, and that
    delay is in every latency measured from event time although the worker had no part in it."""

    def __init__(self, lags: Sequence[tuple[int, float]]) -> None:
        self._ends = [end for end, _ in lags]
        self._lags = [lag for _, lag in lags]

    def at(self, ts_ms: int) -> float:
        """Seconds late the messages of event time ``ts_ms`` went out (0 if never recorded)."""
        i = bisect.bisect_right(self._ends, ts_ms)  # the first quantum that ends after ts_ms
        if i < len(self._lags):
            return self._lags[i]
        return self._lags[-1] if self._lags else 0.0

    def values(self) -> list[float]:
        return sorted(self._lags)


def event_latencies(
    messages: Iterable[Message],
    arrivals: Mapping[WindowKey, float],
    window_ms: int,
    grace_ms: int,
    lag: SenderLag | None = None,
) -> tuple[array[float], int]:
    """Seconds from each on-time event's event time to the arrival of its room-stats window, sorted
    (an array of doubles: a live phase is millions of them).

    Late events (older than their partition's newest event time minus grace)
    are left out: they are counted, not windowed. Returns the latencies and
    how many events had no window arrive. With ``lag``, each latency is less what the sender's
    own lag added: how late it sent the messages of event time window end + grace, the first that
    can move the watermark past the window.
    """
    [(out, missing)] = event_latencies_each(messages, [(arrivals, lag)], window_ms, grace_ms)
    return out, missing


def event_latencies_each(
    messages: Iterable[Message],
    targets: Sequence[tuple[Mapping[WindowKey, float], SenderLag | None]],
    window_ms: int,
    grace_ms: int,
) -> list[tuple[array[float], int]]:
    """``event_latencies`` for each ``(arrivals, lag)`` of ``targets``, in one pass over the messages
    (a live phase is millions of them, each decoded from its payload as it is read)."""
    newest: dict[int, int] = {}
    outs: list[array[float]] = [array("d") for _ in targets]
    missing = [0] * len(targets)
    # each distinct mapping is looked up once per event (they may be on disk: ``loadtest._packed``)
    maps = list({id(arrivals): arrivals for arrivals, _ in targets}.values())
    slot = [next(j for j, m in enumerate(maps) if m is arrivals) for arrivals, _ in targets]
    recent: dict[WindowKey, list[float | None]] = {}
    for _source, part, _key, _raw, ts, ev in messages:
        if ev is None:
            continue
        top = newest.get(part, ts)
        if ts > top:
            top = ts
        newest[part] = top
        if ts < top - grace_ms:
            continue
        ws = ts - ts % window_ms
        key = (ev.room_id, ws)
        found = recent.get(key)
        if found is None:
            if len(recent) >= 50_000:  # the windows of the last few seconds are the ones asked for
                recent.clear()
            found = recent[key] = [m.get(key) for m in maps]
        for i, (_, lag) in enumerate(targets):
            arrival = found[slot[i]]
            if arrival is None:
                missing[i] += 1
            elif lag is None:
                outs[i].append(arrival - ts / 1000)
            else:
                outs[i].append(arrival - ts / 1000 - lag.at(ws + window_ms + grace_ms))
    for i, out in enumerate(outs):
        outs[i] = array("d", sorted(out))  # one list of floats at a time
    return list(zip(outs, missing, strict=True))
