"""The Prometheus rules pass ``promtool check rules`` and their unit tests (``promtool test rules``),
and every alert has unit tests that see it both firing and not firing, and a runbook section."""

from __future__ import annotations

import re

import yaml

from tests.deploy.tools import DEPLOY, run, tool

RULES = DEPLOY / "prometheus" / "livepulse.rules.yml"
UNIT_TESTS = DEPLOY / "prometheus" / "tests" / "livepulse.test.yml"
HINT = "`make prometheus` installs Debian's prometheus package (promtool)"


def alert_names() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_check_rules() -> None:
    out = run(tool("promtool", HINT), "check", "rules", str(RULES))
    assert "SUCCESS" in out


def test_promtool_unit_tests_pass() -> None:
    out = run(tool("promtool", HINT), "test", "rules", str(UNIT_TESTS))
    assert "SUCCESS" in out


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    cases = [
        case
        for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    for name in alert_names():
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c["exp_alerts"] for c in mine), f"{name} never tested firing"
        assert any(not c["exp_alerts"] for c in mine), f"{name} never tested not firing"


def test_every_alert_has_a_runbook_section_and_severity() -> None:
    runbook = (DEPLOY / "RUNBOOK.md").read_text()
    anchors = {re.sub(r"[^a-z0-9]", "", h.lower()) for h in re.findall(r"^#+ (.+)$", runbook, re.M)}
    groups = yaml.safe_load(RULES.read_text())["groups"]
    for rule in (r for g in groups for r in g["rules"] if "alert" in r):
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        anchor = rule["annotations"]["runbook"].partition("#")[2]
        assert anchor in anchors, f"{rule['alert']}: no RUNBOOK.md section #{anchor}"
