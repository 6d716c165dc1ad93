"""The live traffic sent in real time from a process of its own.

The harness's collector decodes and keeps every output record in its event loop. At a window
boundary of 100 000 rooms it takes a few hundred thousand records at once, and a sender in the
same loop stopped for seconds: every input partition fell silent together. A worker takes an
input caught up and silent for ``LIVEPULSE_IDLE_PARTITION_MS`` (2 s) as idle and, with all of a
task's inputs idle, moves its watermark on with the wall clock; the events the sender then caught
up with were late, as a real producer's would be after such a stall. The ground truth replays the
traffic in production order and knows nothing of wall time, so those runs were not exact for a
reason that was the harness's. The latency probe (``loadtest.probe``) left the loop for the
same reason. Here the sender shares no loop: the child reads the phase's message log through
the file descriptor it inherits (``MessageLog.shared_file``), sends it with ``produce.send``,
and writes its statistics as JSON to its standard output.

``python -m loadtest.sender BOOTSTRAP TOPICS FD BYTES PARTS``: ``TOPICS`` comma-separated (one per
input source), ``PARTS`` the messages per partition as JSON.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import Sequence

import orjson

from .produce import SendStats, send
from .traffic import MessageLog


async def send_apart(bootstrap: str, topics: Sequence[str], messages: MessageLog) -> SendStats:
    """``send(bootstrap, topics, messages, realtime=True)`` in a child process; its statistics."""
    fd, size = messages.shared_file()
    parts = orjson.dumps({str(p): messages.count_of(p) for p in messages.partitions()})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loadtest.sender",
        bootstrap,
        ",".join(topics),
        str(fd),
        str(size),
        parts.decode(),
        stdout=asyncio.subprocess.PIPE,
        pass_fds=(fd,),
    )
    try:
        out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"the live sender exited with {proc.returncode}")
    doc = orjson.loads(out)
    doc["lags"] = [(int(end), float(lag)) for end, lag in doc["lags"]]
    return SendStats(**doc)


def main(argv: list[str]) -> int:
    bootstrap, topics, fd, size, parts = argv
    messages = MessageLog.from_fd(int(fd), int(size), {int(p): n for p, n in orjson.loads(parts).items()})
    stats = asyncio.run(send(bootstrap, topics.split(","), messages, realtime=True))
    sys.stdout.buffer.write(orjson.dumps(dataclasses.asdict(stats)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
