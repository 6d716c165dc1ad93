"""The task aggregator: one per input partition number, fed whole batches.

``apply`` runs one tight loop over a batch: replay guard, lateness, watermark,
dedup, bucket update, unique viewers. Windows close the moment the
watermark passes their end (inside the loop, so memory stays bounded by the
open windows); closed windows collect in an outbox that the
runtime drains and publishes. ``tick`` lets wall-clock time advance an idle
partition's watermark. ``checkpoint``/``restore`` decide what state goes to and
comes from the changelog; its record formats are ``streams.core._state_codec``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import add
from typing import Any, NamedTuple

import orjson

from schemas import (
    Event,
    OrderEvent,
    RoomSession,
    RoomStats,
    ViewerEvent,
    encode_room_session,
    encode_room_stats,
)

from ..exceptions import ConfigError, StateError
from ._alerts import AlertEvent
from ._config import CoreConfig
from ._leaderboard import leaderboard_partials
from ._partition import PartitionCache
from ._rollups import Rollup
from ._room import (
    COMMENTS,
    EMPTY,
    GIFT_VALUE,
    GIFTS,
    GMV,
    JOINS,
    LATE,
    LEAVES,
    LIKES,
    NO_WINDOWS,
    ORDERS,
    REFUNDS,
    SHARES,
    Room,
    room_stats,
    union_of,
)
from ._sessions import ENDED, LIVE, Session, due_slot
from ._spike_rules import DEFAULT_RULES, SpikeRules, rules_for
from ._spikes import DetectorState, firing, observe, resolve_all
from ._state_codec import (
    META_KEY,
    ROOM_KEY_PREFIX,
    TAIL_KEY_PREFIX,
    WHOLE_ROOM_VERSION,
    Checkpoint,
    TaskMeta,
    compact,
    decode_dedup_chunk,
    decode_meta,
    decode_room_record,
    decode_room_tail,
    dedup_key,
    encode_dedup_chunk,
    encode_meta,
    encode_room,
    encode_room_tail,
    encode_room_whole,
    room_key,
    tail_key,
)
from ._windows import window_start

NO_TIME = -(2**62)
NEVER = 2**62


@dataclass(slots=True)
class TaskCounters:
    """Event outcomes since the task started, by input source."""

    applied: dict[int, int] = field(default_factory=dict)
    late: dict[int, int] = field(default_factory=dict)
    duplicate: dict[int, int] = field(default_factory=dict)
    replayed: dict[int, int] = field(default_factory=dict)
    #: events refused because they would open a room beyond ``max_rooms`` (dead-lettered: room_cap)
    overflow: dict[int, int] = field(default_factory=dict)
    windows_emitted: int = 0
    rooms_expired: int = 0
    detector_evaluations: int = 0
    #: times the watermark was held after an input outage (``CoreConfig.outage_hold_ms``)
    outage_holds: int = 0
    #: times an input fell idle (caught up and silent for ``CoreConfig.idle_partition_ms``)
    inputs_idled: int = 0


class Encoded(NamedTuple):
    """A task's closed windows as the records the pipeline publishes (``drain_encoded``). The
    records may be encoded as they are iterated: each goes to its batch before the next is
    encoded (an orjson result holds ~4 KB of heap until it is freed; at a boundary of 100 000
    rooms all of them at once held a few hundred MB)."""

    #: room-stats: (key: the room id, record), in closing order
    windows: Iterable[tuple[bytes, bytes]]
    #: how many; the paid orders and GMV in them
    n_windows: int
    orders: int
    gmv_minor: int
    #: the platform leaderboard's partials of those windows (``leaderboard_partials``)
    partials: list[bytes]
    #: rollup windows: (length ms, key, record)
    rollups: Iterable[tuple[int, bytes, bytes]]
    #: session records: (key ``<room_id>:<session_start>``, record)
    sessions: Iterable[tuple[bytes, bytes]]


class ApplyResult(NamedTuple):
    """What became of one applied batch's events."""

    applied: int
    late: int
    duplicate: int
    replayed: int
    #: refused at the room cap; their offsets wait in ``TaskAggregator.take_overflow``
    overflow: int = 0


_NOTHING = ApplyResult(0, 0, 0, 0, 0)
#: in ``_fold``: no session or rollup has folded the window yet
_NO_HOLDER: Any = object()


class TaskAggregator:
    """Event-time windowed per-room aggregates for one partition number."""

    def __init__(
        self,
        config: CoreConfig,
        sources: Iterable[int] = (0,),
        *,
        senders: Iterable[int] = (),
        detect_spikes: bool = True,
    ) -> None:
        self.config = config
        #: spike rules and room categories in force (the runtime swaps them when overrides change)
        self.rules: SpikeRules = DEFAULT_RULES
        self.categories: Mapping[str, str] = {}
        self.detect_spikes = detect_spikes
        #: rooms with at least one alert firing (re-sent at an interval by the runtime)
        self.firing_rooms: set[str] = set()
        self._alerts: list[AlertEvent] = []
        #: input sources (topic-partitions of this partition number) that hold the watermark back;
        #: events of any other source (re-routed ones) are applied but never move the watermark
        self.sources = frozenset(sources)
        #: tasks that re-route events to this one: each holds the watermark back at the progress it
        #: last published (``sender_progress``), as a shuffle's receivers do in Flink
        self.senders = frozenset(senders)
        #: sender -> its published frontier (None: idle); a sender missing here has published nothing
        self._sender_frontier: dict[int, int | None] = {}
        #: next offset to read per source as of the restored checkpoint (None: not recorded)
        self.restored_offsets: dict[int, int] = {}
        #: changelog records that could not be decoded at restore: (key, value, reason)
        self.quarantined: list[tuple[bytes, bytes, str]] = []
        self.rooms: dict[str, Room] = {}
        self.counters = TaskCounters()
        self._max_ts = NO_TIME
        self._watermark = NO_TIME
        self._next_close = NEVER
        #: newest event time per source; a source missing here has delivered nothing yet
        self._src_max: dict[int, int] = {}
        #: wall time of each source's last delivery, of the task's first sight of it, or of the last
        #: tick that found it busy: silence (and event time moving on with wall time) counts from there
        self._src_wall: dict[int, int] = {}
        #: sources caught up and silent for idle_partition_ms: they no longer hold the watermark
        self._idle: set[int] = set()
        #: sources that delivered or were caught up in this process (a stall before that is startup)
        self._live: set[int] = set()
        #: wall time of the first tick that found a live source busy without a delivery since the
        #: tick before (a slow round between two deliveries is no stall)
        self._busy_since: dict[int, int] = {}
        #: sources that delivered since the last tick
        self._delivered: set[int] = set()
        #: sources announced by ``arriving`` since the last tick -> (were idle, their wall time)
        self._arriving: dict[int, tuple[bool, int | None]] = {}
        #: the watermark stays put until this wall time (after an outage; see ``outage_hold_ms``)
        self._hold_until = NO_TIME
        #: sources caught up with their log end yet trailing the fastest other source by more than
        #: max_input_lag_ms (a producer sending old events): they no longer hold the watermark
        self._trailing: set[int] = set()
        #: offsets of events refused at the room cap since the last ``take_overflow``
        self._overflow: list[int] = []
        #: offset of the last event taken from each source (stamped on rooms at checkpoints)
        self._consumed: dict[int, int] = {}
        #: per source, the newest offset a restored room recorded: at or below it, replays are possible
        self._replay_until: dict[int, int] = {}
        #: window start -> rooms with that window open, in registration order (a dict as ordered set)
        self._by_window: dict[int, dict[Room, None]] = {}
        self._dirty: list[Room] = []
        self._expired: set[str] = set()
        #: dedup chunks the restore found of no room ``(room id, chunk id)``: deleted at the next
        #: checkpoint unless the room came back and wrote that chunk again
        self._orphan_chunks: list[tuple[str, int]] = []
        #: changelog keys of dedup chunks forgotten with their (expired) rooms
        self._gone_keys: list[bytes] = []
        self._outbox: list[RoomStats] = []
        #: rollup window end -> rooms with a rollup window ending there (a room whose rollup has
        #: closed since, or that is listed twice, has nothing left to close there)
        self._rollup_ends: dict[int, list[Room]] = {}
        #: due slot -> rooms whose session may end when the watermark reaches it (stale: skipped)
        self._session_due: dict[int, list[Room]] = {}
        self._session_outbox: list[RoomSession] = []
        #: positions in rollup_windows_ms, longest first (the order rollups fold in)
        self._rollups_longest_first = sorted(
            range(len(config.rollup_windows_ms)), key=lambda i: -config.rollup_windows_ms[i]
        )
        self._rollup_outbox: list[tuple[int, RoomStats]] = []
        #: closed windows not yet seen by the spike detector (see ``detect``)
        self._undetected: list[tuple[Room, RoomStats]] = []
        self._last_expiry_scan = NO_TIME
        #: next offset to read per source, as last checkpointed
        self._offsets: dict[int, int] = {}
        #: the window this task's state began at (None: no event yet; NO_TIME: state written before
        #: it was recorded): rooms live then were live before it too (see ``_watching_from``)
        self.watch_start: int | None = None
        #: the spike detector's surge rule holds for baselines from this event time (None: any)
        self._surge_from: int | None = None

    # -- reading --------------------------------------------------------------------

    @property
    def watermark_ms(self) -> int | None:
        return None if self._watermark == NO_TIME else self._watermark

    @property
    def max_event_ts_ms(self) -> int | None:
        return None if self._max_ts == NO_TIME else self._max_ts

    def drain(self) -> list[RoomStats]:
        """Closed windows since the last drain, in closing order."""
        out, self._outbox = self._outbox, []
        return out

    def drain_sessions(self) -> list[RoomSession]:
        """Session records (live at each closed window, ended once) since the last drain, in order."""
        out, self._session_outbox = self._session_outbox, []
        return out

    def drain_rollups(self) -> list[tuple[int, RoomStats]]:
        """Closed rollup windows ``(length ms, record)`` since the last drain, in closing order."""
        out, self._rollup_outbox = self._rollup_outbox, []
        return out

    def top_closed(self, metric: str, n: int) -> list[RoomStats]:
        """The ``n`` rooms with the highest ``metric`` in their last closed window, highest first
        (ties: the greater room id first)."""
        closed = (room.last_closed for room in self.rooms.values() if room.last_closed)
        return heapq.nlargest(n, closed, key=lambda stats: (getattr(stats, metric), stats.room_id))

    def publish_into(
        self,
        outbox: Any,
        partition: int,
        leaderboard_size: int,
        room_stats: str,
        rollups: Mapping[int, str],
        sessions: str,
        partials: str,
        budget: int | None = None,
    ) -> tuple[int, int, int] | None:
        """``drain_encoded``'s records written into a native outbox (``_fastcore.Outbox``) by the
        core itself, returning the windows, their orders and GMV; None: this core does not, the
        caller takes ``drain_encoded``. The Python rooms do not (the native table does).

        ``budget``: write until the records written hold that many bytes (keys and values),
        leaving the rest for the next call (``unpublished``); the leaderboard partials of all
        the windows closed come first, as a partial ranks a window's rooms of the task."""
        return None

    @property
    def unpublished(self) -> bool:
        """Whether ``publish_into`` stopped at its budget with records left to write."""
        return False

    def drain_encoded(self, task: int, leaderboard_size: int) -> Encoded:
        """``drain``, ``drain_rollups`` and ``drain_sessions`` as the records the pipeline
        publishes, with the leaderboard partials (of task ``task``, top ``leaderboard_size``)."""
        closed = self.drain()
        orders = gmv = 0
        for stats in closed:
            orders += stats.orders
            gmv += stats.gmv_minor
        partials = [orjson.dumps(p) for p in leaderboard_partials(task, closed, leaderboard_size)]
        # encoded as the pipeline takes them (see Encoded); drained now
        windows = ((stats.room_id.encode(), encode_room_stats(stats)) for stats in closed)
        rollups = (
            (length, stats.room_id.encode(), encode_room_stats(stats))
            for length, stats in self.drain_rollups()
        )
        sessions = (
            (b"%s:%d" % (s.room_id.encode(), s.session_start), encode_room_session(s))
            for s in self.drain_sessions()
        )
        return Encoded(windows, len(closed), orders, gmv, partials, rollups, sessions)

    def detect(self) -> None:
        """Run the spike detector over the windows closed since the last call, in closing order.

        Closing a window only queues it for the detector, so a runtime can publish a burst of
        closed windows first and evaluate them after; ``drain_alerts``, ``firing_alerts`` and
        ``checkpoint`` call this first, so no caller sees state without its detection.
        """
        pending, self._undetected = self._undetected, []
        for room, stats in pending:
            self._detect(room, stats)

    def drain_alerts(self) -> list[AlertEvent]:
        """Alert transitions (firing, resolved) since the last drain."""
        self.detect()
        out, self._alerts = self._alerts, []
        return out

    def firing_alerts(self) -> list[AlertEvent]:
        """Every alert firing now, with its latest readings (for periodic re-sends)."""
        self.detect()
        out: list[AlertEvent] = []
        for room_id in sorted(self.firing_rooms):
            room = self.rooms.get(room_id)
            if room is not None and room.detector is not None:
                out.extend(firing(room.detector))
        return out

    # -- the hot path ----------------------------------------------------------------

    def first_foreign(
        self, items: Sequence[tuple[int, Event]], route: PartitionCache, here: int
    ) -> int | None:
        """The position of the first ``(offset, event)`` whose room the task does not hold and
        ``route`` (Kafka's default partitioner) puts on another task than ``here``; None when
        every room is local. A room the task holds is local by construction, so ``route`` runs
        only for rooms new here."""
        rooms = self.rooms
        for at, (_, ev) in enumerate(items):
            room_id = ev.room_id
            if room_id not in rooms and route(room_id) != here:
                return at
        return None

    def apply(self, source: int, items: Sequence[tuple[int, Event]], now_ms: int) -> ApplyResult:
        """Apply ``(offset, event)`` pairs read from one input ``source``, in offset order."""
        if not items:
            return _NOTHING
        moves_watermark = source in self.sources
        if moves_watermark:
            others = self._delivery(source, now_ms)
            source_max = self._src_max.get(source, NO_TIME)
            if source_max == NO_TIME:
                self._first_delivery(items[0][1].ts)
        else:
            # Re-routed events: their senders' published progress moves the watermark instead.
            others, source_max = NO_TIME, NEVER
        replay_until = self._replay_until.get(source, -1)
        cfg = self.config
        bucket_ms, window_ms, grace_ms = cfg.bucket_ms, cfg.window_ms, cfg.grace_ms
        lg_k = cfg.hll_lg_k
        rooms, dirty = self.rooms, self._dirty
        max_ts, wm, next_close = self._max_ts, self._watermark, self._next_close
        max_rooms = cfg.max_rooms
        applied = late = duplicate = replayed = overflow = 0
        viewer_t, order_t = ViewerEvent, OrderEvent
        for offset, ev in items:
            # The watermark moves first: closing may expire rooms, so no room is held across it.
            ts = ev.ts
            if ts > source_max:
                source_max = ts
                if ts > max_ts:
                    max_ts = ts
                limit = ts if ts < others else others
                if limit - grace_ms > wm:
                    wm = limit - grace_ms
                    if wm >= next_close:
                        self._max_ts, self._watermark = max_ts, wm
                        self._src_max[source] = source_max
                        self._close_due()
                        next_close = self._next_close
            room_id = ev.room_id
            room = rooms.get(room_id)
            if room is None:
                if ts < wm:
                    # A late event of a room without state here (never seen, or expired) opens
                    # none: it is counted late (the task's counters, the metrics) in no room's
                    # window. Opened, a replay of old events made rooms that lived on for up to
                    # an hour (sessions, rollups), filled the room cap and shut out live rooms.
                    late += 1
                    continue
                if len(rooms) >= max_rooms:  # the cap holds: the runtime dead-letters it (room_cap)
                    overflow += 1
                    self._overflow.append(offset)
                    continue
                room = rooms[room_id] = Room(room_id)
                if room_id in self._expired:
                    # Its records were to be deleted at the next checkpoint: they are written
                    # instead, its t/ record too (the one it had before expiring is still there).
                    self._expired.discard(room_id)
                    room.tail_dirty = True
                if self.watch_start is None:  # re-routed events, before any input delivered
                    self._first_delivery(ts)
            # Only right after a restore can an event be one the state already holds.
            if offset <= replay_until and offset <= room.offsets.get(source, -1):
                replayed += 1
                continue
            if not room.dirty:
                room.dirty = True
                dirty.append(room)
            if ts < wm:
                late += 1
                if type(ev) is viewer_t:
                    # Not counted in any window, but the concurrent level is the room's state: a late
                    # join or leave (a mobile client's reconnect, a retry backlog) still moves it, or
                    # the level stays off until the room expires. Unclamped here (its join may sit in
                    # a window still open): the level is floored at 0 when the next window closes.
                    action = ev.type
                    if action == "join":
                        room.concurrent += 1
                    elif action == "leave":
                        room.concurrent -= 1
                self._charge_late(room, wm)
                next_close = self._next_close
                continue
            kind = type(ev)
            ws = ts - ts % window_ms
            if kind is order_t:
                key = ev.status + ":" + ev.order_id  # type: ignore[union-attr]  # order_key, inlined
                if key in room.seen:
                    duplicate += 1
                    continue
                room.remember(key, ws)
            bucket = ts // bucket_ms
            counters = room.buckets.get(bucket)
            if counters is None:
                counters = room.counters(bucket)
            if ws != room.reg_ws:
                self._register(room, ws)
                next_close = self._next_close
            if kind is viewer_t:
                action = ev.type  # type: ignore[union-attr]
                if action == "join":
                    counters[JOINS] += 1
                elif action == "leave":
                    counters[LEAVES] += 1
                elif action == "like":
                    counters[LIKES] += 1
                elif action == "comment":
                    counters[COMMENTS] += 1
                elif action == "share":
                    counters[SHARES] += 1
                sketch = room.uniques.get(ws)
                if sketch is None:
                    sketch = room.sketch(ws, lg_k)
                sketch.update(ev.user_id)
            elif kind is order_t:
                status = ev.status  # type: ignore[union-attr]
                if status == "paid":
                    counters[ORDERS] += 1
                    counters[GMV] += ev.amount_minor  # type: ignore[union-attr]
                elif status == "refunded":
                    counters[REFUNDS] += ev.amount_minor  # type: ignore[union-attr]
            else:
                counters[GIFTS] += ev.count  # type: ignore[operator]
                counters[GIFT_VALUE] += ev.value_minor  # type: ignore[union-attr]
            applied += 1
        self._max_ts, self._watermark = max_ts, wm
        if moves_watermark:
            self._src_max[source] = source_max
        self._consumed[source] = items[-1][0]
        c = self.counters
        for bucket_dict, n in (
            (c.applied, applied),
            (c.late, late),
            (c.duplicate, duplicate),
            (c.replayed, replayed),
            (c.overflow, overflow),
        ):
            if n:
                bucket_dict[source] = bucket_dict.get(source, 0) + n
        return ApplyResult(applied, late, duplicate, replayed, overflow)

    def _delivery(self, source: int, now_ms: int) -> int:
        """``source`` delivered: it is live and not idle (nor stalled). Returns the time the other
        sources allow the watermark to move to (before grace) while this one's events are taken."""
        src_wall = self._src_wall
        if len(src_wall) < len(self.sources):
            for expected in self.sources:  # silence is measured from the task's first delivery
                src_wall.setdefault(expected, now_ms)
        src_wall[source] = now_ms
        self._idle.discard(source)
        self._live.add(source)
        self._delivered.add(source)
        if self._busy_since:
            self._end_stall(source, now_ms)
        if self._max_ts == NO_TIME and None in self._sender_frontier.values():
            # The task's first event, while a task re-routing to it has never taken one (its
            # markers say "idle"): that task may be taking its first events now too, and the ones
            # it re-routes here, with the marker that holds this watermark, come only with its next
            # checkpoint. Hold for ``first_event_hold_ms`` (not counted as an outage).
            self._hold_until = max(self._hold_until, now_ms + self.config.first_event_hold_ms)
        # The watermark is the slowest non-idle source's newest event time minus grace, so a
        # topic read ahead of the others (backlog, uneven fetches) does not make theirs late.
        others = self._slowest(exclude=source)
        if now_ms < self._hold_until:
            others = min(others, self._watermark + self.config.grace_ms)
        lead = self.config.max_watermark_lead_ms
        if lead is not None and now_ms + lead < others:
            others = now_ms + lead  # no event time ahead of the wall clock moves the watermark
        return others

    def arriving(self, source: int, now_ms: int) -> None:
        """Records of input ``source`` are in hand and this round will apply them: it holds the
        watermark from now, before the inputs applied ahead of it in the round move it.

        After every input of a task fell idle (a quiet spell, or a deployment started before
        its producers), one fetch often brings several inputs' first records at once, and they
        are applied input by input: the first must not close windows the others' events of the
        same fetch belong to. An input whose records all turn out undecodable (no event applied
        or passed on before the round's ``tick``) is as it was before the call: garbage alone
        neither holds the watermark nor keeps an input from turning idle."""
        if source in self.sources and source not in self._arriving:
            self._arriving[source] = (source in self._idle, self._src_wall.get(source))
            self._idle.discard(source)
            self._src_wall[source] = now_ms

    def passed_on(self, source: int, newest_ts: int, now_ms: int) -> None:
        """Events of input ``source`` up to event time ``newest_ts`` were read here and handed on to
        their rooms' tasks (re-routed), after this batch's own events were applied.

        They are the input's progress (its newest event time and its liveness) as applied events
        are, though no room here takes them. Otherwise an input busy with other tasks' rooms (a
        producer without murmur2 putting a hot room here) would keep this task's frontier, and with
        it every receiving task's watermark, at its last own event, or at no time at all.
        """
        if source not in self.sources:
            return
        others = self._delivery(source, now_ms)
        if newest_ts <= self._src_max.get(source, NO_TIME):
            return
        if source not in self._src_max:
            self._first_delivery(newest_ts)
        self._src_max[source] = newest_ts
        if newest_ts > self._max_ts:
            self._max_ts = newest_ts
        self._raise_watermark(min(newest_ts, others) - self.config.grace_ms)

    def take_overflow(self) -> list[int]:
        """Offsets (of the last applied source) refused at the room cap since the last call."""
        out, self._overflow = self._overflow, []
        return out

    def tick(self, now_ms: int, busy: Iterable[int] = (), behind: Iterable[int] = ()) -> None:
        """Let wall-clock time release idle sources and advance the watermark; close what is due.

        A source silent for ``idle_partition_ms`` (and not ``busy``, i.e. not
        lagging behind its log end, nor of unknown state) stops holding the
        watermark back; a busy source holds it again, and its silence is
        counted afresh from the last tick that found it busy. When all
        sources are idle, event time is assumed to move on like wall time from
        the newest event seen, so a quiet room's last window still closes.

        A source that is not ``busy`` (it is read up to its log end) but whose newest event time
        trails the fastest other source by more than ``max_input_lag_ms`` is a producer sending
        old events: it stops holding the watermark back and its events count late. After
        downtime every input has a backlog (``busy``), so catch-up never releases one.

        A source busy for ``idle_partition_ms`` without delivering anything (the broker
        unreachable) had an outage: once it delivers or is caught up again, the watermark stays
        put for ``outage_hold_ms``, in ``apply`` as here. The producers buffered through the same
        outage and each reconnects at its own pace; without the hold, the first one's fresh
        events would make the others' buffered ones late. The stall counts from the first tick
        that found the source busy with nothing delivered since the tick before and not
        ``behind`` (known to have unread records, which a busy loop has not taken yet): slow
        rounds while a backlog is read are no outage.
        """
        idle_after = self.config.idle_partition_ms
        busy = set(busy)
        delivered, self._delivered = self._delivered, set()
        self._unannounce(delivered)
        delivered.update(behind)
        for source in self.sources:
            last = self._src_wall.setdefault(source, now_ms)
            if source in busy:
                # unread input (or nothing known: the broker is unreachable) holds the watermark again;
                # its silence starts when it is caught up, not at its last delivery: after a broker
                # outage the producers' buffered events are still on their way, and the outage is not
                # event time that passed
                self._idle.discard(source)
                self._src_wall[source] = now_ms
                if source in self._live and source not in delivered:
                    self._busy_since.setdefault(source, now_ms)
                continue
            self._live.add(source)
            if self._busy_since:
                self._end_stall(source, now_ms)
            if now_ms - last >= idle_after and source not in self._idle:
                self._idle.add(source)
                self.counters.inputs_idled += 1
        self._trailing = self._find_trailing(busy)
        if now_ms < self._hold_until:
            return
        slowest = self._slowest()
        if slowest != NEVER:
            candidate = slowest - self.config.grace_ms
        elif self._max_ts != NO_TIME:
            candidate = self._max_ts - self.config.grace_ms + now_ms - self._last_delivery_ms()
        else:
            return
        lead = self.config.max_watermark_lead_ms
        if lead is not None:
            candidate = min(candidate, now_ms + lead - self.config.grace_ms)
        self._raise_watermark(candidate)

    def _unannounce(self, delivered: set[int]) -> None:
        """Put back the inputs ``arriving`` announced that delivered no event after all."""
        for source, (was_idle, wall) in self._arriving.items():
            if source in delivered:
                continue
            if was_idle:
                self._idle.add(source)
            if wall is None:
                del self._src_wall[source]
            else:
                self._src_wall[source] = wall
        self._arriving.clear()

    def _raise_watermark(self, candidate: int) -> None:
        """Move the watermark up to ``candidate`` (never down), closing what that makes due."""
        if candidate > self._watermark:
            self._watermark = candidate
            if candidate >= self._next_close:
                self._close_due()

    def clock_stepped(self, delta_ms: int) -> None:
        """The wall clock stepped by ``delta_ms`` without that time passing (NTP setting it, a
        host resumed from suspend). The wall-clock instants the task keeps (last deliveries,
        stalls, a hold) move with it: silence and holds are measured in time that passed, and a
        step forward is no silence the idle advance would turn into event time."""
        for table in (self._src_wall, self._busy_since):
            for source in table:
                table[source] += delta_ms
        if self._hold_until != NO_TIME:
            self._hold_until += delta_ms

    def _end_stall(self, source: int, now_ms: int) -> None:
        """``source`` delivered or is caught up: if it was busy without delivering for
        ``idle_partition_ms`` (an outage), hold the watermark for ``outage_hold_ms`` from now."""
        since = self._busy_since.pop(source, None)
        if since is not None and now_ms - since >= self.config.idle_partition_ms:
            self._hold(now_ms)

    def hold_after_outage(self, now_ms: int) -> None:
        """The task could not look at its inputs for a while because the broker was unreachable
        (the runtime's loop waited on it): nothing is known of that time, so every input's silence
        counts afresh from now, and the watermark stays put for ``outage_hold_ms``."""
        for source in self.sources:
            self._src_wall[source] = now_ms
        self._idle.clear()
        self._hold(now_ms)

    def _hold(self, now_ms: int) -> None:
        hold_ms = self.config.outage_hold_ms
        if hold_ms and now_ms + hold_ms > self._hold_until:
            self._hold_until = now_ms + hold_ms
            self.counters.outage_holds += 1

    @property
    def holding_until_ms(self) -> int | None:
        """Wall time until which the watermark is held after an outage (None: not held)."""
        return None if self._hold_until == NO_TIME else self._hold_until

    def _find_trailing(self, busy: set[int]) -> set[int]:
        # Compared with every other source's newest event, idle ones included: the others falling
        # quiet must not hand the watermark back to a source sending old events.
        known = {s: t for s, t in self._src_max.items() if s in self.sources}
        if len(known) < 2:
            return set()
        bound = self.config.max_input_lag_ms
        trailing: set[int] = set()
        for source, newest in known.items():
            if source in busy or source in self._idle:
                continue
            fastest_other = max(t for s, t in known.items() if s != source)
            if newest < fastest_other - bound:
                trailing.add(source)
        return trailing

    def sources_to_hold(self, held: Iterable[int] = ()) -> frozenset[int]:
        """Input sources the runtime should not read for now (watermark alignment).

        The watermark follows the slowest input of the task and the frontier each task that
        re-routes to it last published. A source whose newest event time is more than
        ``max_source_drift_ms`` past that is held back until it is within half of it again;
        ``held`` are the sources held back until now. While held, a source keeps its newest event
        time and holds the watermark as ever (the runtime counts it busy), so its unread events
        are no later than they would have been; and once every task that re-routes here has
        published, the task or input the watermark waits for is never held, so the watermark
        always moves on (before that, see below: the watermark waits for that task's markers).

        Without it, a catch-up reads some partitions and topics far ahead of the others (the
        client fetches by bytes, and the order and gift topics carry few events per second):
        measured at 6 000 rooms, every task ran 100-250 s of event time ahead of the slowest task,
        and each room kept, and wrote at every checkpoint, ~45 buckets and ~10 sketches.

        Before a task that re-routes here first published (a first deployment), the watermark
        has not moved: every event read stays open until that task's first checkpoint. Then
        nothing is read past ``max_source_drift_ms`` after the window the task's state began at
        (``watch_start``): a catch-up of 100 000 rooms read 390 s of event time (815 000 events)
        before the first checkpoint, and peaked at 550 MB there.
        """
        drift = self.config.max_source_drift_ms
        slowest = self._slowest()
        if slowest == NO_TIME:  # a sender has not published yet: align the task's own inputs
            slowest = self._slowest(senders=False)
            first = self.watch_start  # the window this task's state began at
            if self._watermark == NO_TIME and first is not None and slowest not in (NEVER, NO_TIME):
                slowest = min(slowest, first)
        if not drift or slowest in (NEVER, NO_TIME):
            return frozenset()
        held = set(held)
        newest = self._src_max
        return frozenset(
            source
            for source in self.sources
            if newest.get(source, NO_TIME) > slowest + (drift // 2 if source in held else drift)
        )

    @property
    def trailing_sources(self) -> frozenset[int]:
        """Sources released from holding the watermark because they trail the others (see ``tick``)."""
        return frozenset(self._trailing)

    def _slowest(self, exclude: int | None = None, *, senders: bool = True) -> int:
        """Newest event time of the slowest non-idle source (NO_TIME if one has sent nothing).

        With ``senders``, also the frontier each sending task last published (NO_TIME until it
        has published; an idle sender does not count).
        """
        slowest = NEVER
        for source in self.sources:
            if source != exclude and source not in self._idle and source not in self._trailing:
                slowest = min(slowest, self._src_max.get(source, NO_TIME))
        if senders:
            frontiers = self._sender_frontier
            for sender in self.senders:
                frontier = frontiers.get(sender, NO_TIME)
                if frontier is not None and frontier < slowest:
                    slowest = frontier
        return slowest

    def frontier_ms(self, now_ms: int) -> int | None:
        """This task's own input progress, for the tasks it re-routes to.

        The newest event time of its slowest non-idle input, without grace and without its own
        senders (re-routing is one hop: a shuffle's receivers never send back). With every
        input idle, the newest event time moved on by the wall time since the last delivery,
        as the task's own watermark moves: never "no opinion" once it has seen an event,
        because an event may arrive the moment after the marker, and after a crash the
        receivers hold at the last published time until this task's next owner publishes
        again. Events it re-routes later are at or after this time, up to the same disorder as
        any event.

        None (idle) when every input is idle and it never took an event: it holds no receiver,
        and it moves none either. Wall time extends event time a task has seen, never event
        time it has not: otherwise a deployment started on empty topics would run its
        watermarks on the wall clock through the receivers, and the first backlog its
        producers send (seconds old, say buffered while they started) would all be late.
        """
        slowest = self._slowest(senders=False)
        if slowest != NEVER:
            return slowest
        if self._max_ts == NO_TIME:
            return None
        # Never below its own watermark (+ grace): after a restore the wall time since the last
        # delivery counts from the restore, so a task quiet for an hour and then moved would
        # publish a frontier an hour back and hold every receiver that far behind.
        return max(self._max_ts + now_ms - self._last_delivery_ms(), self._watermark + self.config.grace_ms)

    def _last_delivery_ms(self) -> int:
        """Wall time of the last delivery of a source that is not trailing (those keep sending)."""
        walls = [w for s, w in self._src_wall.items() if s not in self._trailing]
        return max(walls or self._src_wall.values())

    def sender_progress(self, sender: int, frontier_ms: int | None) -> None:
        """Record a sender's published frontier; every event it re-routed before it is applied.

        ``None``: the sender is idle and never took an event; it holds nothing. Call ``tick``
        afterwards to close what the new frontier releases.
        """
        if sender in self.senders:
            self._sender_frontier[sender] = frontier_ms

    # -- slow paths -----------------------------------------------------------------

    def _register(self, room: Room, ws: int) -> None:
        room.reg_ws = ws
        if ws > room.last_ts:
            room.last_ts = ws
        open_ws = room.open_ws
        if ws in open_ws:
            return
        if isinstance(open_ws, list):
            open_ws.append(ws)
        else:
            room.open_ws = [ws]
        members = self._by_window.get(ws)
        if members is None:
            members = self._by_window[ws] = {}
            end = ws + self.config.window_ms
            if end < self._next_close:
                self._next_close = end
        members[room] = None

    def _charge_late(self, room: Room, wm: int) -> None:
        """Count a late event in the room's bucket at the watermark (reported with that window)."""
        bucket = wm // self.config.bucket_ms
        counters = room.counters(bucket)
        counters[LATE] += 1
        if wm > room.last_ts:  # the room is alive even if all it sends is late
            room.last_ts = wm
        ws = window_start(wm, self.config.window_ms)
        if ws != room.reg_ws:
            self._register(room, ws)

    def _close_due(self) -> None:
        """Emit every open window whose end is at or before the watermark, oldest first."""
        window_ms, wm = self.config.window_ms, self._watermark
        by_window, outbox, close = self._by_window, self._outbox, self._close_room_window
        for ws in sorted(by_window):
            if ws + window_ms > wm:
                break
            for room in by_window.pop(ws):
                outbox.append(close(room, ws))
        if self._rollup_ends:
            self._close_rollups(wm)
        if self._session_due:
            self._end_sessions(wm)
        self._next_close = self._next_due()
        # A scan visits every room: a tenth of the idle time is precise enough for freeing memory.
        if wm - self._last_expiry_scan >= max(window_ms, self.config.room_idle_ms // 10):
            self._expire_idle_rooms()

    def _next_due(self) -> int:
        """The watermark at which something is next due: a window's, a rollup's or a session's end."""
        due = min(self._by_window) + self.config.window_ms if self._by_window else NEVER
        for index in (self._rollup_ends, self._session_due):
            if index:
                other = min(index)
                if other < due:
                    due = other
        return due

    # -- rollups and sessions, folded from closed windows ----------------------------------------

    def _fold(
        self,
        room: Room,
        ws: int,
        first: int,
        last: int,
        total: list[int],
        sketch: Any,
        concurrent: int,
    ) -> None:
        """Fold one closed window ``[ws, ws + window_ms)`` of a room into its session and its
        rollup windows; ``first`` and ``last`` are the window's first and last active bucket
        numbers (-1: none).

        A new session or rollup takes the window's counters and sketch as they are (counters are
        never changed in place; a union is, but every holder of it folds the same window in the
        same call). One already open folds the window in; when it held the very counters or
        sketch the previous one did (a session and its hour typically start from the same
        window), it takes the same result: they fold the same windows from then on, and a union
        that absorbs a sketch twice is unchanged. The session goes first, then the rollups
        longest first, so such holders are neighbours."""
        cfg = self.config
        lg_k = cfg.hll_lg_k
        lengths = cfg.rollup_windows_ms
        held = room.rollups
        if held is not None:
            # Rollups that end before this window are due in the same close: every base window in
            # them is in. They close first, before a union they share is folded into.
            for i, rollup in enumerate(held):
                if rollup is not None and rollup.start + rollup.length <= ws:
                    self._close_rollup(room, i, rollup)
            room.rollups = held  # the same list: this window opens the rollups that follow
        # the previous holder's counters and sketch before and after this fold (_NO_HOLDER: none
        # folded yet; not None, which a holder without a sketch holds)
        totals_in: Any = _NO_HOLDER
        totals_out: Any = None
        uniques_in: Any = _NO_HOLDER
        uniques_out: Any = None
        session = room.session
        fold_session = session is not None
        if first >= 0 and cfg.sessions:
            start = first * cfg.bucket_ms
            if session is None or start - session.last_end >= cfg.session_gap_ms:
                if session is not None:
                    self._end_session(room, session)
                session = room.session = Session(start, total)
                session.uniques = sketch
                fold_session = False
            end = (last + 1) * cfg.bucket_ms
            if end > session.last_end:
                session.last_end = end
        if fold_session:
            assert session is not None
            totals_in, uniques_in = session.totals, session.uniques
            session.totals = totals_out = list(map(add, totals_in, total))
            if sketch is not None:
                session.uniques = uniques_out = union_of(uniques_in, sketch, lg_k)
                session.wire = None
        if lengths:
            if held is None:
                held = room.rollups = [None] * len(lengths)
            for i in self._rollups_longest_first:
                length = lengths[i]
                rollup = held[i]
                if rollup is not None:  # open since an earlier window of this rollup window
                    rollup.concurrent = concurrent
                    if rollup.totals is totals_in:
                        rollup.totals = totals_out
                    else:
                        totals_in = rollup.totals
                        rollup.totals = totals_out = list(map(add, totals_in, total))
                    if sketch is not None:
                        if rollup.uniques is uniques_in:
                            rollup.uniques = uniques_out
                        else:
                            uniques_in = rollup.uniques
                            rollup.uniques = uniques_out = union_of(uniques_in, sketch, lg_k)
                        rollup.wire = None
                    continue
                rollup = held[i] = Rollup(length, ws - ws % length, total)
                rollup.uniques = sketch
                rollup.concurrent = concurrent
                _enlist(self._rollup_ends, rollup.start + length, room)
        if session is not None:
            if concurrent > session.peak:
                session.peak, session.peak_ws = concurrent, ws
            session.updated_at = ws + cfg.window_ms
            if session.due is None:  # once indexed, it stays so; _end_sessions moves it on
                self._index_session(room, session, self._due_of(session))
            self._session_outbox.append(session.record(room.room_id, LIVE))

    def _close_rollups(self, wm: int) -> None:
        """Close every rollup window whose end is at or before ``wm``, oldest first."""
        for end, rooms in _pop_due(self._rollup_ends, wm):
            for room in rooms:
                held = room.rollups
                if held is not None:
                    for i, rollup in enumerate(held):
                        if rollup is not None and rollup.start + rollup.length == end:
                            self._close_rollup(room, i, rollup)

    def _close_rollup(self, room: Room, i: int, rollup: Rollup) -> None:
        held = room.rollups
        assert held is not None
        held[i] = None
        if not any(held):
            room.rollups = None
        self._rollup_outbox.append((rollup.length, rollup.record(room.room_id)))

    def _index_session(self, room: Room, session: Session, due: int) -> None:
        session.due = due
        _enlist(self._session_due, due, room)

    def _due_of(self, session: Session) -> int:
        """The window end at which ``session`` ends if its room stays silent."""
        cfg = self.config
        return due_slot(session.last_end, cfg.session_gap_ms, cfg.window_ms)

    def _extensible(self, room: Room, session: Session) -> bool:
        """Whether an open window of ``room`` could still extend ``session`` (its close decides)."""
        return bool(room.open_ws) and min(room.open_ws) < session.last_end + self.config.session_gap_ms

    def _end_sessions(self, wm: int) -> None:
        """End the sessions due at or before ``wm`` whose room has no open window that could
        still extend them (that window's close extends or ends the session).

        A session is indexed once, under the due time it had then; activity since only moves its
        due time later, so when that slot comes it is checked and, if still live, indexed again
        under its due time now: one index entry per live session, not one per closed window."""
        for slot, rooms in _pop_due(self._session_due, wm):
            for room in rooms:
                session = room.session
                if session is None or session.due != slot:
                    continue  # ended, or replaced by a newer session, since it was indexed
                now_due = self._due_of(session)
                if now_due > wm:
                    self._index_session(room, session, now_due)
                    continue
                session.due = None  # the next window folded in indexes it again
                if not self._extensible(room, session):
                    self._end_session(room, session)

    def _end_session(self, room: Room, session: Session) -> None:
        session.updated_at = self._due_of(session)
        self._session_outbox.append(session.record(room.room_id, ENDED))
        room.session = None

    def _close_room_window(self, room: Room, ws: int) -> RoomStats:
        cfg = self.config
        window_ms = cfg.window_ms
        first = ws // cfg.bucket_ms
        end = first + window_ms // cfg.bucket_ms
        total, active_first, active_last = room.take_window(first, end)
        open_ws = room.open_ws
        assert isinstance(open_ws, list)  # it holds ws
        open_ws.remove(ws)
        concurrent = room.concurrent + total[JOINS] - total[LEAVES]
        room.concurrent = concurrent = concurrent if concurrent > 0 else 0
        uniques = room.uniques
        sketch = uniques.pop(ws, None) if uniques else None
        # An idle room should not pay for the windows it had (an emptied dict keeps its table,
        # 224 bytes): it goes back to the shared empty containers.
        if not open_ws:
            room.open_ws = ()
        if not room.buckets:
            room.buckets = EMPTY
        if not room.uniques:
            room.uniques = EMPTY
        self._tail_changed(room)  # the fold below, and the detector when it evaluates the window
        if room.seen_chunks:
            # a chunk goes once every key in it is older than the dedup TTL
            room.forget_chunks_before(
                self._watermark - cfg.dedup_ttl_ms - window_ms + 1, cfg.dedup_max_per_room
            )
        unique_viewers = 0 if sketch is None else round(sketch.get_estimate())
        self._fold(room, ws, active_first, active_last, total, sketch, concurrent)
        stats = room_stats(room.room_id, ws, window_ms, total, unique_viewers, concurrent)
        room.last_closed = stats
        self.counters.windows_emitted += 1
        if self.detect_spikes:
            self._undetected.append((room, stats))
        return stats

    def _first_delivery(self, ts: int) -> None:
        """An input's first event (time ``ts``) in this task's state: the state begins at the
        latest input's first window. One input may start with old records (a replay, a stale
        producer), alone for a while: the others' live rooms are no newer for that. (An input
        whose first event ever comes later, say a gift topic quiet for days, moves the start
        then: rooms still warming up at that moment lose the surge rule.)"""
        ws = ts - ts % self.config.window_ms
        if self.watch_start is None or ws > self.watch_start:
            self._watching_from(ws)

    def _watching_from(self, ws: int | None) -> None:
        """This task's state begins at window ``ws`` (NO_TIME: long ago; None: not yet).

        A room seen in that window or the next was most likely live before it: it is no new
        room, and gets no ``RoomSurge`` however big it is (after a first deployment or a state
        reset, every room above a ``surge_value`` raised one). The next window leaves room for
        the first events arriving late in their window.
        """
        self.watch_start = ws
        self._surge_from = None if ws is None or ws == NO_TIME else ws + 2 * self.config.window_ms

    def _detect(self, room: Room, stats: RoomStats) -> None:
        state = room.detector
        if state is None:
            state = room.detector = DetectorState(room.room_id)
        rules = rules_for(self.rules, room.room_id, self.categories.get(room.room_id))
        cfg = self.config
        events = observe(
            state, stats, rules, cfg.window_ms, surge_from=self._surge_from, native=cfg.native_core
        )
        self.counters.detector_evaluations += 1
        if events:
            self._alerts.extend(events)
            if firing(state):
                self.firing_rooms.add(room.room_id)
            else:
                self.firing_rooms.discard(room.room_id)

    def _expire_idle_rooms(self) -> None:
        self._last_expiry_scan = self._watermark
        cfg = self.config
        cutoff = self._watermark - cfg.room_idle_ms
        idle = [r for r in self.rooms.values() if not r.open_ws and r.last_ts < cutoff]
        # Dedup memory lives its full TTL even when the room expires sooner: such a room is reset
        # (as a returning room would be) but kept with its order keys until they are all past the TTL.
        dedup_cutoff = self._watermark - cfg.dedup_ttl_ms - cfg.window_ms + 1
        # A room with a live session or an open rollup is kept too (reset), until they have ended.
        keep: list[Room] = []
        if any(r.seen_chunks or r.session is not None or r.rollups is not None for r in idle):
            gone: list[Room] = []
            for room in idle:
                if room.seen_chunks:
                    before = len(room.seen_gone)
                    room.forget_chunks_before(dedup_cutoff, cfg.dedup_max_per_room)
                    if len(room.seen_gone) != before:
                        self._changed(room)
                kept = room.seen_chunks or room.session is not None or room.rollups is not None
                (keep if kept else gone).append(room)
            idle = gone
        if idle and self._undetected:  # a room's last windows are evaluated before it is forgotten
            leaving, staying = set(idle), []
            for room, stats in self._undetected:
                if room in leaving:
                    self._detect(room, stats)
                else:
                    staying.append((room, stats))
            self._undetected = staying
        for room in keep:
            if room.room_id in self.firing_rooms and room.detector is not None:
                self._alerts.extend(resolve_all(room.detector, self._watermark))
                self.firing_rooms.discard(room.room_id)
            if _reset(room):
                self._tail_changed(room)
        for room in idle:
            if room.room_id in self.firing_rooms and room.detector is not None:
                self._alerts.extend(resolve_all(room.detector, self._watermark))
                self.firing_rooms.discard(room.room_id)
            del self.rooms[room.room_id]
            self._expired.add(room.room_id)
            for ws in [*room.seen_chunks, *room.seen_gone]:
                self._gone_keys.append(dedup_key(room.room_id, ws))
            room.dirty = False
        if idle:
            # in place: apply() holds this list in a local across the scan
            self._dirty[:] = [r for r in self._dirty if r.dirty]
            self.counters.rooms_expired += len(idle)

    # -- checkpoint and restore ---------------------------------------------------------

    def _changed(self, room: Room) -> None:
        """Write the room's record at the next checkpoint (apply's loop does this inline)."""
        if not room.dirty:
            room.dirty = True
            self._dirty.append(room)

    def _tail_changed(self, room: Room) -> None:
        """Write both of the room's records, ``r/`` and ``t/``, at the next checkpoint."""
        room.tail_dirty = True
        self._changed(room)

    def checkpoint(self, offsets: Mapping[int, int] | None = None) -> Checkpoint:
        """Changelog records for rooms changed since the last checkpoint, plus task metadata
        (``write_checkpoint``, gathered)."""
        upserts: list[tuple[bytes, bytes]] = []
        deletes: list[bytes] = []

        def gather(key: bytes, value: bytes | None) -> None:
            if value is None:
                deletes.append(key)
            else:
                upserts.append((key, value))

        self.write_checkpoint(gather, offsets)
        return Checkpoint(upserts, deletes)

    def write_checkpoint(
        self,
        write: Callable[[bytes, bytes | None], None],
        offsets: Mapping[int, int] | None = None,
        *,
        into: tuple[Any, str, int] | None = None,
    ) -> int:
        """Hand ``write`` the changelog records of the rooms changed since the last checkpoint, then
        the task metadata, then the tombstones (value None), each as soon as it is encoded: a
        checkpoint of every room holds one record at a time, not all of them (a catch-up's
        checkpoint covers most rooms, a window boundary tens of thousands). Returns how many.

        ``offsets`` (source -> next offset to read) go into the metadata record: written in the
        same transaction as the state, they say exactly where a restored task resumes.

        ``into``: the native outbox, topic and partition ``write`` writes to, which a native core
        may write the rooms' records into itself (the Python rooms do not).

        It clears what it writes as it goes: after a checkpoint that failed half-way, or whose
        transaction was aborted, this task must not write another (the data plane exits, and the
        partition's next owner restores from the last committed one).
        """
        self.detect()
        # Every event taken so far is in the state, so a changed room holds everything up to these
        # offsets: a replay after a restore skips what is at or below them for that room.
        # Rooms share offsets dicts: each one held is merged once (consumed itself when it adds
        # nothing; otherwise a source silent since a restore, whose rooms go on sharing).
        consumed = dict(self._consumed)
        merged: dict[int, dict[int, int]] = {}  # id of a dict held before -> it merged
        for room in self._dirty:
            held = room.offsets
            shared = merged.get(id(held))
            if shared is None:
                shared = consumed if held.keys() <= consumed.keys() else {**held, **consumed}
                merged[id(held)] = shared
            room.offsets = shared
        written = 0
        deletes: list[bytes] = []  # written after every upsert: never before a write of its key
        whole = self.config.state_format == WHOLE_ROOM_VERSION
        for room in self._dirty:
            if not room.dirty:
                continue
            room.dirty = False
            write(room_key(room.room_id), encode_room_whole(room) if whole else encode_room(room))
            written += 1
            if room.tail_dirty and not whole:
                room.tail_dirty = False
                tail = encode_room_tail(room)
                if tail is None:
                    deletes.append(tail_key(room.room_id))
                else:
                    write(tail_key(room.room_id), tail)
                    written += 1
            changed = room.seen_dirty
            if isinstance(changed, set):
                chunks = room.seen_chunks
                for ws in changed:
                    write(dedup_key(room.room_id, ws), encode_dedup_chunk(chunks[ws]))
                written += len(changed)
                room.seen_dirty = NO_WINDOWS  # an emptied set keeps its table
            if room.seen_gone:
                deletes.extend(dedup_key(room.room_id, ws) for ws in room.seen_gone)
                room.seen_gone = ()
        self._dirty = []
        for room_id in sorted(self._expired):
            deletes += (room_key(room_id), tail_key(room_id))
        for room_id, ws in self._orphan_chunks:
            back = self.rooms.get(room_id)
            if back is None or ws not in back.seen_chunks:
                deletes.append(dedup_key(room_id, ws))
        self._orphan_chunks = []
        deletes.extend(self._gone_keys)
        self._expired = set()
        self._gone_keys = []
        return written + self._write_meta(write, deletes, offsets)

    def checkpoint_slices(
        self,
        write: Callable[[bytes, bytes | None], None],
        offsets: Mapping[int, int] | None = None,
        *,
        into: tuple[Any, str, int] | None = None,
        budget: int | None = None,
    ) -> Iterator[int]:
        """``write_checkpoint`` a slice at a time: each slice's records (``budget`` bytes of
        them, about) written into ``into`` before the generator yields how many, the metadata
        and the tombstones in the last one. A window boundary changes tens of thousands of rooms
        at once; the caller hands each slice to the producer before the next is encoded. Nothing
        may change the task between slices. The Python rooms write it in one slice."""
        yield self.write_checkpoint(write, offsets, into=into)

    def _write_meta(
        self,
        write: Callable[[bytes, bytes | None], None],
        deletes: list[bytes],
        offsets: Mapping[int, int] | None,
    ) -> int:
        """The end of a checkpoint: the task metadata (with ``offsets``, the next offsets to read),
        then the tombstones. Returns how many records."""
        if offsets:
            self._offsets.update(offsets)
        cfg = self.config
        meta = TaskMeta(
            self._max_ts,
            self._watermark,
            self._src_max,
            self._sender_frontier,
            self._offsets,
            (cfg.bucket_ms, cfg.window_ms),
            self.watch_start,
        )
        write(META_KEY, encode_meta(meta))
        for key in deletes:
            write(key, None)
        return 1 + len(deletes)

    @property
    def dirty_rooms(self) -> int:
        return len(self._dirty)

    def restore(self, records: Iterable[tuple[bytes, bytes | None]]) -> int:
        """Rebuild state from changelog records in log order (last write per key wins).

        A record that cannot be decoded is quarantined (``quarantined``), not raised: its room
        starts fresh and every other room is restored. Returns the number of rooms restored.
        """
        live = compact(records)
        if live.meta is not None:
            try:
                meta = decode_meta(live.meta)
            except StateError as exc:
                self.quarantined.append((META_KEY, live.meta, str(exc)))
            else:
                self._check_geometry(meta.geometry)
                self._restore_meta(meta)
        shared: dict[tuple[tuple[int, int], ...], dict[int, int]] = {}  # rooms of one checkpoint
        tails = live.tails
        for key, value in live.rooms:
            try:
                room, version = decode_room_record(key, value, self.config.window_ms)
            except StateError as exc:
                self.quarantined.append((key, value, str(exc)))
                continue
            tail = tails.pop(key[len(ROOM_KEY_PREFIX) :], None)
            if version < 6:
                # Its record holds the detector, session and rollups. They are written as a t/
                # record with its next r/ record, which no longer holds them: at the next checkpoint
                # if a t/ record is beside it (older: written before a worker of an earlier version
                # took the room over), so that no restore reads the two together.
                room.tail_dirty = True
                if tail is not None and self.config.state_format == WHOLE_ROOM_VERSION:
                    self._gone_keys.append(tail_key(room.room_id))  # (no t/ record is written)
                elif tail is not None:
                    self._changed(room)
            elif tail is not None:
                try:
                    decode_room_tail(tail_key(room.room_id), tail, room)
                except StateError as exc:  # the room goes on without its spike history and session
                    self.quarantined.append((tail_key(room.room_id), tail, str(exc)))
            room.offsets = shared.setdefault(tuple(room.offsets.items()), room.offsets)
            self._adopt(room)
        # t/ records of no room (its r/ record was quarantined) are deleted with the next checkpoint,
        # as an expired room's are: unless the room comes back first and writes its own
        for orphan in tails:
            try:
                self._expired.add(orphan.decode())
            except UnicodeDecodeError:  # no room has that id: nothing can write that key again
                self._gone_keys.append(TAIL_KEY_PREFIX + orphan)
        if self.watch_start is None and (self.rooms or self._max_ts != NO_TIME):
            self._watching_from(NO_TIME)  # state from before the start was recorded
        for key, value in live.chunks:
            try:
                room_id, ws, keys = decode_dedup_chunk(key, value)
            except StateError as exc:
                self.quarantined.append((key, value, str(exc)))
                continue
            self._restore_chunk(room_id, ws, keys)
        self._next_close = self._next_due()
        return len(self.rooms)

    def _adopt(self, room: Room) -> None:
        """Take a decoded room into the task's indexes."""
        self.rooms[room.room_id] = room
        if room.seen_dirty:  # an old format's dedup memory: rewrite it as chunks next checkpoint
            self._changed(room)
        for ws in room.open_ws:
            self._by_window.setdefault(ws, {})[room] = None
        if room.open_ws:
            room.reg_ws = max(room.open_ws)
        if room.detector is not None and firing(room.detector):
            self.firing_rooms.add(room.room_id)
        # Closing a rollup or ending a session does not rewrite the room's record (no checkpoint
        # pays for it): whatever was due at the restored watermark was closed, published and
        # committed with it, so it is dropped here rather than published again.
        cfg, wm = self.config, self._watermark
        if room.rollups is not None:  # placed by the lengths configured now
            by_length = {
                rollup.length: rollup for rollup in room.rollups if rollup.start + rollup.length > wm
            }
            room.rollups = [by_length.get(length) for length in cfg.rollup_windows_ms]
            if len(by_length) > sum(rollup is not None for rollup in room.rollups):
                # open rollups of lengths no longer configured: gone from the record too, or they
                # would come back if their length were configured again
                self._tail_changed(room)
            if not any(room.rollups):
                room.rollups = None
            for rollup in room.rollups or ():
                if rollup is not None:
                    _enlist(self._rollup_ends, rollup.start + rollup.length, room)
        if not cfg.sessions and room.session is not None:
            # sessions turned off since the checkpoint: none is folded or published, and the
            # record forgets it (turned on again, the room would carry on that old session). Its
            # record goes out once more, ended as of its last closed window: otherwise the live
            # one stays on the compacted topic for good. Only a session not already due: that one
            # ended, and its ended record went out before the checkpoint.
            session = room.session
            if not (self._due_of(session) <= wm and not self._extensible(room, session)):
                self._session_outbox.append(session.record(room.room_id, ENDED))
            room.session = None
            self._tail_changed(room)
        session = room.session
        if session is not None:
            due = self._due_of(session)
            if due <= wm and not self._extensible(room, session):
                room.session = None  # ended (see _end_sessions)
            else:
                self._index_session(room, session, due)
        for source, offset in room.offsets.items():
            if offset > self._replay_until.get(source, -1):
                self._replay_until[source] = offset

    def rebase(self, source: int, log_end: int) -> None:
        """The log of input ``source`` ends at ``log_end``, below the offsets the restored state
        holds: it was truncated (an unclean leader election) or recreated. Records from
        ``log_end`` on are not the ones the state took: none of them counts as replayed, and the
        input resumes there (``restored_offsets``). The rooms whose offsets it lowers are written
        at the next checkpoint: restored from their records as they were, they would count the new
        records up to the old offsets as replayed."""
        held = log_end - 1
        if self._replay_until.get(source, -1) > held:
            self._replay_until[source] = held
        lowered: dict[int, dict[int, int]] = {}  # offsets are shared by rooms: id -> lowered copy
        for room in self.rooms.values():
            offsets = room.offsets
            if offsets.get(source, -1) > held:
                if id(offsets) not in lowered:
                    lowered[id(offsets)] = {**offsets, source: held}
                room.offsets = lowered[id(offsets)]
                self._changed(room)
        self._offsets[source] = log_end
        self.restored_offsets[source] = log_end

    def _restore_chunk(self, room_id: str, ws: int, keys: list[str]) -> None:
        room = self.rooms.get(room_id)
        if room is None:
            # Its room's record was quarantined (an expiry deletes a room's chunks with it): the
            # room starts again without the keys, which must not come back at a later restore.
            self._orphan_chunks.append((room_id, ws))
            return
        room.restore_chunk(ws, keys)

    def _check_geometry(self, geometry: tuple[int, int] | None) -> None:
        """Refuse state cut with other buckets or windows: its open windows cannot be re-cut, and
        restored as they are they published misaligned windows and lost buckets without a word."""
        cfg = self.config
        if geometry is None or geometry == (cfg.bucket_ms, cfg.window_ms):
            return
        bucket_ms, window_ms = geometry
        raise ConfigError(
            f"the task state was written with LIVEPULSE_BUCKET_MS={bucket_ms} and LIVEPULSE_WINDOW_MS="
            f"{window_ms}; this worker runs with {cfg.bucket_ms} and {cfg.window_ms}: open windows cannot "
            "be re-cut. Go back to the old settings, or reset the state (the RUNBOOK's 'Reset state')"
        )

    def _restore_meta(self, meta: TaskMeta) -> None:
        self._max_ts, self._watermark = meta.max_ts, meta.watermark
        self._src_max = dict(meta.source_max)
        self._sender_frontier = dict(meta.senders)
        self._offsets = dict(meta.offsets)
        self.restored_offsets = dict(meta.offsets)
        self._watching_from(meta.watch_start)

    # -- queries ------------------------------------------------------------------------

    def iter_rooms(self) -> Iterator[Room]:
        return iter(self.rooms.values())


def _reset(room: Room) -> bool:
    """Forget an expired room's activity (concurrent viewers, spike history), keeping its dedup
    memory and offsets; True if anything changed."""
    if room.detector is None and room.concurrent == 0 and room.last_closed is None and not room.uniques:
        return False
    room.concurrent = 0
    room.detector = None
    room.last_closed = None
    room.uniques = EMPTY
    room.buckets = EMPTY
    return True


def _enlist(index: dict[int, list[Room]], due: int, room: Room) -> None:
    """List ``room`` under ``due`` in a due index (rollup ends, session slots)."""
    members = index.get(due)
    if members is None:
        members = index[due] = []
    members.append(room)


def _pop_due(index: dict[int, list[Room]], wm: int) -> Iterator[tuple[int, list[Room]]]:
    """Take the entries of a due index at or before ``wm``, earliest first; entries added
    meanwhile (a session moved on to a later slot) are taken too when they are due."""
    while index:
        due = min(index)
        if due > wm:
            return
        yield due, index.pop(due)
