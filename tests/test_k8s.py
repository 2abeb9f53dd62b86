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


# -- NetworkPolicy: only Prometheus reaches the worker's port ---------------------
# A small evaluator of the NetworkPolicy semantics (networking.k8s.io/v1, as the
# API reference defines them): a pod selected by a policy of a direction is
# isolated in it, and a connection is allowed when some rule of a selecting
# policy admits the peer (all of `from`/`to` when absent or empty) and the port
# (all ports when absent or empty).

Pod = tuple[str, dict[str, str]]  # namespace, labels


def _selects(selector: dict | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _peer_matches(peer: dict, policy_ns: str, pod: Pod) -> bool:
    namespace, labels = pod
    if "ipBlock" in peer:
        return True  # an address range: it may cover any pod, count it as admitting
    ns_ok = (
        _selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": namespace})
        if "namespaceSelector" in peer
        else namespace == policy_ns
    )
    pod_ok = _selects(peer["podSelector"], labels) if "podSelector" in peer else True
    return ns_ok and pod_ok


def _port_matches(ports: list[dict] | None, port: int, protocol: str, named: dict) -> bool:
    if not ports:
        return True
    for p in ports:
        wanted = p.get("port")
        number = named.get(wanted, wanted) if isinstance(wanted, str) else wanted
        if p.get("protocol", "TCP") == protocol and (wanted is None or number == port):
            return True
    return False


def allowed(
    policies: list[dict],
    direction: str,
    pod: Pod,
    peer: Pod,
    port: int,
    protocol: str = "TCP",
    named_ports: dict | None = None,
) -> bool:
    """Whether `pod` may receive from (Ingress) or send to (Egress) `peer` on `port`."""
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    selecting = [
        p
        for p in policies
        if p["metadata"]["namespace"] == pod[0]
        and _selects(p["spec"]["podSelector"], pod[1])
        and direction in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not selecting:
        return True  # not isolated in this direction
    for policy in selecting:
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key) or []
            if (not peers or any(_peer_matches(x, pod[0], peer) for x in peers)) and (
                _port_matches(rule.get("ports"), port, protocol, named_ports or {})
            ):
                return True
    return False


def policies() -> list[dict]:
    return [d for d in docs().values() if d["kind"] == "NetworkPolicy"]


def worker_pod() -> Pod:
    deployment = docs()["Deployment/streamwatch-worker"]
    return deployment["metadata"]["namespace"], deployment["spec"]["template"]["metadata"]["labels"]


def worker_port() -> tuple[int, dict[str, int]]:
    (container,) = docs()["Deployment/streamwatch-worker"]["spec"]["template"]["spec"]["containers"]
    named = {p["name"]: p["containerPort"] for p in container["ports"] if "name" in p}
    return container["ports"][0]["containerPort"], named


PROMETHEUS: Pod = ("monitoring", {"app.kubernetes.io/name": "prometheus"})
STRANGERS: list[Pod] = [
    ("streamwatch", {"app": "debug-shell"}),  # a pod next to the worker
    ("streamwatch", {"app.kubernetes.io/name": "prometheus"}),  # "prometheus" elsewhere
    ("default", {"app.kubernetes.io/name": "prometheus"}),
    ("monitoring", {"app.kubernetes.io/name": "grafana"}),  # a neighbour of Prometheus
    ("kafka", {"app": "kafka"}),
]


def test_only_prometheus_reaches_the_worker_port() -> None:
    port, named = worker_port()
    pols, worker = policies(), worker_pod()
    assert allowed(pols, "Ingress", worker, PROMETHEUS, port, named_ports=named)
    for stranger in STRANGERS:
        assert not allowed(pols, "Ingress", worker, stranger, port, named_ports=named), stranger
    # and Prometheus only on that port
    assert not allowed(pols, "Ingress", worker, PROMETHEUS, 22, named_ports=named)


def test_policies_select_the_worker_pods() -> None:
    worker = worker_pod()
    kinds = {
        t
        for p in policies()
        if _selects(p["spec"]["podSelector"], worker[1])
        for t in p["spec"]["policyTypes"]
    }
    assert kinds == {"Ingress", "Egress"}


def test_worker_reaches_dns_kafka_and_clickhouse_only() -> None:
    import urllib.parse

    pols, worker = policies(), worker_pod()
    dns: Pod = ("kube-system", {"k8s-app": "kube-dns"})
    assert allowed(pols, "Egress", worker, dns, 53, "UDP")
    assert allowed(pols, "Egress", worker, dns, 53, "TCP")
    # the endpoints the shipped configuration names
    config = tomllib.loads(docs()["ConfigMap/streamwatch"]["data"]["streamwatch.toml"])
    for server in config["kafka"]["bootstrap"].split(","):
        host, port = server.rsplit(":", 1)
        namespace = host.split(".")[-2]  # <pod>.<service>.<namespace>.svc
        assert allowed(pols, "Egress", worker, (namespace, {"app": "kafka"}), int(port)), server
    dsn = urllib.parse.urlsplit(
        docs()["Secret/streamwatch"]["stringData"]["STREAMWATCH_CLICKHOUSE"]
    )
    namespace = (dsn.hostname or "").split(".")[1]  # <service>.<namespace>.svc
    assert allowed(pols, "Egress", worker, (namespace, {"app": "clickhouse"}), dsn.port or 8443)
    # nothing else: not the internet's HTTP, not another namespace's pods
    assert not allowed(pols, "Egress", worker, ("default", {"app": "web"}), 80)
    assert not allowed(pols, "Egress", worker, (namespace, {"app": "clickhouse"}), 22)


@pytest.mark.parametrize(
    "breakage",
    ["from everyone", "no port", "no namespace selector", "pod selector misses the worker"],
)
def test_the_evaluator_sees_an_open_door(breakage: str) -> None:
    """Each loosening of the ingress policy lets a stranger in (the checks are live)."""
    import copy

    pols = copy.deepcopy(policies())
    (ingress,) = [p for p in pols if "Ingress" in p["spec"]["policyTypes"]]
    rule = ingress["spec"]["ingress"][0]
    if breakage == "from everyone":
        del rule["from"]
    elif breakage == "no port":
        del rule["ports"]
    elif breakage == "no namespace selector":
        del rule["from"][0]["namespaceSelector"]
        rule["from"][0]["podSelector"] = {}
    else:
        ingress["spec"]["podSelector"] = {"matchLabels": {"app": "something-else"}}
    port, named = worker_port()
    worker = worker_pod()
    probes = [(s, port) for s in STRANGERS] + [(PROMETHEUS, 22)]
    assert any(
        allowed(pols, "Ingress", worker, peer, p, named_ports=named) for peer, p in probes
    ), breakage


def test_probes_follow_the_worker_health_pages() -> None:
    """Readiness on /health; liveness (and start-up) on /health/live, which turns 503
    when the worker failed or its polling loop is stuck (streams/runtime/health.py, tested
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
