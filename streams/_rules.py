"""Spike-rule overrides as table entries: folding control messages in, building rules out.

The control topic carries two kinds of message (JSON):

* an override, ``{"scope": "room"|"category", "key": ..., "metric": ..., "set": {...}, "unset": [...]|"*"}``
  (see :func:`streams.core.apply_override`);
* a room's category, ``{"scope": "room-category", "key": "<room_id>", "category": "<name>"|null}``.

The control agent folds each message into one table entry (``room/<id>/<metric>``,
``category/<name>/<metric>`` or ``room-category/<id>``) so the table always
holds the effective overrides; every worker rebuilds its rules from the table.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .core import DEFAULT_RULES, SpikeRuleError, SpikeRules, apply_override

log = logging.getLogger(__name__)

ROOM_CATEGORY = "room-category"
#: the longest room id or category name a room-category entry takes (as for override keys)
MAX_KEY_CHARS = 128
#: what building rules from a stored entry raises when today's checks refuse it
_UNREADABLE = (SpikeRuleError, TypeError, ValueError)


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Rules and room categories in force, and how many overrides made them."""

    rules: SpikeRules = DEFAULT_RULES
    categories: Mapping[str, str] = field(default_factory=dict)
    overrides: int = 0


def fold(message: Mapping[str, Any], current: Mapping[str, Any]) -> tuple[str, Any]:
    """The table entry a control message changes and its new value (None: delete the entry).

    ``current`` is the table (only the entry the message addresses is read).
    Raises :class:`SpikeRuleError` for a malformed message.
    """
    if not isinstance(message, Mapping):
        raise SpikeRuleError(f"control message must be an object, got {type(message).__name__}")
    scope, key = message.get("scope"), message.get("key")
    if scope == ROOM_CATEGORY:
        category = message.get("category")
        if not _name(key) or not (category is None or _name(category)):
            raise SpikeRuleError(
                f"room-category needs a room id 'key' and a 'category' string or null, of 1..{MAX_KEY_CHARS} "
                "characters"
            )
        return f"{ROOM_CATEGORY}/{key}", category or None
    metric = message.get("metric")
    entry = f"{scope}/{key}/{metric}"
    existing = current.get(entry) or {}
    layer = {str(key): {str(metric): existing}} if existing else {}
    try:
        base = _layer_rules(scope, layer)
    except _UNREADABLE as exc:
        # an entry stored by an older version (a field since renamed) or not through fold: the
        # message replaces it, as if there were none, so that it can always be set or unset
        log.warning("spike rule entry %r unreadable (%s): replaced by the new message", entry, exc)
        base = SpikeRules()
    updated = apply_override(base, message)
    overrides = updated.room_overrides if scope == "room" else updated.category_overrides
    fields = dict(overrides.get(str(key), {}).get(str(metric), {}))
    return entry, fields or None


def rules_from_entries(entries: Mapping[str, Any]) -> RuleSet:
    """Rules built from the table: defaults, then category overrides, then room overrides.

    An entry today's checks refuse (stored by an older version, or not through :func:`fold`) is
    left out and logged: the data plane builds these rules at its checkpoints, and one bad entry
    must not stop every worker at every restart. A new control message for it replaces it.
    """
    rooms: dict[str, dict[str, Mapping[str, float | int | bool | None]]] = {}
    categories_layer: dict[str, dict[str, Mapping[str, float | int | bool | None]]] = {}
    categories: dict[str, str] = {}
    for entry, value in entries.items():
        if value is None:
            continue
        scope, _, rest = entry.partition("/")
        if scope == ROOM_CATEGORY:
            if _name(value):
                categories[rest] = value
            else:
                log.error("spike rule entry %r = %r is no category: left out", entry, value)
            continue
        key, _, metric = rest.rpartition("/")
        target = rooms if scope == "room" else categories_layer
        target.setdefault(key, {})[metric] = value
    try:
        rules = SpikeRules(DEFAULT_RULES.defaults, category_overrides=categories_layer, room_overrides=rooms)
    except _UNREADABLE:
        categories_layer = _readable("category", categories_layer)
        rooms = _readable("room", rooms)
        rules = SpikeRules(DEFAULT_RULES.defaults, category_overrides=categories_layer, room_overrides=rooms)
    overrides = sum(map(len, rooms.values())) + sum(map(len, categories_layer.values()))
    return RuleSet(rules, categories, overrides)


def _readable(scope: str, layer: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The entries of ``layer`` that make valid rules on their own; the others logged."""
    kept: dict[str, dict[str, Any]] = {}
    for key, by_metric in layer.items():
        for metric, value in by_metric.items():
            try:
                _layer_rules(scope, {key: {metric: value}})
            except _UNREADABLE as exc:
                log.error("spike rule entry %r unreadable, left out: %s", f"{scope}/{key}/{metric}", exc)
                continue
            kept.setdefault(key, {})[metric] = value
    return kept


def _layer_rules(scope: object, layer: Mapping[str, Mapping[str, Any]]) -> SpikeRules:
    """Default rules with ``layer`` as their room overrides (``scope`` "room") or category ones."""
    if scope == "room":
        return SpikeRules(room_overrides=layer)
    return SpikeRules(category_overrides=layer)


def _name(value: object) -> bool:
    """A room id or category name a room-category entry takes."""
    return isinstance(value, str) and 0 < len(value) <= MAX_KEY_CHARS
