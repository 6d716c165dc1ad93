"""Topic verification on the real broker: existing topics of the wrong shape stop the worker with the fix."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import time

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import MessageSizeTooLargeError

from loadtest.deployment import free_port
from streams._topology import MAX_RECORD_BYTES, connected_admin, ensure_topology
from streams.exceptions import InfrastructureError, TopologyError
from streams.settings import Settings
from tests.integration.kafkatools import await_leaders
from tests.integration.workers import Deployment, late_relay

pytestmark = pytest.mark.integration


async def _check(deployment: Deployment, existing: list[NewTopic], **settings: object) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=deployment.bootstrap)
    await admin.start()
    try:
        if existing:
            await admin.create_topics(existing)
            # the controller answers before every broker's metadata has the topics: wait for them
            for topic in existing:
                await await_leaders(admin, topic.name, topic.num_partitions)
        s = dataclasses.replace(Settings(brokers=deployment.bootstrap, topics=deployment.topics), **settings)
        return await ensure_topology(admin, s)
    finally:
        await admin.close()


async def test_missing_topics_are_created_with_the_configured_shape(kafka_bootstrap: str) -> None:
    deployment = Deployment(kafka_bootstrap)
    assert await _check(deployment, [], partitions=3, min_insync_replicas=1) == 3
    # A second worker finds them all in place and agrees.
    assert await _check(deployment, []) == 3


async def test_state_topics_take_large_records_and_existing_small_ones_are_named(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The changelog and the leaderboard topics are created for records up to MAX_RECORD_BYTES
    (the broker's default is 1 MiB): a 2 MB state record is taken there and refused elsewhere. An
    existing changelog with the default limit is named at start, with the command that fixes it."""
    deployment = Deployment(kafka_bootstrap)
    t = deployment.topics
    await _check(deployment, [])
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=MAX_RECORD_BYTES)
    await producer.start()
    try:
        big = b"x" * 2_000_000
        for topic in (t.changelog, t.leaderboard, t.leaderboard_partials):
            await producer.send_and_wait(topic, big, key=b"k", partition=0)
        with pytest.raises(MessageSizeTooLargeError):
            await producer.send_and_wait(t.room_stats, big, key=b"k", partition=0)
    finally:
        await producer.stop()
    assert "max.message.bytes" not in caplog.text

    other = Deployment(kafka_bootstrap)
    changelog = other.topics.changelog
    with caplog.at_level(logging.WARNING, logger="streams._topology"):
        await _check(other, [NewTopic(changelog, 4, 1, topic_configs={"cleanup.policy": "compact"})])
    assert f"topic {changelog} takes records of at most 1048588 bytes" in caplog.text
    assert f"--entity-name {changelog} --add-config max.message.bytes={MAX_RECORD_BYTES}" in caplog.text


async def test_a_changelog_that_is_not_compacted_is_refused(kafka_bootstrap: str) -> None:
    deployment = Deployment(kafka_bootstrap)
    t = deployment.topics
    with pytest.raises(TopologyError, match=rf"{t.changelog} has cleanup.policy=delete.*--add-config"):
        await _check(deployment, [NewTopic(t.changelog, 4, 1, topic_configs={"cleanup.policy": "delete"})])


@pytest.mark.parametrize("topic", ["room_stats", "dlq", "repartition"])
async def test_an_output_or_internal_topic_of_another_width_is_refused(
    kafka_bootstrap: str, topic: str
) -> None:
    deployment = Deployment(kafka_bootstrap)
    name = getattr(deployment.topics, topic)
    with pytest.raises(
        TopologyError, match=rf"topic {name} has 2 partitions but the inputs have 4: recreate"
    ):
        await _check(deployment, [NewTopic(name, 2, 1)])


async def test_missing_outputs_without_permission_to_create_are_named(kafka_bootstrap: str) -> None:
    deployment = Deployment(kafka_bootstrap)
    t = deployment.topics
    inputs = [NewTopic(name, 4, 1) for name in t.inputs]
    with pytest.raises(TopologyError, match=rf"topics missing: .*{t.room_stats}.*LIVEPULSE_CREATE_TOPICS"):
        await _check(deployment, inputs, create_topics=False)


async def test_a_worker_start_waits_for_brokers_that_are_not_up_yet(kafka_bootstrap: str) -> None:
    """The brokers answer only ~1.5 s after the start (a TCP relay to the real broker that opens
    late): the admin client is there once they do, after warnings, not a failed start."""
    async with late_relay(kafka_bootstrap, 1.5) as relayed:
        t0 = time.monotonic()
        admin = await connected_admin(Settings(brokers=relayed, broker_wait_ms=30_000))
        try:
            assert time.monotonic() - t0 >= 1.4
            assert isinstance(await admin.list_topics(), list)
        finally:
            await admin.close()


async def test_a_worker_start_gives_up_on_unreachable_brokers_with_the_setting_named() -> None:
    t0 = time.monotonic()
    named = r"no broker of 127\.0\.0\.1:\d+ answered within LIVEPULSE_BROKER_WAIT_MS=1200"
    with pytest.raises(InfrastructureError, match=named):
        await connected_admin(Settings(brokers=f"127.0.0.1:{free_port()}", broker_wait_ms=1_200))
    assert 1.1 <= time.monotonic() - t0 < 10


def test_the_worker_command_exits_with_a_clear_error_when_no_broker_answers() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEPULSE_")}
    env |= {"LIVEPULSE_BROKERS": f"127.0.0.1:{free_port()}", "LIVEPULSE_BROKER_WAIT_MS": "1500"}
    done = subprocess.run(
        [sys.executable, "-m", "streams", "worker"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "answered within LIVEPULSE_BROKER_WAIT_MS=1500" in done.stderr
    assert "waiting for the brokers" in done.stderr
    assert "Traceback" not in done.stderr
