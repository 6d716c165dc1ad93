"""A simple seeded synthetic traffic mix: Zipf-skewed rooms, one hot room, viewer/gift/order shares.

Used by the core micro-benchmark and the demo. The full scenario model
(trending spikes, flash sales, debuts, malformed messages) builds on it.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass

import orjson

from schemas import Event, GiftEvent, OrderEvent, ViewerEvent

VIEWER_TOPIC, ORDER_TOPIC, GIFT_TOPIC = "live.viewer", "live.order", "live.gift"


@dataclass(frozen=True, slots=True)
class Mix:
    """Shape of the traffic: shares by topic, room popularity, event rate in event time."""

    rooms: int = 10_000
    zipf_s: float = 1.1
    hot_room_share: float = 0.30
    viewer_share: float = 0.80
    gift_share: float = 0.15
    rate_per_s: int = 100_000
    users: int = 2_000_000


class Synth:
    """Seeded generator of ``(topic, event)`` pairs in roughly increasing event time."""

    def __init__(self, mix: Mix, *, seed: int, start_ms: int) -> None:
        self.mix = mix
        self._rng = random.Random(seed)
        weights = [1 / (rank**mix.zipf_s) for rank in range(1, mix.rooms + 1)]
        total = sum(weights)
        self._cdf = list(itertools.accumulate(w / total for w in weights))
        self._t_ms = float(start_ms)
        self._step_ms = 1_000 / mix.rate_per_s
        self._order_seq = 0
        self._paid_pending: list[tuple[str, str, str, int]] = []

    def room(self) -> str:
        rng = self._rng
        if rng.random() < self.mix.hot_room_share:
            return "room-hot"
        return f"room-{bisect.bisect_left(self._cdf, rng.random())}"

    def events(self, n: int, *, disorder_ms: int = 0) -> Iterator[tuple[str, Event]]:
        rng, mix = self._rng, self.mix
        viewer_cut, gift_cut = mix.viewer_share, mix.viewer_share + mix.gift_share
        for _ in range(n):
            self._t_ms += self._step_ms
            ts = int(self._t_ms) - (rng.randrange(disorder_ms) if disorder_ms else 0)
            room = self.room()
            user = f"user-{rng.randrange(mix.users)}"
            roll = rng.random()
            if roll < viewer_cut:
                kind = rng.choices(("join", "leave", "heartbeat", "like", "comment"), (30, 20, 30, 15, 5))[0]
                yield VIEWER_TOPIC, ViewerEvent(kind, room, user, ts)
            elif roll < gift_cut:
                count = rng.choice((1, 1, 1, 5, 10, 99))
                gift_id = f"g-{ts}-{rng.randrange(10**9)}"
                yield GIFT_TOPIC, GiftEvent(gift_id, room, user, ts, count, count * 100)
            else:
                yield ORDER_TOPIC, self._order(room, user, ts)

    def _order(self, room: str, user: str, ts: int) -> OrderEvent:
        rng = self._rng
        if self._paid_pending and rng.random() < 0.5:
            order_id, room, user, amount = self._paid_pending.pop()
            status = rng.choices(("paid", "cancelled", "refunded"), (85, 10, 5))[0]
            return OrderEvent(order_id, room, user, ts, status, amount, "CNY")
        self._order_seq += 1
        order_id = f"o-{self._order_seq}"
        amount = rng.choice((990, 1_990, 4_990, 9_900, 29_900))
        if len(self._paid_pending) < 10_000:
            self._paid_pending.append((order_id, room, user, amount))
        return OrderEvent(order_id, room, user, ts, "created", amount, "CNY")


def encode_event(ev: Event) -> bytes:
    """The wire form of an input event (one JSON object)."""
    return orjson.dumps(ev._asdict())
