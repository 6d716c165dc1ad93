"""Baselines for the load test, each run as its own process over the same backlog as livepulse.

``plain``  a plain aiokafka ``getmany`` loop: orjson-decode, count per room and window (the ceiling)
``faust``  an idiomatic faust-streaming agent counting per room in a tumbling-window table
``quix``   a Quix Streams application with a tumbling-window count per room

Each process reports progress as JSON lines on stdout (``_progress``); the
harness runs them with ``runner.run_baseline`` and rates them in events per
CPU-second of that process.
"""

BASELINES = ("plain", "faust", "quix")

__all__ = ["BASELINES"]
