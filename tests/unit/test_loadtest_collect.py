"""The load test's output collector on shutdown: aiokafka's consumer ``stop()`` awaits the fetch
tasks it has just cancelled, so a fetch in its retry backoff raises ``CancelledError`` out of it.
That one must not crash the run; a cancellation of the collector itself must still cancel it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from loadtest._collect import Collector
from streams.settings import Topics


class _Consumer:
    """What the collector uses of an AIOKafkaConsumer, with aiokafka's stop() after a failed fetch."""

    def __init__(self, closing_s: float = 0.0) -> None:
        self.stopped = False
        self.closing_s = closing_s

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        await asyncio.sleep(timeout_ms / 1000)
        return {}

    async def stop(self) -> None:
        self.stopped = True
        await asyncio.sleep(self.closing_s)
        raise asyncio.CancelledError  # the fetch task's, re-raised by Fetcher.close()


async def test_a_cancelled_fetch_raised_by_stop_ends_the_collector_quietly() -> None:
    collector, consumer = Collector("127.0.0.1:1", Topics()), _Consumer()
    task = asyncio.create_task(collector._follow(consumer))  # type: ignore[arg-type]
    await asyncio.sleep(0.1)
    collector._stop.set()
    await asyncio.wait_for(task, 5)
    assert consumer.stopped and not task.cancelled()


async def test_cancelling_the_collector_while_it_closes_still_cancels_it() -> None:
    collector, consumer = Collector("127.0.0.1:1", Topics()), _Consumer(closing_s=1.0)
    task = asyncio.create_task(collector._follow(consumer))  # type: ignore[arg-type]
    await asyncio.sleep(0.1)
    collector._stop.set()
    await asyncio.sleep(0.2)  # in stop() now
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert consumer.stopped and task.cancelled()
