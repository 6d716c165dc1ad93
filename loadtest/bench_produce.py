"""Micro-benchmark of encoding a produce request (run by hand; not a test).

    python -m loadtest.bench_produce [--mb 1] [--batches 16] [--repeat 7]

A transactional produce request the way the task producers send one at a window boundary: one
request carrying ``--batches`` record batches of ``--mb`` MB each over the output topics,
encoded the way ``aiokafka``'s connection does (``header.encode() + struct.encode()``, then the
size in front) by aiokafka's own request and by ``streams._outbound.OnePassProduceRequest``.
Reports the CPU time per request and per MB, medians of ``--repeat`` interleaved runs.
"""

from __future__ import annotations

import argparse
import statistics
import struct
import time
from typing import Any

from aiokafka.protocol.produce import ProduceRequest

from streams._outbound import OnePassProduceRequest

VERSIONS = {0: (0, 11)}  # a recent broker's Produce versions: aiokafka takes its newest


def request_bytes(request: Any) -> bytes:
    built = request.prepare(VERSIONS)
    header = built.build_request_header(correlation_id=1, client_id="livepulse")
    message = header.encode() + built.encode()
    return struct.pack(">i", len(message)) + message


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=1.0, help="size of one record batch")
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    size = int(args.mb * 2**20)
    topics = ("room-stats", "room-sessions", "room-stats-20s", "changelog")
    by_topic: dict[str, list[tuple[int, bytes]]] = {}
    for i in range(args.batches):
        by_topic.setdefault(topics[i % len(topics)], []).append((i, bytes([i % 251]) * size))
    layout = ("txn-1", -1, 30_000, list(by_topic.items()))
    requests = {"aiokafka": ProduceRequest(*layout), "one-pass": OnePassProduceRequest(*layout)}
    assert request_bytes(requests["aiokafka"]) == request_bytes(requests["one-pass"])
    times: dict[str, list[float]] = {name: [] for name in requests}
    for _ in range(args.repeat):
        for name, request in requests.items():
            start = time.process_time()
            for _ in range(10):
                request_bytes(request)
            times[name].append((time.process_time() - start) / 10)
    megabytes = size * args.batches / 2**20
    base = statistics.median(times["aiokafka"])
    print(f"request of {args.batches} batches x {args.mb:g} MB = {megabytes:g} MB, medians of {args.repeat}")
    for name, runs in times.items():
        med = statistics.median(runs)
        per_mb = med * 1e3 / megabytes
        print(f"{name:10s} {med * 1e3:8.2f} ms/request {per_mb:7.3f} ms/MB  {base / med:5.2f}x")


if __name__ == "__main__":
    main()
