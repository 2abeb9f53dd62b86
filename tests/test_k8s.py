"""Kubernetes manifests: valid against the API schemas, and consistent with the app."""

from __future__ import annotations

import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from streams.config import load_settings

K8S = Path(__file__).parent.parent / "deploy" / "k8s"
VERSION = "1.33.0"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def docs() -> dict[str, dict]:
    out = {}
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, VERSION, strict=True)


def test_validator_rejects_a_broken_deployment() -> None:
    broken = docs()["Deployment/streamwatch-worker"]
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSION, strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in MANIFESTS} - {"secret.example.yaml"}


def test_deployment_matches_the_app(tmp_path) -> None:
    d = docs()
    deployment = d["Deployment/streamwatch-worker"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert deployment["spec"]["replicas"] >= 2  # scales in one consumer group
    assert container["args"] == ["run"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert (
        container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    )
    env = {e["name"]: e["value"] for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert env["STREAMWATCH_CONFIG"] == mounts["config"]
    assert container["envFrom"][0]["secretRef"]["name"] == "streamwatch"
    assert d["Secret/streamwatch"]["metadata"]["name"] == "streamwatch"
    assert pod["terminationGracePeriodSeconds"] >= 60  # time to flush and checkpoint

    # the ConfigMap holds a configuration the worker accepts, with no secret in it
    toml_text = d["ConfigMap/streamwatch"]["data"]["streamwatch.toml"]
    config = tomllib.loads(toml_text)
    assert "sasl_password" not in config.get("kafka", {})
    assert "dsn" not in config.get("clickhouse", {})
    path = tmp_path / "streamwatch.toml"
    path.write_text(toml_text)
    secrets = d["Secret/streamwatch"]["stringData"]
    settings = load_settings(path, env=dict(secrets))
    assert settings.web_port == container["ports"][0]["containerPort"] == 6066
    assert settings.kafka.sasl_password == secrets["STREAMWATCH_KAFKA_SASL_PASSWORD"]
    assert settings.clickhouse.dsn == secrets["STREAMWATCH_CLICKHOUSE"]
    assert settings.masked()["kafka"]["sasl_password"] == "***"


def test_probes_follow_the_worker_health_pages() -> None:
    """Readiness on /health; liveness (and start-up) on /health/live, which turns 503
    when the worker failed or its polling loop is stuck (streams/health.py, tested
    against the real worker in tests/test_crash_only.py); the grace period covers
    the worker's own bounded stop."""
    deployment = docs()["Deployment/streamwatch-worker"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    port_names = {p["name"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    for probe in ("livenessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/health/live", probe
        assert get["port"] in port_names, probe
    defaults = load_settings(None, env={})
    live = container["livenessProbe"]
    # a stuck worker is restarted within a few minutes, not killed on one slow poll
    restart_after = live["periodSeconds"] * live["failureThreshold"]
    assert 10 <= restart_after <= 300
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120  # join + restore
    # SIGTERM: the worker is gone within stop_timeout_s, before Kubernetes kills it
    assert defaults.stop_timeout_s + 10 <= pod["terminationGracePeriodSeconds"]
