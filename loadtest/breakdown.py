"""Where a message's microseconds go: a sampled profile of the pipeline benchmark, by stage.

    py-spy record -r 250 -f raw -o stacks.txt -- python -m loadtest.bench_pipeline --only pipeline ...
    python -m loadtest.breakdown stacks.txt --us-per-msg 3.26

``py-spy`` samples the benchmark without slowing its Python down the way cProfile does (py-spy is
in the ``bench`` extras). Only samples inside the benchmark's pipeline runs count. Each is charged
to the innermost frame that names a stage of the worker's per-batch pipeline (``STAGES``), so a
window closed inside ``apply`` is window-close time, not apply time. With ``--us-per-msg`` (the
benchmark's own unprofiled figure) the shares are also given in microseconds per message.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterable, Sequence

#: stage -> the functions (``file:function``) whose samples it takes, innermost frame first
STAGES: dict[str, tuple[str, ...]] = {
    "decode + validate": tuple(
        f"_batch.py:decode_{topic}_batch{py}" for topic in ("viewer", "order", "gift") for py in ("", "_py")
    ),
    "re-routing check, dead letters": (
        "pipeline.py:_keep_local",
        "pipeline.py:_split_repartitioned",
        "pipeline.py:_dead_letter",
    ),
    "spike detector": ("_task.py:_detect",),
    "sessions + rollups (fold, close)": (
        "_task.py:_fold",
        "_task.py:_close_rollups",
        "_task.py:_end_sessions",
    ),
    "window close (sum buckets, HLL estimate, record)": (
        "_task.py:_close_room_window",
        "_task.py:_close_due",
        "_task.py:_expire_idle_rooms",
    ),
    "apply (per-event state)": ("_task.py:apply",),
    "publish room-stats, sessions, rollups, leaderboard partials": ("pipeline.py:publish_windows",),
    "alerts": ("pipeline.py:publish_alerts",),
    "checkpoint (encode changed rooms)": ("pipeline.py:stage_checkpoint",),
    "other per-batch work (glue, ticks)": ("pipeline.py:process", "pipeline.py:tick"),
}
ROOT = "bench_pipeline.py:run_pipeline"
_FRAME = re.compile(r"^(?P<function>.+?) \((?P<file>[^:()]+?)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """``file:function`` of one py-spy frame (``[Class.]function (path/file.py:line)``)."""
    m = _FRAME.match(frame.strip())
    if m is None:
        return frame.strip()
    return f"{m['file'].rsplit('/', 1)[-1]}:{m['function'].rsplit('.', 1)[-1]}"


def charge(lines: Iterable[str]) -> Counter[str]:
    """Samples per stage, from py-spy's raw (collapsed) stacks, within the benchmark's pipeline runs."""
    stage_of = {name: stage for stage, names in STAGES.items() for name in names}
    out: Counter[str] = Counter()
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        names = [frame_name(f) for f in stack.split(";")]
        if ROOT not in names:
            continue
        inside = names[names.index(ROOT) + 1 :]
        stage = next((stage_of[n] for n in reversed(inside) if n in stage_of), "other (benchmark loop)")
        out[stage] += int(count)
    return out


def report(samples: Counter[str], us_per_msg: float | None) -> str:
    total = sum(samples.values())
    if not total:
        return "no samples inside the benchmark's pipeline runs"
    rows = ["| stage | share | µs per message |", "|---|---:|---:|"]
    for stage in [*STAGES, "other (benchmark loop)"]:
        n = samples.get(stage, 0)
        us = "" if us_per_msg is None else f"{us_per_msg * n / total:.2f}"
        rows.append(f"| {stage} | {100 * n / total:.1f} % | {us} |")
    rows.append(f"| all ({total:,} samples) | 100 % | {'' if us_per_msg is None else f'{us_per_msg:.2f}'} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stacks", help="py-spy record -f raw output")
    parser.add_argument("--us-per-msg", type=float, help="the benchmark's unprofiled µs per message")
    args = parser.parse_args(argv)
    with open(args.stacks, encoding="utf-8") as f:
        print(report(charge(f), args.us_per_msg))


if __name__ == "__main__":
    main()
