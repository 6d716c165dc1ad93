"""Kubernetes manifests, rendered by kustomize and validated offline: core kinds against the
Kubernetes OpenAPI schemas shipped by kubernetes-validate (strict: unknown fields fail), custom
resources (ServiceMonitor, PrometheusRule, KafkaTopic, ScaledObject, TriggerAuthentication)
against the OpenAPI schema of their own CRD, vendored under deploy/k8s/crds/."""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from streams.settings import settings_from_env
from tests.deploy.tools import DEPLOY, REPO, run

K8S = DEPLOY / "k8s"
KUSTOMIZE = REPO / ".cache" / "bin" / "kustomize"
TARGETS = ["base", "overlays/example"]
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]


@cache
def render(target: str) -> tuple[dict[str, Any], ...]:
    assert KUSTOMIZE.exists(), "kustomize is missing: `make kustomize` builds it"
    out = run(str(KUSTOMIZE), "build", str(K8S / target))
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def strict(schema: Any) -> Any:
    """Reject unknown fields as the API server's structural pruning would drop them."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict JSON schema of every served version of the vendored CRDs."""
    out = {}
    for path in sorted((K8S / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version["served"]:
                schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
                out[(f"{group}/{version['name']}", kind)] = strict(schema)
    return out


def by_kind(target: str, kind: str) -> list[dict[str, Any]]:
    return [d for d in render(target) if d["kind"] == kind]


@pytest.mark.parametrize("target", TARGETS)
def test_every_resource_validates_against_its_schema(target: str) -> None:
    for doc in render(target):
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        crd = crd_schemas().get((doc["apiVersion"], doc["kind"]))
        if crd is not None:
            errors = sorted(jsonschema.Draft4Validator(crd).iter_errors(doc), key=str)
            assert not errors, f"{name}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors)
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                pytest.fail(f"{name}: no Kubernetes schema and no vendored CRD for {doc['apiVersion']}")
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name} (Kubernetes {version}): {exc.message} at {list(exc.path)}")


def test_the_crd_check_rejects_an_invalid_custom_resource() -> None:
    topic = copy.deepcopy(by_kind("base", "KafkaTopic")[0])
    topic["spec"]["partitions"] = "four"
    topic["spec"]["partitoins"] = 4
    schema = crd_schemas()[(topic["apiVersion"], "KafkaTopic")]
    messages = {e.message for e in jsonschema.Draft4Validator(schema).iter_errors(topic)}
    assert any("'four' is not of type 'integer'" in m for m in messages)
    assert any("partitoins" in m for m in messages)


@pytest.mark.parametrize("target", TARGETS)
def test_worker_env_is_accepted_by_the_worker_settings(target: str) -> None:
    (configmap,) = by_kind(target, "ConfigMap")
    (deployment,) = by_kind(target, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = dict(configmap["data"])
    for var in container["env"]:
        env[var["name"]] = var.get("value", "from-a-secret")
    assert all(name.startswith("LIVEPULSE_") for name in env)
    settings = settings_from_env(env)  # an unknown or malformed LIVEPULSE_* variable raises
    assert settings.web_host == "0.0.0.0"


@pytest.mark.parametrize("target", TARGETS)
def test_worker_probes_resources_and_graceful_termination(target: str) -> None:
    (deployment,) = by_kind(target, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    (configmap,) = by_kind(target, "ConfigMap")
    commit_interval_s = int(configmap["data"].get("LIVEPULSE_COMMIT_INTERVAL_MS", "1000")) / 1000
    assert pod["terminationGracePeriodSeconds"] >= 30 * commit_interval_s
    assert pod["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize("target", TARGETS)
def test_monitoring_selects_the_workers_as_job_livepulse(target: str) -> None:
    (service,) = by_kind(target, "Service")
    (monitor,) = by_kind(target, "ServiceMonitor")
    (pdb,) = by_kind(target, "PodDisruptionBudget")
    (deployment,) = by_kind(target, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["metadata"]["name"] == "livepulse"  # the job label the rules select
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {p["name"] for p in service["spec"]["ports"]} >= {e["port"] for e in monitor["spec"]["endpoints"]}
    rules = yaml.safe_load((DEPLOY / "prometheus" / "livepulse.rules.yml").read_text())
    assert by_kind(target, "PrometheusRule")[0]["spec"] == rules


@pytest.mark.parametrize("target", TARGETS)
def test_topics_are_co_partitioned_changelog_compacted_and_workers_fit(target: str) -> None:
    topics = {t["spec"]["topicName"]: t["spec"] for t in by_kind(target, "KafkaTopic")}
    co_partitioned = ["live.viewer", "live.order", "live.gift", "livepulse.repartition"]
    partitions = {topics[name]["partitions"] for name in co_partitioned}
    assert len(partitions) == 1, "inputs must be co-partitioned"
    (count,) = partitions
    assert topics["livepulse.room-state-changelog"]["config"]["cleanup.policy"] == "compact"
    assert topics["livepulse.room-state-changelog"]["partitions"] == count
    (deployment,) = by_kind(target, "Deployment")
    assert deployment["spec"]["replicas"] <= count, "workers beyond the partition count sit idle"
    for scaled in by_kind(target, "ScaledObject"):
        assert scaled["spec"]["maxReplicaCount"] <= count


def test_example_overlay_takes_kafka_credentials_from_secrets() -> None:
    (deployment,) = by_kind("overlays/example", "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    password = next(v for v in container["env"] if v["name"] == "LIVEPULSE_SASL_PASSWORD")
    assert "value" not in password and password["valueFrom"]["secretKeyRef"]["key"] == "password"
    (configmap,) = by_kind("overlays/example", "ConfigMap")
    assert configmap["data"]["LIVEPULSE_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert not any("PASSWORD" in key for key in configmap["data"])
    assert all(d["metadata"].get("namespace", "livepulse") == "livepulse" for d in render("overlays/example"))
