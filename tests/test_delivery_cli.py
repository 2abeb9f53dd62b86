"""`streamwatch alerts`: print what the topic holds and exit, or --follow; --rule and
--entity globs; possible causes shown. Against the suite's real broker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from streams.connectors import kafka
from streams.connectors.embedded import EmbeddedBroker
from tests.delivery_services import alert_event, publish
from tests.harness import ROOT, Deployment

pytestmark = pytest.mark.integration


def test_alerts_print_filter_follow(broker: EmbeddedBroker, tmp_path: Path) -> None:
    d = Deployment(tmp_path, broker.bootstrap, "dlv-cli")
    kafka.ensure_topics(d.settings())
    drift = alert_event(1, "model-a/age", "drift_psi", "warning", kind="drift")
    drift["details"]["possible_causes"] = [
        {"alert_id": "x1", "kind": "service", "entity": "model-a", "message": "p99 is 2.4 s"}
    ]
    old = [alert_event(1, "big"), alert_event(2, "cmp-bigger"), drift]
    publish(d, old)

    every = d.cli("alerts", "--json", timeout=60)
    assert every.returncode == 0, every.stderr
    assert sorted(orjson.loads(x)["alert_id"] for x in every.stdout.splitlines()) == sorted(
        a["alert_id"] for a in old
    )
    by_rule = d.cli("alerts", "--json", "--rule", "drift_*")
    assert [orjson.loads(x)["alert_id"] for x in by_rule.stdout.splitlines()] == [drift["alert_id"]]
    by_glob = d.cli("alerts", "--json", "--entity", "model-?/*")
    assert [orjson.loads(x)["entity"] for x in by_glob.stdout.splitlines()] == ["model-a/age"]
    substring = d.cli("alerts", "--json", "--entity", "big")  # no wildcard: a substring
    assert sorted(orjson.loads(x)["entity"] for x in substring.stdout.splitlines()) == [
        "big",
        "cmp-bigger",
    ]
    exact = d.cli("alerts", "--json", "--entity", "big*")
    assert [orjson.loads(x)["entity"] for x in exact.stdout.splitlines()] == ["big"]
    human = d.cli("alerts", "--rule", "drift_psi")
    assert "drift/drift_psi  model-a/age" in human.stdout
    assert "possible cause: service on model-a: p99 is 2.4 s" in human.stdout

    # --follow: only what comes after it started, until the timeout
    follow = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "alerts", "--follow", "--json", "--timeout", "12"],
        env=d.env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # it prints "following" once it holds each partition's end offset (a start
        # that fails closes stderr: readline returns "" and the loop ends)
        line = "-"
        while line and "following" not in line:
            line = follow.stderr.readline()
        assert line, "the follower exited without following"
        new = alert_event(3, "cmp-new")
        publish(d, [new])
        out, errors = follow.communicate(timeout=60)
    finally:
        follow.kill()
    assert follow.returncode == 0, errors
    assert [orjson.loads(x)["alert_id"] for x in out.splitlines()] == [new["alert_id"]]
