"""Delivery's deployment files: the Alertmanager configuration passes Alertmanager's own
checker (amtool, Debian's prometheus-alertmanager), compose runs it on loopback and points
the worker at it, and the example configuration's seed-004 levels parse and route."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from streams.config import load_settings
from streams.connectors import kafka
from streams.connectors.embedded import EmbeddedBroker
from streams.delivery import router
from streams.delivery.journal import Journal
from tests.delivery_services import alert_event

REPO = Path(__file__).resolve().parents[1]


def test_alertmanager_config_passes_amtool(tmp_path: Path) -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.fail("amtool not found: install the Debian package prometheus-alertmanager")
    path = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
    done = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    # and amtool is not lenient: a route to an undefined receiver is refused
    broken = path.read_text().replace("receiver: data-scientists", "receiver: nobody", 1)
    bad = tmp_path / "broken.yml"
    bad.write_text(broken)
    refused = subprocess.run([amtool, "check-config", str(bad)], capture_output=True)
    assert refused.returncode != 0


def test_compose_runs_alertmanager_on_loopback_for_the_worker() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    am = compose["services"]["alertmanager"]
    assert am["ports"] == ["127.0.0.1:9093:9093"]
    assert (
        "./deploy/alertmanager/alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro"
        in (am["volumes"])
    )
    env = compose["services"]["worker"]["environment"]
    assert env["STREAMWATCH_ALERTMANAGER_URL"] == "http://alertmanager:9093"
    settings = load_settings(env={"STREAMWATCH_ALERTMANAGER_URL": "http://alertmanager:9093"})
    assert settings.delivery.enabled


def test_k8s_configmap_sets_alertmanager() -> None:
    docs = list(yaml.safe_load_all((REPO / "deploy" / "k8s" / "configmap.yaml").read_text()))
    toml = tomllib.loads(docs[0]["data"]["streamwatch.toml"])
    assert toml["delivery"]["alertmanager_url"].startswith("http://alertmanager.")


def test_example_toml_seed_004_levels(tmp_path: Path) -> None:
    text = (REPO / "deploy" / "streamwatch.example.toml").read_text()
    start = text.index("# [[delivery.receivers]]")
    block = text[start:]
    uncommented = re.sub(r"^# ?", "", block, flags=re.M)
    assert "${SMTP_PASSWORD}" in uncommented  # secrets only by reference
    path = tmp_path / "example.toml"
    path.write_text(text[:start] + uncommented)
    routes = load_settings(path, env={}).delivery.routes
    levels = {
        s: router.receivers(routes, alert_event(1, "x", severity=s))
        for s in ("critical", "warning", "info")
    }
    assert levels == {
        "critical": ["model-owner", "ops"],
        "warning": ["data-scientists"],
        "info": ["log"],
    }


@pytest.mark.integration
def test_delivery_log_must_cover_every_alerts_partition(broker: EmbeddedBroker) -> None:
    """A job goes to its alert's partition number: a log with fewer partitions is grown
    (Apache Kafka) or refused with what to do (Tansu cannot add partitions)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    settings = load_settings(
        env={"STREAMWATCH_KAFKA": broker.bootstrap},
        overrides={"kafka.group_id": "dlv-narrow", "topics.alerts": "dlv-narrow.alerts"},
    )
    kafka.ensure_topics(settings)
    journal = Journal(settings)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for future in admin.create_topics([NewTopic(journal.topic, 2, 1)]).values():
        future.result()
    try:
        journal.ensure_topic()
    except RuntimeError as exc:  # Tansu: no CreatePartitions
        assert "has 2 partitions and the alerts topic 4" in str(exc)
        assert "delivery.topic" in str(exc)
    else:  # a broker that adds partitions
        parts = admin.list_topics(journal.topic, timeout=10).topics[journal.topic].partitions
        assert len(parts) == 4
