"""The leaderboard merge stage at run time: partials in, final platform leaderboards out.

The owner of task 0 runs it (range assignment gives partition 0 of every subscribed topic to
the same member, so the one-partition partials topic comes with task 0): it reads the partials
topic ``read_committed``, folds each record into a
:class:`~streams.core.LeaderboardMerge`, and writes every window that became final to the
leaderboard topic through task 0's transactional producer. Its state (the merge, including the
next partials offset) is a record of task 0's changelog, written at task 0's checkpoints, so the
published records, the state and the consumed offset commit together: a restarted or moved
merge resumes where the last commit left it, without losing or repeating a record.

Broker-free like :mod:`streams.pipeline`: outputs go into a record sink.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from ._topology import MAX_RECORD_BYTES
from .core import (
    LEADERBOARD_KEY,
    LeaderboardMerge,
    decode_leaderboard,
    encode_leaderboard,
    latest_leaderboard,
)
from .exceptions import StateError
from .metrics import Metrics
from .settings import Topics

if TYPE_CHECKING:
    from .pipeline import Message, RecordSink

__all__ = ["HISTORY", "LeaderboardStage"]

log = logging.getLogger(__name__)

#: final windows kept in memory for ``/leaderboard?window_start=``
HISTORY = 360
#: the merge state record at most: three quarters of what the changelog takes (MAX_RECORD_BYTES)
MAX_STATE_BYTES = MAX_RECORD_BYTES * 3 // 4
#: event time a window may wait before the merge names, in the log, the tasks it waits for
WAITING_LOG_MS = 300_000
#: ... and the least time between two such lines (monotonic seconds)
WAITING_LOG_GAP_S = 300.0


class LeaderboardStage:
    """The merge of task 0: reads partials, publishes final leaderboards into ``sink``."""

    def __init__(self, tasks: int, n: int, sink: RecordSink, topics: Topics, metrics: Metrics) -> None:
        self.merge = LeaderboardMerge(tasks, n)
        self.sink = sink
        self.topics = topics
        self.metrics = metrics
        #: recent final records by window start (the latest also lives in the state)
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        #: when the tasks holding the leaderboard back were last named in the log (monotonic)
        self._waiting_logged = -math.inf

    @property
    def latest(self) -> dict[str, Any] | None:
        return self.merge.latest

    def window(self, window_start: int) -> dict[str, Any] | None:
        for record in self.history:
            if record["window_start"] == window_start:
                return record
        return None

    def process(self, messages: Sequence[Message]) -> int:
        """Fold partials-topic messages (offset order); publish what became final; returns how many."""
        merge = self.merge
        late = merge.late_partials
        for msg in messages:
            try:
                item = orjson.loads(msg.value or b"null")
                merge.add(item)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                # Only livepulse's own transactional producers write here; say so loudly, go on.
                log.error("leaderboard partial at offset %d undecodable, skipped: %r", msg.offset, exc)
            merge.next_offset = msg.offset + 1
        if merge.late_partials > late:
            self.metrics.leaderboard_late_partials.inc(merge.late_partials - late)
        return self.publish()

    def publish(self) -> int:
        published = self._publish(self.merge.take_final())
        self._show_pending()
        return published

    def _show_pending(self) -> None:
        """Export how many windows wait and how long (``LivepulseLeaderboardStalled``): the event
        time from the oldest waiting window's end to the furthest task's progress. A task that
        never got an event sends no progress, and every board waits for it. Past
        ``WAITING_LOG_MS`` the tasks it waits for are named in the log, at most every
        ``WAITING_LOG_GAP_S``."""
        merge = self.merge
        pending = merge.pending
        waited_ms = 0
        if pending and merge.progress:
            oldest_end = pending[min(pending)].we
            waited_ms = max(0, max(merge.progress.values()) - oldest_end)
        self.metrics.leaderboard_pending_windows.set(len(pending))
        self.metrics.leaderboard_wait_seconds.set(waited_ms / 1000)
        now = time.monotonic()
        if waited_ms > WAITING_LOG_MS and now - self._waiting_logged >= WAITING_LOG_GAP_S:
            self._waiting_logged = now
            log.warning(
                "leaderboard: %d windows wait, the oldest for %.0f s of event time, for progress from "
                "tasks %s (no event on their partitions yet, a watermark stuck or far behind)",
                len(pending),
                waited_ms / 1000,
                merge.missing_tasks(oldest_end),
            )

    def _publish(self, final: list[dict[str, Any]]) -> int:
        topic = self.topics.leaderboard
        for record in final:
            self.sink.add(topic, 0, b"%d" % record["window_start"], orjson.dumps(record))
            self.history.append(record)
        if final:
            self.metrics.leaderboards_published.inc(len(final))
            self.metrics.platform.set(final[-1])
        return len(final)

    def stage_checkpoint(self) -> int:
        """Write the merge state to task 0's changelog if it changed; returns the records written."""
        if not self.merge.dirty:
            return 0
        state = encode_leaderboard(self.merge)
        while len(state) > MAX_STATE_BYTES and self.merge.pending:
            # Some task's progress stayed behind for long (the tasks' markers keep them within
            # minutes of each other otherwise): part of a window beats failing at every restart.
            record = self.merge.take_oldest_incomplete()
            log.error(
                "leaderboard merge state is %d bytes: window %d published without tasks %s",
                len(state),
                record["window_start"],
                record["missing_tasks"],
            )
            self._publish([record])
            state = encode_leaderboard(self.merge)
            self._show_pending()
        self.sink.add(self.topics.changelog, 0, LEADERBOARD_KEY, state)
        self.merge.dirty = False
        return 1

    def restore(self, records: Iterable[tuple[bytes, bytes | None]]) -> None:
        """Load the merge state from task 0's changelog records (log order); an undecodable record
        is logged and the merge starts over from the beginning of the partials topic."""
        raw = latest_leaderboard(records)
        try:
            if raw is not None:
                decode_leaderboard(raw, self.merge)
        except StateError as exc:
            log.error("leaderboard merge state undecodable, re-reading every partial: %s", exc)
            self.merge = LeaderboardMerge(self.merge.tasks, self.merge.n)
        if self.merge.latest is not None:
            self.history.append(self.merge.latest)
            self.metrics.platform.set(self.merge.latest)
        self._show_pending()
