"""Baseline (b): an idiomatic faust-streaming agent counting per room in a tumbling-window table.

One agent over the three input topics (raw values decoded with orjson, which
is kinder to faust than its JSON codec), a windowed table keyed by room id,
windows relative to each message's timestamp (the producer sets it to the
event time), changelog on, in-memory store: the textbook faust program.

    python -m loadtest.baselines.faust_agent --brokers H:P --topics v,o,g --group G --total N
"""

from __future__ import annotations

import argparse
import os
import tempfile
from datetime import timedelta

import faust
import orjson

from ._progress import Reporter, parser


def build(args: argparse.Namespace) -> faust.App:
    a = args
    app = faust.App(
        a.group,
        broker=f"kafka://{a.brokers}",
        store="memory://",
        topic_partitions=a.partitions,
        topic_replication_factor=1,
        web_enabled=False,
        autodiscover=False,
        datadir=a.state_dir or tempfile.mkdtemp(prefix="faust-baseline-"),
    )
    topic = app.topic(*a.topics.split(","), value_serializer="raw")
    counts = app.Table("room_counts", default=int, partitions=a.partitions).tumbling(
        timedelta(milliseconds=a.window_ms),
        expires=timedelta(hours=1),
    )
    report = Reporter(a.total)
    state = {"consumed": 0}

    @app.agent(topic)
    async def count_rooms(stream: faust.StreamT[bytes]) -> None:
        async for value in stream:
            state["consumed"] += 1
            try:
                room_id = orjson.loads(value)["room_id"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                room_id = None
            if isinstance(room_id, str):
                counts[room_id] += 1
            if report.maybe(state["consumed"]):
                os._exit(0)  # measured; faust's orderly shutdown is not part of the benchmark

    return app


def main() -> None:
    args = parser(__doc__.split("\n\n")[0]).parse_args()
    app = build(args)
    faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
