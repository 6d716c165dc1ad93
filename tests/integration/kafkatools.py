"""Small helpers for integration tests that talk to the real broker."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

from aiokafka.admin import AIOKafkaAdminClient


class TopicFactory(Protocol):
    """The ``create_topic`` fixture: creates a uniquely named topic, deleted after the test."""

    async def __call__(
        self, partitions: int = 1, *, suffix: str = "", config: Mapping[str, str] | None = None
    ) -> str: ...


async def await_leaders(admin: AIOKafkaAdminClient, name: str, partitions: int) -> None:
    """Wait until the broker's metadata shows a leader for every partition of ``name``."""
    for _ in range(100):
        (topic,) = await admin.describe_topics([name])
        leaders = [p["leader"] for p in topic["partitions"]]
        if topic["error_code"] == 0 and len(leaders) == partitions and min(leaders) >= 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"topic {name} has no leaders after 10 s")
