"""Progress lines a baseline process prints on stdout: consumed so far, own CPU seconds, RSS, wall time.

One JSON object per line, ``{"consumed": n, "cpu_s": s, "rss": bytes, "t": unix_s}``; the last
line also has ``"done": true``. CPU time is the whole process (all threads), as psutil sees it
from outside.
"""

from __future__ import annotations

import argparse
import os
import time

import orjson
import psutil


class Reporter:
    """Prints a progress line at most every ``every_s`` seconds, and a final one."""

    def __init__(self, total: int, every_s: float = 0.5) -> None:
        self.total = total
        self.every_s = every_s
        self._proc = psutil.Process()
        self._last = 0.0
        # A duplicate of the original stdout: frameworks (faust) redirect sys.stdout into their logs.
        self._fd = os.dup(1)

    def line(self, consumed: int, *, done: bool = False) -> None:
        cpu = self._proc.cpu_times()
        doc = {
            "consumed": consumed,
            "cpu_s": cpu.user + cpu.system,
            "rss": self._proc.memory_info().rss,
            "t": time.time(),
        }
        if done:
            doc["done"] = True
        os.write(self._fd, orjson.dumps(doc) + b"\n")

    def maybe(self, consumed: int) -> bool:
        """Report if due; True once ``consumed`` reaches the total (after the final line)."""
        if consumed >= self.total:
            self.line(consumed, done=True)
            return True
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self.line(consumed)
        return False


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--brokers", required=True)
    p.add_argument("--topics", required=True, help="viewer,order,gift topic names")
    p.add_argument("--group", required=True, help="consumer group / application id")
    p.add_argument("--total", type=int, required=True, help="messages to consume before stopping")
    p.add_argument("--window-ms", type=int, default=10_000)
    p.add_argument("--grace-ms", type=int, default=2_000)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--state-dir", default="")
    return p
