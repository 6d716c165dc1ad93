"""Topic verification on the real broker: existing topics of the wrong shape stop the worker with the fix."""

from __future__ import annotations

import dataclasses

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams._topology import ensure_topology
from streams.exceptions import TopologyError
from streams.settings import Settings
from tests.integration.workers import Deployment

pytestmark = pytest.mark.integration


async def _check(deployment: Deployment, existing: list[NewTopic], **settings: object) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=deployment.bootstrap)
    await admin.start()
    try:
        if existing:
            await admin.create_topics(existing)
        s = dataclasses.replace(Settings(brokers=deployment.bootstrap, topics=deployment.topics), **settings)
        return await ensure_topology(admin, s)
    finally:
        await admin.close()


async def test_missing_topics_are_created_with_the_configured_shape(kafka_bootstrap: str) -> None:
    deployment = Deployment(kafka_bootstrap)
    assert await _check(deployment, [], partitions=3, min_insync_replicas=1) == 3
    # A second worker finds them all in place and agrees.
    assert await _check(deployment, []) == 3


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
