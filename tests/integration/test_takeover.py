"""Taking over partitions whose restore is slow: the data plane in this process on the real broker.

A changelog read is made slow on purpose (a large state, a remote broker): it waits
``SLOW_RESTORE_S`` before reading. aiokafka sends no heartbeat while a member's
assignment callback runs, so a restore inside the callback that outlasts the group
session timeout gets the member dropped, assigned again and restoring again, without
end. The data plane restores outside the callback, with the heartbeats going on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from streams import dataplane
from streams._changelog import read_partition
from streams._topology import prepare_topics
from streams.dataplane import DataPlane
from streams.metrics import Metrics
from streams.settings import Settings, settings_from_env
from tests.integration.test_worker import collect, oracle, traffic
from tests.integration.workers import Deployment, eventually, produce, read_topic, room_stats_by_key
from tests.records import assert_records_match

pytestmark = pytest.mark.integration

#: the brokers' least group.min.session.timeout.ms
SESSION_TIMEOUT_MS = 6_000
#: each changelog read waits this long first: past the session timeout
SLOW_RESTORE_S = 9.0


@pytest.fixture
def deployment(kafka_bootstrap: str) -> Deployment:
    return Deployment(kafka_bootstrap)


@pytest.fixture
def slow_restores(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every changelog read waits ``SLOW_RESTORE_S``, then reads the real log; returns the
    partitions read, in order."""
    reads: list[int] = []

    async def slow(settings: Settings, partition: int) -> Any:
        reads.append(partition)
        await asyncio.sleep(SLOW_RESTORE_S)
        return await read_partition(settings, partition)

    monkeypatch.setattr(dataplane, "read_partition", slow)
    return reads


def plane_settings(deployment: Deployment) -> Settings:
    env = deployment.env(web_port=8080)  # no web server runs: the plane alone
    return settings_from_env(env, group_session_timeout_ms=SESSION_TIMEOUT_MS)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[DataPlane]:
    """A data plane fetching and processing in this process until the block ends, then stopped
    as the worker stops it (last checkpoint, leave the group)."""
    plane = DataPlane(settings, Metrics())
    await plane.start()
    run = asyncio.create_task(plane.run())
    try:
        yield plane
    finally:
        plane.request_stop()
        try:
            await asyncio.wait_for(asyncio.shield(run), 30)
        finally:
            await plane.stop()


def assignments(plane: DataPlane) -> float:
    """How many assignments the plane took over (the count of ``livepulse_assignment_seconds``)."""
    value = plane.metrics.registry.get_sample_value("livepulse_assignment_seconds_count")
    return value or 0.0


def checkpoint_failures(plane: DataPlane) -> float:
    return sum(
        sample.value
        for metric in plane.metrics.registry.collect()
        if metric.name == "livepulse_checkpoint_failures"
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


async def test_a_restore_longer_than_the_session_timeout_keeps_the_member(
    deployment: Deployment, slow_restores: list[int]
) -> None:
    settings = plane_settings(deployment)
    await asyncio.to_thread(prepare_topics, settings)
    events = traffic(1_500, seed=11, rate_per_s=300)
    expected = oracle(events, deployment)
    await produce(deployment.bootstrap, deployment.topics, events, partitions=deployment.partitions)

    async with running(settings) as plane:
        await eventually(
            lambda: plane.ready, "the plane restored its partitions", timeout_s=3 * SLOW_RESTORE_S
        )
        # A member dropped for a silent session is assigned again within seconds: give it the time.
        await asyncio.sleep(SESSION_TIMEOUT_MS / 1000 + 4)
        assert plane.ready
        assert sorted(slow_restores) == list(range(deployment.partitions)), "each partition restored once"
        assert assignments(plane) == 1
        got = await collect(deployment, expected)
    assert_records_match(got, expected)


async def test_a_member_joining_during_a_slow_restore_splits_the_partitions_exactly_once(
    deployment: Deployment, slow_restores: list[int]
) -> None:
    """The first member is still restoring when the second joins: its revocation waits for the
    restore, checkpoints and hands over; each window is published once, equal to the oracle."""
    settings = plane_settings(deployment)
    await asyncio.to_thread(prepare_topics, settings)
    events = traffic(3_000, seed=12, rate_per_s=300)
    expected = oracle(events, deployment)
    partitions = deployment.partitions
    await produce(deployment.bootstrap, deployment.topics, events[:1_500], partitions=partitions)

    async with running(settings) as a:
        await eventually(lambda: len(slow_restores) == partitions, "a restoring", timeout_s=SLOW_RESTORE_S)
        assert not a.ready
        async with running(settings) as b:
            await eventually(
                lambda: a.ready and b.ready and len(a.tasks) + len(b.tasks) == partitions,
                "both planes own partitions",
                timeout_s=6 * SLOW_RESTORE_S,
            )
            assert sorted([*a.tasks, *b.tasks]) == list(range(partitions)) and a.tasks and b.tasks
            # a restored everything, gave it up once, took its share; b took its share: no one dropped
            assert len(slow_restores) == 2 * partitions
            assert (assignments(a), assignments(b)) == (2, 1)
            assert checkpoint_failures(a) == checkpoint_failures(b) == 0
            await produce(deployment.bootstrap, deployment.topics, events[1_500:], partitions=partitions)
            got = await collect(deployment, expected)
    assert_records_match(got, expected)
    # a window published by both planes would be read twice (with the same record)
    values = await read_topic(deployment.bootstrap, deployment.topics.room_stats, until=None, timeout_s=4)
    assert len(values) == len(room_stats_by_key(values)) == len(expected)
