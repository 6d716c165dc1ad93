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

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .core import DEFAULT_RULES, SpikeRuleError, SpikeRules, apply_override

ROOM_CATEGORY = "room-category"


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
        if not isinstance(key, str) or not key or (category is not None and not isinstance(category, str)):
            raise SpikeRuleError("room-category needs a room id 'key' and a 'category' string or null")
        return f"{ROOM_CATEGORY}/{key}", category or None
    metric = message.get("metric")
    entry = f"{scope}/{key}/{metric}"
    existing = current.get(entry) or {}
    layer = {str(key): {str(metric): existing}} if existing else {}
    base = SpikeRules(room_overrides=layer) if scope == "room" else SpikeRules(category_overrides=layer)
    updated = apply_override(base, message)
    overrides = updated.room_overrides if scope == "room" else updated.category_overrides
    fields = dict(overrides.get(str(key), {}).get(str(metric), {}))
    return entry, fields or None


def rules_from_entries(entries: Mapping[str, Any]) -> RuleSet:
    """Rules built from the table: defaults, then category overrides, then room overrides."""
    rooms: dict[str, dict[str, Mapping[str, float | int | bool | None]]] = {}
    categories_layer: dict[str, dict[str, Mapping[str, float | int | bool | None]]] = {}
    categories: dict[str, str] = {}
    overrides = 0
    for entry, value in entries.items():
        if value is None:
            continue
        scope, _, rest = entry.partition("/")
        if scope == ROOM_CATEGORY:
            categories[rest] = value
            continue
        key, _, metric = rest.rpartition("/")
        target = rooms if scope == "room" else categories_layer
        target.setdefault(key, {})[metric] = value
        overrides += 1
    rules = SpikeRules(DEFAULT_RULES.defaults, category_overrides=categories_layer, room_overrides=rooms)
    return RuleSet(rules, categories, overrides)
