"""``livepulse loadtest produce``: write the traffic model to the real broker, and its ground truth to a file.

    livepulse loadtest produce --events 1000000 --rooms 100000 --scenario all --truth truth.json.gz

The traffic is generated first (pre-encoded payloads, partitions computed with
murmur2 as the Java client does), then sent with aiokafka ``create_batch`` /
``send_batch``: one record batch per topic-partition filled until it is full,
no per-message ``await``. ``--rate`` caps messages per second (0: as fast as
the broker takes them); ``--realtime`` sends each event when the wall clock
reaches its event time (event time starts now). A progress line shows while it
runs and a summary at the end; the send rate is what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from streams.settings import Topics, settings_from_env

from . import _truth, scenarios
from .traffic import MessageLog, Phase, TrafficConfig, TrafficModel, no_gc

_SECURITY_ENV = frozenset(
    f"LIVEPULSE_{name}"
    for name in (
        "SECURITY_PROTOCOL",
        "SASL_MECHANISM",
        "SASL_USERNAME",
        "SASL_PASSWORD",
        "SSL_CAFILE",
        "SSL_CERTFILE",
        "SSL_KEYFILE",
    )
)
MAX_BATCH_BYTES = 1024 * 1024
MAX_IN_FLIGHT = 48
REALTIME_QUANTUM_MS = 50


@dataclass(frozen=True, slots=True)
class SendStats:
    messages: int
    bytes: int
    #: from the first message's release (real time: once the clock reached its event time)
    seconds: float
    #: real time only: the most the sender fell behind event time (generation ran late, or a stall)
    behind_s: float = 0.0
    #: real time only: (end of a quantum of event time in ms, seconds after that end its messages
    #: went out) for each quantum sent, in order; 0 when on time (see ``_measure.SenderLag``)
    lags: list[tuple[int, float]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


class Progress:
    """A progress line on stderr: rewritten in place on a terminal, a line every few seconds otherwise."""

    def __init__(self, label: str, total: int, *, every_s: float | None = None) -> None:
        self.label, self.total = label, total
        self.tty = sys.stderr.isatty()
        self.every_s = every_s if every_s is not None else (0.25 if self.tty else 5.0)
        self.started = time.perf_counter()
        self._last = 0.0

    def __call__(self, done: int, *, final: bool = False) -> None:
        now = time.perf_counter()
        if not final and now - self._last < self.every_s:
            return
        self._last = now
        elapsed = now - self.started
        pct = 100 * done / self.total if self.total else 100.0
        width = 30
        bar = "#" * int(width * pct / 100)
        line = (
            f"{self.label} [{bar:<{width}}] {done:>11,}/{self.total:,} {pct:5.1f}%"
            f"  {done / elapsed if elapsed else 0:>9,.0f}/s  {elapsed:6.1f}s"
        )
        end = "\n" if final or not self.tty else ""
        print(("\r" if self.tty else "") + line, end=end, file=sys.stderr, flush=True)


async def ensure_topics(
    bootstrap: str, names: Sequence[str], partitions: int, *, client: Mapping[str, Any] | None = None
) -> None:
    """Create the input topics (``partitions`` each) unless they exist; wait for their leaders.

    ``client``: security keyword arguments for aiokafka (``KafkaSecurity.client_kwargs``)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **(client or {}))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(n, partitions, 1) for n in names if n not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(missing)
        for _ in range(200):
            described = await admin.describe_topics(list(names))
            if all(
                t["error_code"] == 0
                and len(t["partitions"]) == partitions
                and all(p["leader"] >= 0 for p in t["partitions"])
                for t in described
            ):
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"topics {names} have no leaders")
    finally:
        await admin.close()


async def send(
    bootstrap: str,
    topics: Sequence[str],
    messages: MessageLog,
    *,
    rate: float = 0.0,
    realtime: bool = False,
    progress: Callable[..., None] | None = None,
    client: Mapping[str, Any] | None = None,
) -> SendStats:
    """Send ``messages`` in order (per partition), ``topics[source]`` being each source's topic.

    ``rate`` > 0 caps messages per second; ``realtime`` holds each message until
    the wall clock reaches the newest event time seen so far.
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks=1,
        linger_ms=0,
        max_batch_size=MAX_BATCH_BYTES,
        max_request_size=8 * MAX_BATCH_BYTES,
        request_timeout_ms=60_000,
        **(client or {}),
    )
    await producer.start()
    builders: dict[tuple[int, int], Any] = {}
    in_flight: deque[asyncio.Future[object]] = deque()
    sent_bytes = 0

    async def ship(slot: tuple[int, int], builder: Any) -> None:
        in_flight.append(await producer.send_batch(builder, topics[slot[0]], partition=slot[1]))
        while len(in_flight) > MAX_IN_FLIGHT:
            await in_flight.popleft()

    async def ship_all() -> None:
        for slot, builder in list(builders.items()):
            if builder.record_count():
                await ship(slot, builder)
        builders.clear()

    started = time.perf_counter()
    newest_ts = 0
    behind_s = 0.0
    lags: list[tuple[int, float]] = []
    try:
        with no_gc():
            for i, (source, part, key, raw, ts, valid) in enumerate(messages.wire()):
                if realtime and valid and ts >= newest_ts + REALTIME_QUANTUM_MS:
                    # Entering a new quantum of event time: what came before goes out once the wall
                    # clock has reached it (like a producer lingering up to a quantum).
                    first = not newest_ts
                    newest_ts = ts - ts % REALTIME_QUANTUM_MS
                    ahead_s = newest_ts / 1000 - time.time()
                    if ahead_s > 0:
                        await asyncio.sleep(ahead_s)
                    else:
                        behind_s = max(behind_s, -ahead_s)
                    if first:  # the wait for the first event's time was no sending
                        started = time.perf_counter()
                    if newest_ts and builders:  # what came before goes out now: how late?
                        lags.append((newest_ts, max(0.0, time.time() - newest_ts / 1000)))
                    await ship_all()
                elif rate and i % 512 == 0:
                    ahead_s = i / rate - (time.perf_counter() - started)
                    if ahead_s > 0.002:
                        await ship_all()
                        await asyncio.sleep(ahead_s)
                slot = (source, part)
                builder = builders.get(slot)
                if builder is None:
                    builder = builders[slot] = producer.create_batch()
                if builder.append(key=key, value=raw, timestamp=ts) is None:
                    await ship(slot, builder)
                    builder = builders[slot] = producer.create_batch()
                    builder.append(key=key, value=raw, timestamp=ts)
                sent_bytes += len(raw) + len(key)
                if progress is not None and i % 4096 == 0:
                    progress(i)
            if realtime and newest_ts:
                end_ms = newest_ts + REALTIME_QUANTUM_MS
                lags.append((end_ms, max(0.0, time.time() - end_ms / 1000)))
            await ship_all()
            while in_flight:
                await in_flight.popleft()
            seconds = time.perf_counter() - started
    finally:
        await producer.stop()
    if progress is not None:
        progress(len(messages), final=True)
    return SendStats(len(messages), sent_bytes, seconds, behind_s, lags)


def input_topics(topics: Topics) -> tuple[str, str, str]:
    """Topic per source index (0 viewer, 1 order, 2 gift)."""
    return (topics.viewer, topics.order, topics.gift)


def generate(
    config: TrafficConfig,
    names: Sequence[str],
    *,
    seed: int,
    events: int,
    window_ms: int,
    grace_ms: int,
    realtime: bool,
    event_rate: float | None = None,
    start_ms: int | None = None,
) -> tuple[TrafficModel, Phase]:
    """One phase of about ``events`` base events with the named scenarios placed on it.

    The phase spans at least what its spikes need (``scenarios.min_span_s``);
    event time ends now (a backlog) or starts now (real time) unless
    ``start_ms`` is given.
    """
    span_s = max(scenarios.min_span_s(names, window_ms), 10.0)
    rate = event_rate or max(events / span_s, 1.0)
    span_s = max(span_s, events / rate)
    config = dataclasses.replace(config, rate_per_s=rate)
    model = TrafficModel(config, seed=seed)
    now_ms = int(time.time() * 1000)
    if start_ms is None:
        start_ms = now_ms + 1_000 if realtime else now_ms - int(span_s * 1000)
    built = scenarios.build(names, span_s=span_s, window_ms=window_ms, grace_ms=grace_ms)
    with no_gc():
        phase = model.phase(start_ms, span_s, built, realtime=realtime)
    return model, phase


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="livepulse loadtest produce", description=__doc__.split("\n\n")[0])
    p.add_argument("--brokers", default=os.environ.get("LIVEPULSE_BROKERS", "127.0.0.1:19092"))
    p.add_argument("--events", type=int, default=1_000_000, help="base events (scenarios add their own)")
    p.add_argument("--rooms", type=int, default=10_000)
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--scenario", default="all", help="comma-separated: " + ",".join(scenarios.NAMES))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rate", type=float, default=0, help="messages/s to send (0: as fast as possible)")
    p.add_argument("--realtime", action="store_true", help="event time = wall time, sent as it happens")
    p.add_argument(
        "--event-rate", type=float, help="events per second of event time (default: fits the span)"
    )
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--window-ms", type=int, default=10_000)
    p.add_argument("--grace-ms", type=int, default=2_000)
    p.add_argument("--topic-prefix", default="live", help="topics <prefix>.viewer|order|gift")
    p.add_argument("--truth", type=Path, default=Path("loadtest/out/truth.json.gz"), help="ground truth file")
    p.add_argument("--no-truth", action="store_true", help="skip the ground truth (faster)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    names = scenarios.parse(args.scenario)
    config = TrafficConfig(rooms=args.rooms, users=args.users, partitions=args.partitions)
    t0 = time.perf_counter()
    _, phase = generate(
        config,
        names,
        seed=args.seed,
        events=args.events,
        window_ms=args.window_ms,
        grace_ms=args.grace_ms,
        realtime=args.realtime,
        event_rate=args.event_rate,
    )
    gen_s = time.perf_counter() - t0
    span_s = (phase.end_ms - phase.start_ms) / 1000
    print(
        f"generated {len(phase.messages):,} messages ({phase.events:,} events, "
        f"{sum(phase.malformed.values()):,} malformed) over {span_s:,.0f} s of event time in {gen_s:.1f} s",
        file=sys.stderr,
    )
    for inj in phase.injections:
        print(
            f"  {inj.scenario:<11} room={inj.room_id:<24} "
            f"at +{(inj.start_ms - phase.start_ms) / 1000:.0f} s  {inj.detail}",
            file=sys.stderr,
        )
    p = args.topic_prefix
    topics = (f"{p}.viewer", f"{p}.order", f"{p}.gift")
    # the worker's LIVEPULSE_SECURITY_PROTOCOL, _SASL_*, _SSL_* settings (SASL_SSL brokers)
    client = settings_from_env(
        {k: v for k, v in os.environ.items() if k in _SECURITY_ENV}
    ).security.client_kwargs()
    asyncio.run(ensure_topics(args.brokers, topics, args.partitions, client=client))
    stats = asyncio.run(
        send(
            args.brokers,
            topics,
            phase.messages,
            rate=args.rate,
            realtime=args.realtime,
            progress=Progress("produce", len(phase.messages)),
            client=client,
        )
    )
    print(
        f"sent {stats.messages:,} messages, {stats.bytes / 1e6:,.1f} MB in {stats.seconds:.2f} s: "
        f"{stats.rate:,.0f} messages/s ({stats.bytes / 1e6 / stats.seconds:,.1f} MB/s) to {args.brokers}",
        file=sys.stderr,
    )
    if not args.no_truth:
        t0 = time.perf_counter()
        truth = _truth.compute(
            [phase], partitions=args.partitions, window_ms=args.window_ms, grace_ms=args.grace_ms
        )
        _truth.write(truth, args.truth, {"topics": list(topics), "seed": args.seed})
        print(
            f"ground truth: {len(truth.windows):,} windows, "
            f"{len(truth.expected_alerts()):,} expected alerts, "
            f"{len(truth.injections)} injections -> {args.truth} ({time.perf_counter() - t0:.1f} s)",
            file=sys.stderr,
        )
    return 0
