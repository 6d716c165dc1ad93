"""Baseline (a): a plain aiokafka ``getmany`` loop, orjson decoding, a dict count per (room, window).

The practical ceiling for a Python consumer: no validation, no state
checkpoints, no outputs. Same consumer settings as the livepulse data plane.

    python -m loadtest.baselines.plain --brokers H:P --topics v,o,g --group G --total N
"""

from __future__ import annotations

import argparse
import asyncio

import orjson
from aiokafka import AIOKafkaConsumer

from ._progress import Reporter, parser


async def consume(args: argparse.Namespace) -> None:
    a = args
    consumer = AIOKafkaConsumer(
        *a.topics.split(","),
        bootstrap_servers=a.brokers,
        group_id=a.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    report = Reporter(a.total)
    window_ms: int = a.window_ms
    counts: dict[tuple[str, int], int] = {}
    loads = orjson.loads
    consumed = invalid = 0
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=20_000)
            for messages in batches.values():
                for message in messages:
                    try:
                        obj = loads(message.value)
                        key = (obj["room_id"], obj["ts"] // window_ms)
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        invalid += 1
                        continue
                    counts[key] = counts.get(key, 0) + 1
                consumed += len(messages)
            if report.maybe(consumed):
                break
    finally:
        await consumer.stop()


def main() -> None:
    asyncio.run(consume(parser(__doc__.split("\n\n")[0]).parse_args()))


if __name__ == "__main__":
    main()
