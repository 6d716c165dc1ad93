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
from collections.abc import AsyncIterator, Generator, Mapping
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code

from deploy.localkafka import Broker, BrokerError, BrokerSettings, ensure_broker
from tests.integration.kafkatools import TopicFactory, await_leaders

#: lines of each worker log shown with a failed test
LOG_TAIL_LINES = 60


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test's report carries the tail of every worker log in its ``tmp_path``: in CI
    the log directory is gone by the time anyone reads the report."""
    report = yield
    tmp_path = getattr(item, "funcargs", {}).get("tmp_path")
    if report.failed and report.when == "call" and isinstance(tmp_path, Path):
        for log in sorted(tmp_path.glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            report.sections.append((f"worker log {log.name} (last {len(lines)} lines)", "\n".join(lines)))
    return report


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
