"""The pure aggregation core: event-time windows, room state, checkpoints, queries.

No I/O and no Kafka or faust imports: the runtime feeds batches in and
publishes what comes out.
"""

from ._alerts import AlertEvent, iso_utc, to_alertmanager
from ._config import CoreConfig
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
from ._spikes import DetectorState, observe, observe_values
from ._state_codec import room_key
from ._task import TaskAggregator

__all__ = [
    "DEFAULT_RULES",
    "GAUGE_RULE",
    "RANKABLE_METRICS",
    "SPIKE_METRICS",
    "AlertEvent",
    "CoreConfig",
    "DetectorState",
    "MetricRule",
    "PartitionCache",
    "SpikeRuleError",
    "SpikeRules",
    "TaskAggregator",
    "apply_override",
    "iso_utc",
    "observe",
    "observe_values",
    "partition_for",
    "room_key",
    "room_view",
    "rules_for",
    "to_alertmanager",
    "top_rooms",
]
