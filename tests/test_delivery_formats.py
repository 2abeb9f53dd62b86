"""Delivery's pure parts: the receivers' bodies, Alertmanager's labels and times, the
router, the configuration (secrets, validation), the delivery log's state, backoff."""

from __future__ import annotations

import os
import random
import re
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from streams.config import ConfigError, DeliverySettings, Settings, expand_env, load_settings
from streams.delivery import (
    alertmanager,
    dingtalk,
    email,
    feishu,
    generic,
    journal,
    router,
    slack,
    wecom,
)
from streams.delivery.agents import resolved_receiver
from streams.delivery.http import DeliveryError, check_status
from streams.delivery.queue import backoff
from tests.delivery_services import alert_event

DOC = Path(__file__).resolve().parents[1] / "docs" / "delivery.md"
LINK = "https://sw.example/"


def cause_alert() -> dict[str, Any]:
    a = alert_event(1, "model-a/user_segment", "drift_psi", "critical", kind="drift")
    a["details"] = {"model_id": "model-a", "feature": "user_segment", "psi": 0.21}
    a["details"]["possible_causes"] = [
        {"alert_id": "c1", "kind": "change", "entity": "model-a", "message": "deploy v7"}
    ]
    return a


# -- Alertmanager ---------------------------------------------------------------------


def test_labels_identify_the_condition_not_the_figures() -> None:
    a = cause_alert()
    b = {**a, "alert_id": "other", "value": 0.9, "ts": a["ts"] + 3_600_000}
    b["window_start"] += 3_600_000
    assert alertmanager.labels(a) == alertmanager.labels(b)
    assert alertmanager.fingerprint(alertmanager.labels(a)) == alertmanager.fingerprint(
        alertmanager.labels(b)
    )
    assert alertmanager.labels(a) == {
        "alertname": "drift_psi",
        "kind": "drift",
        "severity": "critical",
        "entity": "model-a/user_segment",
        "model_id": "model-a",
        "feature": "user_segment",
        "source": "streamwatch",
    }
    other_entity = {**a, "entity": "model-b/user_segment"}
    assert alertmanager.fingerprint(alertmanager.labels(other_entity)) != alertmanager.fingerprint(
        alertmanager.labels(a)
    )
    assert all(alertmanager.LABEL_NAME.fullmatch(k) for k in alertmanager.labels(a))
    # non-string details (numbers, booleans, lists) never become labels
    odd = {**a, "details": {"model_id": ["x"], "sensor_id": True, "site": ""}}
    assert set(alertmanager.labels(odd)) == {"alertname", "kind", "severity", "entity", "source"}


def parse(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000


def test_firing_and_resolved_bodies() -> None:
    a = cause_alert()
    now = a["ts"] + 5_000
    body = alertmanager.firing(a, now, 240, LINK)
    assert parse(body["startsAt"]) == a["ts"]
    assert parse(body["endsAt"]) == now + 240_000
    ann = body["annotations"]
    assert ann["message"] == a["message"] and ann["alert_id"] == a["alert_id"]
    assert ann["possible_causes"] == "change on model-a: deploy v7"
    assert ann["dashboard"] == LINK == body["generatorURL"]
    assert [parse(t) for t in ann["window"].split("/")] == [a["window_start"], a["window_end"]]
    assert all(isinstance(v, str) for v in ann.values())
    # an event time ahead of the clock never starts in the future
    ahead = {**a, "ts": now + 60_000}
    assert parse(alertmanager.firing(ahead, now, 240, None)["startsAt"]) == now
    # resolution: the firing alert's labels (it may have fired at another severity)
    warning = {**a, "severity": "warning"}
    end = {**a, "status": "resolved", "alert_id": "r", "ts": a["ts"] + 1_000}
    done = alertmanager.resolved(warning, end, now, None)
    assert done["labels"] == alertmanager.labels(warning)
    assert parse(done["endsAt"]) == a["ts"] + 1_000 < now
    assert alertmanager.same_condition(warning, end)
    assert not alertmanager.same_condition({**warning, "entity": "x"}, end)
    # the bodies are JSON as posted
    orjson.dumps([body, done])


# -- the robots and the others -----------------------------------------------------------


def test_chat_bodies_carry_message_facts_causes_and_link() -> None:
    a = cause_alert()
    ding = dingtalk.body(a, LINK)
    assert ding["msgtype"] == "markdown"
    assert ding["markdown"]["title"] == "[FIRING critical] drift_psi on model-a/user_segment"
    wc = wecom.body(a, LINK)["markdown"]["content"]
    fs = feishu.body(a, LINK)
    assert fs["msg_type"] == "text"
    sl = slack.body(a, LINK)
    assert sl["text"].endswith("[FIRING critical] drift_psi on model-a/user_segment")
    assert sl["blocks"][0]["text"]["type"] == "mrkdwn"
    assert sl["blocks"][1]["elements"][0]["text"] == f"<{LINK}|dashboard>"
    for text in (
        ding["markdown"]["text"],
        wc,
        fs["content"]["text"],
        sl["blocks"][0]["text"]["text"],
    ):
        assert a["message"] in text
        assert f"alert_id: {a['alert_id']}" in text
        assert "change on model-a: deploy v7" in text
        assert "threshold: 0.001" in text
    for text in (ding["markdown"]["text"], wc, fs["content"]["text"]):
        assert LINK in text
    assert generic.body(a, LINK) == {**a, "links": {"dashboard": LINK}}
    assert generic.body(a, None) == a


def test_length_limits_keep_valid_text() -> None:
    a = {**cause_alert(), "message": "漂移" * 3000}  # multi-byte characters
    content = wecom.body(a, LINK)["markdown"]["content"]
    assert len(content.encode()) <= wecom.MAX_BYTES and content.endswith("...")
    assert len(slack.body(a, LINK)["blocks"][0]["text"]["text"]) <= slack.MAX_SECTION


@pytest.mark.parametrize(
    ("check", "status", "payload", "ok"),
    [
        (dingtalk.check, 200, b'{"errcode":0,"errmsg":"ok"}', True),
        (dingtalk.check, 200, b'{"errcode":310000,"errmsg":"keywords not in content"}', False),
        (wecom.check, 200, b'{"errcode":93000,"errmsg":"invalid webhook url"}', False),
        (feishu.check, 200, b'{"code":0,"msg":"success"}', True),
        (feishu.check, 200, b'{"code":19021,"msg":"sign match fail"}', False),
        (feishu.check, 502, b"bad gateway", False),
        (dingtalk.check, 200, b"<html>", False),
        (check_status, 204, b"", True),
        (check_status, 404, b"no such hook", False),
    ],
)
def test_answers(check: Any, status: int, payload: bytes, ok: bool) -> None:
    if ok:
        check(status, payload)
    else:
        with pytest.raises(DeliveryError):
            check(status, payload)


def test_email_message() -> None:
    a = cause_alert()
    m = email.message(a, LINK, "sw@example.com", ["a@example.com", "b@example.com"])
    assert m["To"] == "a@example.com, b@example.com"
    assert m["Subject"] == "[FIRING critical] drift_psi on model-a/user_segment"
    assert m["X-Streamwatch-Alert-Id"] == a["alert_id"]
    body = m.get_content()
    assert a["message"] in body and "possible causes:" in body and LINK in body


# -- routing and configuration ----------------------------------------------------------


def documented(env: dict[str, str] | None = None) -> Settings:
    block = re.search(r"```toml\n(\[delivery\]\ndashboard_url.*?)```", DOC.read_text(), re.S)
    assert block
    return msgspec.convert({"delivery": tomllib.loads(block.group(1))["delivery"]}, Settings)


def test_documented_routes_are_seed_004s_levels() -> None:
    routes = documented().delivery.routes
    crit = alert_event(1, "cmp-1", severity="critical")
    warn_drift = alert_event(1, "model-a/age", "drift_psi", "warning", kind="drift")
    warn_other = alert_event(1, "svc-a", "latency_p99", "warning", kind="service")
    drift_not_model = alert_event(1, "ranker/age", "drift_psi", "warning", kind="drift")
    info = alert_event(1, "s-1", "sensor_rise", "info", kind="sensor")
    assert router.receivers(routes, crit) == ["model-owner", "ops", "archive"]
    assert router.receivers(routes, warn_drift) == ["data-scientists", "ml-feishu", "archive"]
    assert router.receivers(routes, warn_other) == ["data-scientists", "archive"]
    assert router.receivers(routes, drift_not_model) == ["data-scientists", "archive"]
    assert router.receivers(routes, info) == ["log", "archive"]


def test_route_conditions() -> None:
    from streams.config import RouteSettings

    r = RouteSettings(receivers=["x"], rule="ctr_*", status=["resolved"], entity="cmp-00?")
    a = alert_event(1, "cmp-001", status="resolved")
    assert router.matches(r, a)
    assert not router.matches(r, {**a, "status": "firing"})
    assert not router.matches(r, {**a, "entity": "cmp-0011"})
    assert not router.matches(r, {**a, "rule": "drift_psi"})
    assert router.receivers([r, r], a) == ["x"]  # each receiver once


def test_secrets_masked_and_resolved_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        """
[delivery]
alertmanager_url = "http://user:pw@am:9093"
[[delivery.receivers]]
name = "lit"
type = "slack"
url = "https://hooks.slack.com/services/T0/B0/SECRET"
[[delivery.receivers]]
name = "ref"
type = "generic"
url = "${HOOK}"
headers = { Authorization = "Bearer ${TOKEN}", X-Team = "ml" }
[[delivery.receivers]]
name = "mail"
type = "email"
smtp_host = "smtp"
password = "plain-secret"
sender = "a@b"
to = ["${OPS_MAIL}"]
[[delivery.routes]]
receivers = ["lit", "ref", "mail"]
"""
    )
    settings = load_settings(path, env={})
    shown = orjson.dumps(settings.masked()).decode()
    for secret in ("SECRET", "plain-secret", "pw@", "Bearer"):
        assert secret not in shown
    masked = settings.masked()["delivery"]
    assert masked["receivers"][1]["url"] == "${HOOK}"
    assert masked["receivers"][0]["url"] == masked["receivers"][2]["password"] == "***"
    assert masked["alertmanager_url"] == "http://***@am:9093"
    env = {"HOOK": "http://h/1", "TOKEN": "t0k", "OPS_MAIL": "ops@x"}
    old = dict(os.environ)
    os.environ.update(env)
    try:
        ref = resolved_receiver(settings.delivery.receivers[1])
        mail = resolved_receiver(settings.delivery.receivers[2])
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert ref.url == "http://h/1" and ref.headers["Authorization"] == "Bearer t0k"
    assert mail.to == ["ops@x"]
    with pytest.raises(ConfigError, match="HOOK"):
        expand_env("${HOOK}", {})
    assert (
        load_settings(
            env={"STREAMWATCH_ALERTMANAGER_URL": "http://am:9093"}
        ).delivery.alertmanager_url
        == "http://am:9093"
    )


@pytest.mark.parametrize(
    ("delivery", "message"),
    [
        ({"routes": [{"receivers": ["nobody"]}]}, "unknown receivers"),
        ({"receivers": [{"name": "a", "type": "log"}, {"name": "a", "type": "log"}]}, "unique"),
        ({"receivers": [{"name": "alertmanager", "type": "log"}]}, "reserved"),
        ({"receivers": [{"name": "m", "type": "email", "smtp_host": "h"}]}, "email needs"),
        ({"receivers": [{"name": "s", "type": "slack"}]}, "needs a url"),
        ({"receivers": [{"name": "s", "type": "teams", "url": "x"}]}, "type"),
        ({"alertmanager_repost_s": 300, "alertmanager_ttl_s": 240}, "repost"),
        ({"retry_initial_s": 0}, "retry"),
    ],
)
def test_invalid_delivery_configuration(delivery: dict[str, Any], message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=message):
        msgspec.convert(delivery, DeliverySettings)


# -- the delivery log and retries ------------------------------------------------------


def test_partition_state_replay() -> None:
    s = journal.PartitionState()
    k1, k2 = journal.job_key("r", "a1"), journal.job_key("r", "a2")
    s.apply(k1, {"t": "job", "receiver": "r", "alert": {}})
    s.apply(k2, {"t": "job", "receiver": "r", "alert": {}})
    s.apply(k1, {"t": "done"})
    assert list(s.pending) == [k2] and k1 in s.done
    s.apply(k1, {"t": "job", "receiver": "r", "alert": {}})  # a job written again later
    assert k1 not in s.pending
    f = journal.firing_key("fp1")
    s.apply(f, {"t": "firing", "alert": {"x": 1}})
    assert s.firing == {"fp1": {"x": 1}}
    s.apply(f, {"t": "cleared"})
    assert s.firing == {}
    small = journal.PartitionState()
    for i in range(journal.MAX_DONE + 5):
        small.mark_done(journal.job_key("r", str(i)))
    assert len(small.done) == journal.MAX_DONE
    assert journal.job_key("r", "0") not in small.done  # the oldest forgotten first


def test_backoff_is_exponential_bounded_and_jittered() -> None:
    rng = random.Random(7)
    for n in range(1, 30):
        base = min(300.0, 1.0 * 2 ** (n - 1))
        samples = [backoff(n, 1.0, 300.0, rng) for _ in range(200)]
        assert all(base / 2 <= x <= base for x in samples)
        assert max(samples) - min(samples) > base / 10  # spread, not in step


def test_receiver_queue_retries_in_order_and_drops_only_the_unsendable() -> None:
    import asyncio

    from streams.delivery.queue import ReceiverQueue

    sent: list[str] = []
    marked: list[str] = []
    outage = [3]  # the receiver refuses the first three attempts

    async def send(job: dict[str, Any]) -> None:
        if job["alert"]["alert_id"] == "poison":
            raise TypeError("no format can render this")
        if outage[0]:
            outage[0] -= 1
            raise DeliveryError("HTTP 503")
        sent.append(job["alert"]["alert_id"])

    async def finished(job: dict[str, Any]) -> None:
        marked.append(job["alert"]["alert_id"])

    async def scenario() -> ReceiverQueue:
        q = ReceiverQueue("unit-test", send, finished, retry_initial_s=0.01, retry_max_s=0.04)
        for i, alert_id in enumerate(["a", "poison", "b", "c"]):
            q.add(
                alert_id.encode(), {"alert": {"alert_id": alert_id}, "queued_at": i, "partition": 0}
            )
        q.add(b"a", {"alert": {"alert_id": "a"}, "queued_at": 9, "partition": 0})  # no twice
        task = asyncio.create_task(q.run())
        for _ in range(500):
            if len(marked) == 4 and not q.pending:
                break
            await asyncio.sleep(0.01)
        status = q.status()
        task.cancel()
        assert status["state"] == "ok" and status["pending"] == 0
        return q

    q = asyncio.run(scenario())
    assert sent == ["a", "b", "c"]  # oldest first, each once, the poison dropped ...
    assert marked == ["a", "poison", "b", "c"]  # ... and marked done, not retried forever
    assert q.failures == 0 and q.last_error is None
    from prometheus_client import REGISTRY

    def sample(name: str) -> float | None:
        return REGISTRY.get_sample_value(name, {"receiver": "unit-test"})

    assert sample("streamwatch_delivery_failures_total") == 3
    assert sample("streamwatch_delivery_dropped_total") == 1
    assert sample("streamwatch_deliveries_total") == 3
    q.add(b"x", {"alert": {"alert_id": "x"}, "queued_at": 0, "partition": 1})
    q.add(b"y", {"alert": {"alert_id": "y"}, "queued_at": 0, "partition": 2})
    q.drop_partition(1)
    assert list(q.pending) == [b"y"]
    assert sample("streamwatch_delivery_pending") == 1  # read at scrape time
