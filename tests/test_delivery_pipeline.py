"""From events to people: the CTR traffic of tests/test_e2e_ctr.py (an engineered drop
of campaign "big" in window 8, recovered in window 9) through a real worker, whose
alerts reach a real Alertmanager (and through it a webhook) and a JSON archive."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.embedded import EmbeddedBroker
from tests.delivery_services import Alertmanager, DeliveryDeployment, Webhooks
from tests.harness import WorkerProcess, consume_all, produce
from tests.test_e2e_ctr import CtrTraffic

pytestmark = pytest.mark.integration

TOML = """
[delivery]
alertmanager_repost_s = 2
alertmanager_ttl_s = 30

[[delivery.receivers]]
name = "archive"
type = "generic"
url = "${ARCHIVE_URL}"

[[delivery.routes]]
receivers = ["archive"]
"""


def test_pipeline_alerts_reach_alertmanager_and_webhook(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    hooks = Webhooks()
    am = Alertmanager(tmp_path, hooks.url("/am"))
    worker: WorkerProcess | None = None
    try:
        d = DeliveryDeployment(
            tmp_path,
            broker.bootstrap,
            "dlv-e2e",
            delivery_toml=TOML,
            env={"STREAMWATCH_ALERTMANAGER_URL": am.url(), "ARCHIVE_URL": hooks.url("/archive")},
        )
        traffic = CtrTraffic(d, malformed=False)
        worker = WorkerProcess(d)
        worker.start()
        produce(broker.bootstrap, traffic.messages)

        def resolved_at_am() -> list[Any]:
            return [
                a
                for b in hooks.bodies("/am")
                for a in b["alerts"]
                if a["status"] == "resolved" and a["labels"]["entity"] == "big"
            ]

        deadline = time.monotonic() + 180
        while not resolved_at_am() and time.monotonic() < deadline:
            worker._check_alive()
            time.sleep(0.5)
        assert resolved_at_am(), worker.log()
        on_topic = [
            orjson.loads(m.value()) for m in consume_all(broker.bootstrap, d.topics["alerts"])
        ]
        assert [(a["rule"], a["entity"], a["status"]) for a in on_topic] == [
            ("ctr_drop", "big", "firing"),
            ("ctr_drop", "big", "resolved"),
        ]
        # the archive has exactly the topic's alerts, as published
        archived = hooks.bodies("/archive")
        assert [{k: v for k, v in a.items() if k != "links"} for a in archived] == on_topic
        # Alertmanager saw it fire, then resolve, with the pipeline's figures
        fired = [a for b in hooks.bodies("/am") for a in b["alerts"] if a["status"] == "firing"]
        assert fired and fired[0]["labels"] == {
            "alertname": "ctr_drop",
            "kind": "ctr",
            "severity": "critical",
            "entity": "big",
            "source": "streamwatch",
        }
        assert fired[0]["annotations"]["alert_id"] == on_topic[0]["alert_id"]
        assert "dropped 90%" in fired[0]["annotations"]["message"]
        assert resolved_at_am()[0]["annotations"]["alert_id"] == on_topic[1]["alert_id"]
        assert worker.stop() == 0
        worker = None
    finally:
        if worker is not None:
            worker.kill()
        am.close()
        hooks.close()
