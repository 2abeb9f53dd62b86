"""Direct receivers with the documented example configuration (docs/delivery.md), over
the suite's real broker, a real worker process, real HTTP receivers and a real SMTP
server (aiosmtpd): routing by severity, kind and entity, the robots' formats as they
arrive, secrets kept out of the log and `config show`, and at-least-once delivery
de-duplicated by alert_id through a receiver outage and a kill -9 of the worker."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.connectors.embedded import EmbeddedBroker
from tests.delivery_services import (
    DeliveryDeployment,
    Mailbox,
    Webhooks,
    alert_event,
    publish,
    publish_raw,
)
from tests.harness import WorkerProcess

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[1] / "docs" / "delivery.md"
TOKEN = "tok-9f8e7d6c5b4a"  # in every webhook URL: must never reach the log
PASSWORD = "smtp-secret-51d2"


def documented_example() -> str:
    text = DOC.read_text(encoding="utf-8")
    block = re.search(
        r"<!-- example:begin -->\n```toml\n(.*?)```\n<!-- example:end -->", text, re.S
    )
    assert block, "docs/delivery.md lost its example block"
    return block.group(1)


def example_for(mailbox: Mailbox) -> str:
    """The documented example, pointed at the test's SMTP server (no TLS on loopback)."""
    toml = documented_example()
    for old, new in (
        ('smtp_host = "smtp.example.com"', 'smtp_host = "127.0.0.1"'),
        ("smtp_port = 587", f"smtp_port = {mailbox.port}"),
        ("starttls = true", "starttls = false"),
        ("retry_initial_s = 1 ", "retry_initial_s = 0.3 "),
        ("retry_max_s = 300 ", "retry_max_s = 1 "),
    ):
        assert old in toml, old
        toml = toml.replace(old, new)
    return toml


def wait(check: Any, timeout: float, what: str, worker: WorkerProcess) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        worker._check_alive()
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}\n{worker.log()}")


def ids(bodies: list[Any], field: str) -> Counter[str]:
    """alert_id per received body, counted (the generic body is the event itself;
    the robots' texts carry `alert_id: ...` in a line)."""
    out: Counter[str] = Counter()
    for body in bodies:
        if field == "event":
            out[body["alert_id"]] += 1
        else:
            text = orjson.dumps(body).decode()
            out.update(re.findall(r"alert_id: ([^\\\s]+)", text))
    return out


def test_routes_formats_outage_and_kill9(broker: EmbeddedBroker, tmp_path: Path) -> None:
    hooks = Webhooks()
    mail = Mailbox("streamwatch", PASSWORD)
    env = {
        "DINGTALK_OWNER_URL": hooks.url(f"/owner?access_token={TOKEN}"),
        "WECOM_DS_URL": hooks.url(f"/wecom?key={TOKEN}"),
        "FEISHU_ML_URL": hooks.url(f"/feishu/{TOKEN}"),
        "ARCHIVE_URL": hooks.url(f"/archive/{TOKEN}"),
        "SMTP_PASSWORD": PASSWORD,
    }
    started: list[WorkerProcess] = []
    try:
        d = DeliveryDeployment(
            tmp_path, broker.bootstrap, "dlv-rx", delivery_toml=example_for(mail), env=env
        )
        shown = d.cli("config", "show")
        assert shown.returncode == 0, shown.stderr
        assert "${DINGTALK_OWNER_URL}" in shown.stdout and "${SMTP_PASSWORD}" in shown.stdout
        assert TOKEN not in shown.stdout and PASSWORD not in shown.stdout

        hooks.down = {"/owner"}  # the model owner's DingTalk robot is down
        worker = WorkerProcess(d)
        started.append(worker)
        worker.start()
        critical = [alert_event(i, f"cmp-{i}") for i in range(6)]
        warning = [
            alert_event(1, "model-a/age", "drift_psi", "warning", kind="drift"),
            alert_event(1, "svc-b", "latency_p99", "warning", kind="service"),
            alert_event(1, "cmp-x", "ctr_drop", "warning"),
        ]
        info = [alert_event(i, f"s-{i}", "sensor_rise", "info", kind="sensor") for i in range(2)]
        # a kind newer than this build's schema is routed like any other
        info.append(alert_event(1, "model-a", "errors_per_minute", "info", kind="sql"))
        first = critical + warning + info
        publish_raw(d, [b"{not json", b'{"alert_id": "x"}'])  # skipped, counted, no crash
        publish(d, first)
        publish(d, critical[:2])  # the same alerts again (a replay): delivered once
        # published 7 h ago (before delivery.max_age_s): history, not delivered
        ancient = alert_event(99, "cmp-ancient")
        publish(d, [ancient], timestamp_ms=int(time.time() * 1000) - 7 * 3600 * 1000)

        every = {a["alert_id"] for a in first}
        wait(
            lambda: set(ids(hooks.bodies("/archive"), "event")) == every, 90, "the archive", worker
        )
        wait(lambda: len(mail.messages) >= 6, 30, "the operations e-mails", worker)
        wait(lambda: len(hooks.bodies("/wecom")) >= 3, 30, "the WeCom messages", worker)
        wait(lambda: len(hooks.bodies("/feishu")) >= 1, 30, "the Feishu message", worker)

        # routing: critical -> owner (down) + mail; warning -> WeCom; drift on model-* -> Feishu
        assert sorted(mail.alert_ids()) == sorted(a["alert_id"] for a in critical)
        assert set(mail.logins) == {"streamwatch"}
        assert set(ids(hooks.bodies("/wecom"), "text")) == {a["alert_id"] for a in warning}
        assert set(ids(hooks.bodies("/feishu"), "text")) == {warning[0]["alert_id"]}
        assert hooks.bodies("/owner") == []
        assert worker.metric("streamwatch_delivery_skipped_old_total") == 1
        assert worker.metric("streamwatch_delivery_dropped_total") == 2
        # the robots' formats as they arrive
        wecom = hooks.bodies("/wecom")[0]
        assert wecom["msgtype"] == "markdown" and "[FIRING warning]" in wecom["markdown"]["content"]
        feishu = hooks.bodies("/feishu")[0]
        assert (
            feishu["msg_type"] == "text" and "drift_psi on model-a/age" in feishu["content"]["text"]
        )
        archived = {b["alert_id"]: b for b in hooks.bodies("/archive")}
        one = {k: v for k, v in archived[critical[0]["alert_id"]].items() if k != "links"}
        assert one == critical[0]
        assert archived[critical[0]["alert_id"]]["links"]["dashboard"].startswith("https://")
        message = mail.messages[0]
        assert message["Subject"].startswith("[FIRING critical] ctr_floor on cmp-")
        assert "below the floor" in message.get_payload()
        # info: log only
        wait(
            lambda: worker.log_path.read_text().count("alert [FIRING info] sensor_rise") >= 2,
            10,
            "the info alerts in the log",
            worker,
        )

        # the outage is reported: 200 with the detail, and in the metrics
        health = worker.wait_http("/health", 10)
        assert health["status"] == "ok"
        assert health["delivery"]["status"] == "degraded"
        assert health["delivery"]["failing"] == ["model-owner"]
        owner = health["delivery"]["receivers"]["model-owner"]
        assert owner["pending"] == 6 and owner["oldest_pending_s"] > 0
        assert "503" in owner["last_error"]
        assert health["delivery"]["receivers"]["ops"]["state"] == "ok"
        assert worker.metric("streamwatch_delivery_failures_total") >= 1
        assert worker.metric("streamwatch_delivery_pending") == 6
        assert worker.metric("streamwatch_delivery_oldest_pending_seconds") > 0

        # kill -9 while the owner's robot is down; it comes back; more alerts meanwhile
        worker.kill()
        hooks.down = set()
        later = [alert_event(10 + i, f"cmp-late-{i}") for i in range(2)]
        publish(d, later)
        worker = WorkerProcess(d, log_name="worker2")
        started.append(worker)
        worker.start()
        expected_owner = {a["alert_id"] for a in critical + later}
        # the six jobs pending at the kill came back from the delivery log
        wait(lambda: worker.log_path.read_text().count("replayed:") >= 4, 60, "the replay", worker)
        replayed = re.findall(r"replayed: \d+ records, (\d+) pending", worker.log_path.read_text())
        assert sum(int(n) for n in replayed) == 6, replayed
        wait(
            lambda: set(ids(hooks.bodies("/owner"), "text")) == expected_owner,
            90,
            "every critical alert at the model owner",
            worker,
        )
        wait(lambda: len(mail.messages) >= 8, 30, "the later e-mails", worker)
        time.sleep(3)  # time for any duplicate to show up
        # every alert delivered, none twice, at every receiver
        assert ids(hooks.bodies("/owner"), "text") == Counter(expected_owner)
        assert Counter(mail.alert_ids()) == Counter(expected_owner)
        assert ids(hooks.bodies("/archive"), "event") == Counter(
            every | {a["alert_id"] for a in later}
        )
        assert ids(hooks.bodies("/wecom"), "text") == Counter(a["alert_id"] for a in warning)
        owner_body = hooks.bodies("/owner")[0]
        assert owner_body["msgtype"] == "markdown"
        assert owner_body["markdown"]["title"].startswith("[FIRING critical] ctr_floor")
        health = worker.wait_http("/health", 10)
        assert health["delivery"]["status"] == "ok"
        assert health["delivery"]["receivers"]["model-owner"]["pending"] == 0
        assert worker.stop() == 0
        # secrets never logged
        logs = (
            worker.log_path.read_text() + (worker.log_path.parent / "dlv-rx-worker.log").read_text()
        )
        assert TOKEN not in logs and PASSWORD not in logs
        assert "model-owner" in logs  # the failures were logged, by receiver name
    finally:
        for w in started:
            w.kill()
        hooks.close()
        mail.close()
