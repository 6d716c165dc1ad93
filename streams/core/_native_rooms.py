"""The Python half of the native room table (``streams/native/src/rooms.rs``; issue 13, item 1).

The table closes windows and keeps every room's state natively. What stays here is the spike
detector beyond its quiet path: a window with an alert slot open, a seasonal term, a value a
rule might trigger on, or a silence long enough to restart the baselines is handed back with the
room's detector state, run through ``streams.core._spikes.observe``, and the state handed back.
At 100 000 sparse rooms nearly every window takes the quiet path natively (session 14: 122 246
of 124 931), so this loop sees the rooms that matter: those near or in an alert.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import chain
from typing import Any

import orjson

from schemas import Event, RoomSession, RoomStats

from . import _fastcore  # type: ignore[attr-defined]
from ._alerts import AlertEvent
from ._config import CoreConfig
from ._partition import PartitionCache
from ._room import (
    Room,
    room_stats,
)
from ._sessions import ENDED, LIVE, session_record
from ._spike_rules import DEFAULT_RULES, SpikeRules, rules_for
from ._spikes import DEFAULT_MAX_GAP_S, DetectorState, _plan, firing, observe, resolve_all
from ._state_codec import (
    ROOM_KEY_PREFIX,
    TAIL_KEY_PREFIX,
    WHOLE_ROOM_VERSION,
    decode_room,
    decode_room_tail,
    dedup_key,
    encode_room,
    encode_room_tail,
    encode_room_whole,
    tail_key,
)
from ._task import NO_TIME, ApplyResult, Encoded, TaskAggregator

#: ``NativeRooms.apply_raw`` stopped where windows are due (0: at the end; 2: the rest is the caller's)
_DUE = 1

#: the longest silence a room's baselines replay as idle windows, in ms (``observe``'s default,
#: which the task uses); the native table is built with it
MAX_GAP_MS = int(DEFAULT_MAX_GAP_S * 1_000)


def quiet_planner(rules: SpikeRules, categories: Mapping[str, str], window_ms: int) -> Callable[[str], Any]:
    """What the table asks for a room's quiet plan (``NativeRooms.set_planner``): the plan of the
    room's effective rules (``rules_for``), None where its rules have no quiet path."""

    def plan_of(room_id: str) -> Any:
        return _plan(rules_for(rules, room_id, categories.get(room_id)), window_ms).quiet

    return plan_of


class NativeSpikes:
    """The spike detector's Python half over a native table (``NativeRooms`` built with
    ``detect_spikes``): the task's rules and categories, the alert transitions not yet drained,
    the rooms firing, and the windows evaluated (``TaskCounters.detector_evaluations``)."""

    def __init__(self, table: Any, window_ms: int) -> None:
        self.table = table
        self.window_ms = window_ms
        self.rules = DEFAULT_RULES
        self.categories: Mapping[str, str] = {}
        self.alerts: list[AlertEvent] = []
        self.firing: set[str] = set()
        self.evaluated = 0
        table.set_planner(quiet_planner(self.rules, self.categories, window_ms))

    def set_rules(self, rules: SpikeRules, categories: Mapping[str, str]) -> None:
        """New rules or categories: every room's quiet plan is asked for again."""
        self.rules, self.categories = rules, categories
        self.table.set_planner(quiet_planner(rules, categories, self.window_ms))

    def detect(self, surge_from: int | None, rooms: set[str] | None = None) -> None:
        """``TaskAggregator.detect``: the windows closed since the last call (of ``rooms`` only,
        if given), in closing order."""
        evaluated, handed, wires = self.table.detect(rooms)
        self.evaluated += evaluated
        if not handed:
            return
        states = {room_id: DetectorState.from_wire(orjson.loads(wire)) for room_id, wire in wires}
        for room_id, (start, _end, totals, unique_viewers, concurrent) in handed:
            state = states[room_id]
            stats = room_stats(room_id, start, self.window_ms, totals, unique_viewers, concurrent)
            room_rules = rules_for(self.rules, room_id, self.categories.get(room_id))
            events = observe(state, stats, room_rules, self.window_ms, surge_from=surge_from)
            if events:
                self.alerts.extend(events)
                if firing(state):
                    self.firing.add(room_id)
                else:
                    self.firing.discard(room_id)
        for room_id, state in states.items():
            self.table.set_detector(room_id, orjson.dumps(state.to_wire()))

    def expire(self, surge_from: int | None) -> None:
        """Finish the expiry scan the table's ``close_due`` began (``_expire_idle_rooms``): the
        leaving rooms' last windows evaluated, the alerts firing in the rooms scanned resolved,
        then the table's ``expire``."""
        scanned = self.table.expiring()
        if scanned is None:
            return
        leaving, keeping = scanned
        if leaving:
            self.detect(surge_from, set(leaving))
        watermark = self.table.watermark()
        for room_id in [*keeping, *leaving]:
            if room_id in self.firing:
                wire = self.table.detector_wire(room_id)
                if wire is not None:
                    state = DetectorState.from_wire(orjson.loads(wire))
                    self.alerts.extend(resolve_all(state, watermark))
                    self.firing.discard(room_id)
        self.table.expire()

    def restored(self, room_id: str) -> None:
        """A room the table restored: firing if its detector has an alert firing (``_adopt``)."""
        if self.table.alert_slots(room_id):
            wire = self.table.detector_wire(room_id)
            if firing(DetectorState.from_wire(orjson.loads(wire))):
                self.firing.add(room_id)


class RoomTable(_fastcore.NativeRooms, Mapping[str, Room]):  # type: ignore[misc]
    """The native table as a read-only mapping of its rooms: membership and size natively (the
    pipeline asks for every event it routes), a room decoded from its records when asked for (the
    query view and tests read rooms rarely; a room decoded here is a copy, not the state)."""

    def __getitem__(self, room_id: str) -> Room:
        if not self.has_room(room_id):
            raise KeyError(room_id)
        window_ms = self.window_ms
        room = decode_room(self.encode_room(room_id), window_ms)
        tail = self.encode_tail(room_id)
        if tail is not None:
            decode_room_tail(tail_key(room_id), tail, room)
        for ws, keys in self.dedup_chunks(room_id):
            room.restore_chunk(ws, keys)
        last = self.last_closed(room_id)
        if last is not None:
            start, _end, totals, unique_viewers, concurrent = last
            room.last_closed = room_stats(room_id, start, window_ms, totals, unique_viewers, concurrent)
        return room

    def __iter__(self) -> Iterator[str]:
        return iter(self.room_ids())


def new_table(config: CoreConfig, *, detect_spikes: bool) -> RoomTable:
    """A native table of ``config``'s window geometry, sessions, rollups, caps and idle time."""
    return RoomTable(
        bucket_ms=config.bucket_ms,
        window_ms=config.window_ms,
        session_gap_ms=config.session_gap_ms,
        sessions=config.sessions,
        rollup_windows_ms=list(config.rollup_windows_ms),
        lg_k=config.hll_lg_k,
        grace_ms=config.grace_ms,
        max_rooms=config.max_rooms,
        dedup_ttl_ms=config.dedup_ttl_ms,
        dedup_max_per_room=config.dedup_max_per_room,
        detect_spikes=detect_spikes,
        max_gap_ms=MAX_GAP_MS,
        room_idle_ms=config.room_idle_ms,
    )


class NativeTaskAggregator(TaskAggregator):
    """``TaskAggregator`` with its rooms in the native table (issue 13, item 1;
    ``LIVEPULSE_NATIVE_ROOMS``): the per-room work (apply, the window close, sessions, rollups, the
    detector's quiet path, idle expiry, the rooms' changelog records) natively; the control
    (inputs, idleness, stalls, holds, the wall clock, the metadata record) and the detector's
    other windows in Python, in the base class. The restore runs the Python one and hands its
    rooms over (older record versions, quarantine and orphans as the Python task has them)."""

    def __init__(
        self,
        config: CoreConfig,
        sources: Iterable[int] = (0,),
        *,
        senders: Iterable[int] = (),
        detect_spikes: bool = True,
    ) -> None:
        self._table = new_table(config, detect_spikes=detect_spikes)
        self._spikes = NativeSpikes(self._table, config.window_ms)
        super().__init__(config, sources, senders=senders, detect_spikes=detect_spikes)

    # the detector's state lives with the table's Python half
    @property
    def rules(self) -> SpikeRules:
        return self._spikes.rules

    @rules.setter
    def rules(self, rules: SpikeRules) -> None:
        self._spikes.set_rules(rules, self._spikes.categories)

    @property
    def categories(self) -> Mapping[str, str]:
        return self._spikes.categories

    @categories.setter
    def categories(self, categories: Mapping[str, str]) -> None:
        self._spikes.set_rules(self._spikes.rules, categories)

    @property
    def firing_rooms(self) -> set[str]:
        return self._spikes.firing

    @firing_rooms.setter
    def firing_rooms(self, rooms: set[str]) -> None:
        self._spikes.firing = rooms

    @property
    def _alerts(self) -> list[AlertEvent]:
        return self._spikes.alerts

    @_alerts.setter
    def _alerts(self, alerts: list[AlertEvent]) -> None:
        self._spikes.alerts = alerts

    @property  # type: ignore[override]
    def rooms(self) -> Mapping[str, Room]:
        return self._table

    @rooms.setter
    def rooms(self, rooms: Any) -> None:
        """The base class's empty dict at construction; the table holds the rooms."""

    def iter_rooms(self) -> Iterator[Room]:
        view = self.rooms
        return (view[room_id] for room_id in view)

    @property
    def dirty_rooms(self) -> int:
        return int(self._table.dirty_rooms())

    # -- the hot path ----------------------------------------------------------------

    def _push_progress(self) -> None:
        self._table.restore_progress(self._max_ts, self._watermark, list(self._src_max.items()))

    def _pull_progress(self) -> None:
        self._max_ts, self._watermark, src_max = self._table.progress()
        self._src_max = dict(src_max)
        self._next_close = self._table.next_close()

    def first_foreign(
        self, items: Sequence[tuple[int, Event]], route: PartitionCache, here: int
    ) -> int | None:
        if type(items) is not list:  # the table reads a list
            return super().first_foreign(items, route, here)
        return self._table.first_foreign(items, route.partitions, here)  # type: ignore[no-any-return]

    def apply(self, source: int, items: Sequence[tuple[int, Event]], now_ms: int) -> ApplyResult:
        if not items:
            return ApplyResult(0, 0, 0, 0, 0)
        moves_watermark = source in self.sources
        if moves_watermark:
            others = self._delivery(source, now_ms)
            if self._src_max.get(source, NO_TIME) == NO_TIME:
                self._first_delivery(items[0][1].ts)
        else:
            others = NO_TIME  # re-routed events: their senders' progress moves the watermark
        watching = self.watch_start is not None
        replay_until = self._replay_until.get(source, -1)
        batch = items if type(items) is list else list(items)
        table = self._table
        self._push_progress()
        counts = [0, 0, 0, 0, 0]
        at = 0
        while True:
            at, counted = table.apply(source, batch, at, others, replay_until, moves_watermark, watching)
            counts = [a + b for a, b in zip(counts, counted, strict=True)]
            if at >= len(batch):
                break
            self._close_natively()
        self._pull_progress()
        first = table.take_first_room_ts()
        if first is not None and self.watch_start is None:
            self._first_delivery(first)
        self._overflow += table.take_overflow()
        self._consumed[source] = batch[-1][0]
        self._count(source, counts)
        return ApplyResult(*counts)

    def apply_raw(
        self,
        source: int,
        messages: list[Any],
        start: int,
        now_ms: int,
        bounds: tuple[int, int, int, int, int, int],
        names: Sequence[str],
        currencies: Sequence[str],
        partitions: int,
        here: int,
    ) -> tuple[int, int, ApplyResult]:
        """``apply`` fused with the batch decoder and the routing check (``NativeRooms.apply_raw``):
        ``messages[start:]`` of input ``source`` (0, 1, 2: viewers, orders, gifts) taken as they
        are parsed, up to the first one the caller has to take the split way (outside the
        decoders' fast path, an order in a currency not among ``currencies``, a room of another
        task). Returns where that one is (``len(messages)``: none), where the run of those ends
        (the next message this would take), and what was counted.

        ``bounds``: ``schemas.native_bounds`` at ``now_ms``; ``names``: the viewer types (or order
        statuses) the decoders accept. The input delivered (``_delivery``, ``_first_delivery``)
        only once an event is taken: a batch that begins with garbage leaves it as it was."""
        assert source in self.sources, "re-routed events are decoded and applied the split way"

        def delivery(ts: int) -> tuple[int, bool]:
            others = self._delivery(source, now_ms)
            if self._src_max.get(source, NO_TIME) == NO_TIME:
                self._first_delivery(ts)
            return others, self.watch_start is not None

        table = self._table
        replay_until = self._replay_until.get(source, -1)
        self._push_progress()
        counts = [0, 0, 0, 0, 0]
        at, others, last = start, None, None
        while True:
            watching = self.watch_start is not None
            at, stop, counted, others, taken, resume = table.apply_raw(
                source, source, messages, at, others, watching, delivery, replay_until, bounds,
                names, currencies, partitions, here,
            )  # fmt: skip
            counts = [a + b for a, b in zip(counts, counted, strict=True)]
            if taken is not None:
                last = taken
            if stop != _DUE:
                break
            self._close_natively()
        self._pull_progress()
        if last is None:
            return at, resume, ApplyResult(0, 0, 0, 0, 0)
        first = table.take_first_room_ts()
        if first is not None and self.watch_start is None:
            self._first_delivery(first)
        self._overflow += table.take_overflow()
        self._consumed[source] = last
        self._count(source, counts)
        return at, resume, ApplyResult(*counts)

    def _count(self, source: int, counts: Sequence[int]) -> None:
        c = self.counters
        for by_source, n in zip(
            (c.applied, c.late, c.duplicate, c.replayed, c.overflow), counts, strict=True
        ):
            if n:
                by_source[source] = by_source.get(source, 0) + n

    def _close_due(self) -> None:
        self._push_progress()
        self._close_natively()
        self._pull_progress()

    def _close_natively(self) -> None:
        """The table's ``close_due`` (at the watermark it holds), and the expiry scan it may have
        begun finished. What it closed waits in the table for a drain."""
        self.counters.windows_emitted += self._table.close_due()
        if self._table.expiring() is not None:
            self._spikes.expire(self._surge_from)
            self.counters.rooms_expired = self._table.rooms_expired
        self.counters.detector_evaluations = self._spikes.evaluated

    def _take_closed(self) -> None:
        """What the table closed since the last drain into the outboxes, as the Python task's
        records."""
        windows, rollups, sessions = self._table.take_closed()
        window_ms = self.config.window_ms
        self._outbox += [
            room_stats(room_id, start, window_ms, totals, unique_viewers, concurrent)
            for room_id, (start, _end, totals, unique_viewers, concurrent) in windows
        ]
        self._rollup_outbox += [
            (length, room_stats(room_id, start, length, totals, unique_viewers, concurrent))
            for room_id, length, (start, _end, totals, unique_viewers, concurrent) in rollups
        ]
        self._session_outbox += [
            session_record(room_id, ENDED if ended else LIVE, start, last_end, *numbers)
            for room_id, (ended, start, last_end, *numbers) in sessions
        ]

    def drain(self) -> list[RoomStats]:
        self._take_closed()
        return super().drain()

    def drain_rollups(self) -> list[tuple[int, RoomStats]]:
        self._take_closed()
        return super().drain_rollups()

    def drain_sessions(self) -> list[RoomSession]:
        self._take_closed()
        return super().drain_sessions()

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
        """The table's records written into ``outbox`` natively (with a ``budget``, until that
        many bytes: ``unpublished`` then tells whether some are left); None while the outboxes hold
        records (a restore's, or a drain's left over): ``drain_encoded`` publishes those first."""
        if self._outbox or self._rollup_outbox or self._session_outbox:
            return None
        return self._table.publish_into(  # type: ignore[no-any-return]
            outbox,
            partition,
            partition,
            leaderboard_size,
            room_stats,
            dict(rollups),
            sessions,
            partials,
            budget,
        )

    @property
    def unpublished(self) -> bool:
        return bool(self._table.has_closed)

    def drain_encoded(self, task: int, leaderboard_size: int) -> Encoded:
        """The records of what the table closed, encoded natively (after any the outboxes hold:
        a restore's, or a drain's left over)."""
        windows, orders, gmv, partials, rollups, sessions = self._table.take_encoded(task, leaderboard_size)
        if not (self._outbox or self._rollup_outbox or self._session_outbox):
            return Encoded(windows, len(windows), orders, gmv, partials, rollups, sessions)
        held = super().drain_encoded(task, leaderboard_size)  # the table has nothing left to take
        return Encoded(
            chain(held.windows, windows),
            held.n_windows + len(windows),
            held.orders + orders,
            held.gmv_minor + gmv,
            held.partials + partials,
            chain(held.rollups, rollups),
            chain(held.sessions, sessions),
        )

    def detect(self) -> None:
        self._spikes.detect(self._surge_from)
        self.counters.detector_evaluations = self._spikes.evaluated

    def top_closed(self, metric: str, n: int) -> list[RoomStats]:
        window_ms = self.config.window_ms
        return [
            room_stats(room_id, start, window_ms, totals, unique_viewers, concurrent)
            for room_id, (start, _end, totals, unique_viewers, concurrent) in self._table.top_closed(
                metric, n
            )
        ]

    def firing_alerts(self) -> list[AlertEvent]:
        self.detect()
        out: list[AlertEvent] = []
        for room_id in sorted(self.firing_rooms):
            wire = self._table.detector_wire(room_id) if self._table.has_room(room_id) else None
            if wire is not None:
                out.extend(firing(DetectorState.from_wire(orjson.loads(wire))))
        return out

    # -- checkpoint and restore ---------------------------------------------------------

    def write_checkpoint(
        self,
        write: Callable[[bytes, bytes | None], None],
        offsets: Mapping[int, int] | None = None,
        *,
        into: tuple[Any, str, int] | None = None,
    ) -> int:
        return sum(self.checkpoint_slices(write, offsets, into=into))

    def checkpoint_slices(
        self,
        write: Callable[[bytes, bytes | None], None],
        offsets: Mapping[int, int] | None = None,
        *,
        into: tuple[Any, str, int] | None = None,
        budget: int | None = None,
    ) -> Iterator[int]:
        self.detect()
        consumed = list(self._consumed.items())
        deletes: list[bytes] = []
        if into is not None and self.config.state_format != WHOLE_ROOM_VERSION:
            outbox, topic, partition = into
            done = False
            while not done:  # the rooms' records a budget at a time into the outbox
                written: int
                written, gone, done = self._table.checkpoint_into(outbox, topic, partition, consumed, budget)
                deletes += gone
                if not done:
                    yield written
        else:
            upserts, gone = self._table.checkpoint(consumed)
            if self.config.state_format == WHOLE_ROOM_VERSION:
                upserts, gone = self._whole(upserts, gone)
            for key, value in upserts:
                write(key, value)
            written = len(upserts)
            deletes += gone
        for room_id, ws in self._orphan_chunks:
            if not self._table.has_chunk(room_id, ws):
                deletes.append(dedup_key(room_id, ws))
        self._orphan_chunks = []
        deletes += self._gone_keys
        self._gone_keys = []
        yield written + self._write_meta(write, deletes, offsets)

    def _whole(
        self, upserts: list[tuple[bytes, bytes]], deletes: list[bytes]
    ) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
        """State format 5 (for workers older than format 6, during an upgrade): each room as one
        record holding its detector, session and rollups, no t/ records written or deleted but an
        expired room's (slow: every room written is decoded here; this format is for an upgrade)."""
        rooms = self.rooms
        whole = [
            (key, encode_room_whole(rooms[key[len(ROOM_KEY_PREFIX) :].decode()]))
            if key.startswith(ROOM_KEY_PREFIX)
            else (key, value)
            for key, value in upserts
            if not key.startswith(TAIL_KEY_PREFIX)
        ]
        gone = {key[len(ROOM_KEY_PREFIX) :] for key in deletes if key.startswith(ROOM_KEY_PREFIX)}
        kept = [
            key
            for key in deletes
            if not key.startswith(TAIL_KEY_PREFIX) or key[len(TAIL_KEY_PREFIX) :] in gone
        ]
        return whole, kept

    def restore(self, records: Iterable[tuple[bytes, bytes | None]]) -> int:
        """The Python task's restore, its rooms then handed to the table in the order it took
        them (adopted: what was due at the restored watermark is gone already), with what its
        next checkpoint writes."""
        shadow = TaskAggregator(
            self.config, self.sources, senders=self.senders, detect_spikes=self.detect_spikes
        )
        restored = shadow.restore(records)
        table = self._table
        table.restore_progress(shadow._max_ts, shadow._watermark, list(shadow._src_max.items()))
        for room in shadow.rooms.values():
            table.restore_room(encode_room(room))
            tail = encode_room_tail(room)
            if tail is not None:
                table.restore_tail(room.room_id, tail)
            table.adopt(room.room_id)
            for ws, keys in room.seen_chunks.items():
                table.restore_chunk(room.room_id, ws, list(keys))
            if room.seen_dirty:  # an older record's dedup memory, moved into chunks
                table.mark_chunks_changed(room.room_id, list(room.seen_dirty))
        for room in shadow.rooms.values():
            if room.tail_dirty and not room.dirty:
                table.mark_changed(room.room_id, False, True)
        for room in shadow._dirty:
            table.mark_changed(room.room_id, True, room.tail_dirty)
        table.restore_expired(sorted(shadow._expired))
        table.finish_restore()
        for name in (
            "_max_ts", "_watermark", "_src_max", "_sender_frontier", "_offsets", "restored_offsets",
            "watch_start", "_surge_from", "_replay_until", "_orphan_chunks", "_gone_keys",
        ):  # fmt: skip
            setattr(self, name, getattr(shadow, name))
        self.quarantined += shadow.quarantined
        self._session_outbox += shadow._session_outbox
        self._outbox += shadow._outbox
        self._rollup_outbox += shadow._rollup_outbox
        self.firing_rooms.update(shadow.firing_rooms)
        self._next_close = table.next_close()
        return restored

    def rebase(self, source: int, log_end: int) -> None:
        held = log_end - 1
        if self._replay_until.get(source, -1) > held:
            self._replay_until[source] = held
        self._table.rebase(source, held)
        self._offsets[source] = log_end
        self.restored_offsets[source] = log_end
