"""From events to people: the CTR traffic of tests/test_e2e_ctr.py (an engineered drop
of campaign "big" in window 8, recovered in window 9) through a real worker, whose
alerts reach a real Alertmanager (and through it a webhook) and a JSON archive."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.connectors.embedded import EmbeddedBroker
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

        def at_am(status: str) -> list[Any]:
            return [
                a
                for b in hooks.bodies("/am")
                for a in b["alerts"]
                if a["status"] == status
                and a["labels"]["entity"] == "big"
                and a["labels"]["alertname"] == "ctr_drop"
            ]

        deadline = time.monotonic() + 180
        while not at_am("resolved") and time.monotonic() < deadline:
            worker._check_alive()
            time.sleep(0.5)
        assert at_am("resolved"), worker.log()
        on_topic = [
            orjson.loads(m.value())
            # the worker still runs: quiet for the whole 3 s, as the archive is compared
            for m in consume_all(broker.bootstrap, d.topics["alerts"], settled=False)
        ]
        drop = [a for a in on_topic if (a["rule"], a["entity"]) == ("ctr_drop", "big")]
        assert [a["status"] for a in drop] == ["firing", "resolved"]
        # the archive gets exactly the topic's alerts, as published (every rule that fired)
        deadline = time.monotonic() + 60
        while len(hooks.bodies("/archive")) < len(on_topic) and time.monotonic() < deadline:
            time.sleep(0.5)
        archived = [{k: v for k, v in a.items() if k != "links"} for a in hooks.bodies("/archive")]
        assert sorted(archived, key=lambda a: a["alert_id"]) == sorted(
            on_topic, key=lambda a: a["alert_id"]
        )
        # Alertmanager saw it fire, then resolve, with the pipeline's figures
        fired = at_am("firing")
        assert fired and fired[0]["labels"] == {
            "alertname": "ctr_drop",
            "kind": "ctr",
            "severity": "critical",
            "entity": "big",
            "source": "streamwatch",
        }
        assert fired[0]["annotations"]["alert_id"] == drop[0]["alert_id"]
        assert "dropped 90%" in fired[0]["annotations"]["message"]
        assert at_am("resolved")[0]["annotations"]["alert_id"] == drop[1]["alert_id"]
        assert worker.stop() == 0
        worker = None
    finally:
        if worker is not None:
            worker.kill()
        am.close()
        hooks.close()
