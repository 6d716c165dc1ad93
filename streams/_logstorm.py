"""A broker outage must not flood the log: the Kafka client's repeated messages are thinned.

While the broker is unreachable aiokafka retries without pause and logs each failure. The
fault suite's 8-second broker restart left 73 639 error lines in one worker's log (about 3 000 in
calmer runs): megabytes per outage for the log pipeline to ship and store, and CPU spent
formatting them. ``RepeatFilter`` lets the first record of each kind (logger, level and message
template: the node id or error text may vary) through, drops the repeats for ``window_s``
seconds, and notes how many it dropped on the next one it lets through.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

#: seconds during which repeats of one kind of client message are dropped
REPEAT_WINDOW_S = 10.0


#: kinds remembered at most (they are templates of the client's code, a few dozen; messages
#: redacted into literals by ``streams._redact`` each make one, so the table is bounded)
MAX_KINDS = 1_000


class RepeatFilter(logging.Filter):
    """At most one record per kind (logger, level, message template) every ``window_s`` seconds,
    for warnings and errors: informational lines (a group joined, partitions assigned) share their
    templates across the process's consumer groups and pass unthinned. The count of a burst's last
    repeats shows only if that kind comes again."""

    def __init__(
        self, window_s: float = REPEAT_WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.window_s = window_s
        self._clock = clock
        #: kind -> (when the last record of that kind went through, repeats dropped since)
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        kind = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        seen = self._seen.get(kind)
        if seen is not None and now - seen[0] < self.window_s:
            self._seen[kind] = (seen[0], seen[1] + 1)
            return False
        if len(self._seen) >= MAX_KINDS:
            self._seen.clear()
        self._seen[kind] = (now, 0)
        if seen is not None and seen[1]:
            try:
                message = record.getMessage()
            except Exception:  # a malformed log call: leave it to logging's own error report
                return True
            record.msg = (
                f"{message} ({seen[1]} more like this in the {now - seen[0]:.0f} s before, not logged)"
            )
            record.args = ()
        return True


def limit_repeats(prefix: str = "aiokafka", window_s: float = REPEAT_WINDOW_S) -> RepeatFilter:
    """Install one :class:`RepeatFilter` on every logger named ``prefix`` or ``prefix.*`` that
    exists now (a logger's filters see only its own records, not its children's), once."""
    loggers = [
        logging.getLogger(name)
        for name in list(logging.root.manager.loggerDict)
        if name == prefix or name.startswith(prefix + ".")
    ]
    for logger in loggers:
        for existing in logger.filters:
            if isinstance(existing, RepeatFilter):
                return existing
    repeat = RepeatFilter(window_s)
    for logger in loggers:
        logger.addFilter(repeat)
    return repeat
