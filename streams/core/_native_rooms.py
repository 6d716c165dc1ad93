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
from ._spike_rules import SpikeRules, rules_for
from ._spikes import DEFAULT_MAX_GAP_S, DetectorState, _plan, firing, observe

#: the longest silence a room's baselines replay as idle windows, in ms (``observe``'s default,
#: which the task uses); the native table is built with it
MAX_GAP_MS = int(DEFAULT_MAX_GAP_S * 1_000)


def quiet_planner(rules: SpikeRules, categories: Mapping[str, str], window_ms: int) -> Callable[[str], Any]:
    """What the table asks for a room's quiet plan (``NativeRooms.set_planner``): the plan of the
    room's effective rules (``rules_for``), None where its rules have no quiet path."""

    def plan_of(room_id: str) -> Any:
        return _plan(rules_for(rules, room_id, categories.get(room_id)), window_ms).quiet

    return plan_of


def detect(
    table: Any,
    rules: SpikeRules,
    categories: Mapping[str, str],
    window_ms: int,
    surge_from: int | None,
    alerts: list[AlertEvent],
    firing_rooms: set[str],
) -> int:
    """``TaskAggregator.detect`` on a native table: the windows closed since the last call, in
    closing order; the alert transitions appended to ``alerts``, ``firing_rooms`` kept. Returns
    the windows evaluated (quiet ones included)."""
    evaluated, handed, wires = table.detect()
    if not handed:
        return int(evaluated)
    states = {room_id: DetectorState.from_wire(orjson.loads(wire)) for room_id, wire in wires}
    for room_id, (start, _end, totals, unique_viewers, concurrent) in handed:
        state = states[room_id]
        stats = room_stats(room_id, start, window_ms, totals, unique_viewers, concurrent)
        room_rules = rules_for(rules, room_id, categories.get(room_id))
        events = observe(state, stats, room_rules, window_ms, surge_from=surge_from)
        if events:
            alerts.extend(events)
            if firing(state):
                firing_rooms.add(room_id)
            else:
                firing_rooms.discard(room_id)
    for room_id, state in states.items():
        table.set_detector(room_id, orjson.dumps(state.to_wire()))
    return int(evaluated)


def firing_after_restore(table: Any, room_id: str) -> bool:
    """Whether a room the table restored has an alert firing (``TaskAggregator._adopt``)."""
    if not table.alert_slots(room_id):
        return False
    wire = table.detector_wire(room_id)
    return bool(firing(DetectorState.from_wire(orjson.loads(wire))))
