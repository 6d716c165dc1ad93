"""The output path's copies, measured apart from the broker (run by hand; not a test).

    python -m loadtest.bench_produce [--records 200000] [--repeat 5]

Two measurements, CPU time, medians of ``--repeat`` runs:

- a produce request encoded: aiokafka's ``ProduceRequest_v7.encode`` (its schema's field-by-field
  encoders, each level joining the one below) against the joined encoding of the same request
  (the class ``streams.pipeline.join_produce_requests`` gives aiokafka's sender), for the
  requests a 100 000-room catch-up sends (one and two partitions of 0.3-1 MiB batches), checked
  byte-equal first;
- the native outbox (``_fastcore.Outbox``): ``--records`` records of the catch-up's shapes (a
  ~420-byte room-stats value and a ~250-byte changelog value with their keys, over 12 + 4
  partitions) appended, taken every 2 000 records (a publish), each batch built, as the data plane
  does; in µs a record. Run it in two trees to compare native builds (``cd TREE && python -m
  loadtest.bench_produce``: the ``_fastcore`` of the tree it runs in).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from aiokafka.producer import sender
from aiokafka.protocol.produce import ProduceRequest, ProduceRequest_v7

from streams.core import _fastcore  # type: ignore[attr-defined]
from streams.pipeline import join_produce_requests


def cpu(fn: Callable[..., None], repeat: int, *args: object) -> list[float]:
    runs = []
    for _ in range(repeat):
        start = time.process_time()
        fn(*args)
        runs.append(time.process_time() - start)
    return runs


def encode_n(request: Any, n: int) -> None:
    for _ in range(n):
        request.encode()


def encode(repeat: int) -> None:
    shapes = {
        "1 partition, 1 MiB": [("lt.room-stats", [(3, os.urandom(1 << 20))])],
        "2 partitions, 1 MiB + 300 KiB": [
            ("lt.room-stats", [(3, os.urandom(1 << 20))]),
            ("lt.changelog", [(1, bytearray(os.urandom(300 << 10)))]),
        ],
    }
    n = 200
    assert join_produce_requests()
    joined = sender.ProduceRequest
    for name, topics in shapes.items():
        theirs = ProduceRequest("livepulse-3", -1, 40_000, topics).build(ProduceRequest_v7)
        ours = joined("livepulse-3", -1, 40_000, topics).build(ProduceRequest_v7)
        assert ours.encode() == theirs.encode()

        a = statistics.median(cpu(encode_n, repeat, theirs, n)) / n * 1e6
        b = statistics.median(cpu(encode_n, repeat, ours, n)) / n * 1e6
        print(f"encode {name}: aiokafka {a:,.0f} µs, joined {b:,.0f} µs ({a / b:.1f}x)")


def outbox(records: int, repeat: int) -> None:
    rng = random.Random(1)
    stats = [(f"room-{i}".encode(), bytes(rng.randrange(256) for _ in range(420))) for i in range(64)]
    state = [(f"r/room-{i}".encode(), bytes(rng.randrange(256) for _ in range(250))) for i in range(64)]

    def run() -> None:
        box = _fastcore.Outbox(1 << 20, True)
        for i in range(records):
            if i & 1:
                key, value = stats[i & 63]
                box.add_at("lt.room-stats", i % 12, 1_700_000_000_000 + i, key, value)
            else:
                key, value = state[i & 63]
                box.add_at("lt.changelog", i % 4, 1_700_000_000_000 + i, key, value)
            if i % 2_000 == 1_999:
                for _, _, batch in box.take():
                    batch._set_producer_state(7, 0, 0)
                    batch._build()

    runs = cpu(run, repeat)
    print(f"outbox: {statistics.median(runs) / records * 1e6:.3f} µs a record (median of {repeat})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    a = parser.parse_args()
    encode(a.repeat)
    outbox(a.records, a.repeat)


if __name__ == "__main__":
    main()
