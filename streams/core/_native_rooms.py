"""The Python half of the native room table (``streams/native/src/rooms.rs``; issue 13, item 1).

The table closes windows and keeps every room's state natively. What stays here is the spike
detector beyond its quiet path: a window with an alert slot open, a seasonal term, a value a
rule might trigger on, or a silence long enough to restart the baselines is handed back with the
room's detector state, run through ``streams.core._spikes.observe``, and the state handed back.
At 100 000 sparse rooms nearly every window takes the quiet path natively (session 14: 122 246
of 124 931), so this loop sees the rooms that matter: those near or in an alert.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from ._alerts import AlertEvent
from ._room import room_stats
from ._spike_rules import DEFAULT_RULES, SpikeRules, rules_for
from ._spikes import DEFAULT_MAX_GAP_S, DetectorState, _plan, firing, observe, resolve_all

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
