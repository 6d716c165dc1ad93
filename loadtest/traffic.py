"""The one seeded traffic model: rooms, viewers, orders, gifts, with injected scenarios.

It feeds the load test, the fault suite, the demo, the core benchmark and the
integration tests, and :func:`encode` is the one place an input event becomes
wire bytes. A :class:`TrafficModel` generates one *phase* at a time (a
compressed backlog or a real-time stretch), or an endless stream
(:meth:`TrafficModel.ticks`), in ticks of event time. Each tick it draws the base
mix — Zipf-skewed room popularity over a uniform floor, viewer
join/leave/heartbeat/like/comment, orders created -> paid (some cancelled,
refunded or re-sent by a retrying client), gifts — at a rate that drifts
diurnally, then lets the active scenarios (``loadtest.scenarios``) add their
events. Output is a :class:`Phase`: messages in production order, each with
its input source, partition (murmur2 of the room, as the Java client picks),
key, payload and event (``None`` for a malformed message), plus the injected
spikes with their known room, start and size. Scenarios are injected objects
(:class:`Scenario`); this module does not know them.

Same seed, config and start time give the same bytes. The model carries state
across phases (order numbers, rooms used by injections), so a backlog and the
live phase after it form one consistent stream.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import heapq
import itertools
import math
import os
import random
import struct
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

import orjson

from schemas import Event, GiftEvent, OrderEvent, Source, ViewerEvent
from streams.core import partition_for

VIEWER, ORDER, GIFT = int(Source.VIEWER), int(Source.ORDER), int(Source.GIFT)
SOURCE_NAMES = ("viewer", "order", "gift")
VIEWER_KINDS = ("join", "leave", "heartbeat", "like", "comment", "share")
#: share of viewer actions by kind for an ordinary room
VIEWER_WEIGHTS = (0.25, 0.20, 0.30, 0.15, 0.05, 0.05)
#: gift sizes: mostly single small gifts, rarely a big combo (uniform draws from these tables)
GIFT_COUNTS = (1,) * 14 + (5, 5, 5, 10, 10, 99)
GIFT_PRICES_MINOR = (10, 10, 100, 100, 100, 500, 1_000)
ORDER_AMOUNTS_MINOR = (990, 1_990, 4_990, 9_900, 29_900, 129_900)

#: one message: (source, partition, key, payload, event time ms, event or None when malformed)
Message = tuple[int, int, bytes, bytes, int, Event | None]
#: one message as a sender needs it: the event replaced by whether there is one (not malformed)
Wire = tuple[int, int, bytes, bytes, int, bool]
#: one message's header in a :class:`MessageLog`: payload length, key length, source,
#: well-formed, partition, event time
_HEADER = struct.Struct("<IHbbiq")
#: bytes of records a :class:`MessageLog` holds in memory before it moves them to a file
LOG_SPILL_BYTES = 32 * 1024 * 1024
_READ_BLOCK = 4 * 1024 * 1024
#: the event type of each input source, to read a well-formed payload back (see ``encode``)
_EVENT_TYPES: tuple[type[ViewerEvent], type[OrderEvent], type[GiftEvent]] = (
    ViewerEvent,
    OrderEvent,
    GiftEvent,
)


class MessageLog:
    """Messages in production order, each held as one packed record: a 20-byte header (payload and
    key lengths, source, well-formedness, partition, event time), the key, the payload.

    A generated message held as a tuple with its event object took ~455 bytes (1.43 M messages of
    a 100 000-room backlog: 650 MB); here it takes its key and payload plus 20 bytes. Past
    ``spill_bytes`` (default ``LOG_SPILL_BYTES``) the records move to an anonymous temporary file
    and every read goes through it a block at a time, so a phase of millions of messages does not
    stay in the load test's memory. The events are not kept: iterating reads each well-formed
    payload back into the event it was encoded from (``encode`` is
    ``orjson.dumps(event._asdict())``, so the fields come back as they went out); :meth:`wire`
    skips that for senders. Appending takes a :data:`Message`, as a list would.
    """

    __slots__ = ("_buf", "_file", "_filed", "_parts", "_spill_bytes")

    def __init__(self, messages: Iterable[Message] = (), *, spill_bytes: int | None = None) -> None:
        self._buf = bytearray()  # records not in the file yet (all of them until it spills)
        self._file: BinaryIO | None = None
        self._filed = 0  # bytes of records in the file; the buffer's records come after them
        self._parts: Counter[int] = Counter()  # messages per partition
        self._spill_bytes = LOG_SPILL_BYTES if spill_bytes is None else spill_bytes
        for message in messages:
            self.append(message)

    def append(self, message: Message) -> None:
        source, part, key, raw, ts, ev = message
        buf = self._buf
        buf += _HEADER.pack(len(raw), len(key), source, ev is not None, part, ts)
        buf += key
        buf += raw
        self._parts[part] += 1
        if len(buf) >= self._spill_bytes:
            self._spill()

    def __len__(self) -> int:
        return self._parts.total()

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def clear(self) -> None:
        del self._buf[:]
        if self._file is not None:
            self._file.close()
            self._file = None
        self._filed = 0
        self._parts.clear()

    def __del__(self) -> None:
        if self._file is not None:
            self._file.close()

    def shared_file(self) -> tuple[int, int]:
        """Every record written out to the spill file: its descriptor and size in bytes, for a child
        process to read the log through (``from_fd``; pass the descriptor on with ``pass_fds``). The
        log goes on as before; records appended later are not in that size."""
        if self._buf or self._file is None:
            self._spill()
        assert self._file is not None
        return self._file.fileno(), self._filed

    @classmethod
    def from_fd(cls, fd: int, size: int, parts: Mapping[int, int]) -> MessageLog:
        """The log another process shared (``shared_file``): its first ``size`` bytes of records
        in file ``fd`` (now owned by the log), of which ``parts`` gives the messages per partition."""
        log = cls()
        log._file = os.fdopen(fd, "rb")
        log._filed = size
        log._parts.update(parts)
        return log

    def _spill(self) -> None:
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="livepulse-messages-")  # noqa: SIM115 (closed by clear/del)
        self._file.write(self._buf)
        self._file.flush()  # read back with pread, below the file object's buffer
        self._filed += len(self._buf)
        del self._buf[:]

    def _blocks(self) -> Iterator[bytes]:
        """The records in order, in blocks of whole records or not (the reader joins them). As a
        list's iterator, it goes on to messages appended while it reads, wherever they are by then:
        a position in the log is one in the file's bytes, then in the buffer's."""
        at = 0
        while True:
            filed = self._filed
            if at < filed:
                assert self._file is not None
                block = os.pread(self._file.fileno(), min(_READ_BLOCK, filed - at), at)
                at += len(block)
                yield block
                continue
            with memoryview(self._buf) as view:  # a copy: a view held would keep the buffer from growing
                tail = bytes(view[at - filed :])
            if not tail:
                return
            at += len(tail)
            yield tail

    def _records(
        self, partition: int | None = None
    ) -> Iterator[tuple[int, int, int, int, memoryview, memoryview]]:
        """``(source, partition, event time, well-formed, key view, payload view)`` in order, of one
        partition or all."""
        unpack, size = _HEADER.unpack_from, _HEADER.size
        rest = b""
        for block in self._blocks():
            data = memoryview(rest + block if rest else block)
            at, end = 0, len(data)
            while end - at >= size:
                n_raw, n_key, source, valid, part, ts = unpack(data, at)
                stop = at + size + n_key + n_raw
                if stop > end:
                    break
                if partition is not None and part != partition:
                    at = stop
                    continue
                key_at = at + size
                raw_at = key_at + n_key
                yield source, part, ts, valid, data[key_at:raw_at], data[raw_at:stop]
                at = stop
            rest = bytes(data[at:])
            data.release()
        if rest:
            raise ValueError("a message log ends inside a record")

    def wire(self) -> Iterator[Wire]:
        """``(source, partition, key, payload, event time, well-formed)`` in order, without events."""
        for source, part, ts, valid, key, raw in self._records():
            yield source, part, bytes(key), bytes(raw), ts, bool(valid)

    def __iter__(self) -> Iterator[Message]:
        types, loads = _EVENT_TYPES, orjson.loads
        for source, part, key, raw, ts, valid in self.wire():
            yield source, part, key, raw, ts, types[source](**loads(raw)) if valid else None

    def events_of(
        self, partition: int, keep: Callable[[memoryview], bool] | None = None
    ) -> Iterator[tuple[int, Event | int]]:
        """``(source, event)`` of the well-formed messages of one partition, in order. With ``keep``
        (of a message's key), the messages it refuses give their event time instead of their event
        (they are not decoded)."""
        types, loads = _EVENT_TYPES, orjson.loads
        for source, _part, ts, valid, key, raw in self._records(partition):
            if not valid:
                continue
            if keep is None or keep(key):
                yield source, types[source](**loads(raw))
            else:
                yield source, ts

    def partitions(self) -> set[int]:
        return set(self._parts)

    def count_of(self, partition: int) -> int:
        """Messages of ``partition``, malformed ones included."""
        return self._parts[partition]


@dataclass(frozen=True, slots=True)
class TrafficConfig:
    """Shape of the base traffic. Rates are in events per second of event time."""

    rooms: int = 10_000
    users: int = 1_000_000
    zipf_s: float = 1.1
    #: share of events spread uniformly over all rooms (every room has a trickle of life)
    floor_share: float = 0.2
    rate_per_s: float = 20_000.0
    viewer_share: float = 0.80
    gift_share: float = 0.15
    #: the rest are newly created orders; their later statuses come on top
    diurnal_amplitude: float = 0.25
    diurnal_period_s: float = 3_600.0
    paid_p: float = 0.75
    cancelled_p: float = 0.20
    refunded_p: float = 0.04
    retry_p: float = 0.02
    #: follow-up delays (created -> paid/cancelled, paid -> refunded), seconds of event time
    pay_delay_s: tuple[float, float] = (1.0, 15.0)
    refund_delay_s: tuple[float, float] = (5.0, 60.0)
    #: a retried message is re-sent unchanged within this many ms (must stay well inside grace)
    retry_delay_ms: tuple[int, int] = (50, 500)
    #: share of base events displaced back in event time by up to ``disorder_ms`` (out of order;
    #: keep it inside the grace period, or they are late). The ``late`` scenario sets its own.
    disorder_share: float = 0.0
    disorder_ms: int = 0
    tick_ms: int = 100
    partitions: int = 4
    currency: str = "CNY"

    def __post_init__(self) -> None:
        if self.rooms < 10 or self.rate_per_s <= 0 or self.tick_ms <= 0 or self.partitions <= 0:
            raise ValueError("need rooms >= 10, rate_per_s > 0, tick_ms > 0, partitions > 0")
        if not 0 <= self.floor_share < 1 or self.viewer_share + self.gift_share >= 1:
            raise ValueError("shares out of range")
        if not 0 <= self.disorder_share <= 1 or self.disorder_ms < 0:
            raise ValueError("need 0 <= disorder_share <= 1, disorder_ms >= 0")


@dataclass(frozen=True, slots=True)
class Injection:
    """A scenario event with known room, start, end (event time, ms) and size."""

    scenario: str
    room_id: str
    start_ms: int
    end_ms: int
    #: multiplier over the room's base rate (or its share of all traffic, for a debut)
    size: float
    #: detector metrics expected to alert (any one suffices)
    metrics: tuple[str, ...]
    detail: str = ""


@dataclass
class Phase:
    """One generated stretch of traffic, in production order."""

    start_ms: int
    end_ms: int
    realtime: bool
    messages: MessageLog = field(default_factory=MessageLog)
    injections: list[Injection] = field(default_factory=list)
    #: expected dead-letter reason code -> count
    malformed: Counter[str] = field(default_factory=Counter)
    #: events deliberately older than the watermark will be when they arrive
    late_events: int = 0

    @property
    def events(self) -> int:
        return len(self.messages) - sum(self.malformed.values())


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector: millions of live tuples make each pass cost seconds."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def zipf_shares(rooms: int, s: float) -> list[float]:
    """Each room's share of the traffic by popularity rank (0 the most popular): Zipf, exponent ``s``."""
    weights = [1.0 / (rank**s) for rank in range(1, rooms + 1)]
    total = sum(weights)
    return [w / total for w in weights]


def kept(raw: bytes) -> bytes:
    """A copy of ``raw`` the size of its bytes, for messages held until they are sent or checked.

    orjson (3.13) hands back each ``dumps`` result in a 4 KB allocation, whatever its length: a
    backlog of 1.4 M messages of ~100 bytes held 6.4 GB of them, and the load test's process was
    killed at 23 GB with a live phase on top. A copy of a short message costs ~0.1 µs."""
    return bytes(memoryview(raw))


def encode(ev: Event) -> bytes:
    """Wire form of an input event: one JSON object, fields named and ordered as in ``schemas``."""
    return kept(orjson.dumps(ev._asdict()))


class Scenario:
    """Base of what a phase runs beside the base mix: planned once, then called every tick.

    ``loadtest.scenarios`` holds the real ones; this one adds nothing ("steady").
    """

    name = "steady"

    def plan(self, ctx: TickContext) -> None:
        """Called once when the phase starts."""

    def tick(self, ctx: TickContext) -> None:
        """Called once per tick after the base traffic."""


class TrafficModel:
    """Seeded generator of phases; see the module docstring."""

    def __init__(self, config: TrafficConfig, *, seed: int) -> None:
        self.config = config
        self.seed = seed
        self.rng = random.Random(seed)
        c = config
        shares = zipf_shares(c.rooms, c.zipf_s)
        self.popularity = [(1 - c.floor_share) * w + c.floor_share / c.rooms for w in shares]
        self._zipf_cdf = list(itertools.accumulate(shares))
        self.room_ids = [f"r{rank}" for rank in range(c.rooms)]
        self._keys = [room.encode() for room in self.room_ids]
        self._parts = [partition_for(key, c.partitions) for key in self._keys]
        self._order_seq = 0
        self._gift_seq = 0
        self._seq = itertools.count()
        #: rooms claimed by injections, so two scenarios never share a room
        self.claimed: set[int] = set()
        #: event time the diurnal cycle counts from: the start of the first phase
        self.origin_ms: int | None = None

    # -- helpers for scenarios ----------------------------------------------------------

    def rate_at(self, ts_ms: int) -> float:
        """Base events/s at an event time (diurnal drift)."""
        c = self.config
        since_s = (ts_ms - (self.origin_ms if self.origin_ms is not None else ts_ms)) / 1000
        phase = 2 * math.pi * (since_s % c.diurnal_period_s) / c.diurnal_period_s
        return c.rate_per_s * (1 + c.diurnal_amplitude * math.sin(phase))

    def pick_room(self, per_room_rate: float, target: float, *, min_rank: int = 1) -> int:
        """Unclaimed room (by rank) whose ``per_room_rate * popularity`` is closest to ``target``."""
        best, best_gap = min_rank, math.inf
        for rank in range(min_rank, self.config.rooms):
            if rank in self.claimed:
                continue
            gap = abs(math.log(max(per_room_rate * self.popularity[rank], 1e-12) / target))
            if gap < best_gap:
                best, best_gap = rank, gap
        self.claimed.add(best)
        return best

    def key_and_partition(self, room_id: str) -> tuple[bytes, int]:
        key = room_id.encode()
        return key, partition_for(key, self.config.partitions)

    def room_key(self, rank: int) -> tuple[str, bytes, int]:
        return self.room_ids[rank], self._keys[rank], self._parts[rank]

    def new_order_id(self) -> str:
        self._order_seq += 1
        return f"o{self.seed}-{self._order_seq}"

    def new_gift_id(self) -> str:
        self._gift_seq += 1
        return f"g{self.seed}-{self._gift_seq}"

    # -- generation -------------------------------------------------------------------

    def phase(
        self,
        start_ms: int,
        duration_s: float,
        scenarios: Sequence[Scenario] = (),
        *,
        realtime: bool = False,
    ) -> Phase:
        """Generate ``duration_s`` of event time from ``start_ms``.

        ``realtime`` says the phase will be produced as it happens (event time
        = wall time); scenarios whose outcome depends on arrival order (late
        events) only act then. Follow-ups due after the phase are dropped
        (orders left unpaid): the next phase must not start with events from
        its past.
        """
        out = Phase(start_ms=start_ms, end_ms=start_ms + int(duration_s * 1000), realtime=realtime)
        ticks = math.ceil(duration_s * 1000 / self.config.tick_ms)
        for _ in itertools.islice(self._run(out, scenarios), ticks):
            pass
        return out

    def ticks(
        self, start_ms: int, scenarios: Sequence[Scenario] = (), *, realtime: bool = True
    ) -> Iterator[MessageLog]:
        """Endless traffic from ``start_ms``, one tick's messages at a time (for paced senders).

        Order follow-ups carry across ticks; each log is reused, so consume it
        before the next. Scenarios that end with a phase see one that never ends.
        """
        out = Phase(start_ms=start_ms, end_ms=2**62, realtime=realtime)
        for _ in self._run(out, scenarios):
            yield out.messages
            out.messages.clear()

    def _run(self, out: Phase, scenarios: Sequence[Scenario]) -> Iterator[int]:
        """Generate tick after tick into ``out``; yields each tick's start."""
        c = self.config
        if self.origin_ms is None:
            self.origin_ms = out.start_ms
        ctx = TickContext(self, out)
        for scenario in scenarios:
            scenario.plan(ctx)
        carry = 0.0
        for k in itertools.count():
            t0 = out.start_ms + k * c.tick_ms
            expected = self.rate_at(t0) * c.tick_ms / 1000 + carry
            n = int(expected)
            carry = expected - n
            ctx.begin_tick(t0, n)
            self._base_tick(ctx, t0, n)
            for scenario in scenarios:
                scenario.tick(ctx)
            ctx.flush_due(t0 + c.tick_ms)
            yield t0

    def _base_tick(self, ctx: TickContext, t0: int, n: int) -> None:
        c = self.config
        rnd = self.rng.random
        tick = c.tick_ms
        floor, rooms = c.floor_share, c.rooms
        cdf, bis = self._zipf_cdf, bisect.bisect_left
        viewer_cut, gift_cut = c.viewer_share, c.viewer_share + c.gift_share
        kinds, n_kinds = KIND_TABLE, len(KIND_TABLE)
        users = c.users
        last = rooms - 1
        room_ids, keys, parts = self.room_ids, self._keys, self._parts
        emit, new = ctx.out.messages.append, tuple.__new__
        disorder_share, disorder_ms = ctx.disorder
        for _ in range(n):
            ts = t0 + int(rnd() * tick)
            if disorder_share and rnd() < disorder_share:
                ts -= int(rnd() * disorder_ms)
            rank = int(rnd() * rooms) if rnd() < floor else min(bis(cdf, rnd()), last)
            user = f"u{int(rnd() * users)}"
            u = rnd()
            if u < viewer_cut:  # the common case, inlined
                ev = new(ViewerEvent, (kinds[int(rnd() * n_kinds)], room_ids[rank], user, ts))
                emit((VIEWER, parts[rank], keys[rank], encode(ev), ts, ev))
            elif u < gift_cut:
                ctx.gift(rank, user, ts)
            else:
                ctx.order(rank, user, ts)


#: viewer kinds drawn uniformly from this 20-slot table realise VIEWER_WEIGHTS exactly
KIND_TABLE = tuple(
    kind for kind, w in zip(VIEWER_KINDS, VIEWER_WEIGHTS, strict=True) for _ in range(round(w * 20))
)


class TickContext:
    """What scenarios see and use while a phase is generated: the clock, the model, the emitters."""

    def __init__(self, model: TrafficModel, out: Phase) -> None:
        self.model = model
        self.out = out
        self.config = model.config
        self.rng = model.rng
        self.t0 = out.start_ms
        self.n_base = 0
        #: (due ts, seq, source, partition, key, event): order follow-ups and retried messages
        self.pending: list[tuple[int, int, int, int, bytes, Event]] = []
        #: out-of-order displacement: (share of events, max ms back); the ``late`` scenario sets its own
        self.disorder: tuple[float, int] = (model.config.disorder_share, model.config.disorder_ms)
        self._emit = out.messages.append

    def begin_tick(self, t0: int, n_base: int) -> None:
        self.t0, self.n_base = t0, n_base

    def shift(self, ts: int) -> int:
        """An event time, possibly displaced backwards (out of order) by the ``late`` scenario."""
        share, max_ms = self.disorder
        if share and self.rng.random() < share:
            return ts - int(self.rng.random() * max_ms)
        return ts

    # -- emitters --------------------------------------------------------------------

    def emit(self, source: int, partition: int, key: bytes, ev: Event) -> None:
        self._emit((source, partition, key, encode(ev), ev.ts, ev))

    def emit_raw(self, source: int, partition: int, key: bytes, raw: bytes, ts: int, reason: str) -> None:
        self._emit((source, partition, key, raw, ts, None))
        self.out.malformed[reason] += 1

    def viewer_kind(self) -> str:
        """A viewer action drawn by the ordinary room's weights (``VIEWER_WEIGHTS``)."""
        return KIND_TABLE[int(self.rng.random() * len(KIND_TABLE))]

    def base_event_in(self, room: str, key: bytes, part: int, user: str, ts: int) -> None:
        """One event of the base mix in a room: a viewer action, a gift or a new order, by the shares."""
        c = self.config
        u = self.rng.random()
        if u < c.viewer_share:
            self.viewer_in(room, key, part, self.viewer_kind(), user, ts)
        elif u < c.viewer_share + c.gift_share:
            self.gift_in(room, key, part, user, ts)
        else:
            self.order_in(room, key, part, user, ts)

    def viewer(self, rank: int, kind: str, user: str, ts: int) -> None:
        room, key, part = self.model.room_key(rank)
        self.emit(VIEWER, part, key, ViewerEvent(kind, room, user, ts))

    def viewer_in(self, room: str, key: bytes, part: int, kind: str, user: str, ts: int) -> None:
        self.emit(VIEWER, part, key, ViewerEvent(kind, room, user, ts))

    def gift(self, rank: int, user: str, ts: int) -> None:
        room, key, part = self.model.room_key(rank)
        self.gift_in(room, key, part, user, ts)

    def gift_in(self, room: str, key: bytes, part: int, user: str, ts: int) -> None:
        rng = self.rng
        count = GIFT_COUNTS[int(rng.random() * len(GIFT_COUNTS))]
        price = GIFT_PRICES_MINOR[int(rng.random() * len(GIFT_PRICES_MINOR))]
        self.emit(GIFT, part, key, GiftEvent(self.model.new_gift_id(), room, user, ts, count, count * price))

    def order(self, rank: int, user: str, ts: int) -> None:
        room, key, part = self.model.room_key(rank)
        self.order_in(room, key, part, user, ts)

    def order_in(self, room: str, key: bytes, part: int, user: str, ts: int) -> None:
        """A new order (created now); its later statuses and any retried duplicates are scheduled."""
        c, rng = self.config, self.rng
        order_id = self.model.new_order_id()
        amount = ORDER_AMOUNTS_MINOR[int(rng.random() * len(ORDER_AMOUNTS_MINOR))]
        created = OrderEvent(order_id, room, user, ts, "created", amount, c.currency)
        self._order_event(part, key, created)
        roll = rng.random()
        if roll < c.paid_p:
            paid_ts = ts + int(1000 * rng.uniform(*c.pay_delay_s))
            self._later(paid_ts, ORDER, part, key, created._replace(ts=paid_ts, status="paid"))
            if rng.random() < c.refunded_p:
                refund_ts = paid_ts + int(1000 * rng.uniform(*c.refund_delay_s))
                self._later(refund_ts, ORDER, part, key, created._replace(ts=refund_ts, status="refunded"))
        elif roll < c.paid_p + c.cancelled_p:
            cancel_ts = ts + int(1000 * rng.uniform(*c.pay_delay_s))
            self._later(cancel_ts, ORDER, part, key, created._replace(ts=cancel_ts, status="cancelled"))

    def _order_event(self, part: int, key: bytes, ev: OrderEvent) -> None:
        self.emit(ORDER, part, key, ev)
        c = self.config
        if self.rng.random() < c.retry_p:  # a client retry: the same message again, a little later
            due = ev.ts + self.rng.randint(*c.retry_delay_ms)
            heapq.heappush(self.pending, (due, next(self.model._seq), -ORDER - 1, part, key, ev))

    def _later(self, due: int, source: int, part: int, key: bytes, ev: Event) -> None:
        heapq.heappush(self.pending, (due, next(self.model._seq), source, part, key, ev))

    def flush_due(self, until_ms: int) -> None:
        """Emit scheduled follow-ups and retries due before ``until_ms``."""
        pending = self.pending
        while pending and pending[0][0] < until_ms:
            _, _, source, part, key, ev = heapq.heappop(pending)
            if source < 0:  # a retry: re-sent unchanged, no further follow-ups
                self.emit(-source - 1, part, key, ev)
            elif source == ORDER:
                self._order_event(part, key, ev)  # type: ignore[arg-type]
            else:
                self.emit(source, part, key, ev)

    def count_for(self, rate_per_s: float) -> int:
        """Events this tick for a Poisson-ish stream of ``rate_per_s`` (integer part plus a coin flip)."""
        expected = rate_per_s * self.config.tick_ms / 1000
        n = int(expected)
        return n + (self.rng.random() < expected - n)
