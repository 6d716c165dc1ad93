"""Spike alerts end to end: a real worker, the real broker and a real Alertmanager."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from schemas import Event, ViewerEvent
from streams.core import AlertEvent, to_alertmanager
from tests.integration.alertmanager import alerts, running_alertmanager
from tests.integration.workers import (
    Deployment,
    Worker,
    eventually,
    free_port,
    produce,
    produce_raw,
    read_topic,
    records,
)

pytestmark = pytest.mark.integration

WINDOW_MS = 2_000
ROOM = "room-spike"
# The detector's rules are in seconds: 180 s of warm-up, 20 s to confirm, 30 s to resolve.
STEADY, SPIKE, AFTER = 100, 12, 20  # windows of 2 s: 200 s steady, 24 s at 10x, 40 s back to normal
TOTAL = STEADY + SPIKE + AFTER


def windows(first: int, count: int, per_window: int, start_ms: int) -> list[tuple[str, Event]]:
    """Balanced joins and leaves (concurrent viewers stay flat) in windows first..first+count-1."""
    out: list[tuple[str, Event]] = []
    for w in range(first, first + count):
        for i in range(per_window):
            ts = start_ms + w * WINDOW_MS + i * WINDOW_MS // per_window
            user = f"u{w}-{i}"
            out.append(("viewer", ViewerEvent("join", ROOM, user, ts)))
            out.append(("viewer", ViewerEvent("leave", ROOM, user, ts)))
    return out


def room_alerts(values: list[bytes], metric: str) -> list[dict[str, object]]:
    return [
        r
        for r in records(values)
        if r["labels"]["room_id"] == ROOM and r["labels"]["metric"] == metric  # type: ignore[index]
    ]


def shown_by(url: str, metric: str) -> bool:
    return any(
        a["labels"].get("room_id") == ROOM and a["labels"].get("metric") == metric for a in alerts(url)
    )


async def test_injected_spike_fires_once_resolves_once_and_reaches_alertmanager(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Two Alertmanagers listed, as the replicas of an HA cluster: each gets the alert and its
    resolution."""
    with (
        running_alertmanager(tmp_path / "am", free_port()) as am_url,
        running_alertmanager(tmp_path / "am2", free_port()) as am2_url,
    ):
        deployment = Deployment(
            kafka_bootstrap,
            window_ms=WINDOW_MS,
            # no periodic re-send inside the firing span: "fires once" is about transitions
            extra_env={
                "LIVEPULSE_BUCKET_MS": "500",
                "LIVEPULSE_ALERTMANAGER_URL": f"{am_url}, {am2_url}",
                "LIVEPULSE_ALERT_RESEND_MS": "600000",
            },
        )
        worker = Worker(deployment, tmp_path, "alerts")
        try:
            await worker.wait_ready()
            start_ms = (int(time.time() * 1000) - (TOTAL * WINDOW_MS + 60_000)) // WINDOW_MS * WINDOW_MS
            t = deployment.topics
            # Steady windows past the warm-up, then 24 s at 10x: the alert fires and keeps firing.
            before = windows(0, STEADY, 10, start_ms) + windows(STEADY, SPIKE, 100, start_ms)
            await produce(kafka_bootstrap, t, before, partitions=deployment.partitions)
            await eventually(
                lambda: shown_by(am_url, "views_per_sec") and shown_by(am2_url, "views_per_sec"),
                "both Alertmanagers show the spike",
            )

            # Traffic returns to normal: the alert resolves and Alertmanager lets it go.
            after = windows(STEADY + SPIKE, AFTER, 10, start_ms)
            await produce(kafka_bootstrap, t, after, partitions=deployment.partitions)
            await eventually(
                lambda: not shown_by(am_url, "views_per_sec") and not shown_by(am2_url, "views_per_sec"),
                "both Alertmanagers resolved the spike",
            )

            values = await read_topic(
                kafka_bootstrap,
                t.alerts,
                until=lambda vs: [r["status"] for r in room_alerts(vs, "views_per_sec")][-1:] == ["resolved"],
            )
            spike = room_alerts(values, "views_per_sec")
            assert [r["status"] for r in spike] == ["firing", "resolved"]
            firing, resolved = spike
            assert firing["labels"]["alertname"] == "RoomSpike"  # type: ignore[index]
            assert firing["startsAt"] == resolved["startsAt"]
            assert firing["fingerprint"] == resolved["fingerprint"]
            assert float(firing["annotations"]["ratio"]) >= 5  # type: ignore[index]
            assert worker.metric("livepulse_alerts_forward_sent_total") >= 4  # two, to each of two
            assert worker.metric("livepulse_alerts_forward_failed_total") == 0
        finally:
            worker.kill()


async def test_room_override_from_the_control_topic_changes_detection(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    deployment = Deployment(kafka_bootstrap, window_ms=WINDOW_MS, extra_env={"LIVEPULSE_BUCKET_MS": "500"})
    worker = Worker(deployment, tmp_path, "rules")
    try:
        await worker.wait_ready()
        # Nobody would call 10x views a spike in this room: raise its ratio to 50.
        override = {"scope": "room", "key": ROOM, "metric": "views_per_sec", "set": {"ratio": 50.0}}
        bad = b'{"scope": "galaxy"}'
        await produce_raw(
            kafka_bootstrap, deployment.topics.control, [(None, orjson.dumps(override)), (None, bad)]
        )
        await eventually(lambda: worker.metric("livepulse_rule_overrides") == 1, "the override is in force")
        assert worker.metric("livepulse_control_messages_invalid_total") == 1
        start_ms = (int(time.time() * 1000) - (TOTAL * WINDOW_MS + 60_000)) // WINDOW_MS * WINDOW_MS
        traffic = (
            windows(0, STEADY, 10, start_ms)
            + windows(STEADY, SPIKE, 100, start_ms)
            + windows(STEADY + SPIKE, AFTER, 10, start_ms)
        )
        await produce(kafka_bootstrap, deployment.topics, traffic, partitions=deployment.partitions)
        await eventually(
            lambda: worker.metric("livepulse_detector_evaluations_total") >= TOTAL, "all windows evaluated"
        )
        values = await read_topic(
            kafka_bootstrap, deployment.topics.alerts, until=lambda vs: False, timeout_s=3
        )
        assert room_alerts(values, "views_per_sec") == []
        assert room_alerts(values, "unique_viewers")  # other metrics keep their default rules
    finally:
        worker.kill()


async def test_the_forwarder_survives_any_record_and_never_logs_the_url_credential(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Null, non-JSON and wrongly shaped records on the alerts topic are counted and skipped; the
    alert after them still reaches Alertmanager; the credential in the URL is in no log line; the web
    server listens on 127.0.0.1 only."""
    with running_alertmanager(tmp_path / "am", free_port()) as am_url:
        secret = "s3cret-pw"
        url = am_url.replace("http://", f"http://ops:{secret}@")
        deployment = Deployment(
            kafka_bootstrap, window_ms=WINDOW_MS, extra_env={"LIVEPULSE_ALERTMANAGER_URL": url}
        )
        worker = Worker(deployment, tmp_path, "hostile-alerts")
        try:
            await worker.wait_ready()
            listening = {c.laddr.ip for c in worker.ps.net_connections("tcp") if c.status == "LISTEN"}
            assert listening == {"127.0.0.1"}, listening
            now_ms = int(time.time() * 1000)
            good = to_alertmanager(
                AlertEvent(
                    ROOM, "RoomSpike", "views_per_sec", "warning", "firing", now_ms, None, now_ms, 9, 1, 9
                ),
                expires_after_ms=600_000,
            )
            hostile: list[bytes | None] = [
                None,
                b"not json",
                b"[1]",
                b'{"labels": 5}',
                b'{"labels": {"a": 1}}',
            ]
            await produce_raw(
                kafka_bootstrap,
                deployment.topics.alerts,
                [*((b"k", raw) for raw in hostile), (None, orjson.dumps(good))],
            )
            await eventually(
                lambda: shown_by(am_url, "views_per_sec"), "the alert after the hostile records arrives"
            )
            assert worker.metric("livepulse_alerts_forward_skipped_total") == len(hostile)
            worker.check_alive()
        finally:
            worker.kill()
        log_text = worker.log_path.read_text(errors="replace")
        assert f"forwarding alerts to http://***@{am_url.split('//')[1]}" in log_text
        assert secret not in log_text


async def test_a_first_start_of_forwarding_skips_alerts_older_than_its_lookback(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Forwarding turned on over an alerts topic that already holds days of alerts: the group has
    no offset, and reading from the start of retention would post every old alert (and, past the
    queue's bound, drop them and raise LivepulseAlertForwardingFailing). It starts ten re-send
    intervals back: an alert written two hours ago is not posted, one written a minute ago is."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    with running_alertmanager(tmp_path / "am", free_port()) as am_url:
        deployment = Deployment(
            kafka_bootstrap, window_ms=WINDOW_MS, extra_env={"LIVEPULSE_ALERTMANAGER_URL": am_url}
        )
        now_ms = int(time.time() * 1000)

        def alert(metric: str) -> bytes:
            event = AlertEvent(ROOM, "RoomSpike", metric, "warning", "firing", now_ms, None, now_ms, 9, 1, 9)
            return orjson.dumps(to_alertmanager(event, expires_after_ms=3_600_000))

        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(deployment.topics.alerts, deployment.partitions, 1)])
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for partition in range(deployment.partitions):
                await producer.send_and_wait(
                    deployment.topics.alerts,
                    alert("gmv_per_sec"),
                    partition=partition,
                    timestamp_ms=now_ms - 7_200_000,
                )
            await producer.send_and_wait(
                deployment.topics.alerts, alert("views_per_sec"), partition=1, timestamp_ms=now_ms - 60_000
            )
        finally:
            await producer.stop()
        worker = Worker(deployment, tmp_path, "first-forwarding")
        try:
            await worker.wait_ready()
            await eventually(
                lambda: shown_by(am_url, "views_per_sec"), "the recent alert reaches Alertmanager"
            )
            assert not shown_by(am_url, "gmv_per_sec")  # older, so it would have been posted first
            assert worker.metric("livepulse_alerts_forward_sent_total") == 1
            worker.check_alive()
        finally:
            worker.kill()
        assert "reading it from 600 s back" in worker.log_path.read_text(errors="replace")
