"""Process plumbing for the local broker: liveness, identity, signals, ports, locks.

POSIX only (Linux and macOS). Liveness treats zombies as dead: a broker spawned
by a long-lived process (a pytest session) stays its child until reaped, and
in containers PID 1 may never reap an orphan at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

_POLL_S = 0.1


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process; reaps it if it is our child."""
    with contextlib.suppress(ChildProcessError):
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _exited(pid)


def _exited(pid: int) -> bool:
    """Whether every thread of ``pid`` is a zombie or dead (Linux; False when unknown).

    A JVM's main thread turns zombie before its other threads have exited and
    released its sockets, so the leader's state alone is not enough.
    """
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        with contextlib.suppress(OSError):
            # The command name in parentheses may contain spaces; the state follows it.
            states.append(stat.read_text().rpartition(")")[2].split()[0])
    return bool(states) and all(state in "ZX" for state in states)


def cmdline(pid: int) -> list[str]:
    """The argument vector of ``pid``, or ``[]`` when it cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        if Path("/proc/self").exists():
            return []
        # No procfs (macOS): ps loses argument boundaries, which the callers tolerate.
        out = subprocess.run(["ps", "-ww", "-o", "args=", "-p", str(pid)], capture_output=True, text=True)
        return out.stdout.split()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def pids_matching(*needles: str) -> list[int]:
    """Running processes whose argument vector contains every one of ``needles``.

    Finds a broker whose pidfile was lost; Linux only (empty elsewhere).
    """
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid != os.getpid() and all(n in cmdline(pid) for n in needles) and alive(pid):
            found.append(pid)
    return sorted(found)


def terminate(pid: int, timeout_s: float) -> None:
    """SIGTERM the process group led by ``pid``; SIGKILL it if still alive after ``timeout_s``."""
    _signal(pid, signal.SIGTERM)
    if _wait_dead(pid, timeout_s):
        return
    _signal(pid, signal.SIGKILL)
    _wait_dead(pid, 10.0)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        # Only signal a whole group the process leads, never one we belong to.
        if os.getpgid(pid) == pid and pid != os.getpgrp():
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _wait_dead(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)
    return True


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (TIME_WAIT leftovers don't count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (serialises concurrent up/down calls)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file, or a note that it is missing."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} not found)"
    return "\n".join(text.splitlines()[-lines:])
