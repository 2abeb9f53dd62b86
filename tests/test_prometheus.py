"""A real Prometheus scraping a real worker.

The worker runs as its own process on the suite's broker (Tansu) with a little traffic of
every input topic plus the malformed messages of tests/test_e2e_ctr.py. A Prometheus
(Debian package `prometheus`, /usr/bin/prometheus; not the Debian service: its own
process on a free loopback port, storage in tmp) scrapes the worker's /metrics every
second and loads deploy/prometheus/alerts.yml. The test asserts, through Prometheus' HTTP
API, that every published message is counted, that the rejections carry the malformed
messages' reasons, that the alerting rules load and evaluate with health "ok", and that
the PromQL of the Grafana dashboard's Prometheus panels runs and finds the series.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from streams.connectors.embedded import free_port
from tests.harness import Deployment, WorkerProcess, produce
from tests.test_crash_only import trigger, wait_ready
from tests.test_e2e_ctr import MALFORMED

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
ALERT_RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "streamwatch.json"
PROMETHEUS = "/usr/bin/prometheus"
MIN = 60_000


def prometheus_binary() -> str:
    path = PROMETHEUS if Path(PROMETHEUS).is_file() else shutil.which("prometheus")
    if path is None:
        pytest.fail(
            f"{PROMETHEUS} not found: install the Debian package `prometheus` "
            "(apt-get install -y prometheus); this integration test needs a real Prometheus"
        )
    return path


class PrometheusProcess:
    """Prometheus on a free loopback port scraping one target every second."""

    def __init__(self, tmp: Path, target: str, rule_files: list[Path] | None = None) -> None:
        self.port = free_port()
        self.dir = tmp / "prometheus"
        self.dir.mkdir()
        self.log_path = self.dir / "prometheus.log"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in (rule_files or [ALERT_RULES])],
            "scrape_configs": [
                {
                    "job_name": "streamwatch",
                    "scrape_interval": "1s",
                    "scrape_timeout": "1s",
                    "metrics_path": "/metrics",
                    "static_configs": [{"targets": [target]}],
                }
            ],
        }
        self.config_path = self.dir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> PrometheusProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [
                prometheus_binary(),
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            cwd=self.dir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.wait(lambda: self.get("/-/ready", raw=True) is not None, 60, "Prometheus ready")
        return self

    def get(self, path: str, raw: bool = False) -> Any:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.process.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                body = r.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None
        return body if raw else json.loads(body)

    def query(self, promql: str) -> list[dict[str, Any]]:
        body = self.get("/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        assert body is not None, f"no answer to {promql}"
        assert body["status"] == "success", f"{promql}: {body}"
        return body["data"]["result"]

    def wait(self, check, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}; prometheus log:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-4000:]
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def traffic(d: Deployment) -> list[tuple[str, bytes | None, bytes | None, int | None]]:
    """A little valid traffic of every input topic, then the malformed messages."""
    now = int(time.time() * 1000)
    t0 = now - now % MIN - 5 * MIN
    topic = d.topics
    out: list[tuple[str, bytes | None, bytes | None, int | None]] = []
    for i in range(40):
        ts = t0 + i * 5_000
        campaign = f"cmp-{i % 2}"
        imp = {"impression_id": f"i{i}", "ts": ts, "campaign_id": campaign, "user_id": f"u{i}"}
        out.append((topic["impressions"], campaign.encode(), orjson.dumps(imp), None))
        if i % 4 == 0:
            click = {
                "click_id": f"c{i}",
                "impression_id": f"i{i}",
                "ts": ts + 1_000,
                "campaign_id": campaign,
                "user_id": f"u{i}",
            }
            out.append((topic["clicks"], campaign.encode(), orjson.dumps(click), None))
        log = {
            "request_id": f"r{i}",
            "ts": ts,
            "model_id": "m-1",
            "model_version": "v1",
            "features": {"f1": i / 40, "f2": "a" if i % 2 else "b"},
            "prediction": 0.5,
            "latency_ms": 20.0 + i,
            "status": "ok",
            "confidence": 0.9,
        }
        out.append((topic["inference_logs"], b"m-1", orjson.dumps(log), None))
        reading = {"sensor_id": "s-1", "ts": ts, "values": {"temp": 20.0 + i % 3}}
        out.append((topic["sensor_readings"], b"s-1", orjson.dumps(reading), None))
    for t, key, value, _ in MALFORMED:
        out.append((topic[t], key, value, None))
    return out


def test_prometheus_scrapes_worker_and_loads_rules(tmp_path, broker) -> None:
    prometheus_binary()  # fail first, clearly, when the package is missing
    d = Deployment(tmp_path, broker.bootstrap, "prom")
    messages = traffic(d)
    expected_reasons = Counter(reason for *_, reason in MALFORMED)
    worker = WorkerProcess(d).start()
    prom = PrometheusProcess(tmp_path, f"127.0.0.1:{d.web_port}")
    try:
        prom.start()
        assert produce(broker.bootstrap, messages) == len(messages)

        def scraped_up() -> bool:
            result = prom.query('up{job="streamwatch"}')
            return bool(result) and result[0]["value"][1] == "1"

        prom.wait(scraped_up, 60, "the worker's target to be up")

        consumed: list[float] = []

        def all_consumed() -> bool:
            result = prom.query("sum(streamwatch_events_consumed_total)")
            consumed[:] = [float(r["value"][1]) for r in result]
            return consumed == [float(len(messages))]

        try:
            prom.wait(all_consumed, 90, f"{len(messages)} consumed messages")
        except AssertionError as exc:
            raise AssertionError(f"consumed {consumed}; worker log:\n{worker.log()}") from exc

        reasons: dict[str, float] = {}

        def all_rejected() -> bool:
            result = prom.query("sum by (reason) (streamwatch_events_rejected_total)")
            reasons.clear()
            reasons.update({r["metric"]["reason"]: float(r["value"][1]) for r in result})
            return reasons == {k: float(v) for k, v in expected_reasons.items()}

        try:
            prom.wait(all_rejected, 30, "the rejection reasons")
        except AssertionError as exc:
            raise AssertionError(f"rejected {reasons}, expected {expected_reasons}") from exc

        # the rules of deploy/prometheus/alerts.yml load and evaluate without error
        expected_rules = {
            rule["alert"]
            for group in yaml.safe_load(ALERT_RULES.read_text())["groups"]
            for rule in group["rules"]
        }
        rules: dict[str, dict[str, Any]] = {}

        def rules_healthy() -> bool:
            body = prom.get("/api/v1/rules")
            rules.clear()
            for group in body["data"]["groups"]:
                for rule in group["rules"]:
                    rules[rule["name"]] = rule
            return set(rules) == expected_rules and all(r["health"] == "ok" for r in rules.values())

        try:
            prom.wait(rules_healthy, 30, "the alerting rules to evaluate")
        except AssertionError as exc:
            state = {n: (r["health"], r.get("lastError")) for n, r in rules.items()}
            raise AssertionError(f"rules {state}, expected {sorted(expected_rules)}") from exc
        # the worker is up and healthy: the availability rules are not firing, from
        # their first evaluation after the first scrape on (one before it, which a
        # quick start can leave as the last, finds no `up` yet: absent() is pending)
        availability = ("StreamwatchWorkerDown", "StreamwatchWorkerAbsent")

        def availability_inactive() -> bool:
            rules_healthy()
            return all(rules[name]["state"] == "inactive" for name in availability)

        try:
            prom.wait(availability_inactive, 15, "the availability rules to be inactive")
        except AssertionError as exc:
            raise AssertionError({name: rules[name] for name in availability}) from exc

        # the PromQL of the dashboard's Prometheus panels runs and finds the series
        dashboard = json.loads(DASHBOARD.read_text())
        exprs = [
            t["expr"]
            for p in dashboard["panels"]
            for t in p.get("targets", [])
            if t["datasource"]["uid"] == "streamwatch-prometheus"
        ]
        assert exprs
        must_have_data = (
            "streamwatch_events_consumed_total",
            "streamwatch_events_rejected_total",
            "streamwatch_sink_buffered_rows",
            "streamwatch_watermark_delay_seconds",
        )
        for expr in exprs:
            promql = expr.replace("$__rate_interval", "30s").replace("$__interval", "5s")
            assert "$" not in promql, promql
            if any(metric in promql for metric in must_have_data):
                # rate() needs two scrapes of a series: wait for them
                prom.wait(lambda q=promql: bool(prom.query(q)), 30, f"series of {promql!r}")
            else:
                prom.query(promql)  # runs (status success), may be empty
    finally:
        prom.stop()
        assert worker.stop() == 0, worker.log()


def rule(name: str) -> dict[str, Any]:
    return next(
        r
        for group in yaml.safe_load(ALERT_RULES.read_text())["groups"]
        for r in group["rules"]
        if r.get("alert") == name
    )


def test_poll_age_alert_fires_for_a_stalled_worker(tmp_path, broker) -> None:
    """streamwatch_last_poll_age_seconds through a real Prometheus: the shipped
    StreamwatchConsumerStalled rule, its bound scaled from 120 s to 3 s and its `for`
    to 1 s (the expression is otherwise the shipped one), stays inactive while the
    worker polls and fires once its polling loop hangs (the test-only `stall` fault)."""
    prometheus_binary()
    shipped = rule("StreamwatchConsumerStalled")
    assert "streamwatch_last_poll_age_seconds > 120" in shipped["expr"]
    fast = {
        **shipped,
        "expr": shipped["expr"].replace("> 120", "> 3"),
        "for": "1s",
    }
    rules_path = tmp_path / "fast-rules.yml"
    rules_path.write_text(yaml.safe_dump({"groups": [{"name": "fast", "rules": [fast]}]}))

    d = Deployment(tmp_path, broker.bootstrap, "prom-stall", partitions=2, health_poll_age_s=3.0)
    d.test_faults = ("stall",)
    worker = WorkerProcess(d).start()
    prom = PrometheusProcess(tmp_path, f"127.0.0.1:{d.web_port}", [rules_path])
    try:
        prom.start()
        wait_ready(worker)

        def age() -> float | None:
            result = prom.query("streamwatch_last_poll_age_seconds")
            return float(result[0]["value"][1]) if result else None

        def alert_state() -> str:
            body = prom.get("/api/v1/rules")
            (found,) = [r for g in body["data"]["groups"] for r in g["rules"]]
            assert found["health"] == "ok", found
            return found["state"]

        prom.wait(lambda: age() is not None, 60, "the poll age to be scraped")
        time.sleep(3)  # several evaluations while the worker polls
        assert (age() or 0) < 3
        assert alert_state() == "inactive"

        trigger(d, "stall")
        prom.wait(lambda: alert_state() == "firing", 60, "StreamwatchConsumerStalled to fire")
        assert (age() or 0) > 3
    finally:
        prom.stop()
        assert worker.stop() == 0, worker.log()


def test_missing_prometheus_fails_naming_the_package(monkeypatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "PROMETHEUS", "/nonexistent/prometheus")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(pytest.fail.Exception, match="Debian package `prometheus`"):
        prometheus_binary()


def promtool_binary() -> str:
    path = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(path).is_file():
        pytest.fail("promtool not found: install the Debian package `prometheus`")
    return path


def _labels_rendered(template: str, labels: dict[str, str], value: str) -> str:
    """The annotation templates of the rules below: `$labels.x` and `$value` only."""
    out = template.replace("{{ $value }}", value)
    for k, v in labels.items():
        out = out.replace(f"{{{{ $labels.{k} }}}}", v)
    assert "{{" not in out, f"a template form this test does not render: {out}"
    return out


def test_operator_error_and_unjudgeable_rules_with_promtool(tmp_path) -> None:
    """The shipped rules on synthetic series (`promtool test rules`, Prometheus' own
    rule evaluation): an operator error in feed is a warning, one in tick (results
    lost) is critical, each fires at once and clears 10 minutes after the last error;
    an unjudgeable series fires after 15 minutes, summed over the workers."""
    inst = {"instance": "w1:6066", "job": "streamwatch"}

    def series(metric: str, values: str, **labels: str) -> dict[str, str]:
        rendered = ", ".join(f'{k}="{v}"' for k, v in {**labels, **inst}.items())
        return {"series": f"{metric}{{{rendered}}}", "values": values}

    def expected(name: str, value: str, **labels: str) -> dict[str, Any]:
        r = rule(name)
        shown = {**inst, **labels}
        return {
            "exp_labels": {
                **{k: v for k, v in shown.items() if k in r["expr"] or k == "instance"},
                "severity": r["labels"]["severity"],
            },
            "exp_annotations": {
                k: _labels_rendered(v, shown, value) for k, v in r["annotations"].items()
            },
        }

    errors = "streamwatch_operator_errors_total"
    cases = [
        # one feed error at minute 3 (0 before, 1 after); one tick error at minute 5
        series(errors, "0 0 0 1x30", monitor="ctr", stage="feed"),
        series(errors, "0 0 0 0 0 1x30", monitor="sensor", stage="tick"),
        series(errors, "0x35", monitor="drift", stage="collect"),
        series("streamwatch_unjudgeable_series", "2x30", monitor="sensor"),
        series("streamwatch_unjudgeable_series", "0x30", monitor="cluster"),
    ]
    tick = expected("StreamwatchOperatorResultsLost", "", monitor="sensor", stage="tick")
    tick["exp_labels"].pop("job", None)
    feed = expected("StreamwatchOperatorErrors", "", monitor="ctr")
    feed["exp_labels"].pop("job", None)
    unjudgeable = expected("StreamwatchUnjudgeableSeries", "2", monitor="sensor")
    unjudgeable["exp_labels"] = {"monitor": "sensor", "severity": "warning"}
    unjudgeable["exp_annotations"] = {
        k: _labels_rendered(v, {"monitor": "sensor"}, "2")
        for k, v in rule("StreamwatchUnjudgeableSeries")["annotations"].items()
    }
    tests = {
        "rule_files": [str(ALERT_RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": cases,
                "alert_rule_test": [
                    {"eval_time": "2m", "alertname": "StreamwatchOperatorErrors", "exp_alerts": []},
                    {
                        "eval_time": "4m",
                        "alertname": "StreamwatchOperatorErrors",
                        "exp_alerts": [feed],
                    },
                    {
                        "eval_time": "4m",
                        "alertname": "StreamwatchOperatorResultsLost",
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": "6m",
                        "alertname": "StreamwatchOperatorResultsLost",
                        "exp_alerts": [tick],
                    },
                    {
                        "eval_time": "15m",
                        "alertname": "StreamwatchOperatorErrors",
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": "14m",
                        "alertname": "StreamwatchUnjudgeableSeries",
                        "exp_alerts": [],
                    },
                    {
                        "eval_time": "16m",
                        "alertname": "StreamwatchUnjudgeableSeries",
                        "exp_alerts": [unjudgeable],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "rules_test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    done = subprocess.run(
        [promtool_binary(), "test", "rules", str(path)], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_unjudgeable_alert_fires_from_the_worker(tmp_path, broker) -> None:
    """streamwatch_unjudgeable_series of a real worker through a real Prometheus: the
    shipped StreamwatchUnjudgeableSeries rule (its `for` scaled from 15m to 1s) fires
    for 5-minute readings in a fixed 300 s window; it stays inactive before them."""
    prometheus_binary()
    shipped = rule("StreamwatchUnjudgeableSeries")
    rules_path = tmp_path / "fast-rules.yml"
    fast = {**shipped, "for": "1s"}
    rules_path.write_text(yaml.safe_dump({"groups": [{"name": "fast", "rules": [fast]}]}))
    d = Deployment(
        tmp_path,
        broker.bootstrap,
        "prom-unjudgeable",
        partitions=1,
        **{"monitors.sensor.options": {"adapt_window": False}},
    )
    now = int(time.time() * 1000)
    t0 = now - now % MIN - 240 * MIN
    slow = [
        (
            d.topics["sensor_readings"],
            b"s-slow",
            orjson.dumps({"sensor_id": "s-slow", "ts": t0 + i * 300_000, "values": {"t": 1.0}}),
            0,
        )
        for i in range(40)
    ]
    worker = WorkerProcess(d).start()
    prom = PrometheusProcess(tmp_path, f"127.0.0.1:{d.web_port}", [rules_path])

    def alert_state() -> str:
        body = prom.get("/api/v1/rules")
        (found,) = [r for g in body["data"]["groups"] for r in g["rules"]]
        assert found["health"] == "ok", found
        return found["state"]

    try:
        prom.start()
        wait_ready(worker)
        prom.wait(lambda: bool(prom.query("up == 1")), 60, "the worker scraped")
        time.sleep(3)
        assert alert_state() == "inactive"
        produce(broker.bootstrap, slow)
        prom.wait(lambda: alert_state() == "firing", 90, "StreamwatchUnjudgeableSeries")
        (firing,) = prom.query("ALERTS{alertname='StreamwatchUnjudgeableSeries'}")
        assert firing["metric"]["monitor"] == "sensor"
    finally:
        prom.stop()
        assert worker.stop() == 0, worker.log()
