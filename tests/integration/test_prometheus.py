"""A real Prometheus scraping a real worker with the project's rules and dashboards.

Traffic flows; then a flood of malformed messages makes LivepulseDeadLetterRatioHigh go
pending and clear once the flood has left the rate window; then the worker stops, the worker
alerts go pending, and clear when a replacement worker (new address, as a rescheduled pod)
takes over. Every Grafana panel's query must parse and return data while the series exist.
Alerts with ``for:`` of minutes are only seen pending here; promtool's unit tests cover firing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.dashboards import panel_queries
from loadtest.traffic import TrafficConfig
from schemas import Event, ViewerEvent
from tests.integration.prometheus import RULES, Prometheus, running_prometheus
from tests.integration.workers import (
    Deployment,
    Worker,
    eventually,
    free_port,
    model_events,
    produce,
    produce_raw,
)

pytestmark = pytest.mark.integration

RATE_PER_S = 100


def live_traffic(stop: asyncio.Event) -> Iterator[tuple[str, Event]]:
    """Valid events with event time tracking the wall clock (paced by the producer), until ``stop``."""
    config = TrafficConfig(
        rooms=30, users=300, rate_per_s=RATE_PER_S, diurnal_amplitude=0.0, disorder_share=1.0, disorder_ms=300
    )
    for pair in model_events(config, seed=7, start_ms=int(time.time() * 1000)):
        if stop.is_set():
            return
        yield pair


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 150) -> None:
    await eventually(condition, what, timeout_s=timeout_s)


def states(prom: Prometheus, alertname: str, **labels: str) -> set[str]:
    return {
        a["state"] for a in prom.alerts(alertname) if all(a["labels"].get(k) == v for k, v in labels.items())
    }


def recorded_series() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["record"] for group in groups for rule in group["rules"] if "record" in rule]


def has_data(prom: Prometheus, expr: str) -> bool:
    return bool(prom.query(expr))


async def test_prometheus_scrapes_the_worker_and_the_alerts_follow_faults(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    deployment = Deployment(
        kafka_bootstrap, partitions=2, window_ms=2_000, extra_env={"LIVEPULSE_BUCKET_MS": "500"}
    )
    topics = deployment.topics
    worker = Worker(deployment, tmp_path, "prom-a")
    stop_traffic = asyncio.Event()
    sender: asyncio.Task[Any] | None = None
    try:
        await worker.wait_ready()
        with running_prometheus(tmp_path / "prometheus", free_port(), [f"127.0.0.1:{worker.port}"]) as prom:
            sender = asyncio.create_task(
                produce(
                    kafka_bootstrap,
                    topics,
                    live_traffic(stop_traffic),
                    partitions=deployment.partitions,
                    pace_per_s=RATE_PER_S,
                )
            )
            await until(lambda: has_data(prom, 'up{job="livepulse"} == 1'), "the worker is scraped")
            await until(
                lambda: has_data(prom, "livepulse:events_applied:rate1m > 0"), "applied events/s recorded"
            )
            assert has_data(prom, "livepulse_build_info == 1")
            assert has_data(prom, "process_resident_memory_bytes")
            assert not prom.query('{__name__=~"livepulse_.+_created"}'), "no _created series"

            # A few events far behind the watermark: counted late, giving the late-ratio series.
            # Every task has a watermark first (none while a task's first events are held).
            await until(
                lambda: has_data(
                    prom, f"count(livepulse_watermark_delay_seconds) == {deployment.partitions}"
                ),
                "every task has a watermark",
            )
            stale_ms = int(time.time() * 1000) - 60_000
            late = [("viewer", ViewerEvent("join", f"room-{i}", f"late-{i}", stale_ms)) for i in range(20)]
            await produce(kafka_bootstrap, topics, late, partitions=deployment.partitions)
            await until(lambda: has_data(prom, "livepulse:events_late:ratio_rate1m"), "late ratio recorded")

            # Fault 1: a flood of malformed messages on the viewer topic. A counter series born
            # with the flood's total would show no increase to rate(), so a trickle comes first.
            bad = (b"room-x", b"{not json")
            await produce_raw(kafka_bootstrap, topics.viewer, [bad] * 5)
            invalid = f'livepulse_events_invalid_total{{reason="invalid_json",topic="{topics.viewer}"}}'
            await until(lambda: has_data(prom, invalid), "the dead-letter counter is scraped")
            await produce_raw(kafka_bootstrap, topics.viewer, [bad] * 3_000)
            dlq = "LivepulseDeadLetterRatioHigh"
            await until(
                lambda: bool(states(prom, dlq, topic=topics.viewer) & {"pending", "firing"}),
                f"{dlq} pending for {topics.viewer}",
            )
            assert has_data(
                prom, f'livepulse_events_invalid_total{{reason="invalid_json",topic="{topics.viewer}"}}'
            )

            # While every series exists: each dashboard panel's query parses and returns data.
            missing = [(board, title, expr) for board, title, expr in panel_queries() if not prom.query(expr)]
            assert not missing, f"panels without data: {missing}"
            # ... and so does every recording rule.
            missing_records = [name for name in recorded_series() if not prom.query(name)]
            assert not missing_records, f"recording rules without data: {missing_records}"
            assert not prom.rule_errors()

            await until(lambda: not states(prom, dlq), f"{dlq} cleared once the flood left the window")

            # Fault 2: the worker stops; nothing processes the partitions.
            assert worker.stop() == 0
            await until(
                lambda: "pending" in states(prom, "LivepulseWorkerDown"), "LivepulseWorkerDown pending"
            )
            await until(
                lambda: "pending" in states(prom, "LivepulseNoPartitionsAssigned"),
                "LivepulseNoPartitionsAssigned pending",
            )

            # A replacement worker at a new address (a rescheduled pod) takes over; the alerts clear.
            worker = Worker(deployment, tmp_path, "prom-b")
            await worker.wait_ready()
            prom.set_targets([f"127.0.0.1:{worker.port}"])
            await until(lambda: not states(prom, "LivepulseWorkerDown"), "LivepulseWorkerDown cleared")
            await until(
                lambda: not states(prom, "LivepulseNoPartitionsAssigned"),
                "LivepulseNoPartitionsAssigned cleared",
            )
            # the alert can clear before the recorded sum shows the replacement's partitions (the
            # worker sets both at once after its take-over; the sum follows its next scrape)
            await until(
                lambda: has_data(prom, "livepulse:assigned_partitions:sum == 2"),
                "both partitions assigned to the replacement",
            )
            assert not prom.rule_errors()
    finally:
        stop_traffic.set()
        if sender is not None:
            await sender
        worker.kill()
