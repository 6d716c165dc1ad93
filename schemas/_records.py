"""Record types for livepulse's input events and outputs.

Input events are ``NamedTuple``s: they are built once per message on the hot
path, so they must be as cheap as a tuple, and fields are read by the core
by attribute. Field names and meanings follow ``shared/DESIGN.md``.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple


class Source(IntEnum):
    """Where an event was read from: one input topic each, and the repartition topic.

    The numbers are persisted (per-source event times and offsets in the
    changelog's task metadata): never renumber them.
    """

    VIEWER = 0
    ORDER = 1
    GIFT = 2
    #: re-routed events of any input; not a watermark source (its senders' markers are)
    REPARTITION = 3


VIEWER_TYPES: frozenset[str] = frozenset({"join", "leave", "heartbeat", "like", "comment", "share"})
ORDER_STATUSES: frozenset[str] = frozenset({"created", "paid", "cancelled", "refunded"})


class ViewerEvent(NamedTuple):
    """A viewer action in a live room (``live.viewer``)."""

    type: str
    room_id: str
    user_id: str
    ts: int


class OrderEvent(NamedTuple):
    """An order state change (``live.order``); money in integer minor units."""

    order_id: str
    room_id: str
    user_id: str
    ts: int
    status: str
    amount_minor: int
    currency: str


class GiftEvent(NamedTuple):
    """A gift sent in a room (``live.gift``); ``value_minor`` is the total value."""

    gift_id: str
    room_id: str
    user_id: str
    ts: int
    count: int  # type: ignore[assignment]  # the wire name; shadows tuple.count
    value_minor: int


Event = ViewerEvent | OrderEvent | GiftEvent


class Invalid(NamedTuple):
    """Why a message was rejected: a machine-readable ``reason`` and a human ``detail``.

    Reason codes: ``oversized``, ``invalid_json``, ``not_an_object``,
    ``missing_field:<f>``, ``bad_type:<f>``, ``out_of_range:<f>``,
    ``unknown_enum:<f>``, ``bad_format:<f>``, ``control_chars:<f>``, ``ts_skew``;
    the data plane adds ``room_cap`` (a task's room cap reached).
    """

    reason: str
    detail: str

    @property
    def reason_class(self) -> str:
        """The reason without its field suffix, for bounded metric labels."""
        return self.reason.partition(":")[0]
