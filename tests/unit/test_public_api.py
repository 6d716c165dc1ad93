"""Each package's public surface, pinned: a change here is an API change, made on purpose.

Users import these names; everything else is ``_private`` and may change. Product packages never
import another package's private module (tested below); unit tests may reach into the module
they test.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("streams", "schemas", "loadtest", "deploy")

PINNED = {
    "schemas": {
        "DEFAULT_LIMITS",
        "DLQ_KEY_CAP_BYTES",
        "DLQ_RAW_CAP_BYTES",
        "ORDER_STATUSES",
        "ROOM_SESSION_FIELDS",
        "ROOM_STATS_FIELDS",
        "VIEWER_TYPES",
        "DeadLetter",
        "Event",
        "GiftEvent",
        "Invalid",
        "Limits",
        "NATIVE_DECODERS",
        "OrderEvent",
        "RoomSession",
        "RoomStats",
        "Source",
        "ViewerEvent",
        "dead_letter",
        "decode_dead_letter",
        "decode_gift",
        "decode_gift_batch",
        "decode_gift_batch_py",
        "decode_order",
        "decode_order_batch",
        "decode_order_batch_py",
        "decode_room_session",
        "decode_room_stats",
        "decode_viewer",
        "decode_viewer_batch",
        "decode_viewer_batch_py",
        "encode_dead_letter",
        "encode_room_session",
        "encode_room_stats",
        "native_bounds",
    },
    "streams.core": {
        "DEFAULT_RULES",
        "GAUGE_RULE",
        "LEADERBOARD_KEY",
        "NATIVE_CORE",
        "RANKABLE_METRICS",
        "SPIKE_METRICS",
        "AlertEvent",
        "CoreConfig",
        "DetectorState",
        "LeaderboardMerge",
        "MetricRule",
        "PartitionCache",
        "SpikeRuleError",
        "SpikeRules",
        "TaskAggregator",
        "apply_override",
        "decode_leaderboard",
        "encode_leaderboard",
        "iso_utc",
        "latest_leaderboard",
        "leaderboard_partials",
        "leaderboard_progress",
        "observe",
        "observe_values",
        "partition_for",
        "rank_rooms",
        "room_key",
        "room_view",
        "rules_for",
        "to_alertmanager",
        "top_rooms",
    },
    "streams.pipeline": {
        "MARKER_HEADER",
        "SOURCE_HEADER",
        "Message",
        "Record",
        "RecordSink",
        "Routing",
        "TaskPipeline",
        "append_record",
        "join_produce_requests",
    },
}


@pytest.mark.parametrize("module", sorted(PINNED))
def test_public_surface_is_pinned_sorted_and_real(module: str) -> None:
    mod = importlib.import_module(module)
    exported = list(mod.__all__)
    assert set(exported) == PINNED[module]
    assert len(exported) == len(set(exported))
    assert all(hasattr(mod, name) for name in exported)


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_no_package_imports_another_packages_private_module(package: str) -> None:
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for module in _imports(path):
            parts = module.split(".")
            if parts[0] in PACKAGES and parts[0] != package and any(p.startswith("_") for p in parts[1:]):
                offenders.append(f"{path.relative_to(ROOT)}: {module}")
    assert offenders == []
