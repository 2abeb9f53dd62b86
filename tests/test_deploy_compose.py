"""Checks of the Docker Compose deployment: docker-compose.yml, deploy/Dockerfile,
deploy/prometheus/*.yml and the Grafana provisioning files.

Needs PyYAML, jsonschema and check-jsonschema (only for the Compose Specification schema
it vendors; nothing is downloaded). promtool (Debian package `prometheus`) is used when it
is on PATH; the tests that need it are skipped otherwise.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
ALERT_RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
GRAFANA_DATASOURCE = REPO / "deploy" / "grafana" / "provisioning" / "datasources" / "clickhouse.yml"
GRAFANA_DASHBOARDS = REPO / "deploy" / "grafana" / "provisioning" / "dashboards" / "streamwatch.yml"
README = REPO / "README.md"

REQUIRED_SERVICES = {"kafka", "kafka-init", "clickhouse", "worker", "prometheus", "grafana"}
TOPIC_PARTITIONS = {
    "impressions": 6,
    "clicks": 6,
    "inference-logs": 6,
    "sensor-readings": 6,
    "alerts": 3,
    "dead-letter": 3,
    "late-events": 3,
}
REQUIRED_ALERTS = {
    "StreamwatchWatermarkStalled": "streamwatch_watermark_delay_seconds",
    "StreamwatchSinkFailing": "streamwatch_sink_failures_total",
    "StreamwatchDeadLetterRate": "streamwatch_events_rejected_total",
    "StreamwatchSinkBackpressure": "streamwatch_sink_buffered_rows",
    "StreamwatchWorkerDown": 'up{job="streamwatch"}',
}
SEVERITIES = {"info", "warning", "critical"}

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not on PATH (Debian package `prometheus` ships it)"
)


# --------------------------------------------------------------------------- helpers


def load_yaml(path: Path):
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def compose_schema_path() -> Path:
    """The Compose Specification schema vendored in the check-jsonschema package.

    Located without importing check_jsonschema: its package __init__ imports its CLI and
    so click, and check-jsonschema's click requirement can disagree with the one
    faust-streaming pins. Only the JSON file is needed.
    """
    relative = Path("builtin_schemas") / "vendor" / "compose-spec.json"
    spec = importlib.util.find_spec("check_jsonschema")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / relative
            if candidate.is_file():
                return candidate
    try:
        dist = importlib.metadata.distribution("check-jsonschema")
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        candidate = Path(str(dist.locate_file(Path("check_jsonschema") / relative)))
        if candidate.is_file():
            return candidate
    pytest.fail(
        "compose-spec.json not found: install the test dependency `check-jsonschema`, "
        "which vendors the Compose Specification schema"
    )


@pytest.fixture(scope="module")
def compose_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(compose_schema_path().read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@pytest.fixture(scope="module")
def compose() -> dict:
    assert COMPOSE_FILE.is_file(), f"{COMPOSE_FILE} is missing"
    doc = load_yaml(COMPOSE_FILE)
    assert isinstance(doc, dict), "docker-compose.yml is not a mapping"
    return doc


def schema_errors(validator, document) -> list[str]:
    return [
        f"{'/'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
        for err in validator.iter_errors(document)
    ]


def service_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def command_text(service: dict) -> str:
    parts = []
    for key in ("entrypoint", "command"):
        value = service.get(key)
        if isinstance(value, list):
            parts.extend(str(v) for v in value)
        elif value is not None:
            parts.append(str(value))
    return "\n".join(parts)


# Compose sub-commands whose positional arguments are service names, and how many of them
# (None: any number; 1: only the first, the rest is a command or a port).
_COMPOSE_SERVICE_ARGS = {
    "up": None,
    "start": None,
    "stop": None,
    "restart": None,
    "logs": None,
    "ps": None,
    "pull": None,
    "build": None,
    "create": None,
    "rm": None,
    "kill": None,
    "pause": None,
    "unpause": None,
    "top": None,
    "events": None,
    "images": None,
    "push": None,
    "exec": 1,
    "run": 1,
    "port": 1,
    "attach": 1,
}
# Options that take a value as the next word: before the sub-command (global options) and
# after it (the sub-commands' options; there `-f` is --follow/--force and takes none).
_GLOBAL_OPTS_WITH_VALUE = {
    "-f",
    "--file",
    "-p",
    "--project-name",
    "--profile",
    "--env-file",
    "--project-directory",
    "--ansi",
    "--progress",
    "--parallel",
}
_COMMAND_OPTS_WITH_VALUE = {
    "--scale",
    "--index",
    "-n",
    "--tail",
    "--since",
    "--until",
    "-t",
    "--timeout",
    "--wait-timeout",
    "--exit-code-from",
    "--attach",
    "--no-attach",
    "--pull",
    "-e",
    "--env",
    "-u",
    "--user",
    "-w",
    "--workdir",
    "--entrypoint",
    "--name",
    "-l",
    "--label",
    "-v",
    "--volume",
    "-p",
    "--publish",
    "--protocol",
    "--signal",
    "-s",
    "--format",
    "--filter",
    "--status",
}
_SERVICE_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9_.-]*$")


def services_in_compose_command(command: str) -> set[str]:
    """Service names named by one `docker compose ...` / `docker-compose ...` command line."""
    try:
        words = shlex.split(command, comments=True)
    except ValueError:
        words = command.split()
    if words[:2] == ["docker", "compose"]:
        words = words[2:]
    elif words[:1] == ["docker-compose"]:
        words = words[1:]
    else:
        return set()
    names: set[str] = set()
    subcommand = None
    positional: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word in {"&&", "||", ";", "|"}:
            break
        if word.startswith("-"):
            option, _, inline = word.partition("=")
            value = inline if inline else None
            with_value = _GLOBAL_OPTS_WITH_VALUE if subcommand is None else _COMMAND_OPTS_WITH_VALUE
            if option in with_value and not inline:
                value = words[i + 1] if i + 1 < len(words) else None
                i += 1
            if option == "--scale" and value and "=" in value:
                names.add(value.split("=", 1)[0])
        elif subcommand is None:
            subcommand = word
        else:
            positional.append(word)
        i += 1
    if subcommand in _COMPOSE_SERVICE_ARGS:
        limit = _COMPOSE_SERVICE_ARGS[subcommand]
        chosen = positional if limit is None else positional[:limit]
        names.update(w for w in chosen if _SERVICE_NAME.match(w))
    return names


def services_named_in_text(text: str) -> set[str]:
    """Service names a document mentions in its docker compose commands: inline code spans
    and fenced code lines that are compose commands, plus backticked names on a line that
    talks about compose services (e.g. "the `worker` service of docker compose")."""
    names: set[str] = set()
    compose_cmd = re.compile(r"(docker[ -]compose\b[^`\n]*)")
    in_fence = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            in_fence = not in_fence
            continue
        candidates = []
        if in_fence or stripped.startswith("#"):
            # Fenced code, or a comment line of a YAML/shell file: take the commands as they are.
            candidates.extend(compose_cmd.findall(stripped.lstrip("#$ ")))
        for span in re.findall(r"`([^`]+)`", line):
            candidates.extend(compose_cmd.findall(span))
        for candidate in candidates:
            names |= services_in_compose_command(candidate)
        lowered = line.lower()
        if not in_fence and "compose" in lowered and re.search(r"\bservices?\b", lowered):
            names.update(
                span
                for span in re.findall(r"`([^`\s]+)`", line)
                if re.fullmatch(r"[a-z][a-z0-9-]*", span)
            )
    return names


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    buffer = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if buffer and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        buffer += line
        keyword, _, args = buffer.strip().partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        buffer = ""
    if buffer.strip():
        keyword, _, args = buffer.strip().partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    return instructions


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (kw, _) in enumerate(instructions) if kw == "FROM"]
    assert starts, "Dockerfile has no FROM"
    return instructions[starts[-1] :]


def rule_problems(document) -> list[str]:
    """Structural problems of a Prometheus rules document (empty list: fine)."""
    problems: list[str] = []
    if not isinstance(document, dict) or not isinstance(document.get("groups"), list):
        return ["top level must be a mapping with a `groups` list"]
    for group in document["groups"]:
        if not isinstance(group, dict) or not group.get("name"):
            problems.append(f"group without a name: {group!r}")
            continue
        rules = group.get("rules")
        if not isinstance(rules, list) or not rules:
            problems.append(f"group {group['name']}: no rules")
            continue
        for rule in rules:
            name = rule.get("alert") or rule.get("record") or repr(rule)
            if not isinstance(rule.get("expr"), str) or not rule["expr"].strip():
                problems.append(f"{name}: no expr")
            if "alert" not in rule:
                continue
            severity = (rule.get("labels") or {}).get("severity")
            if severity not in SEVERITIES:
                problems.append(f"{name}: labels.severity is {severity!r}")
            if not (rule.get("annotations") or {}).get("summary"):
                problems.append(f"{name}: no annotations.summary")
    return problems


def alert_rules() -> dict[str, dict]:
    document = load_yaml(ALERT_RULES)
    return {
        rule["alert"]: rule
        for group in document["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def run_promtool(*args: str) -> subprocess.CompletedProcess:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=120, check=False
    )


# ------------------------------------------------------------ (1) Compose schema


def test_compose_file_matches_compose_specification(compose, compose_validator):
    errors = schema_errors(compose_validator, compose)
    assert not errors, "docker-compose.yml violates the Compose Specification:\n" + "\n".join(
        errors
    )


@pytest.mark.parametrize(
    "breakage",
    [
        "unknown service key",
        "ports not a list",
        "services not a mapping",
        "unknown top-level key",
        "bad healthcheck key",
        "depends_on unknown condition",
        "restart not a string",
    ],
)
def test_compose_validator_rejects_broken_documents(compose, compose_validator, breakage):
    """The same validator must reject broken variants of the real file: proves it is live."""
    broken = copy.deepcopy(compose)
    services = broken["services"]
    if breakage == "unknown service key":
        services["worker"]["imagee"] = "streamwatch:latest"
    elif breakage == "ports not a list":
        services["worker"]["ports"] = {"6066": 6066}
    elif breakage == "services not a mapping":
        broken["services"] = ["kafka", "worker"]
    elif breakage == "unknown top-level key":
        broken["service"] = {}
    elif breakage == "bad healthcheck key":
        services["clickhouse"]["healthcheck"]["command"] = "true"
    elif breakage == "depends_on unknown condition":
        services["worker"]["depends_on"] = {"kafka-init": {"condition": "service_finished"}}
    elif breakage == "restart not a string":
        services["kafka"]["restart"] = ["always"]
    assert schema_errors(compose_validator, broken), f"validator accepted: {breakage}"


def test_compose_validator_rejects_obviously_invalid_dict(compose_validator):
    assert schema_errors(compose_validator, {"services": {"x": {"image": 42, "bogus": True}}})
    assert not schema_errors(compose_validator, {"services": {"x": {"image": "busybox"}}})


# ------------------------------------------------------- (2) services and wiring


def test_required_services_present(compose):
    missing = REQUIRED_SERVICES - set(compose.get("services") or {})
    assert not missing, f"docker-compose.yml lacks services: {sorted(missing)}"


def test_worker_configuration(compose):
    worker = compose["services"]["worker"]
    env = service_env(worker)
    assert env.get("STREAMWATCH_KAFKA") == "kafka:9092"
    clickhouse_url = env.get("STREAMWATCH_CLICKHOUSE", "")
    assert re.fullmatch(r"https?://[^@/]+@clickhouse:8123/streamwatch", clickhouse_url), (
        clickhouse_url
    )
    assert env.get("STREAMWATCH_WEB_PORT") == "6066"

    build = worker.get("build")
    assert isinstance(build, dict), "worker must be built from the repository"
    assert build.get("context") in (".", "./")
    assert (REPO / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE.resolve()

    command = worker.get("command")
    command = shlex.split(command) if isinstance(command, str) else command
    assert command in (["run"], ["streamwatch", "run"]), command

    depends = worker.get("depends_on")
    assert isinstance(depends, dict), "worker depends_on needs conditions"
    assert depends["kafka-init"]["condition"] == "service_completed_successfully"
    assert depends["clickhouse"]["condition"] == "service_healthy"

    # Scalable with `docker compose up --scale worker=2`.
    assert "container_name" not in worker, "container_name prevents --scale"
    assert "replicas" not in (worker.get("deploy") or {}), "use --scale, not deploy.replicas"
    published = [str(p).rsplit(":", 1) for p in worker.get("ports") or []]
    assert any(target.split("/")[0] == "6066" for *_, target in published), "6066 not published"
    for parts in published:
        if len(parts) == 2 and re.fullmatch(r"\d+", parts[0]):
            pytest.fail(f"worker publishes fixed host port {parts[0]}: a 2nd replica clashes")


def test_clickhouse_service(compose):
    clickhouse = compose["services"]["clickhouse"]
    assert str(clickhouse["image"]).startswith("clickhouse/clickhouse-server:25.")
    env = service_env(clickhouse)
    assert env.get("CLICKHOUSE_USER") == "streamwatch"
    assert env.get("CLICKHOUSE_PASSWORD") == "streamwatch"
    assert clickhouse.get("healthcheck", {}).get("test"), "clickhouse needs a healthcheck"
    targets = {str(v).split(":")[1] for v in clickhouse.get("volumes", []) if ":" in str(v)}
    assert "/docker-entrypoint-initdb.d" in targets
    assert any(str(v).startswith("./deploy/clickhouse") for v in clickhouse.get("volumes", []))


def test_kafka_services(compose):
    kafka = compose["services"]["kafka"]
    init = compose["services"]["kafka-init"]
    assert str(kafka["image"]).startswith("apache/kafka:")
    assert init["image"] == kafka["image"], "kafka-init must use the broker image (kafka-topics.sh)"
    env = service_env(kafka)
    assert "kafka:9092" in env.get("KAFKA_ADVERTISED_LISTENERS", "")
    assert "localhost:29092" in env.get("KAFKA_ADVERTISED_LISTENERS", "")
    assert "broker" in env.get("KAFKA_PROCESS_ROLES", "") and "controller" in env.get(
        "KAFKA_PROCESS_ROLES", ""
    ), "single-node KRaft: broker and controller"

    script = command_text(init)
    assert "kafka-topics.sh" in script and "--create" in script
    assert "cleanup.policy=compact" in script and "streamwatch-checkpoints" in script

    def names(topic: str, text: str) -> bool:
        return re.search(rf"(?<![\w-]){re.escape(topic)}(?![\w-])", text) is not None

    for topic in TOPIC_PARTITIONS:
        assert names(topic, script), f"topic {topic} not created"
    # The loops group the topics by partition count: each group's line names its count.
    for line in script.splitlines():
        named = [t for t in TOPIC_PARTITIONS if names(t, line)]
        if "create" in line and named and "describe" not in line:
            counts = {TOPIC_PARTITIONS[t] for t in named}
            assert len(counts) == 1 and re.search(rf"\b{counts.pop()}\b", line), line


def test_observability_services(compose):
    services = compose["services"]
    prometheus_mounts = [str(v) for v in services["prometheus"].get("volumes", [])]
    assert any(v.startswith("./deploy/prometheus/prometheus.yml:") for v in prometheus_mounts)
    assert any(v.startswith("./deploy/prometheus/alerts.yml:") for v in prometheus_mounts)
    grafana = services["grafana"]
    assert "grafana-clickhouse-datasource" in service_env(grafana).get("GF_INSTALL_PLUGINS", "")
    grafana_targets = {str(v).split(":")[1] for v in grafana.get("volumes", [])}
    assert {"/etc/grafana/provisioning", "/var/lib/grafana/dashboards"} <= grafana_targets


def test_bind_mounted_files_exist(compose):
    """Every bind-mounted *file* exists (a missing one would be created as a directory)."""
    for name, service in compose["services"].items():
        for volume in service.get("volumes") or []:
            spec = volume if isinstance(volume, str) else volume.get("source", "")
            source = spec.split(":")[0]
            if source.startswith(".") and Path(source).suffix:
                assert (REPO / source).is_file(), f"{name}: {source} does not exist"


def test_header_commands_name_existing_services(compose):
    names = services_named_in_text(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert "worker" in names, "the header should document `docker compose up --scale worker=2`"
    assert names <= set(compose["services"]), names - set(compose["services"])


def test_service_name_parser():
    text = """
## Running with Docker Compose
Run `docker compose up -d --scale worker=3` then `docker compose logs -f --tail 50 kafka`.
The `clickhouse` service of docker compose stores the tables.
```bash
docker compose exec -e X=1 grafana grafana-cli plugins ls
docker compose port --index 2 worker 6066
docker-compose restart prometheus && echo done
```
Not a service: `alerts` topic, `STREAMWATCH_KAFKA`.
"""
    expected = {"worker", "kafka", "clickhouse", "grafana", "prometheus"}
    assert services_named_in_text(text) == expected
    assert services_in_compose_command("docker compose up -d") == set()
    assert services_in_compose_command("kubectl logs worker") == set()


def test_readme_compose_services_exist(compose):
    if not README.is_file():
        pytest.skip("README.md does not exist yet")
    names = services_named_in_text(README.read_text(encoding="utf-8"))
    if not names:
        pytest.skip("README.md names no docker compose service")
    missing = names - set(compose["services"])
    assert not missing, f"README.md names compose services that do not exist: {sorted(missing)}"


# ------------------------------------------------------------ (3) Prometheus


def test_alert_rules_structure():
    document = load_yaml(ALERT_RULES)
    assert rule_problems(document) == []
    rules = alert_rules()
    for name, metric in REQUIRED_ALERTS.items():
        assert name in rules, f"alert {name} missing"
        assert metric in rules[name]["expr"], f"{name} should use {metric}"


def test_rule_problems_detects_broken_rules():
    good = {
        "alert": "A",
        "expr": "up == 0",
        "labels": {"severity": "critical"},
        "annotations": {"summary": "s"},
    }
    assert rule_problems({"groups": [{"name": "g", "rules": [good]}]}) == []
    for key, value in [
        ("expr", ""),
        ("labels", {}),
        ("labels", {"severity": "page"}),
        ("annotations", {"description": "d"}),
    ]:
        assert rule_problems({"groups": [{"name": "g", "rules": [{**good, key: value}]}]})
    assert rule_problems({"rules": [good]})


def test_alert_thresholds():
    rules = alert_rules()
    assert re.search(r">\s*300\b", rules["StreamwatchWatermarkStalled"]["expr"])
    assert rules["StreamwatchWatermarkStalled"]["for"] == "5m"
    assert re.search(
        r"rate\(streamwatch_sink_failures_total\[\w+\]\)\s*>\s*0\b",
        rules["StreamwatchSinkFailing"]["expr"],
    )
    assert rules["StreamwatchSinkFailing"]["for"] == "2m"
    assert re.search(
        r"sum\b.*rate\(streamwatch_events_rejected_total\[\w+\]\)\)\s*>\s*1\b",
        rules["StreamwatchDeadLetterRate"]["expr"],
    )
    assert rules["StreamwatchDeadLetterRate"]["for"] == "5m"
    assert re.search(r">\s*100000\b", rules["StreamwatchSinkBackpressure"]["expr"])
    assert rules["StreamwatchSinkBackpressure"]["for"] == "5m"
    assert re.search(r'up\{job="streamwatch"\}\s*==\s*0', rules["StreamwatchWorkerDown"]["expr"])


def test_prometheus_config():
    config = load_yaml(PROMETHEUS_CONFIG)
    assert "alerts.yml" in config.get("rule_files", [])
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs["streamwatch"]
    assert job.get("scrape_interval") == "5s"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job.get("static_configs", []) for t in sc.get("targets", [])]
    targets += [
        f"{name}:{sd.get('port')}"
        for sd in job.get("dns_sd_configs", [])
        for name in sd.get("names", [])
    ]
    assert "worker:6066" in targets, targets


@needs_promtool
def test_promtool_check_rules():
    result = run_promtool("check", "rules", str(ALERT_RULES))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_rejects_broken_rules(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: rate(x[5m] > 0\n", encoding="utf-8"
    )
    assert run_promtool("check", "rules", str(broken)).returncode != 0


@needs_promtool
def test_promtool_check_config():
    result = run_promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_alert_behaviour(tmp_path):
    """Unit-test the alerts on synthetic series: each fires after its `for`, not before."""

    def series(metric: str, values: str, **labels: str) -> dict:
        labels = {**labels, "instance": "w1:6066", "job": "streamwatch"}
        rendered = ", ".join(f'{k}="{v}"' for k, v in labels.items())
        return {"series": f"{metric}{{{rendered}}}", "values": values}

    tests = {
        "rule_files": [str(ALERT_RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    series("up", "0x15"),
                    series("streamwatch_watermark_delay_seconds", "400x15", monitor="ctr"),
                    series("streamwatch_watermark_delay_seconds", "30x15", monitor="drift"),
                    series("streamwatch_sink_failures_total", "0+120x15", sink="ctr_windows"),
                    series(
                        "streamwatch_events_rejected_total",
                        "0+600x15",
                        topic="clicks",
                        reason="json",
                    ),
                    series("streamwatch_sink_buffered_rows", "200000x15", sink="alerts"),
                    series("streamwatch_sink_buffered_rows", "500x15", sink="ctr_windows"),
                ],
                "alert_rule_test": _alert_expectations(),
            }
        ],
    }
    test_file = tmp_path / "alerts_test.yml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False), encoding="utf-8")
    result = run_promtool("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr


def _alert_expectations() -> list[dict]:
    rules = alert_rules()
    base = {"instance": "w1:6066", "job": "streamwatch"}
    firing = {
        "StreamwatchWorkerDown": {},
        "StreamwatchWatermarkStalled": {"monitor": "ctr"},
        "StreamwatchSinkFailing": {"sink": "ctr_windows"},
        "StreamwatchSinkBackpressure": {"sink": "alerts"},
    }
    expectations = []
    for name, extra in firing.items():
        # Pending, not yet firing, one evaluation before its `for` has elapsed.
        before = f"{_minutes(rules[name]['for']) - 1}m"
        expectations.append({"eval_time": before, "alertname": name, "exp_alerts": []})
        expectations.append(
            {
                "eval_time": "12m",
                "alertname": name,
                "exp_alerts": [
                    {
                        "exp_labels": {
                            **base,
                            **extra,
                            "severity": rules[name]["labels"]["severity"],
                        },
                        "exp_annotations": _rendered_annotations(rules[name], name),
                    }
                ],
            }
        )
    expectations.append(
        {"eval_time": "4m", "alertname": "StreamwatchDeadLetterRate", "exp_alerts": []}
    )
    expectations.append(
        {
            "eval_time": "12m",
            "alertname": "StreamwatchDeadLetterRate",
            "exp_alerts": [
                {
                    "exp_labels": {
                        "severity": rules["StreamwatchDeadLetterRate"]["labels"]["severity"]
                    },
                    "exp_annotations": _rendered_annotations(
                        rules["StreamwatchDeadLetterRate"], "StreamwatchDeadLetterRate"
                    ),
                }
            ],
        }
    )
    return expectations


def _minutes(duration: str) -> int:
    match = re.fullmatch(r"(\d+)m", duration)
    assert match, f"this test expects `for` in whole minutes, got {duration!r}"
    return int(match.group(1))


_EXPECTED_VALUES = {
    "StreamwatchWorkerDown": ("0", {"instance": "w1:6066"}),
    "StreamwatchWatermarkStalled": ("400", {"monitor": "ctr", "instance": "w1:6066"}),
    "StreamwatchSinkFailing": ("2", {"sink": "ctr_windows", "instance": "w1:6066"}),
    "StreamwatchSinkBackpressure": ("200000", {"sink": "alerts", "instance": "w1:6066"}),
    "StreamwatchDeadLetterRate": ("10", {}),
}


def _rendered_annotations(rule: dict, name: str) -> dict:
    """The annotations as Prometheus renders them for the synthetic series above.

    Only the few template forms the rules file uses are supported; an annotation using
    another form makes this test fail, asking for it to be extended.
    """
    value, labels = _EXPECTED_VALUES[name]
    number = float(value)

    def humanize(v: float) -> str:
        assert v == 0 or abs(v) >= 1, "sub-unit values render with SI prefixes: not supported"
        for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(v) >= limit:
                return f"{v / limit:.4g}{suffix}"
        return f"{v:.4g}"

    def humanize_duration(v: float) -> str:
        minutes, seconds = divmod(int(v), 60)
        return f"{minutes}m {seconds}s" if minutes else f"{seconds}s"

    def render(template: str) -> str:
        def substitute(match: re.Match) -> str:
            expr = match.group(1).strip()
            if expr == "$value":
                return value
            if expr == "$value | humanize":
                return humanize(number)
            if expr == "$value | humanizeDuration":
                return humanize_duration(number)
            label = re.fullmatch(r"\$labels\.(\w+)", expr)
            if label:
                return labels.get(label.group(1), "")
            pytest.fail(f"{name}: template {{{{ {expr} }}}} not supported by this test")

        return re.sub(r"\{\{(.*?)\}\}", substitute, template)

    return {key: render(text) for key, text in (rule.get("annotations") or {}).items()}


# --------------------------------------------------------------- (4) Dockerfile


def test_dockerfile():
    assert DOCKERFILE.is_file(), f"{DOCKERFILE} is missing"
    instructions = dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))
    assert all(
        args.split()[0].startswith("python:3.11-slim") for kw, args in instructions if kw == "FROM"
    )
    stage = final_stage(instructions)
    last = {kw: args for kw, args in stage}

    assert json.loads(last["ENTRYPOINT"]) == ["streamwatch"]
    assert json.loads(last.get("CMD", "[]")) == ["run"]
    assert "6066" in last.get("EXPOSE", "").split()
    user = last.get("USER", "root").split(":")[0]
    assert user not in {"root", "0"}, "the worker must not run as root"

    healthcheck = last.get("HEALTHCHECK", "")
    assert "/health" in healthcheck and "urllib" in healthcheck
    assert "curl" not in healthcheck and "wget" not in healthcheck

    pip_installs = [args for kw, args in instructions if kw == "RUN" and "pip install" in args]
    assert any(re.search(r"pip install (--\S+ )*\.(\s|$|&)", args) for args in pip_installs), (
        pip_installs
    )
    assert not any("embedded" in args for args in pip_installs), "no embedded extra in the image"


def _env(args: str) -> dict[str, str]:
    """An ENV instruction's KEY=value pairs."""
    return dict(pair.split("=", 1) for pair in args.split() if "=" in pair)


def test_dockerfile_numba_cache_is_compiled_at_build_and_writable_by_the_worker():
    """numba uses a cache directory only if it can write to it (`ensure_cache_path`), so
    the kernels compiled at build are used at run only from a NUMBA_CACHE_DIR the
    worker's user owns: the same directory in both stages, compiled into at build and
    copied to the final stage owned by that user."""
    instructions = dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))
    stage = final_stage(instructions)
    build = instructions[: len(instructions) - len(stage)]
    cache = {_env(a).get("NUMBA_CACHE_DIR") for kw, a in build if kw == "ENV"} - {None}
    assert len(cache) == 1, cache
    (where,) = cache
    assert any(kw == "ENV" and _env(a).get("NUMBA_CACHE_DIR") == where for kw, a in stage)
    compiled = [a for kw, a in build if kw == "RUN" and "import operators." in a]
    assert compiled and all(m in compiled[-1] for m in ("operators.sensor", "operators.cluster"))
    user = dict(stage)["USER"].split(":")[0]
    assert any(
        kw == "COPY" and f"--chown={user}:" in a and a.split()[-2:] == [where, where]
        for kw, a in stage
    ), "the final stage must copy the compiled cache, owned by the worker's user"


def test_dockerfile_parser_joins_continuations():
    parsed = dockerfile_instructions(
        'FROM a AS b\n# c\nRUN x \\\n    && y\nFROM python:3.11-slim\nENTRYPOINT ["streamwatch"]\n'
    )
    assert parsed == [
        ("FROM", "a AS b"),
        ("RUN", "x  && y"),
        ("FROM", "python:3.11-slim"),
        ("ENTRYPOINT", '["streamwatch"]'),
    ]
    assert final_stage(parsed)[0] == ("FROM", "python:3.11-slim")


# ------------------------------------------------------------------ Grafana


def test_grafana_clickhouse_datasource():
    document = load_yaml(GRAFANA_DATASOURCE)
    assert document.get("apiVersion") == 1
    (source,) = [d for d in document["datasources"] if d.get("uid") == "streamwatch-clickhouse"]
    assert source["type"] == "grafana-clickhouse-datasource"
    data = source["jsonData"]
    assert (data["host"], int(data["port"]), data["protocol"]) == ("clickhouse", 8123, "http")
    assert data["username"] == "streamwatch" and data["defaultDatabase"] == "streamwatch"
    compose_env = service_env(load_yaml(COMPOSE_FILE)["services"]["clickhouse"])
    assert source["secureJsonData"]["password"] == compose_env["CLICKHOUSE_PASSWORD"]


def test_grafana_dashboard_provider():
    document = load_yaml(GRAFANA_DASHBOARDS)
    assert document.get("apiVersion") == 1
    paths = [p.get("options", {}).get("path") for p in document["providers"]]
    assert "/var/lib/grafana/dashboards" in paths


# ------------------------------------------------------- (6) safe defaults
# A fresh `docker compose up` must not open a door: published ports answer on
# this host only, Prometheus has no lifecycle (quit/reload) or admin API, the
# ClickHouse user cannot manage access, and Grafana's admin password is never a
# default. Each check is a function returning the problems it finds, run on the
# real file and on a copy broken on purpose (so the check itself is live).

LOOPBACK = ("127.0.0.1", "::1", "[::1]", "localhost")
DEPLOY_CLICKHOUSE = REPO / "deploy" / "clickhouse"


def _split_port(spec: str) -> tuple[str | None, str]:
    """A short-syntax port `[IP:][HOST:]CONTAINER[/proto]` as (host IP or None, rest);
    an IPv6 address is bracketed: `[::1]:8123:8123`."""
    # `${VAR:-default}` as compose would fill it with VAR unset
    spec = re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", spec).split("/")[0]
    if spec.startswith("["):
        ip, _, rest = spec[1:].partition("]:")
        return ip, rest
    parts = spec.split(":")
    if len(parts) == 3:
        return parts[0], ":".join(parts[1:])
    return None, spec


def exposed_ports(compose: dict) -> list[str]:
    """Published ports that bind an address other than loopback (none given: all)."""
    problems = []
    for name, service in compose["services"].items():
        for port in service.get("ports") or []:
            if isinstance(port, dict):  # long syntax
                ip = port.get("host_ip")
                if port.get("published") is None:
                    continue  # not published on the host
            else:
                ip, rest = _split_port(str(port))
                if ":" not in rest and ip is None:
                    # "6066": a random host port on every interface
                    problems.append(f"{name}: {port} (random host port, all interfaces)")
                    continue
            if ip not in LOOPBACK:
                problems.append(f"{name}: {port} binds {ip or 'every interface'}")
    return problems


def unsafe_prometheus_flags(compose: dict) -> list[str]:
    text = command_text(compose["services"]["prometheus"])
    return [flag for flag in ("--web.enable-lifecycle", "--web.enable-admin-api") if flag in text]


def clickhouse_access_management(compose: dict) -> list[str]:
    """Where a ClickHouse user gets access management (users, grants, quotas)."""
    problems = []
    env = service_env(compose["services"]["clickhouse"])
    if env.get("CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT", "0").strip() not in ("", "0"):
        problems.append("CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT is set in docker-compose.yml")
    for path in sorted(DEPLOY_CLICKHOUSE.rglob("*")):
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            if re.search(r"access_management>\s*1|GRANT\s+ALL|CREATE\s+USER", text, re.I):
                problems.append(f"{path.relative_to(REPO)} grants access management")
    return problems


def grafana_password_problems(compose: dict) -> list[str]:
    env = service_env(compose["services"]["grafana"])
    password = env.get("GF_SECURITY_ADMIN_PASSWORD")
    if password is None:
        return ["GF_SECURITY_ADMIN_PASSWORD unset: Grafana falls back to admin/admin"]
    # `${VAR:?message}`: compose refuses to start without VAR (no default to fall back on)
    if not re.fullmatch(r"\$\{[A-Z_][A-Z0-9_]*:?\?[^}]*\}", password):
        return [f"GF_SECURITY_ADMIN_PASSWORD is {password!r}, not ${{VAR:?...}} from the env"]
    return []


SAFETY_CHECKS = [
    exposed_ports,
    unsafe_prometheus_flags,
    clickhouse_access_management,
    grafana_password_problems,
]


@pytest.mark.parametrize("check", SAFETY_CHECKS, ids=lambda c: c.__name__)
def test_safe_defaults(compose, check):
    assert check(compose) == []


def _break(compose: dict, where: str, value) -> dict:
    broken = copy.deepcopy(compose)
    service, key = where.split(".", 1)
    node = broken["services"][service]
    if key == "environment":
        node["environment"] = {**service_env(node), **value}
    else:
        node[key] = value
    return broken


@pytest.mark.parametrize(
    ("check", "where", "value"),
    [
        (exposed_ports, "clickhouse.ports", ["8123:8123"]),
        (exposed_ports, "kafka.ports", ["0.0.0.0:29092:29092"]),
        (exposed_ports, "worker.ports", ["6066"]),
        (exposed_ports, "grafana.ports", [{"target": 3000, "published": 3000}]),
        (exposed_ports, "prometheus.ports", ["[::]:9090:9090"]),
        (unsafe_prometheus_flags, "prometheus.command", ["--web.enable-lifecycle"]),
        (
            clickhouse_access_management,
            "clickhouse.environment",
            {"CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT": "1"},
        ),
        (grafana_password_problems, "grafana.environment", {"GF_SECURITY_ADMIN_PASSWORD": "admin"}),
        (
            grafana_password_problems,
            "grafana.environment",
            {"GF_SECURITY_ADMIN_PASSWORD": "${GRAFANA_ADMIN_PASSWORD:-admin}"},
        ),
    ],
    ids=lambda v: v.__name__ if callable(v) else None,
)
def test_safety_checks_catch_unsafe_settings(compose, check, where, value):
    assert check(_break(compose, where, value)), f"{check.__name__} missed {where} = {value}"


def test_loopback_ports_are_still_published(compose):
    """Bound to loopback, but published: the header's host addresses work."""
    published = {
        name: [str(p) for p in service.get("ports") or []]
        for name, service in compose["services"].items()
    }
    assert "127.0.0.1:29092:29092" in published["kafka"]
    assert "127.0.0.1:8123:8123" in published["clickhouse"]
    assert "127.0.0.1:9090:9090" in published["prometheus"]
    assert "127.0.0.1:3000:3000" in published["grafana"]
    assert any(p.startswith("127.0.0.1:") and p.endswith(":6066") for p in published["worker"])
