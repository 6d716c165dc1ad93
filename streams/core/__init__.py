"""The pure aggregation core: event-time windows, room state, checkpoints, queries.

No I/O and no Kafka or faust imports: the runtime feeds batches in and
publishes what comes out.
"""

from ._config import CoreConfig
from ._partition import PartitionCache, partition_for
from ._query import RANKABLE_METRICS, room_view, top_rooms
from ._room import ROOM_FORMAT_VERSION, Room, decode_room, encode_room
from ._task import META_KEY, ApplyResult, Checkpoint, TaskAggregator, TaskCounters, room_key
from ._windows import bucket_range, window_start

__all__ = [
    "META_KEY",
    "RANKABLE_METRICS",
    "ROOM_FORMAT_VERSION",
    "ApplyResult",
    "Checkpoint",
    "CoreConfig",
    "PartitionCache",
    "Room",
    "TaskAggregator",
    "TaskCounters",
    "bucket_range",
    "decode_room",
    "encode_room",
    "partition_for",
    "room_key",
    "room_view",
    "top_rooms",
    "window_start",
]
