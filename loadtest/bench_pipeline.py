"""CPU cost of the worker's per-batch pipeline without a broker (run by hand; not a test).

    python -m loadtest.bench_pipeline [--events 1000000] [--rooms 100000] [--repeat 3] [--profile]

Generates the load test's backlog (``loadtest.traffic``, same scenarios and
seed as ``livepulse loadtest run``), cuts it into the fetch rounds a consumer
hands over (per partition and topic), and drives the product's own per-batch
pipeline (``streams.pipeline.TaskPipeline``, one per task) with them as the
data plane does: each batch processed, one tick per task and round, alerts,
and a checkpoint per task every ``--checkpoint-rounds`` fetch rounds, whose
repartition records (markers, re-routed events) reach their receivers in
the next round. Records go into Kafka record batches (aiokafka's own
builder, as the producer path does). Only the network and the consumer's
fetch are missing, so this isolates the worker's own CPU cost. In the same
run it measures the plain ceiling of the load test (orjson-decode each
message and count per room in a dict) and reports
messages per CPU-second, medians of ``--repeat`` interleaved runs. Variants
take parts away to attribute the cost: ``decode`` (strict decoding alone; ``decode-py`` and
``pipeline-py`` with the Python loops instead of the native decoders of ``schemas/native``,
``pipeline-pycore`` with the Python spike detector instead of the native quiet path of ``streams/native``,
``pipeline-native`` with the tasks' rooms in the native table, ``NativeTaskAggregator``,
``LIVEPULSE_NATIVE_ROOMS``, writing into native record batches as the worker does,
``native-pybatch`` the same into aiokafka's batch builders: records per topic checked equal to
``pipeline``'s),
``plain+windows`` (the plain loop plus one output record per room and window),
``no-checkpoint``, ``no-detector``.

``--profile [VARIANT]`` runs a pipeline variant (default ``pipeline``) once more under cProfile
and prints the top functions by own and cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import platform
import pstats
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import orjson
from aiokafka.producer.message_accumulator import BatchBuilder

from schemas import (
    Limits,
    Source,
    ViewerEvent,
    decode_gift_batch,
    decode_gift_batch_py,
    decode_order_batch,
    decode_order_batch_py,
    decode_viewer_batch,
    decode_viewer_batch_py,
)
from streams.core import TaskAggregator, _fastcore
from streams.metrics import Metrics
from streams.pipeline import Record, Routing, TaskPipeline, append_record
from streams.settings import Settings

from . import scenarios
from .produce import generate
from .traffic import Phase, TrafficConfig

DECODERS = (decode_viewer_batch, decode_order_batch, decode_gift_batch)
PY_DECODERS = (decode_viewer_batch_py, decode_order_batch_py, decode_gift_batch_py)
PARTITIONS = 4
#: event time of the backlog's start, fixed so that every run closes the same windows (with a
#: start taken from the clock, where window boundaries fall changed the work by up to 10 %)
START_MS = 1_767_225_603_000  # 2026-01-01T00:00:03Z
BATCH_BYTES = 1024 * 1024


class Sink:
    """Kafka record batches per (topic, partition), built like the producer path builds them:
    aiokafka's builders, or with ``native`` the native outbox (``streams._outbound.Outbound``
    picks it for a producer that does not compress). ``flush`` builds the batches gathered (their
    header and CRC, as the producer's sender does) and counts their records per topic."""

    def __init__(self, *, native: bool = False) -> None:
        self.batches: dict[tuple[str, int], BatchBuilder] = {}
        self.full: list[tuple[str, BatchBuilder]] = []
        self.records = 0
        self.by_topic: dict[str, int] = defaultdict(int)
        self.outbox = _fastcore.Outbox(BATCH_BYTES, True) if native else None

    def add(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        if self.outbox is not None:
            self.outbox.add(topic, partition, key, value, list(headers))
            return
        builder = self.batches.get((topic, partition))
        if builder is None:
            builder = self.batches[(topic, partition)] = BatchBuilder(BATCH_BYTES, 0)
        if not append_record(builder, key, value, headers):
            self.full.append((topic, builder))  # kept until sent, as ``Outbound`` keeps them
            builder = self.batches[(topic, partition)] = BatchBuilder(BATCH_BYTES, 0)
            append_record(builder, key, value, headers)

    def _built(self, topic: str, batch: Any) -> None:
        batch._build()
        self.records += batch.record_count()
        self.by_topic[topic] += batch.record_count()

    def flush(self) -> None:
        for topic, builder in self.full:
            self._built(topic, builder)
        for (topic, _), builder in self.batches.items():
            self._built(topic, builder)
        self.full.clear()
        self.batches.clear()
        if self.outbox is not None:
            for topic, _, batch in self.outbox.take():
                self._built(topic, batch)


class TaskSink(Sink):
    """One task's sink: repartition records are also kept, to be delivered after the next commit."""

    def __init__(self, repartition: str, *, native: bool = False) -> None:
        super().__init__(native=native)
        self._repartition = repartition
        self.staged: list[tuple[int, bytes | None, bytes | None, Sequence[tuple[str, bytes]]]] = []

    def add(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        super().add(topic, partition, key, value, headers)
        if topic == self._repartition:
            self.staged.append((partition, key, value, headers))


Fetch = tuple[int, int, list[Record]]
#: the backlog as the broker holds it: (partition, source) -> its log
Logs = dict[tuple[int, int], list[Record]]


def backlog(
    rooms: int, events: int = 1_000_000, scenario: str = "all", seed: int = 1, rate: float | None = None
) -> tuple[Phase, int]:
    """The load test's backlog as this benchmark runs it (a fixed start, 10 s windows, 2 s grace),
    and the wall clock the pipeline runs at: a minute past its end."""
    _model, phase = generate(
        TrafficConfig(rooms=rooms, partitions=PARTITIONS),
        scenarios.parse(scenario),
        seed=seed,
        events=events,
        window_ms=10_000,
        grace_ms=2_000,
        realtime=False,
        event_rate=rate,
        start_ms=START_MS,
    )
    return phase, phase.end_ms + 60_000


def logs_of(phase: Phase) -> Logs:
    logs: Logs = defaultdict(list)
    for source, partition, key, payload, _ts, _ in phase.messages.wire():
        log = logs[(partition, source)]
        log.append(Record(len(log), key, payload))
    return dict(logs)


def fetch_rounds(
    logs: Logs, batch: int, held: Callable[[int], frozenset[int]] | None = None
) -> Iterator[list[Fetch]]:
    """Fetch rounds: in each, up to ``batch`` messages of every (partition, source) log that has
    more, as a round-robin consumer hands them over; with ``held``, not of the sources it names
    for a partition at that round (paused, as the data plane pauses inputs that ran ahead)."""
    cursors = dict.fromkeys(logs, 0)
    while cursors:
        fetched = []
        for tp in sorted(cursors):
            if held is not None and tp[1] in held(tp[0]):
                continue
            at = cursors[tp]
            fetched.append((tp[0], tp[1], logs[tp][at : at + batch]))
            if at + batch >= len(logs[tp]):
                del cursors[tp]
            else:
                cursors[tp] = at + batch
        yield fetched


def fetches(logs: Logs, batch: int) -> list[list[Fetch]]:
    """Every fetch round of ``logs`` with nothing held back (for the consumers without a watermark)."""
    return list(fetch_rounds(logs, batch))


def each_fetch(rounds: Sequence[list[Fetch]]) -> Iterator[Fetch]:
    for fetched in rounds:
        yield from fetched


def run_plain(rounds: Sequence[list[Fetch]], _now_ms: int) -> int:
    """The load test's plain ceiling: orjson-decode and count per room."""
    counts: dict[str, int] = {}
    loads = orjson.loads
    n = 0
    for _p, _s, items in each_fetch(rounds):
        for msg in items:
            try:
                room = loads(msg.value or b"")["room_id"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue
            counts[room] = counts.get(room, 0) + 1
        n += len(items)
    return n


def run_decode(rounds: Sequence[list[Fetch]], now_ms: int, python_decoders: bool = False) -> int:
    """Strict decoding and validation alone (the first step of the pipeline)."""
    limits = Limits()
    decoders = PY_DECODERS if python_decoders else DECODERS
    n = 0
    for _p, source, items in each_fetch(rounds):
        decoders[source]([(msg.offset, msg.value or b"") for msg in items], now_ms, limits)
        n += len(items)
    return n


def run_plain_windows(rounds: Sequence[list[Fetch]], _now_ms: int) -> int:
    """The plain ceiling plus the output this workload demands: one record per room per window.

    orjson-decode, count per (room, 10 s window), and when the newest event time passes a
    window's end + 2 s, encode each room's count as a small JSON object and append it to a
    Kafka record batch. No validation, state, dedup, watermark per source, detector or
    checkpoint: the least any windowed per-room consumer in Python does here.
    """
    loads, dumps = orjson.loads, orjson.dumps
    windows: dict[int, dict[str, int]] = {}
    sink = Sink()
    newest = 0
    n = 0
    for partition, _s, items in each_fetch(rounds):
        for msg in items:
            try:
                obj = loads(msg.value or b"")
                room, ts = obj["room_id"], obj["ts"]
                ws = ts - ts % 10_000
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue
            counts = windows.get(ws)
            if counts is None:
                counts = windows[ws] = {}
            counts[room] = counts.get(room, 0) + 1
            if ts > newest:
                newest = ts
        n += len(items)
        for ws in [ws for ws in windows if ws + 12_000 <= newest]:
            for room, count in windows.pop(ws).items():
                record = {"room_id": room, "window_start": ws, "window_end": ws + 10_000, "events": count}
                sink.add("room-stats", partition, str(room).encode(), dumps(record))
            sink.flush()  # sent at each window boundary
    return n


def run_pipeline(
    logs: Logs,
    now_ms: int,
    batch: int = 2_000,
    checkpoint_rounds: int = 45,
    detect_spikes: bool = True,
    drift_ms: int | None = None,
    python_decoders: bool = False,
    python_core: bool = False,
    native_rooms: bool = False,
    native_batches: bool = False,
    kept: list[TaskPipeline] | None = None,
) -> int:
    """What the data plane does with each fetch round (``streams.pipeline``), minus the network.

    Per round: every partition's batch through its task's pipeline, one tick per task with
    every input busy (a backlog), alerts; every ``checkpoint_rounds`` fetch rounds a checkpoint
    per task (counted in rounds, not CPU time, so that two versions of the code do the same work:
    which windows close before the backlog ends follows the markers checkpoints publish), after
    which the repartition records it staged (watermark markers, re-routed events) are delivered
    to their receivers with the next round, as a commit makes them visible. After each round's
    tick an input that ran ahead of its task's slowest is held back as the data plane pauses it
    (``max_source_drift_ms``); once any input of a partition has been read to its end, nothing of
    that partition is held (the data plane's input would turn idle after ``idle_partition_ms``).
    Output records go into producer batches (``Sink``; ``native_batches``: the native outbox),
    built after each checkpoint, as a commit sends them.
    ``kept``: the task pipelines are appended to it, with their state, for a look afterwards.
    """
    settings = Settings(partitions=PARTITIONS, native_decoders=not python_decoders)
    settings = replace(
        settings, core=replace(settings.core, native_core=not python_core, native_rooms=native_rooms)
    )
    if drift_ms is not None:
        settings = replace(settings, core=replace(settings.core, max_source_drift_ms=drift_ms))
    topics = settings.topics
    routing = Routing(topics, PARTITIONS)
    metrics = Metrics()
    pipelines = {}
    for p in range(PARTITIONS):
        core = routing.task_core(p, settings.core, detect_spikes=detect_spikes)
        sink = TaskSink(topics.repartition, native=native_batches)
        pipelines[p] = TaskPipeline(p, core, sink, routing, settings, metrics)
    names = routing.names
    busy = (Source.VIEWER, Source.ORDER, Source.GIFT)
    visible: dict[int, list[Record]] = defaultdict(list)
    delivered = dict.fromkeys(range(PARTITIONS), 0)
    positions: dict[int, dict[int, int]] = {p: {} for p in range(PARTITIONS)}
    last_resend = time.process_time()
    held = dict.fromkeys(range(PARTITIONS), frozenset[int]())
    remaining = {tp: len(log) for tp, log in logs.items()}
    n = 0
    for round_number, fetched in enumerate(fetch_rounds(logs, batch, held.__getitem__), 1):
        for partition, source, items in fetched:
            pipelines[partition].process(names[source], items, now_ms)
            positions[partition][source] = items[-1].offset + 1
            remaining[(partition, source)] -= len(items)
            n += len(items)
        for partition, records in visible.items():
            if records:
                pipelines[partition].process(topics.repartition, records, now_ms)
        visible.clear()
        for p, pipeline in pipelines.items():
            pipeline.tick(now_ms, busy)
            reading = all(remaining.get((p, source), 0) for source in busy)
            held[p] = pipeline.core.sources_to_hold(held[p]) if reading else frozenset()
        for pipeline in pipelines.values():
            pipeline.publish_alerts(now_ms)
        if time.process_time() - last_resend >= settings.alert_resend_ms / 1000:
            last_resend = time.process_time()
            for pipeline in pipelines.values():
                pipeline.firing(now_ms, resend=True)
        if round_number % checkpoint_rounds == 0:
            for p, pipeline in pipelines.items():
                pipeline.stage_checkpoint(now_ms, positions[p])
                sink = pipeline.sink
                assert isinstance(sink, TaskSink)
                for receiver, key, value, headers in sink.staged:
                    visible[receiver].append(Record(delivered[receiver], key, value, headers))
                    delivered[receiver] += 1
                sink.staged.clear()
                sink.flush()
    if kept is not None:
        kept.extend(pipelines.values())
    OUTPUTS.clear()
    for pipeline in pipelines.values():
        assert isinstance(pipeline.sink, Sink)
        pipeline.sink.flush()
        for topic, count in pipeline.sink.by_topic.items():
            OUTPUTS[topic] = OUTPUTS.get(topic, 0) + count
    return n


#: records per topic written by the last run_pipeline (printed: a run that closed no window
#: measured too little)
OUTPUTS: dict[str, int] = {}


def burst(rooms: int, repeat: int) -> None:
    """CPU time to close one window in ``rooms`` rooms at once (a window boundary), publish, then detect.

    Each room has two windows of history (so the detector holds a baseline) and one viewer
    event in the window that closes; one event of the next window moves the watermark past it.
    """
    settings = Settings(partitions=1)
    config = settings.core
    routing = Routing(settings.topics, 1)
    base = (int(time.time() * 1000) // 10_000 - 10) * 10_000
    publish, detect = [], []
    for _ in range(repeat):
        task = TaskAggregator(config, sources=(0,))
        offset = 0
        for w in range(3):
            items = []
            for r in range(rooms):
                offset += 1
                items.append(
                    (offset, ViewerEvent("join", f"r{r}", f"u{r}-{w}", base + w * 10_000 + r % 9_000))
                )
            task.apply(0, items, base + 60_000)
            if w < 2:  # close the history windows and let the detector see them
                task.apply(
                    0, [(offset + 1, ViewerEvent("join", "tick", "u", base + (w + 1) * 10_000 + 2_500))], 0
                )
                offset += 1
                task.drain()
                task.drain_sessions()
                task.drain_rollups()
                task.drain_alerts()
        pipeline = TaskPipeline(0, task, Sink(), routing, settings, Metrics())
        gc.collect()
        t0 = time.process_time()
        task.apply(0, [(offset + 1, ViewerEvent("join", "tick", "u", base + 32_500))], 0)
        pipeline.publish_windows()
        t1 = time.process_time()
        pipeline.publish_alerts(base + 60_000)
        t2 = time.process_time()
        publish.append(t1 - t0)
        detect.append(t2 - t1)
    med_p, med_d = statistics.median(publish), statistics.median(detect)
    print(
        f"window boundary with {rooms:,} rooms closing: close + publish {med_p:.3f} s CPU "
        f"(min {min(publish):.3f}), then detection {med_d:.3f} s (min {min(detect):.3f}); medians of {repeat}"
    )


def measure(fn: Any, batches: Any, now_ms: int, **kwargs: Any) -> float:
    gc.collect()
    t0 = time.process_time()
    n: int = fn(batches, now_ms, **kwargs)
    return n / (time.process_time() - t0)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rooms", type=int, default=100_000)
    parser.add_argument("--scenario", default="all")
    parser.add_argument(
        "--rate",
        type=float,
        help="events per second of event time (default: the events over the scenarios' minimum span); "
        "events per room-window = rate x 10 s / rooms",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2_000, help="messages per partition fetch")
    parser.add_argument(
        "--checkpoint-rounds",
        type=int,
        default=45,
        help="fetch rounds per checkpoint (~1 s at 90k msg/s)",
    )
    parser.add_argument(
        "--drift-ms",
        type=int,
        default=None,
        help="as LIVEPULSE_MAX_SOURCE_DRIFT_MS (0: inputs never held back); adds a variant "
        "'pipeline@drift' with it beside 'pipeline' (the default)",
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--profile",
        nargs="?",
        const="pipeline",
        help="profile a pipeline variant once more (default: pipeline)",
    )
    parser.add_argument("--only", help="comma-separated variants to run (default: all)")
    parser.add_argument(
        "--gc-threshold", type=int, default=Settings().gc_threshold, help="as LIVEPULSE_GC_THRESHOLD"
    )
    parser.add_argument(
        "--burst", type=int, default=0, help="instead: time one window boundary closing this many rooms"
    )
    args = parser.parse_args(argv)
    if args.burst:
        if args.gc_threshold:
            gc.set_threshold(args.gc_threshold, 50, 100)
        burst(args.burst, args.repeat)
        return
    t0 = time.perf_counter()
    phase, now_ms = backlog(args.rooms, args.events, args.scenario, args.seed, args.rate)
    logs = logs_of(phase)
    batches = fetches(logs, args.batch)
    summary = (len(phase.messages), phase.end_ms - phase.start_ms)
    del phase
    # The batches stand in for the broker's log: keep them out of the worker's collections.
    gc.collect()
    gc.freeze()
    if args.gc_threshold:
        gc.set_threshold(args.gc_threshold, 50, 100)
    print(
        f"python {platform.python_version()}: {summary[0]:,} messages, {args.rooms:,} rooms, "
        f"{summary[1] / 1000:.0f} s of event time, {sum(map(len, batches)):,} fetches, gc threshold "
        f"{gc.get_threshold()} "
        f"(generated in {time.perf_counter() - t0:.0f} s)"
    )
    variants: dict[str, Any] = {
        "plain": (run_plain, {}),
        "plain+windows": (run_plain_windows, {}),
        "decode": (run_decode, {}),
        "decode-py": (run_decode, {"python_decoders": True}),
        "no-checkpoint": (run_pipeline, {"checkpoint_rounds": 10**9}),
        "no-detector": (run_pipeline, {"checkpoint_rounds": args.checkpoint_rounds, "detect_spikes": False}),
        "pipeline": (run_pipeline, {"checkpoint_rounds": args.checkpoint_rounds}),
        "pipeline-py": (run_pipeline, {"checkpoint_rounds": args.checkpoint_rounds, "python_decoders": True}),
        "pipeline-pycore": (run_pipeline, {"checkpoint_rounds": args.checkpoint_rounds, "python_core": True}),
        "pipeline-native": (
            run_pipeline,
            {"checkpoint_rounds": args.checkpoint_rounds, "native_rooms": True, "native_batches": True},
        ),
        "native-pybatch": (
            run_pipeline,
            {"checkpoint_rounds": args.checkpoint_rounds, "native_rooms": True},
        ),
    }
    if args.drift_ms is not None:
        variants["pipeline@drift"] = (
            run_pipeline,
            {"checkpoint_rounds": args.checkpoint_rounds, "drift_ms": args.drift_ms},
        )
    pipelines = {name for name, (fn, _) in variants.items() if fn is run_pipeline}
    profiled = variants[args.profile] if args.profile else None
    if args.only:
        variants = {name: variants[name] for name in args.only.split(",")}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    written: dict[str, dict[str, int]] = {}
    for _ in range(args.repeat):
        for name, (fn, kwargs) in variants.items():
            if name in pipelines:
                rates[name].append(measure(fn, logs, now_ms, batch=args.batch, **kwargs))
                written[name] = dict(OUTPUTS)
            else:
                rates[name].append(measure(fn, batches, now_ms, **kwargs))
    for name in ("pipeline-native", "native-pybatch"):
        if "pipeline" in written and name in written:
            # the same records per topic (the dead letters and alerts too)
            assert written[name] == written["pipeline"], (name, written[name], written["pipeline"])
    base = statistics.median(rates["plain"]) if "plain" in rates else float("nan")
    print(f"{'variant':<15}{'median msg/CPU-s':>18}{'min':>12}{'max':>12}{'vs plain':>10}{'us/msg':>8}")
    for name, got in rates.items():
        med = statistics.median(got)
        print(
            f"{name:<15}{med:>18,.0f}{min(got):>12,.0f}{max(got):>12,.0f}{med / base:>9.2f}x{1e6 / med:>8.2f}"
        )
    if OUTPUTS:
        print(
            "records written by the last pipeline run:",
            ", ".join(f"{t} {n:,}" for t, n in sorted(OUTPUTS.items())),
        )
    if profiled is not None:
        prof = cProfile.Profile()
        prof.runcall(profiled[0], logs, now_ms, batch=args.batch, **profiled[1])
        stats = pstats.Stats(prof)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(30)


if __name__ == "__main__":
    main()
