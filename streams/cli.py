"""The ``livepulse`` command: ``worker``, ``kafka up|down|status``, ``demo``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .exceptions import LivepulseError
from .settings import settings_from_env

if TYPE_CHECKING:
    import faust

WORKER_FLAGS = (
    ("--brokers", str, "bootstrap servers, comma-separated"),
    ("--app-id", str, "faust app id; the data plane's group is <app-id>-dataplane"),
    ("--web-port", int, "HTTP port for /metrics, /healthz, /readyz, /rooms"),
    ("--web-host", str, "HTTP bind address"),
    ("--window-ms", int, "reported window length"),
    ("--bucket-ms", int, "bucket length (window_ms must be a multiple)"),
    ("--grace-ms", int, "watermark lag behind the newest event"),
    ("--commit-interval-ms", int, "checkpoint and commit period"),
    ("--partitions", int, "partitions for topics the worker creates"),
    ("--alertmanager-url", str, "Alertmanager base URL to forward alerts to"),
    ("--log-level", str, "debug, info, warning, error"),
)


def _worker(args: argparse.Namespace) -> int:
    from ._logstorm import limit_repeats
    from ._topology import prepare_topics
    from .app import create_app

    overrides = {
        flag.lstrip("-").replace("-", "_"): getattr(args, flag.lstrip("-").replace("-", "_"))
        for flag, *_ in WORKER_FLAGS
    }
    settings = settings_from_env(**overrides)
    limit_repeats()  # before the topic checks: they may wait out a broker restart
    prepare_topics(settings)
    make_worker(create_app(settings), settings.log_level).execute_from_commandline()
    return 0


def make_worker(app: faust.App, log_level: str) -> faust.Worker:
    """faust's worker for ``app``, without its start-up spinner.

    At a level of WARN or above, faust turns the root logger to DEBUG so that its spinner turns at
    every record: every library's debug call then builds its record for the handlers to drop.
    aiokafka formats each request it sends that way (a fetch's or a produce's whole structure),
    which was ~3 % of the worker's samples in a live phase at ``LIVEPULSE_LOG_LEVEL=warning``."""
    import faust

    worker = faust.Worker(app, loglevel=log_level)
    worker.spinner = None
    return worker


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["kafka"]:
        from deploy.localkafka import main as kafka_main

        return kafka_main(argv[1:])
    if argv[:1] == ["demo"]:
        from loadtest.demo import main as demo_main

        return demo_main(argv[1:])
    if argv[:1] == ["loadtest"]:
        from loadtest.cli import main as loadtest_main

        return loadtest_main(argv[1:])
    parser = argparse.ArgumentParser(prog="livepulse", description="Real-time livestream commerce aggregates")
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker", help="run a worker (settings from LIVEPULSE_* and these flags)")
    for flag, kind, text in WORKER_FLAGS:
        worker.add_argument(flag, type=kind, help=text)
    sub.add_parser("kafka", help="local broker: livepulse kafka up|down|status")
    sub.add_parser("demo", help="broker + worker + synthetic traffic, live in the terminal")
    sub.add_parser("loadtest", help="load test: livepulse loadtest produce|run (see --help)")
    args = parser.parse_args(argv)
    try:
        return _worker(args)
    except LivepulseError as exc:
        print(f"livepulse: {exc}", file=sys.stderr)
        return 2
