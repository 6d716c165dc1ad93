"""Baseline (c): a Quix Streams application with a tumbling-window count per room.

The three input topics merged (``concat``, they are co-partitioned), JSON
values (malformed ones filtered out), a tumbling window of ``window_ms`` with
``grace_ms`` on the message timestamp (the event time), ``count()`` per
message key (the room id), final results only. Quix's defaults otherwise:
RocksDB state with a changelog topic, at-least-once.

    python -m loadtest.baselines.quix_app --brokers H:P --topics v,o,g --group G --total N
"""

from __future__ import annotations

import tempfile
from typing import Any

import orjson
from quixstreams import Application
from quixstreams.models.serializers import Deserializer

from ._progress import Reporter, parser


class TolerantJSON(Deserializer):
    """JSON, or ``None`` for a message that is not (dropped by a filter, like any bad record)."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def __call__(self, value: bytes, ctx: Any) -> Any:
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return None


def main() -> None:
    args = parser(__doc__.split("\n\n")[0]).parse_args()
    report = Reporter(args.total)
    consumed = 0

    def on_processed(topic: str, partition: int, offset: int) -> None:
        nonlocal consumed
        consumed += 1
        if report.maybe(consumed):
            app.stop()

    app = Application(
        broker_address=args.brokers,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        state_dir=args.state_dir or tempfile.mkdtemp(prefix="quix-baseline-"),
        on_message_processed=on_processed,
        loglevel="WARNING",
    )
    viewer, order, gift = (
        app.topic(name, value_deserializer=TolerantJSON()) for name in args.topics.split(",")
    )
    sdf = app.dataframe(viewer).concat(app.dataframe(order)).concat(app.dataframe(gift))
    sdf = sdf.filter(lambda value: isinstance(value, dict) and isinstance(value.get("room_id"), str))
    sdf = sdf.tumbling_window(duration_ms=args.window_ms, grace_ms=args.grace_ms).count().final()
    app.run()


if __name__ == "__main__":
    main()
