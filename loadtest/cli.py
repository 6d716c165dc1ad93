"""``livepulse loadtest produce|run``: the load-test entry points (see ``produce`` and ``harness``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: livepulse loadtest {produce,run} [options]

  produce   write the traffic model to the broker and its ground truth to a file
  run       broker + backlog + worker + baselines: throughput, latency, alerts, restore, correctness

'livepulse loadtest <command> --help' lists the options."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if command == "produce":
        from .produce import main as produce_main

        return produce_main(rest)
    if command == "run":
        from .harness import main as run_main

        return run_main(rest)
    print(USAGE, file=sys.stderr if command not in ("-h", "--help") else sys.stdout)
    return 0 if command in ("-h", "--help") else 2
