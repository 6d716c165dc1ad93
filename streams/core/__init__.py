"""The pure aggregation core: event-time windows, room state, checkpoints, queries.

No I/O and no Kafka or faust imports: the runtime feeds batches in and
publishes what comes out.
"""

from ._alerts import ALERT_DROP, ALERT_SPIKE, ALERT_SURGE, AlertEvent, fingerprint, iso_utc, to_alertmanager
from ._config import CoreConfig
from ._leaderboard import (
    LeaderboardMerge,
    is_live,
    leaderboard_partials,
    leaderboard_progress,
    rank_rooms,
)
from ._partition import PartitionCache, partition_for
from ._query import RANKABLE_METRICS, room_view, top_rooms
from ._room import Room
from ._spike_rules import DEFAULT_RULES, MetricRule, SpikeRuleError, SpikeRules, apply_override, rules_for
from ._spike_rules import METRICS as SPIKE_METRICS
from ._spikes import DetectorState, firing, observe
from ._state_codec import (
    LEADERBOARD_KEY,
    META_KEY,
    ROOM_FORMAT_VERSION,
    Checkpoint,
    decode_leaderboard,
    decode_room,
    encode_leaderboard,
    encode_room,
    latest_leaderboard,
    room_key,
)
from ._task import ApplyResult, TaskAggregator, TaskCounters
from ._windows import bucket_range, window_start

__all__ = [
    "ALERT_DROP",
    "ALERT_SPIKE",
    "ALERT_SURGE",
    "DEFAULT_RULES",
    "LEADERBOARD_KEY",
    "META_KEY",
    "RANKABLE_METRICS",
    "ROOM_FORMAT_VERSION",
    "SPIKE_METRICS",
    "AlertEvent",
    "ApplyResult",
    "Checkpoint",
    "CoreConfig",
    "DetectorState",
    "LeaderboardMerge",
    "MetricRule",
    "PartitionCache",
    "Room",
    "SpikeRuleError",
    "SpikeRules",
    "TaskAggregator",
    "TaskCounters",
    "apply_override",
    "bucket_range",
    "decode_leaderboard",
    "decode_room",
    "encode_leaderboard",
    "encode_room",
    "fingerprint",
    "firing",
    "is_live",
    "iso_utc",
    "latest_leaderboard",
    "leaderboard_partials",
    "leaderboard_progress",
    "observe",
    "partition_for",
    "rank_rooms",
    "room_key",
    "room_view",
    "rules_for",
    "to_alertmanager",
    "top_rooms",
    "window_start",
]
