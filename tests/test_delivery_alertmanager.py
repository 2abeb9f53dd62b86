"""Alerts reach a real Alertmanager (Debian's prometheus-alertmanager 0.25).

A worker (its own process, on the suite's Tansu broker) is configured with
the Alertmanager's URL; alert events are published on its alerts topic. The
Alertmanager routes everything, grouped by alertname, to a webhook served
here. Asserted: the two firing alerts of one rule arrive in ONE notification
(grouping) with our labels and annotations; Alertmanager's view has endsAt
in the future, re-posts extend it, a worker restart keeps the fingerprints
(no second copy of an alert); the resolutions arrive as a resolved group.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from streams.connectors.embedded import EmbeddedBroker
from tests.delivery_services import (
    Alertmanager,
    DeliveryDeployment,
    Webhooks,
    alert_event,
    publish,
)
from tests.harness import WorkerProcess

pytestmark = pytest.mark.integration


def wait(check: Any, timeout: float, what: str, worker: WorkerProcess | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker is not None:
            worker._check_alive()
        found = check()
        if found:
            return found
        time.sleep(0.3)
    log = worker.log() if worker is not None else ""
    raise AssertionError(f"timed out waiting for {what}\n{log}")


def test_alertmanager_grouping_repost_restart_and_resolution(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    hooks = Webhooks()
    am = Alertmanager(tmp_path, hooks.url("/am"))
    started: list[WorkerProcess] = []
    try:
        d = DeliveryDeployment(
            tmp_path,
            broker.bootstrap,
            "dlv-am",
            delivery_toml=(
                "[delivery]\n"
                "alertmanager_repost_s = 2\n"
                "alertmanager_ttl_s = 30\n"
                'dashboard_url = "http://dash.example/"\n'
            ),
            env={"STREAMWATCH_ALERTMANAGER_URL": am.url()},
        )
        worker = WorkerProcess(d)
        started.append(worker)
        worker.start()
        firing = [alert_event(1, "cmp-a"), alert_event(1, "cmp-b")]
        publish(d, firing)

        def one_group() -> list[Any]:
            return [
                b for b in hooks.bodies("/am") if b["status"] == "firing" and len(b["alerts"]) == 2
            ]

        # grouping: both alerts of the rule in one notification, grouped by alertname
        group = wait(one_group, 60, "one notification with both firing alerts", worker)[0]
        assert all(b["groupLabels"] == {"alertname": "ctr_floor"} for b in hooks.bodies("/am"))
        assert sorted(a["labels"]["entity"] for a in group["alerts"]) == ["cmp-a", "cmp-b"]
        got = next(a for a in group["alerts"] if a["labels"]["entity"] == "cmp-a")
        assert got["labels"] == {
            "alertname": "ctr_floor",
            "kind": "ctr",
            "severity": "critical",
            "entity": "cmp-a",
            "campaign_id": "cmp-a",
            "source": "streamwatch",
        }
        ann = got["annotations"]
        assert ann["message"] == firing[0]["message"]
        assert ann["value"] == "0.0009" and ann["threshold"] == "0.001"
        assert (
            ann["alert_id"] == firing[0]["alert_id"] and ann["dashboard"] == "http://dash.example/"
        )
        assert "/" in ann["window"] and got["generatorURL"] == "http://dash.example/"
        assert got["status"] == "firing"

        # Alertmanager's own view: endsAt ahead (the TTL), extended by the re-posts
        def active() -> list[dict[str, Any]]:
            return [a for a in am.alerts() if a["status"]["state"] == "active"]

        first = {a["fingerprint"]: a["endsAt"] for a in active()}
        assert len(first) == 2
        wait(
            lambda: all(a["endsAt"] > first[a["fingerprint"]] for a in active()),
            30,
            "a re-post to extend endsAt",
            worker,
        )
        assert worker.metric("streamwatch_alertmanager_reposts_total") >= 1

        # restart: the same label sets, so the same fingerprints (no second copy)
        assert worker.stop() == 0
        worker = WorkerProcess(d)
        started.append(worker)
        worker.start()
        before = worker.metric("streamwatch_alertmanager_reposts_total")
        wait(
            lambda: worker.metric("streamwatch_alertmanager_reposts_total") > before,
            60,
            "a re-post by the restarted worker",
            worker,
        )
        assert sorted(a["fingerprint"] for a in active()) == sorted(first)
        assert len(am.alerts()) == 2

        # resolution: both end, and the group arrives resolved
        publish(d, [alert_event(1, e, status="resolved") for e in ("cmp-a", "cmp-b")])
        resolved = wait(
            lambda: [b for b in hooks.bodies("/am") if b["status"] == "resolved"],
            60,
            "the resolved group",
            worker,
        )[0]
        assert sorted(a["labels"]["entity"] for a in resolved["alerts"]) == ["cmp-a", "cmp-b"]
        assert all(a["status"] == "resolved" for a in resolved["alerts"])
        assert not active()
        health = worker.wait_http("/health", 10)
        assert health["delivery"]["status"] == "ok"
        assert health["delivery"]["alertmanager_firing"] == 0
        # this run delivered the two resolutions only: the firing ones were done before
        assert worker.metric("streamwatch_deliveries_total") == 2
        assert worker.stop() == 0
    finally:
        for w in started:
            w.kill()
        am.close()
        hooks.close()
