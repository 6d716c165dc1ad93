"""The load-test report's table of room densities side by side (issue 13's table)."""

from __future__ import annotations

from types import SimpleNamespace

from loadtest._report import density_table


def _run(rooms: int, rate: float, livepulse: list[float], **baselines: list[float]) -> SimpleNamespace:
    return SimpleNamespace(
        config={"rooms": rooms, "window_ms": 10_000},
        backlog={"event_rate": rate},
        livepulse=[{"per_cpu_s": v} for v in livepulse],
        baselines=[{"name": name, "per_cpu_s": v} for name, values in baselines.items() for v in values],
    )


def test_each_density_is_a_row_with_medians_and_ratios_of_its_own_run() -> None:
    sparse = _run(
        100_000, 2_083.0, [40_000, 44_000, 50_000], plain=[400_000, 440_000, 500_000], quix=[22_000]
    )
    busy = _run(2_000, 2_083.0, [120_000, 130_000, 140_000], plain=[520_000, 560_000, 600_000])
    lines = density_table([busy, sparse])
    assert lines[0] == (
        "| rooms | events per room-window | runs | livepulse events/CPU-s | plain | livepulse ÷ plain "
        "| quix | livepulse ÷ quix |"
    )
    assert lines[2] == "| 100,000 | 0.21 | 3 | 44,000 | 440,000 | 0.10x | 22,000 | 2.00x |"
    assert lines[3] == "| 2,000 | 10.41 | 3 | 130,000 | 560,000 | 0.23x | — | — |"
