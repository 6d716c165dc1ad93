"""The local Apache Kafka broker: single-node KRaft on 127.0.0.1, fetched from Maven Central.

One way to run the real broker, shared by the demo, the tests, the load tests
and CI: jars come from ``deploy/pom.xml`` into ``.cache/kafka/lib``; each port
gets a work dir (``.cache/kafka/run-<port>``) with ``server.properties``, the
data, ``kafka.log``, a pidfile and a fingerprint of the settings it runs with.

``ensure_broker`` reuses a ready broker started with the same settings,
replaces one started with other settings, forgets a dead one (a killed run)
and refuses to fight an unrelated process for the port. ``stop_broker`` is
idempotent. ``main`` is ``livepulse kafka up|down|status|fetch``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from deploy import _proc
from deploy._settings import (
    CACHE_DIR,
    DEFAULT_CONTROLLER_PORT,
    DEFAULT_PORT,
    HOST,
    JVM_OPTIONS,
    KAFKA_VERSION,
    LOG4J_PROPERTIES,
    POM,
    Broker,
    BrokerSettings,
    fingerprint,
    new_cluster_id,
    render_properties,
    server_properties,
)
from deploy.exceptions import BrokerError

__all__ = [
    "CACHE_DIR",
    "KAFKA_VERSION",
    "Broker",
    "BrokerError",
    "BrokerSettings",
    "broker_pid",
    "ensure_broker",
    "fetch_jars",
    "fingerprint",
    "java_binary",
    "main",
    "new_cluster_id",
    "render_properties",
    "server_properties",
    "stop_broker",
]

_FETCHED_MARKER = ".fetched"


def fetch_jars(lib_dir: Path = CACHE_DIR / "lib") -> Path:
    """Copy Kafka and its runtime dependencies from Maven into ``lib_dir`` unless already there.

    A marker holding the pom's hash is written last, so a half-finished fetch
    or a changed pom is fetched again, into a fresh directory.
    """
    marker = lib_dir / _FETCHED_MARKER
    want = hashlib.sha256(POM.read_bytes()).hexdigest()
    with _proc.file_lock(lib_dir.with_name(lib_dir.name + ".lock")):
        if marker.is_file() and marker.read_text().strip() == want:
            return lib_dir
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError("Maven (mvn) is needed to fetch the Kafka jars: apt-get install maven")
        partial = lib_dir.with_name(lib_dir.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={partial}",
            "-DincludeScope=runtime",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0 or not (partial / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file():
            output = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
            raise BrokerError(f"fetching Kafka jars failed: {' '.join(cmd)}\n{output}")
        shutil.rmtree(lib_dir, ignore_errors=True)
        partial.rename(lib_dir)
        marker.write_text(want + "\n")
    return lib_dir


def broker_pid(settings: BrokerSettings) -> int | None:
    """The pid of our broker for ``settings.work_dir`` if one is alive; drops a stale pidfile."""
    pid = _proc.read_pid(settings.pid_file)
    if pid is not None and _proc.alive(pid) and _is_ours(pid, settings):
        return pid
    settings.pid_file.unlink(missing_ok=True)
    # A pidfile lost while the broker ran (a deleted work dir): find it by its cmdline.
    orphans = _proc.pids_matching("kafka.Kafka", str(settings.server_properties))
    return orphans[0] if orphans else None


def ensure_broker(settings: BrokerSettings) -> Broker:
    """Return a ready broker for ``settings``, starting (or restarting) one if needed."""
    with _proc.file_lock(settings.work_dir / ".lock"):
        want = fingerprint(settings)
        pid = broker_pid(settings)
        if pid is not None:
            if _read_text(settings.fingerprint_file) == want:
                with contextlib.suppress(BrokerError):
                    _wait_ready(settings, pid, settings.start_timeout_s)
                    settings.pid_file.write_text(f"{pid}\n")  # it may have been found by cmdline
                    return Broker(settings, pid, reused=True)
            # Other settings, or not answering: replace it.
            _stop(settings, pid)
        for port in (settings.port, settings.controller_port, settings.sasl_ssl_port):
            if port is not None and not _proc.port_free(HOST, port):
                raise BrokerError(
                    f"{HOST}:{port} is in use by a process that is not the livepulse broker "
                    f"of {settings.work_dir}; stop it or pick other ports "
                    "(--port/--controller-port, LIVEPULSE_KAFKA_PORT/_CONTROLLER_PORT)"
                )
        lib_dir = fetch_jars(settings.lib_dir)
        java = java_binary()
        _write_config(settings)
        if not (settings.work_dir / "data" / "meta.properties").is_file():
            _format(settings, java, lib_dir)
        pid = _spawn(settings, java, lib_dir)
        settings.pid_file.write_text(f"{pid}\n")
        settings.fingerprint_file.write_text(want + "\n")
        try:
            _wait_ready(settings, pid, settings.start_timeout_s)
        except BrokerError:
            _stop(settings, pid)
            raise
        return Broker(settings, pid)


def stop_broker(settings: BrokerSettings) -> int | None:
    """Stop our broker for ``settings.work_dir``; the pid stopped, or None if none ran."""
    exists = settings.work_dir.is_dir()
    with _proc.file_lock(settings.work_dir / ".lock") if exists else contextlib.nullcontext():
        pid = broker_pid(settings)
        if pid is not None:
            _stop(settings, pid)
        return pid


def _is_ours(pid: int, settings: BrokerSettings) -> bool:
    args = _proc.cmdline(pid)
    return "kafka.Kafka" in args and str(settings.server_properties) in args


def _stop(settings: BrokerSettings, pid: int) -> None:
    _proc.terminate(pid, settings.stop_timeout_s)
    if _proc.alive(pid):
        raise BrokerError(f"broker pid {pid} survived SIGKILL")
    settings.pid_file.unlink(missing_ok=True)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def java_binary() -> str:
    """The ``java`` that runs the broker (``JAVA_HOME``'s, else the PATH's)."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if java is None or not Path(java).is_file():
        raise BrokerError("java (17 or newer) is needed to run Kafka; set JAVA_HOME or PATH")
    return java


def _classpath(lib_dir: Path) -> str:
    return f"{lib_dir}/*"


def _log4j_option(settings: BrokerSettings) -> str:
    return f"-Dlog4j.configuration=file:{settings.work_dir / 'log4j.properties'}"


def _write_config(settings: BrokerSettings) -> None:
    (settings.work_dir / "data").mkdir(parents=True, exist_ok=True)
    settings.server_properties.write_text(render_properties(server_properties(settings)))
    (settings.work_dir / "log4j.properties").write_text(LOG4J_PROPERTIES)


def _format(settings: BrokerSettings, java: str, lib_dir: Path) -> None:
    cmd = [
        java,
        "-Xmx256m",
        _log4j_option(settings),
        "-cp",
        _classpath(lib_dir),
        "kafka.tools.StorageTool",
        "format",
        "--ignore-formatted",
        "-t",
        new_cluster_id(),
        "-c",
        str(settings.server_properties),
    ]
    for user, password in settings.scram_users:  # KRaft: SCRAM users are created at format time
        cmd += ["--add-scram", f"SCRAM-SHA-512=[name={user},password={password}]"]
    done = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise BrokerError(f"formatting {settings.work_dir / 'data'} failed:\n{done.stdout}{done.stderr}")


def _spawn(settings: BrokerSettings, java: str, lib_dir: Path) -> int:
    log = settings.log_file
    if log.exists():
        log.replace(log.with_name(log.name + ".1"))
    argv = [
        java,
        *JVM_OPTIONS,
        _log4j_option(settings),
        "-cp",
        _classpath(lib_dir),
        "kafka.Kafka",
        str(settings.server_properties),
    ]
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    # posix_spawn rather than Popen: the broker outlives this process by design,
    # and a Popen object would warn (ResourceWarning) about its running child.
    # setsid detaches it from the terminal and makes it lead its own group.
    return os.posix_spawn(java, argv, dict(os.environ), file_actions=actions, setsid=True)


def _wait_ready(settings: BrokerSettings, pid: int, timeout_s: float) -> None:
    """Block until a metadata request succeeds; BrokerError with the log tail otherwise."""
    # In a thread with its own loop: callable from sync code and from inside a running loop.
    with ThreadPoolExecutor(1) as pool:
        problem = pool.submit(asyncio.run, _await_ready(settings, pid, timeout_s)).result()
    if problem is not None:
        raise BrokerError(f"{problem}; last lines of {settings.log_file}:\n{_proc.tail(settings.log_file)}")


async def _await_ready(settings: BrokerSettings, pid: int, timeout_s: float) -> str | None:
    deadline = time.monotonic() + timeout_s
    with _quiet("aiokafka"):
        while time.monotonic() < deadline:
            if not _proc.alive(pid):
                return f"broker pid {pid} exited during startup"
            if await _metadata_ok(settings.bootstrap):
                return None
            await asyncio.sleep(0.5)
    return f"broker pid {pid} not ready on {settings.bootstrap} after {timeout_s:.0f} s"


async def _metadata_ok(bootstrap: str) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await asyncio.wait_for(admin.start(), 10)
        cluster = await asyncio.wait_for(admin.describe_cluster(), 10)
        return bool(cluster.get("brokers"))
    except Exception:  # any failure just means "not ready yet"
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Silence expected connection errors while polling a starting broker."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--port", type=int, help=f"broker port (default {DEFAULT_PORT})")
    common.add_argument(
        "--controller-port", type=int, help=f"KRaft controller port (default {DEFAULT_CONTROLLER_PORT})"
    )
    common.add_argument("--dir", type=Path, help="work dir (default .cache/kafka/run-<port>)")
    common.add_argument("--timeout", type=float, help="seconds to wait for start/stop")
    parser = argparse.ArgumentParser(prog="livepulse kafka", description="The local Kafka broker.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", parents=[common], help="start the broker (or reuse it) and wait")
    commands.add_parser("down", parents=[common], help="stop the broker (idempotent)")
    commands.add_parser("status", parents=[common], help="exit 0 if running and ready, else 1")
    commands.add_parser("fetch", parents=[common], help="fetch the Kafka jars with Maven")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``livepulse kafka up|down|status|fetch``; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        settings = BrokerSettings.from_env(
            os.environ, port=args.port, controller_port=args.controller_port, work_dir=args.dir
        )
        if args.timeout is not None:
            settings = replace(settings, start_timeout_s=args.timeout, stop_timeout_s=args.timeout)
        return _run(args.command, settings)
    except BrokerError as exc:
        print(f"kafka: error: {exc}", file=sys.stderr)
        return 1


def _run(command: str, settings: BrokerSettings) -> int:
    where = f"{settings.bootstrap}, dir {settings.work_dir}"
    if command == "fetch":
        print(f"kafka: jars in {fetch_jars(settings.lib_dir)}")
    elif command == "up":
        broker = ensure_broker(settings)
        state = "already running" if broker.reused else "started"
        print(f"kafka: {state}, pid {broker.pid}, {where}")
    elif command == "down":
        pid = stop_broker(settings)
        print(f"kafka: stopped pid {pid}" if pid else "kafka: not running")
    else:
        pid = broker_pid(settings)
        if pid is None:
            print(f"kafka: not running, {where}")
            return 1
        try:
            _wait_ready(settings, pid, 5.0)
        except BrokerError:
            print(f"kafka: pid {pid} alive but not answering on {where}")
            return 1
        print(f"kafka: running, pid {pid}, {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
