"""The committed Grafana dashboards and PrometheusRule match what ``make dashboards`` generates."""

from __future__ import annotations

import json

import pytest
import yaml

from deploy.dashboards import DASHBOARDS, panel_queries
from deploy.generate import DEPLOY, PROMETHEUS_RULE, RULES, generated


@pytest.mark.parametrize("path", sorted(generated()), ids=lambda p: p.name)
def test_committed_file_is_not_stale(path: object) -> None:
    expected = generated()[path]  # type: ignore[index]
    assert path.exists(), f"{path} is missing: run `make dashboards`"  # type: ignore[attr-defined]
    assert path.read_text() == expected, f"{path} is stale: run `make dashboards` and commit"  # type: ignore[attr-defined]


def test_prometheus_rule_carries_exactly_the_rule_file() -> None:
    text = PROMETHEUS_RULE.read_text()
    assert yaml.safe_load(text)["spec"] == yaml.safe_load(RULES.read_text())


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_panels_query_prometheus_through_the_datasource_variable(name: str) -> None:
    board = json.loads((DEPLOY / "grafana" / f"{name}.json").read_text())
    assert board["uid"] and board["title"].startswith("livepulse")
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert target["expr"]


def test_every_panel_query_is_listed_for_the_integration_test() -> None:
    listed = {expr for _, _, expr in panel_queries()}
    for name in DASHBOARDS:
        board = json.loads((DEPLOY / "grafana" / f"{name}.json").read_text())
        assert {t["expr"] for p in board["panels"] for t in p["targets"]} <= listed
