"""The data plane and its host: steps of the wall clock, free memory handed back."""

from __future__ import annotations

from schemas import ViewerEvent
from streams.dataplane import DataPlane, _Task
from streams.metrics import Metrics
from streams.settings import Settings
from tests.unit.test_pipeline import NOW_MS, T0, make


def test_a_step_of_the_wall_clock_moves_the_tasks_wall_instants_and_is_counted() -> None:
    metrics = Metrics()
    plane = DataPlane(Settings(partitions=4), metrics)
    pipeline, _, _ = make(partition=0)
    plane.runtime = {0: _Task(pipeline, producer=None)}  # type: ignore[arg-type]
    core = pipeline.core
    core.apply(0, [(1, ViewerEvent("join", "r", "u", T0))], NOW_MS)
    before = dict(core._src_wall)

    plane._follow_clock_steps(NOW_MS / 1000, 1_000.0)
    plane._follow_clock_steps(NOW_MS / 1000 + 0.5, 1_000.4)  # 0.1 s of drift: no step
    assert core._src_wall == before
    plane._follow_clock_steps(NOW_MS / 1000 + 301.0, 1_001.0)  # 0.6 s passed, the clock moved 300.5 s
    assert core._src_wall == {s: t + 299_900 for s, t in before.items()}
    assert metrics.clock_steps._value.get() == 1


def test_free_pages_inside_a_fragmented_heap_go_back_to_the_system() -> None:
    """Records of a few KB made and dropped between long-lived objects (a checkpoint's work) leave
    the heap full of free pages glibc keeps; malloc_trim(0) hands them back."""
    from loadtest.bench_memory import rss
    from streams.dataplane import release_free_memory

    release_free_memory()
    kept, dropped = [], []
    for i in range(30_000):
        dropped.append(bytes(5_000) + b"%d" % i)  # over pymalloc's 512 B: malloc'd
        kept.append(bytes(600) + b"%d" % i)  # long-lived, between them
    del dropped
    before = rss()
    assert release_free_memory()
    assert before - rss() > 100 * 1024 * 1024  # of the ~150 MB freed
    assert len(kept) == 30_000
