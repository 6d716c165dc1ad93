"""The data plane tells its tasks when the host's wall clock steps."""

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
