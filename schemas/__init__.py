"""Event and output records for livepulse, with strict validation and an orjson codec.

Decoders take raw message bytes and return a record or an :class:`Invalid`
carrying a machine-readable reason code; they never raise on bad input.
"""

from ._batch import NATIVE as NATIVE_DECODERS
from ._batch import (
    decode_gift_batch,
    decode_gift_batch_py,
    decode_order_batch,
    decode_order_batch_py,
    decode_viewer_batch,
    decode_viewer_batch_py,
    native_bounds,
)
from ._decode import decode_gift, decode_order, decode_viewer
from ._limits import DEFAULT_LIMITS, Limits
from ._outputs import (
    DLQ_KEY_CAP_BYTES,
    DLQ_RAW_CAP_BYTES,
    ROOM_SESSION_FIELDS,
    ROOM_STATS_FIELDS,
    DeadLetter,
    RoomSession,
    RoomStats,
    dead_letter,
    decode_dead_letter,
    decode_room_session,
    decode_room_stats,
    encode_dead_letter,
    encode_room_session,
    encode_room_stats,
)
from ._records import (
    ORDER_STATUSES,
    VIEWER_TYPES,
    Event,
    GiftEvent,
    Invalid,
    OrderEvent,
    Source,
    ViewerEvent,
)

__all__ = [
    "DEFAULT_LIMITS",
    "DLQ_KEY_CAP_BYTES",
    "DLQ_RAW_CAP_BYTES",
    "NATIVE_DECODERS",
    "ORDER_STATUSES",
    "ROOM_SESSION_FIELDS",
    "ROOM_STATS_FIELDS",
    "VIEWER_TYPES",
    "DeadLetter",
    "Event",
    "GiftEvent",
    "Invalid",
    "Limits",
    "OrderEvent",
    "RoomSession",
    "RoomStats",
    "Source",
    "ViewerEvent",
    "dead_letter",
    "decode_dead_letter",
    "decode_gift",
    "decode_gift_batch",
    "decode_gift_batch_py",
    "decode_order",
    "decode_order_batch",
    "decode_order_batch_py",
    "decode_room_session",
    "decode_room_stats",
    "decode_viewer",
    "decode_viewer_batch",
    "decode_viewer_batch_py",
    "encode_dead_letter",
    "encode_room_session",
    "encode_room_stats",
    "native_bounds",
]
