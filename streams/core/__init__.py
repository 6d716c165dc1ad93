"""The pure aggregation core: event-time windows, room state, checkpoints, queries.

No I/O and no Kafka or faust imports: the runtime feeds batches in and
publishes what comes out.
"""

from ._alerts import AlertEvent, iso_utc, to_alertmanager
from ._config import CoreConfig
from ._leaderboard import LeaderboardMerge, leaderboard_partials, leaderboard_progress, rank_rooms
from ._partition import PartitionCache, partition_for
from ._query import RANKABLE_METRICS, room_view, top_rooms
from ._spike_rules import (
    DEFAULT_RULES,
    GAUGE_RULE,
    MetricRule,
    SpikeRuleError,
    SpikeRules,
    apply_override,
    rules_for,
)
from ._spike_rules import METRICS as SPIKE_METRICS
from ._spikes import NATIVE as NATIVE_CORE
from ._spikes import DetectorState, observe, observe_values
from ._state_codec import (
    LEADERBOARD_KEY,
    decode_leaderboard,
    encode_leaderboard,
    latest_leaderboard,
    room_key,
)
from ._task import TaskAggregator

__all__ = [
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
]
