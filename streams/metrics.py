"""Prometheus metrics of one worker, in a registry of its own.

Labels are bounded: topics, reason codes (a fixed vocabulary), partitions,
metric names. Never one series per room; the top rooms are exposed as a
fixed-size ranking. Per-partition series of partitions that moved to another
worker are removed (``forget_partition``), so a rebalance leaves no stale
lag or watermark behind for dashboards and alerts to trip over.

The ``_created`` series prometheus-client adds to counters and histograms are
off: nothing reads them (``rate()`` and ``increase()`` handle resets), and
they would double the series count of every counter.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

disable_created_metrics()  # type: ignore[no-untyped-call]

BATCH_SIZE_BUCKETS = (1, 10, 100, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000)
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass
class Metrics:
    """Every metric the worker exports; build one per worker."""

    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        r = self.registry
        self.events_consumed = Counter(
            "livepulse_events_consumed_total", "Input messages read", ["topic"], registry=r
        )
        self.events_applied = Counter(
            "livepulse_events_applied_total", "Events added to room state", ["topic"], registry=r
        )
        self.events_late = Counter(
            "livepulse_events_late_total",
            "Events older than the watermark (counted, not added)",
            ["topic"],
            registry=r,
        )
        self.events_duplicate = Counter(
            "livepulse_events_duplicate_total",
            "Repeated (order_id, status) pairs skipped",
            ["topic"],
            registry=r,
        )
        self.events_replayed = Counter(
            "livepulse_events_replayed_total",
            "Events skipped because restored state already held them",
            ["topic"],
            registry=r,
        )
        self.events_invalid = Counter(
            "livepulse_events_invalid_total",
            "Messages dead-lettered, by reason code",
            ["topic", "reason"],
            registry=r,
        )
        self.events_rerouted = Counter(
            "livepulse_events_rerouted_total",
            "Events on the wrong partition for their room, re-routed",
            ["topic"],
            registry=r,
        )
        self.batch_size = Histogram(
            "livepulse_batch_size_events",
            "Messages per fetched batch",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "livepulse_batch_processing_seconds",
            "Time to decode, apply and publish one batch",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.publish_wait_seconds = Histogram(
            "livepulse_publish_wait_seconds",
            "Time one batch cycle waited handing records to the producer (it takes one batch per "
            "partition at a time)",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.checkpoint_seconds = Histogram(
            "livepulse_checkpoint_seconds",
            "Time to commit one checkpoint transaction (outputs, changelog, offsets) of every task",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.checkpoint_rooms = Counter(
            "livepulse_checkpoint_rooms_total", "Room states written to the changelog", registry=r
        )
        self.checkpoint_failures = Counter(
            "livepulse_checkpoint_failures_total",
            "Checkpoint transactions that could not commit (the worker exits; its work is redone)",
            ["reason"],
            registry=r,
        )
        self.state_quarantined = Counter(
            "livepulse_state_quarantined_total",
            "Changelog records that could not be decoded at restore (dead-lettered; the room starts fresh)",
            registry=r,
        )
        self.restore_seconds = Histogram(
            "livepulse_restore_seconds",
            "Time to read one partition's state from the changelog (partitions are read side by side)",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.assignment_seconds = Histogram(
            "livepulse_assignment_seconds",
            "Time from a partition assignment to processing again: every assigned task's changelog "
            "read and its state decoded (no heartbeat goes out meanwhile)",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "livepulse_consumer_lag_messages",
            "Messages behind the log end",
            ["topic", "partition"],
            registry=r,
        )
        self.clock_steps = Counter(
            "livepulse_clock_steps_total",
            "Steps of the host's wall clock seen (NTP setting it, a resume from suspend): left out of "
            "input silences and watermark holds",
            registry=r,
        )
        self.inputs_rebased = Counter(
            "livepulse_inputs_rebased_total",
            "Input partitions whose log ended below the offsets the state held (truncated or "
            "recreated), at a restore or while read: resumed at the log end (or, refilled past "
            "the position by then, at the position)",
            ["topic"],
            registry=r,
        )
        self.input_records_expired = Counter(
            "livepulse_input_records_expired_total",
            "Input offsets deleted by the topic's retention before the worker read them (not counted; "
            "on a transactional topic some are commit markers or aborted records, not events)",
            ["topic"],
            registry=r,
        )
        self.uncommitted = Gauge(
            "livepulse_input_uncommitted_messages",
            "Messages of open upstream transactions past the last stable offset: not readable until their "
            "producer commits, they hold the task's watermark (a producer that died mid-transaction holds "
            "it until the broker aborts the transaction)",
            ["topic", "partition"],
            registry=r,
        )
        self.watermark_delay = Gauge(
            "livepulse_watermark_delay_seconds",
            "Wall clock minus the partition watermark",
            ["partition"],
            registry=r,
        )
        self.active_rooms = Gauge("livepulse_active_rooms", "Rooms held in memory", registry=r)
        self.inputs_held = Gauge(
            "livepulse_inputs_held",
            "Input partitions not read for now: their event time ran ahead of their task's slowest "
            "input by more than LIVEPULSE_MAX_SOURCE_DRIFT_MS (watermark alignment)",
            registry=r,
        )
        self.input_holds = Counter(
            "livepulse_input_holds_total",
            "Times an input partition was held back for running ahead of what its task's watermark waits "
            "for (its slowest input or re-routing sender)",
            ["topic"],
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "livepulse_assigned_partitions", "Input partition numbers owned by this worker", registry=r
        )
        self.watermark_holds = Counter(
            "livepulse_watermark_holds_total",
            "Times a task held its watermark after an input outage (LIVEPULSE_OUTAGE_HOLD_MS)",
            registry=r,
        )
        self.inputs_idled = Counter(
            "livepulse_inputs_idle_total",
            "Times an input partition fell idle: caught up and silent for LIVEPULSE_IDLE_PARTITION_MS, "
            "it no longer holds its task's watermark (with all of a task's inputs idle, the watermark "
            "moves on with the wall clock)",
            registry=r,
        )
        self.windows_emitted = Counter(
            "livepulse_windows_emitted_total", "Room-stats records published", registry=r
        )
        self.orders_paid = Counter(
            "livepulse_orders_paid_total", "Paid orders in the room-stats windows published", registry=r
        )
        self.gmv_minor = Counter(
            "livepulse_gmv_minor_total", "GMV (minor units) in the room-stats windows published", registry=r
        )
        self.alerts_firing = Gauge(
            "livepulse_alerts_firing", "Spike alerts currently firing", ["metric"], registry=r
        )
        self.alerts_fired = Counter(
            "livepulse_alerts_fired_total", "Spike alerts that started firing", ["metric"], registry=r
        )
        self.alerts_resolved = Counter(
            "livepulse_alerts_resolved_total", "Spike alerts resolved", ["metric"], registry=r
        )
        self.detector_evaluations = Counter(
            "livepulse_detector_evaluations_total",
            "Closed windows evaluated by the spike detector",
            registry=r,
        )
        self.alerts_forward_sent = Counter(
            "livepulse_alerts_forward_sent_total",
            "Alerts delivered to Alertmanager (once for each one listed that took them)",
            registry=r,
        )
        self.alerts_forward_failed = Counter(
            "livepulse_alerts_forward_failed_total",
            "Alerts an Alertmanager did not take after every retry (or once another one took them)",
            registry=r,
        )
        self.alerts_forward_dropped = Counter(
            "livepulse_alerts_forward_dropped_total",
            "Alerts dropped from a full forwarding queue",
            registry=r,
        )
        self.alerts_feed_failures = Counter(
            "livepulse_alerts_feed_failures_total",
            "Times reading the alerts topic for forwarding failed (retried with backoff; room-stats go on)",
            registry=r,
        )
        self.alerts_forward_skipped = Counter(
            "livepulse_alerts_forward_skipped_total",
            "Records of the alerts topic skipped as not alerts (null, not JSON, wrong shape)",
            registry=r,
        )
        self.control_invalid = Counter(
            "livepulse_control_messages_invalid_total",
            "Control-topic messages ignored as malformed",
            registry=r,
        )
        self.rule_overrides = Gauge(
            "livepulse_rule_overrides", "Spike-rule overrides in force (room and category)", registry=r
        )
        self.top_room_value = Gauge(
            "livepulse_top_room_gmv_minor",
            "GMV of the top rooms' last window, by rank (1 = highest)",
            ["rank"],
            registry=r,
        )
        self.top_room_views = Gauge(
            "livepulse_top_room_views",
            "Views (joins) of the top rooms' last window, by rank (1 = highest)",
            ["rank"],
            registry=r,
        )
        self.leaderboards_published = Counter(
            "livepulse_leaderboards_published_total",
            "Platform leaderboard records published (one per final window; by the leaderboard merge)",
            registry=r,
        )
        self.leaderboard_late_partials = Counter(
            "livepulse_leaderboard_late_partials_total",
            "Leaderboard partials for a window already final (dropped; none expected)",
            registry=r,
        )
        self.leaderboard_pending_windows = Gauge(
            "livepulse_leaderboard_pending_windows",
            "Leaderboard windows the merge holds until every task's progress passes them (by the "
            "merge's worker; a few in the normal course)",
            registry=r,
        )
        self.leaderboard_wait_seconds = Gauge(
            "livepulse_leaderboard_wait_seconds",
            "Event time from the end of the oldest leaderboard window the merge holds to the furthest "
            "task's progress (by the merge's worker; about a window in the normal course)",
            registry=r,
        )
        #: platform totals of the last final leaderboard window (exported by the merge's worker only)
        self.platform = PlatformTotals(registry=r)

        self.build_info = Gauge(
            "livepulse_build_info",
            "Always 1; the labels say which livepulse, Python and client libraries run",
            ["version", "python", "faust", "aiokafka", "prometheus_client"],
            registry=r,
        )
        self.build_info.labels(**build_labels()).set(1)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

    def forget_partition(self, partition: int) -> None:
        """Remove every series labelled with ``partition`` (call when it is revoked from this worker)."""
        wanted = str(partition)
        topics = {
            sample.labels["topic"]
            for family in self.consumer_lag.collect()
            for sample in family.samples
            if sample.labels["partition"] == wanted
        }
        for topic in topics:
            self.consumer_lag.remove(topic, wanted)
            self.uncommitted.remove(topic, wanted)
        if any(
            sample.labels["partition"] == wanted
            for family in self.watermark_delay.collect()
            for sample in family.samples
        ):
            self.watermark_delay.remove(wanted)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class PlatformTotals(Collector):
    """Gauges of the last final leaderboard window's platform totals, without labels.

    Only the worker running the leaderboard merge (the owner of task 0) has values; every other
    worker exports none of these series (not stale ones: :meth:`clear` when task 0 moves away).
    """

    GAUGES = (
        ("events", "livepulse_platform_events", "Engagement events in the last final leaderboard window"),
        (
            "rooms_live",
            "livepulse_platform_rooms_live",
            "Rooms with a window in the last final leaderboard window",
        ),
        (
            "gmv_minor",
            "livepulse_platform_gmv_minor",
            "GMV (minor units) in the last final leaderboard window",
        ),
        ("orders", "livepulse_platform_orders", "Paid orders in the last final leaderboard window"),
    )

    def __init__(self, registry: CollectorRegistry) -> None:
        self.record: Mapping[str, Any] | None = None
        registry.register(self)

    def set(self, record: Mapping[str, Any] | None) -> None:
        self.record = record

    def clear(self) -> None:
        self.record = None

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(name, doc) for _, name, doc in self.GAUGES]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        record = self.record
        if record is None:
            return
        for field_name, name, doc in self.GAUGES:
            yield GaugeMetricFamily(name, doc, value=record[field_name])
        yield GaugeMetricFamily(
            "livepulse_platform_window_start_seconds",
            "Start of the last final leaderboard window (seconds since the epoch)",
            value=record["window_start"] / 1000,
        )


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def build_labels() -> dict[str, str]:
    """Labels of ``livepulse_build_info``: versions of livepulse, Python and the client libraries."""
    return {
        "version": _version("livepulse"),
        "python": platform.python_version(),
        "faust": _version("faust-streaming"),
        "aiokafka": _version("aiokafka"),
        "prometheus_client": _version("prometheus-client"),
    }
