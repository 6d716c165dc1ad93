"""The load-test harness in miniature, as an end-to-end correctness test on the real broker.

A few seconds of traffic with every scenario (trending spike, flash sale,
debut room, out-of-order and late events, malformed messages) goes through a
real worker, which is restarted once; a short live phase follows. Everything
published must match the ground truth: windows, dead letters, every injected
spike alerted and no alert unexplained, the platform leaderboard of every
window. No timing is asserted. The harness keeps its messages and records on disk here, as it does
past a few hundred thousand of them in a full run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest import _packed, _report, traffic
from loadtest.harness import Harness, HarnessConfig

pytestmark = pytest.mark.integration


async def test_quick_load_test_matches_the_ground_truth(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_packed, "SPILL_AT", 2_000)
    monkeypatch.setattr(traffic, "LOG_SPILL_BYTES", 256 * 1024)
    # with a variant beside it (sessions and rollups off), as the feature-cost measurement runs it
    cfg = HarnessConfig.quick_config(brokers=kafka_bootstrap, out_dir=tmp_path, variants=("bare",))

    result = await Harness(cfg).run(kafka_bootstrap)

    verdict = result.verdict
    assert verdict is not None
    assert verdict.ok, verdict.summary()
    # The scenarios really happened (a vacuous pass would be worthless).
    assert {s.injection.scenario for s in verdict.spikes} == {"trending", "flash-sale", "hot-room"}
    assert all(s.alert is not None for s in verdict.spikes)
    assert verdict.windows_expected > 10_000
    assert verdict.rollups_expected > 1_000 and verdict.sessions_expected > 100  # compared, field by field
    assert verdict.leaderboards_expected > 50 and verdict.leaderboards_got == verdict.leaderboards_expected
    assert verdict.late_expected > 0 and verdict.late_got == verdict.late_expected
    assert sum(verdict.dlq_expected.values()) > 100
    assert len(verdict.dlq_expected) >= 10  # every malformed kind, each with its reason code
    assert result.restore["partitions"] == cfg.partitions
    assert result.live["latency_events"] > 0 and result.live["latency_missing"] == 0
    # the probe (a reader in its own process) saw the window of every event the collector timed
    assert result.live["latency_probe_events"] == result.live["latency_events"]
    assert result.live["latency_probe_missing"] == 0
    # the variant was timed on the same backlog (the same messages, the same ones refused)
    (bare,) = result.variants
    (full,) = result.livepulse
    assert bare["name"] == "bare" and bare["messages"] > 0 and full["messages"] > 0
    assert bare["invalid"] == full["invalid"] > 0 and bare["per_cpu_s"] > 0
    # every store the harness keeps by the million went to disk (a small run keeps them in memory)
    assert set(result.machine["harness_on_disk"]) >= {
        "backlog messages",
        "live messages",
        "true windows",
        "true rollups",
        "received windows",
        "received rollups",
        "arrival times",
    }, result.machine["harness_on_disk"]
    report = tmp_path / "RESULTS.md"
    _report.update_results_md(result, [], ["--quick"], path=report)
    assert "livepulse variant `bare`: sessions and rollups off" in report.read_text()
