"""``livepulse demo``: local broker, one worker, synthetic traffic with a visible spike, live output.

Starts the broker if it is not running (and stops it again at the end if it
started it), runs a worker as a child process, produces the traffic model's
(``loadtest.traffic``) steady mix plus a
"trending" room that jumps ~10x for a while, and prints each closed window's
top rooms (and alerts, once the worker raises them) as they arrive.
Ctrl-C stops everything it started; ``--duration`` makes it end by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from deploy.localkafka import BrokerSettings, broker_pid, ensure_broker, stop_broker
from schemas import RoomStats, ViewerEvent, decode_room_stats
from streams.settings import Topics, settings_from_env

from .traffic import TrafficConfig, TrafficModel, encode

TRENDING = "room-trending"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livepulse demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=0, help="seconds to run (0: until Ctrl-C)")
    parser.add_argument("--rate", type=int, default=2_000, help="events per second")
    parser.add_argument("--rooms", type=int, default=500)
    parser.add_argument("--web-port", type=int, default=6066)
    parser.add_argument("--window-ms", type=int, default=5_000)
    parser.add_argument(
        "--spike-at", type=float, default=20, help="seconds after start the trending spike begins"
    )
    # at least the detector's 20 s confirmation plus a window on each side
    parser.add_argument("--spike-for", type=float, default=40, help="seconds the spike lasts")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    broker_settings = BrokerSettings.from_env(os.environ)
    started_broker = broker_pid(broker_settings) is None
    broker = ensure_broker(broker_settings)
    print(f"kafka: {broker.bootstrap}{' (started)' if started_broker else ' (already running)'}", flush=True)
    worker = _start_worker(broker.bootstrap, args)
    try:
        return asyncio.run(_demo(broker.bootstrap, worker, args))
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(worker)
        if started_broker:
            stop_broker(broker_settings)
            print("kafka: stopped", flush=True)


def _start_worker(bootstrap: str, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    log_path = Path(os.environ.get("LIVEPULSE_DEMO_LOG", ".cache/demo-worker.log"))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "LIVEPULSE_BROKERS": bootstrap,
        "LIVEPULSE_APP_ID": "livepulse-demo",
        "LIVEPULSE_WEB_PORT": str(args.web_port),
        "LIVEPULSE_WINDOW_MS": str(args.window_ms),
        "LIVEPULSE_GRACE_MS": "1000",
        "LIVEPULSE_IDLE_PARTITION_MS": "1000",
    }
    print(f"worker: starting (log {log_path})", flush=True)
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "streams", "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
    print(f"worker: stopped ({worker.returncode})", flush=True)


async def _demo(bootstrap: str, worker: subprocess.Popen[bytes], args: argparse.Namespace) -> int:
    base = f"http://127.0.0.1:{args.web_port}"
    await _wait_ready(base, worker)
    print(
        f"worker: ready   metrics {base}/metrics   top rooms {base}/rooms/top?metric=views&n=10", flush=True
    )
    deadline = time.monotonic() + args.duration if args.duration else None
    topics = settings_from_env(os.environ).topics  # the worker's (LIVEPULSE_TOPIC_* included)
    windows = asyncio.Event()
    producer = asyncio.create_task(_produce(bootstrap, topics, args, deadline))
    display = asyncio.create_task(_display(bootstrap, topics, windows))
    try:
        while deadline is None or time.monotonic() < deadline:
            if worker.poll() is not None:
                print(f"worker exited with {worker.returncode}", flush=True)
                return 1
            if producer.done() and producer.exception():
                raise producer.exception()  # type: ignore[misc]
            await asyncio.sleep(0.5)
        await asyncio.sleep(args.window_ms / 1000 + 2)  # let the last windows close
    finally:
        producer.cancel()
        display.cancel()
        for task in (producer, display):
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if not windows.is_set():
        print("no window was emitted", flush=True)
        return 1
    return 0


async def _wait_ready(base: str, worker: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise SystemExit(f"worker exited with {worker.returncode} before it was ready")
        with contextlib.suppress(OSError):
            status = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"{base}/readyz", timeout=2).status
            )
            if status == 200:
                return
        await asyncio.sleep(0.5)
    raise SystemExit("worker not ready in time")


async def _produce(bootstrap: str, topics: Topics, args: argparse.Namespace, deadline: float | None) -> None:
    """The traffic model's steady mix paced in real time (event time = now), plus the trending spike."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    started = time.monotonic()
    model = TrafficModel(
        # a seed of its own per run: the worker keeps its state (order ids among it) from the last
        # run, and a run repeating that run's order ids would have every order counted as a retry
        TrafficConfig(rooms=args.rooms, rate_per_s=args.rate, diurnal_amplitude=0.0),
        seed=time.time_ns(),
    )
    inputs = (topics.viewer, topics.order, topics.gift)
    tick_s = model.config.tick_ms / 1000
    try:
        for sent, messages in enumerate(model.ticks(int(time.time() * 1000)), start=1):
            if deadline is not None and time.monotonic() >= deadline:
                break
            for source, _, key, raw, _, _ in messages.wire():
                await producer.send(inputs[source], raw, key=key)
            elapsed = time.monotonic() - started
            spiking = args.spike_at <= elapsed < args.spike_at + args.spike_for
            now_ms = int(time.time() * 1000)
            for i in range(int(args.rate * tick_s * (0.3 if spiking else 0.01))):
                joiner = ViewerEvent("join", TRENDING, f"fan-{sent}-{i}", now_ms)
                await producer.send(topics.viewer, encode(joiner), key=TRENDING.encode())
            await asyncio.sleep(max(0.0, started + sent * tick_s - time.monotonic()))
    finally:
        await producer.stop()


async def _display(bootstrap: str, topics: Topics, seen: asyncio.Event) -> None:
    consumer = AIOKafkaConsumer(
        topics.room_stats,
        topics.alerts,
        bootstrap_servers=bootstrap,
        auto_offset_reset="latest",
        isolation_level="read_committed",
    )
    await consumer.start()
    by_window: dict[int, list[RoomStats]] = defaultdict(list)
    shown: set[int] = set()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            for tp, messages in batch.items():
                for message in messages:
                    if tp.topic == topics.alerts:
                        _print_alert(orjson.loads(message.value))
                        continue
                    stats = decode_room_stats(message.value)
                    by_window[stats.window_start].append(stats)
            # Print a window once a newer one has started arriving (the older is then complete enough).
            for ws in sorted(by_window)[:-1]:
                if ws not in shown:
                    _print_window(ws, by_window.pop(ws))
                    shown.add(ws)
                    seen.set()
    finally:
        await consumer.stop()


def _print_alert(alert: dict[str, Any]) -> None:
    labels, notes = alert.get("labels", {}), alert.get("annotations", {})
    print(
        f"ALERT {alert.get('status')}: {labels.get('alertname')} room={labels.get('room_id')} "
        f"metric={labels.get('metric')} {notes.get('summary', '')}",
        flush=True,
    )


def _print_window(ws: int, rooms: list[RoomStats]) -> None:
    stamp = time.strftime("%H:%M:%S", time.localtime(ws / 1000))
    top = sorted(rooms, key=lambda s: s.views, reverse=True)[:5]
    gmv = sum(s.gmv_minor for s in rooms) / 100
    print(
        f"window {stamp}  rooms={len(rooms):<5} gmv={gmv:>12,.2f}  top by views: "
        + ", ".join(f"{s.room_id}={s.views}" for s in top),
        flush=True,
    )
