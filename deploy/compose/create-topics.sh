#!/usr/bin/env bash
# Create livepulse's topics (idempotent). Inputs share one partition count (co-partitioning);
# the room-state changelog, the rules topic and live.room-sessions are compacted. Run by the compose "topics" service.
set -euo pipefail
BOOTSTRAP="${BOOTSTRAP:-kafka:9092}"
PARTITIONS="${PARTITIONS:-4}"
KT=/opt/kafka/bin/kafka-topics.sh

create() {  # name partitions [--config k=v ...]
  local name=$1 partitions=$2
  shift 2
  "$KT" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists --topic "$name" \
    --partitions "$partitions" --replication-factor 1 "$@"
}

for topic in live.viewer live.order live.gift livepulse.repartition; do
  create "$topic" "$PARTITIONS" --config retention.ms=604800000
done
create livepulse.room-state-changelog "$PARTITIONS" --config cleanup.policy=compact --config min.compaction.lag.ms=60000 \
  --config max.message.bytes=8388608
create livepulse.rules 1 --config cleanup.policy=compact
create live.room-stats "$PARTITIONS" --config retention.ms=604800000
create live.room-stats-1m "$PARTITIONS" --config retention.ms=604800000
create live.room-stats-1h "$PARTITIONS" --config retention.ms=604800000
create live.room-sessions "$PARTITIONS" --config cleanup.policy=compact
create live.alerts "$PARTITIONS" --config retention.ms=604800000
create live.dlq "$PARTITIONS" --config retention.ms=1209600000
# the platform leaderboard: one partition each (one merge stage, windows in order)
create livepulse.leaderboard-partials 1 --config retention.ms=604800000 --config max.message.bytes=8388608
create live.leaderboard 1 --config retention.ms=604800000 --config max.message.bytes=8388608
"$KT" --bootstrap-server "$BOOTSTRAP" --list
