"""The load test refuses at once a run whose baselines or report need a module not installed."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from loadtest import harness


@pytest.fixture
def without_quix(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name in ("quixstreams", "matplotlib") else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.mark.usefixtures("without_quix")
def test_a_baseline_whose_module_is_missing_is_refused_before_the_run() -> None:
    with pytest.raises(SystemExit, match=r"not installed: quixstreams .*pip install -e '\.\[bench\]'"):
        harness.main(["--baselines", "plain,quix", "--runs", "1"])


@pytest.mark.usefixtures("without_quix")
def test_the_report_needs_matplotlib() -> None:
    assert harness.missing_extras(("plain", "faust"), report=False) == []
    assert harness.missing_extras(("plain",), report=True) == ["matplotlib"]
    with pytest.raises(SystemExit, match="not installed: matplotlib"):
        harness.main(["--report-from", "results.json"])


def test_every_baseline_needing_an_extra_names_a_module_of_the_bench_extra() -> None:
    pyproject = (harness.REPO / "pyproject.toml").read_text()
    bench = pyproject.split("bench = [", 1)[1].split("]", 1)[0]
    for module in harness.BASELINE_NEEDS.values():
        assert f'"{module}' in bench
