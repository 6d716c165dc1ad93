"""Fixtures for tests against the real local broker.

The session starts (or reuses) the broker through ``deploy.localkafka`` — the
same code path as ``livepulse kafka up`` — once. A broker that cannot start
fails the tests, with the broker's error; integration tests never skip.
Stopping it is the job of whoever runs the suite (``make test`` does).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator, Mapping

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code

from deploy.localkafka import Broker, BrokerError, BrokerSettings, ensure_broker
from tests.integration.kafkatools import TopicFactory, await_leaders


@pytest.fixture(scope="session")
def kafka_broker() -> Broker:
    try:
        return ensure_broker(BrokerSettings.from_env(os.environ))
    except BrokerError as exc:
        pytest.fail(f"the local Kafka broker could not start: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: Broker) -> str:
    return kafka_broker.bootstrap


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> str:
    """A topic name unique to this test and this run."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:120]
    return f"test.{base}.{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def create_topic(kafka_bootstrap: str, topic_name: str) -> AsyncIterator[TopicFactory]:
    """``await create_topic(partitions=1, suffix="", config=None) -> name``; deleted after the test."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    created: list[str] = []

    async def create(
        partitions: int = 1, *, suffix: str = "", config: Mapping[str, str] | None = None
    ) -> str:
        name = topic_name + suffix
        response = await admin.create_topics(
            [NewTopic(name, partitions, 1, topic_configs=dict(config or {}))]
        )
        for topic, code, *message in response.topic_errors:
            if code:
                raise for_code(code)(f"creating {topic}: {message}")
        created.append(name)
        await await_leaders(admin, name, partitions)
        return name

    try:
        yield create
    finally:
        if created:
            await admin.delete_topics(created)
        await admin.close()
