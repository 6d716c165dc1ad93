"""Named, composable load-test scenarios layered on the base traffic of ``loadtest.traffic``.

``steady``       the base mix only (always present; naming it alone means "nothing injected")
``trending``     one room's viewer traffic jumps x10 within seconds, orders x5 follow 10 s later
``flash-sale``   one room's orders jump x20 for two minutes
``hot-room``     a debut room appears with a large share of all traffic and a 2-million-viewer audience
``late``         out-of-order events (within grace) throughout; in real time also events far behind
                 the watermark (late), placed mid-window so where they are charged is unambiguous
``malformed``    a share of messages that must be dead-lettered, each with a known reason code

Each scenario (a :class:`~loadtest.traffic.Scenario`) plans itself when a
phase starts (picks its room, records an :class:`~loadtest.traffic.Injection`
with known start and size) and adds its events tick by tick; the model takes
them as objects and imports nothing from here. :func:`build` turns ``"steady,trending,hot-room"`` into
scenario objects placed on a phase's timeline, after the spike detector's
warm-up so that a spike is a spike.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from streams.core import DEFAULT_RULES

from .traffic import GIFT, ORDER, VIEWER, Injection, Scenario, TickContext, kept, zipf_shares

NAMES = ("steady", "trending", "flash-sale", "hot-room", "late", "malformed")
#: windows of history the spike detector needs before a spike (not a surge) can fire, plus margin
WARMUP_WINDOWS = 20


def warmup_s(window_ms: int) -> float:
    """Seconds of history before a spike can fire: the detector's warm-up (in seconds) plus two
    windows, and never less than ``WARMUP_WINDOWS`` windows."""
    warmup = max(rule.warmup_s for rule in DEFAULT_RULES.defaults.values())
    return max(WARMUP_WINDOWS * window_ms / 1000, warmup + 2 * window_ms / 1000)


@dataclass
class Trending(Scenario):
    """Viewer traffic of one mid-popularity room x``factor`` (ramped over ``ramp_s``), orders following."""

    at_s: float
    duration_s: float = 60.0
    factor: float = 10.0
    ramp_s: float = 3.0
    orders_factor: float = 5.0
    orders_lag_s: float = 10.0
    #: base views (joins) per second wanted in the chosen room before the spike
    target_views_per_s: float = 4.0
    name = "trending"

    def plan(self, ctx: TickContext) -> None:
        c, model = ctx.config, ctx.model
        per_room_joins = model.rate_at(ctx.out.start_ms) * c.viewer_share * 0.25
        self._rank = model.pick_room(per_room_joins, self.target_views_per_s, min_rank=2)
        self._start = ctx.out.start_ms + int(self.at_s * 1000)
        self._end = self._start + int(self.duration_s * 1000)
        room = model.room_ids[self._rank]
        base = per_room_joins * model.popularity[self._rank]
        ctx.out.injections.append(
            Injection(
                self.name,
                room,
                self._start,
                self._end,
                self.factor,
                ("views_per_sec", "unique_viewers", "orders_per_sec", "concurrent_viewers"),
                f"views x{self.factor:g} from ~{base:.1f}/s, orders x{self.orders_factor:g} after "
                f"{self.orders_lag_s:g} s, for {self.duration_s:g} s",
            )
        )

    def tick(self, ctx: TickContext) -> None:
        t0 = ctx.t0
        if not self._start <= t0 < self._end:
            return
        c, model, rng = ctx.config, ctx.model, ctx.rng
        ramp = min(1.0, (t0 - self._start) / 1000 / self.ramp_s) if self.ramp_s else 1.0
        factor = 1 + (self.factor - 1) * ramp
        room_rate = model.rate_at(t0) * model.popularity[self._rank]
        room, key, part = model.room_key(self._rank)
        for _ in range(ctx.count_for((factor - 1) * room_rate * c.viewer_share)):
            kind = ctx.viewer_kind()
            user = f"u{int(rng.random() * c.users)}"
            ctx.viewer_in(room, key, part, kind, user, t0 + int(rng.random() * c.tick_ms))
        if t0 >= self._start + self.orders_lag_s * 1000:
            order_rate = (1 - c.viewer_share - c.gift_share) * room_rate
            for _ in range(ctx.count_for((self.orders_factor - 1) * order_rate)):
                user = f"u{int(rng.random() * c.users)}"
                ctx.order_in(room, key, part, user, t0 + int(rng.random() * c.tick_ms))


@dataclass
class FlashSale(Scenario):
    """Orders of one room x``factor`` for ``duration_s``."""

    at_s: float
    duration_s: float = 120.0
    factor: float = 20.0
    #: base paid orders per second wanted in the chosen room before the sale
    target_paid_per_s: float = 0.25
    name = "flash-sale"

    def plan(self, ctx: TickContext) -> None:
        c, model = ctx.config, ctx.model
        self._order_share = 1 - c.viewer_share - c.gift_share
        per_room_paid = model.rate_at(ctx.out.start_ms) * self._order_share * c.paid_p
        self._rank = model.pick_room(per_room_paid, self.target_paid_per_s, min_rank=2)
        self._start = ctx.out.start_ms + int(self.at_s * 1000)
        self._end = self._start + int(self.duration_s * 1000)
        base = per_room_paid * model.popularity[self._rank]
        ctx.out.injections.append(
            Injection(
                self.name,
                model.room_ids[self._rank],
                self._start,
                self._end,
                self.factor,
                ("orders_per_sec", "gmv_per_sec"),
                f"orders x{self.factor:g} from ~{base:.2f} paid/s for {self.duration_s:g} s",
            )
        )

    def tick(self, ctx: TickContext) -> None:
        t0 = ctx.t0
        if not self._start <= t0 < self._end:
            return
        c, model, rng = ctx.config, ctx.model, ctx.rng
        room, key, part = model.room_key(self._rank)
        rate = (self.factor - 1) * self._order_share * model.rate_at(t0) * model.popularity[self._rank]
        for _ in range(ctx.count_for(rate)):
            user = f"u{int(rng.random() * c.users)}"
            ctx.order_in(room, key, part, user, t0 + int(rng.random() * c.tick_ms))


@dataclass
class HotRoom(Scenario):
    """A debut room: from ``at_s`` on, ``share`` of all traffic, an audience of ``viewers`` people."""

    at_s: float
    share: float = 0.3
    viewers: int = 2_000_000
    name = "hot-room"

    def plan(self, ctx: TickContext) -> None:
        model = ctx.model
        self._room = f"debut-{model.seed}-{ctx.out.start_ms}"
        self._key, self._part = model.key_and_partition(self._room)
        self._start = ctx.out.start_ms + int(self.at_s * 1000)
        ctx.out.injections.append(
            Injection(
                self.name,
                self._room,
                self._start,
                ctx.out.end_ms,
                self.share,
                ("views_per_sec", "unique_viewers", "concurrent_viewers"),
                f"new room with {self.share:.0%} of all traffic, audience of {self.viewers:,}",
            )
        )

    def tick(self, ctx: TickContext) -> None:
        t0 = ctx.t0
        if t0 < self._start:
            return
        c, rng = ctx.config, ctx.rng
        room, key, part = self._room, self._key, self._part
        rate = self.share / (1 - self.share) * ctx.model.rate_at(t0)
        for _ in range(ctx.count_for(rate)):
            ts = t0 + int(rng.random() * c.tick_ms)
            user = f"d{int(rng.random() * self.viewers)}"
            u = rng.random()
            if u < 0.85:  # a debut: mostly people arriving and staying
                v = rng.random()
                kind = "join" if v < 0.4 else "leave" if v < 0.45 else "heartbeat" if v < 0.8 else "like"
                if v > 0.95:
                    kind = "comment"
                ctx.viewer_in(room, key, part, kind, user, ts)
            elif u < 0.95:
                ctx.gift_in(room, key, part, user, ts)
            else:
                ctx.order_in(room, key, part, user, ts)


@dataclass
class Late(Scenario):
    """Out-of-order events within grace throughout; in real time, also events older than the watermark."""

    grace_ms: int
    window_ms: int
    disorder_share: float = 0.05
    #: out-of-order displacement as a fraction of grace (never late: the worker's lateness is exact)
    disorder_frac: float = 0.5
    late_share: float = 0.002
    #: in real time, start late events this many seconds into the phase (all inputs flowing by then)
    settle_s: float = 5.0
    #: how far behind the watermark, beyond grace: far more than any processing lag, so lateness
    #: does not depend on how a lagging consumer interleaves the three input topics
    behind_s: tuple[int, int] = (60, 120)
    name = "late"

    def plan(self, ctx: TickContext) -> None:
        ctx.disorder = (self.disorder_share, int(self.disorder_frac * self.grace_ms))
        self._from = ctx.out.start_ms + int(self.settle_s * 1000)

    def tick(self, ctx: TickContext) -> None:
        out, t0 = ctx.out, ctx.t0
        if not out.realtime or t0 < self._from:
            return
        # The watermark is about t0 - grace. Send late events only while it sits mid-window, so the
        # window a late event is charged to does not depend on a few hundred ms of processing delay.
        into = (t0 - self.grace_ms) % self.window_ms
        if not 0.3 * self.window_ms <= into <= 0.7 * self.window_ms:
            return
        c, model, rng = ctx.config, ctx.model, ctx.rng
        for _ in range(ctx.count_for(self.late_share * model.rate_at(t0))):
            rank = min(int(rng.random() ** 3 * c.rooms), c.rooms - 1)
            behind_ms = self.grace_ms + 1_000 * rng.randint(*self.behind_s)
            user = f"u{int(rng.random() * c.users)}"
            if rng.random() < 0.7:
                ctx.viewer(
                    rank, ("like", "heartbeat", "comment")[int(rng.random() * 3)], user, t0 - behind_ms
                )
            else:
                ctx.gift(rank, user, t0 - behind_ms)
            out.late_events += 1


def _raw(obj: object) -> bytes:
    return kept(orjson.dumps(obj))


@dataclass
class Malformed(Scenario):
    """``share`` of all messages are malformed, each kind with the reason code it must be dead-lettered as."""

    share: float = 0.005
    name = "malformed"

    def tick(self, ctx: TickContext) -> None:
        rng, model = ctx.rng, ctx.model
        for _ in range(ctx.count_for(self.share * model.rate_at(ctx.t0))):
            ts = ctx.t0 + int(rng.random() * ctx.config.tick_ms)
            room, key, part = model.room_key(int(rng.random() * ctx.config.rooms))
            source, raw, reason = _MALFORMED[int(rng.random() * len(_MALFORMED))](room, ts)
            ctx.emit_raw(source, part, key, raw, ts, reason)


def _viewer(room: str, ts: object, **extra: object) -> dict[str, object]:
    return {"type": "like", "room_id": room, "user_id": "u-bad", "ts": ts, **extra}


def _order(room: str, ts: int, **change: object) -> dict[str, object]:
    base: dict[str, object] = {
        "order_id": "o-bad",
        "room_id": room,
        "user_id": "u-bad",
        "ts": ts,
        "status": "paid",
        "amount_minor": 100,
        "currency": "CNY",
    }
    return base | change


def _gift(room: str, ts: int, **change: object) -> dict[str, object]:
    base: dict[str, object] = {
        "gift_id": "g-bad",
        "room_id": room,
        "user_id": "u-bad",
        "ts": ts,
        "count": 1,
        "value_minor": 100,
    }
    return base | change


_DAY_MS = 86_400_000
# (room, ts) -> (source, raw bytes, expected dead-letter reason)
_MALFORMED = (
    lambda room, ts: (VIEWER, b'{"type": "join", "room_id": "' + room.encode(), "invalid_json"),
    lambda room, ts: (VIEWER, b"\xff\xfe\x00garbage", "invalid_json"),
    lambda room, ts: (GIFT, _raw(["join", room, "u", ts]), "not_an_object"),
    lambda room, ts: (VIEWER, _raw({"type": "join", "user_id": "u", "ts": ts}), "missing_field:room_id"),
    lambda room, ts: (VIEWER, _raw(_viewer(room, str(ts))), "bad_type:ts"),
    lambda room, ts: (VIEWER, _raw(_viewer(room, ts) | {"type": "teleport"}), "unknown_enum:type"),
    lambda room, ts: (VIEWER, _raw(_viewer(room, ts + 2 * _DAY_MS)), "ts_skew"),
    lambda room, ts: (VIEWER, _raw(_viewer(room, ts, note="x" * 9_000)), "oversized"),
    lambda room, ts: (ORDER, _raw(_order(room, ts, amount_minor=-5)), "out_of_range:amount_minor"),
    lambda room, ts: (ORDER, _raw(_order(room, ts, currency="cny")), "bad_format:currency"),
    lambda room, ts: (ORDER, _raw(_order(room, ts, status="shipped")), "unknown_enum:status"),
    lambda room, ts: (ORDER, _raw(_order(room, ts, amount_minor=True)), "bad_type:amount_minor"),
    lambda room, ts: (VIEWER, b"", "invalid_json"),
    lambda room, ts: (VIEWER, b"null", "not_an_object"),
    lambda room, ts: (VIEWER, _raw(_viewer(room, ts) | {"room_id": ""}), "out_of_range:room_id"),
    lambda room, ts: (VIEWER, _raw(_viewer(room, ts) | {"room_id": 42}), "bad_type:room_id"),
    lambda room, ts: (
        VIEWER,
        _raw(_viewer(room, ts) | {"room_id": room + "\x1b[2J"}),
        "control_chars:room_id",
    ),
    lambda room, ts: (VIEWER, _raw(_viewer(room, ts) | {"user_id": "u\n[FIRING]"}), "control_chars:user_id"),
    lambda room, ts: (ORDER, _raw(_order(room, ts, order_id="o\x00")), "control_chars:order_id"),
    lambda room, ts: (ORDER, _raw(_order(room, ts, currency=5)), "bad_type:currency"),
    lambda room, ts: (GIFT, _raw(_gift(room, ts, count=0)), "out_of_range:count"),
    lambda room, ts: (
        GIFT,
        _raw({k: v for k, v in _gift(room, ts).items() if k != "gift_id"}),
        "missing_field:gift_id",
    ),
)
#: every reason class an input message can be dead-lettered with (``_MALFORMED`` covers each)
REASON_CLASSES = frozenset(
    {
        "oversized",
        "invalid_json",
        "not_an_object",
        "missing_field",
        "bad_type",
        "out_of_range",
        "unknown_enum",
    }
    | {"bad_format", "control_chars", "ts_skew"}
)


def malformed(i: int, room: str, ts: int) -> tuple[int, bytes, str]:
    """The ``i``-th malformed message (cycling through every kind): (source, raw bytes, reason code)."""
    return _MALFORMED[i % len(_MALFORMED)](room, ts)


def parse(spec: str) -> list[str]:
    """``"steady,trending"`` -> names; ``"all"`` -> every scenario. Unknown names are an error."""
    names = list(NAMES) if spec.strip() == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise ValueError(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(NAMES)}")
    return names or ["steady"]


def build(
    names: Sequence[str], *, span_s: float, window_ms: int, grace_ms: int, spikes_at_s: float | None = None
) -> list[Scenario]:
    """Scenario objects for one phase of ``span_s`` seconds.

    Spikes start at ``spikes_at_s`` (default: right after the detector's
    warm-up, ``warmup_s``); the debut starts halfway through.
    """
    window_s = window_ms / 1000
    at = spikes_at_s if spikes_at_s is not None else warmup_s(window_ms)
    out: list[Scenario] = []
    for name in names:
        if name == "trending":
            out.append(Trending(at_s=at, duration_s=max(6 * window_s, min(60.0, span_s - at - 3 * window_s))))
        elif name == "flash-sale":
            out.append(
                FlashSale(at_s=at, duration_s=min(120.0, max(6 * window_s, span_s - at - 3 * window_s)))
            )
        elif name == "hot-room":
            out.append(HotRoom(at_s=max(at, span_s / 2)))
        elif name == "late":
            out.append(Late(grace_ms=grace_ms, window_ms=window_ms))
        elif name == "malformed":
            out.append(Malformed())
    return out


def min_span_s(names: Sequence[str], window_ms: int) -> float:
    """Shortest phase in which every named spike can warm up, happen and resolve."""
    window_s = window_ms / 1000
    warm = warmup_s(window_ms)
    need = 0.0
    if "trending" in names:
        need = max(need, warm + (6 + 4) * window_s)
    if "flash-sale" in names:
        need = max(need, warm + 120 + 4 * window_s)
    if "hot-room" in names:
        need = max(need, 2 * (warm + 4 * window_s))
    return need


@dataclass
class Filler(Scenario):
    """Extra load in a second, separate population of rooms (``<prefix><rank>``) at ``rate_per_s``.

    Lets a live phase run at a target rate while the backlog's rooms keep
    their own rate (a jump in every known room would be, rightly, a spike).
    """

    rate_per_s: float
    rooms: int = 10_000
    prefix: str = "L"
    name = "filler"

    def plan(self, ctx: TickContext) -> None:
        self._cdf = list(itertools.accumulate(zipf_shares(self.rooms, ctx.config.zipf_s)))
        self._rooms = [ctx.model.key_and_partition(f"{self.prefix}{r}") for r in range(self.rooms)]

    def tick(self, ctx: TickContext) -> None:
        c, rng = ctx.config, ctx.rng
        last = self.rooms - 1
        for _ in range(ctx.count_for(self.rate_per_s)):
            rank = min(bisect.bisect_left(self._cdf, rng.random()), last)
            room, (key, part) = f"{self.prefix}{rank}", self._rooms[rank]
            ts = ctx.t0 + int(rng.random() * c.tick_ms)
            user = f"u{int(rng.random() * c.users)}"
            ctx.base_event_in(room, key, part, user, ts)
