"""The live dashboard at "/": a short simulated run, then the page in headless Chromium.

A 1200 event-second simulation (about 40k messages of all four input topics,
a few incidents) is published to the real broker, the worker runs as its own
process, and once it has written every table the dashboard is loaded in
Debian's Chromium (driven by selenium through Debian's chromedriver, no
browser download): the page must render every chart with data, log no
console error, and a screenshot is saved to tests/artifacts/dashboard.png.

Needs: apt `chromium chromium-driver`, pip `selenium`. Without them the test
fails (it does not skip) and says what to install.
"""

from __future__ import annotations

import shutil
import time
import urllib.request
from datetime import UTC, datetime

import pytest

from streams.cli.simulate import Incident, Scenario, Simulator
from tests.conftest import ARTIFACTS
from tests.harness import Deployment, WorkerProcess, produce

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL = (
    "the dashboard test needs Debian's Chromium and ChromeDriver and selenium: "
    "`apt-get install chromium chromium-driver` and `.venv/bin/pip install selenium`"
)
DURATION_S = 1200
START_MS = int(datetime(2026, 6, 1, tzinfo=UTC).timestamp() * 1000)
CAMPAIGNS = 3
SENSORS = 4
MODELS = 2
TABLES = (
    "ctr_windows",
    "sensor_windows",
    "sensor_anomalies",
    "drift_scores",
    "inference_windows",
    "experiment_windows",
    "alerts",
)


def scenario() -> Scenario:
    return Scenario(
        start_ms=START_MS,
        duration_s=DURATION_S,
        campaigns=CAMPAIGNS,
        sensors=SENSORS,
        models=MODELS,
        impressions_per_s=30.0,
        seed=7,
        regressor_per_s=0.0,  # the classifiers' labels only: MODELS model versions
        experiment_models=1,  # model-0's requests served by two arms (issue 16)
        incidents=[
            Incident("ctr_drop", "cmp-001", 420, 300, 0.1),
            Incident("sensor_spike", "sensor-01", 500, 3, 8),
            Incident("sensor_regime", "sensor-02", 700, 200, 6),
            Incident("latency_spike", "model-0", 600, 240, 4),
            Incident("error_spike", "model-1", 800, 200, 0.3),
            Incident("feature_drift", "model-0/distance_km", 750, 400, 2.0),
        ],
    )


def deployment(tmp, bootstrap: str, name: str = "dashboard") -> Deployment:
    # CTR windows are judged (and CTR alerts raised) once final: a 2-min
    # attribution window instead of 10 lets that happen within the short run
    options = {"options": {"attribution_ms": 120_000}}
    # quality windows are final 10 min after their end (the simulator's labels come
    # within 540 s): realized and estimated accuracy within the run
    quality = {"options": {"label_delay_ms": 600_000}}
    # every key of this small run hashes to partition 1: the experiment-keyed streams
    # would wait the default 120 s for partition 0's forwarders before their windows
    # close (streams/runtime/repartition.py); 10 s of silence lets them go within the test
    return Deployment(
        tmp,
        bootstrap,
        name,
        partitions=2,
        repartition_idle_s=10.0,
        **{"monitors.ctr": options, "monitors.quality": quality},
    )


def browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (PyPI)")
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: {INSTALL}", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1700",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


def test_dashboard_renders_live_data(tmp_path, broker) -> None:
    began = time.monotonic()
    d = deployment(tmp_path, broker.bootstrap)
    names = {
        "impressions": d.topics["impressions"],
        "clicks": d.topics["clicks"],
        "inference-logs": d.topics["inference_logs"],
        "sensor-readings": d.topics["sensor_readings"],
        "labels": d.topics["labels"],
    }
    messages = [
        (names[topic], key.encode(), value, None)
        for topic, key, value in Simulator(scenario()).messages()
        if topic != "__tick__"
    ]
    driver = None
    worker = WorkerProcess(d).start()
    try:
        # faust's own index is not what "/" serves
        with urllib.request.urlopen(worker.url("/"), timeout=10) as response:
            assert response.headers.get_content_type() == "text/html"
            assert b"streamwatch" in response.read()
        produce(broker.bootstrap, messages)
        counts_sql = "SELECT " + ", ".join(
            f"(SELECT count() FROM streamwatch.{t}) AS {t}" for t in TABLES
        )
        counts_sql += ", (SELECT count() FROM streamwatch.alerts WHERE kind = 'ctr') AS ctr_alerts"
        counts_sql += (
            ", (SELECT count() FROM streamwatch.quality_windows WHERE final = 1) AS quality_final"
        )
        counts: dict[str, int] = {}

        def every_table_has_rows() -> bool:
            counts.update(worker.query(counts_sql)[0])
            return all(v > 0 for v in counts.values())

        try:
            worker.wait_until(every_table_has_rows, 60, "every charted table to have rows")
        except AssertionError as exc:
            raise AssertionError(f"row counts {counts}: {exc}") from None
        served = worker.wait_http("/api/dashboard", 30)
        parts = (
            "ctr",
            "sensors",
            "anomalies",
            "drift",
            "service",
            "quality",
            "experiments",
            "alerts",
            "ctr_alerts",
        )
        for part in parts:
            assert served[part]["rows"], f"/api/dashboard has no {part} rows"

        driver = browser()
        driver.get(worker.url("/"))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            state = driver.execute_script("return window.dashboardState || null")
            if state and state["renders"] >= 2:  # the first render and one refresh
                break
            time.sleep(0.3)
        else:
            pytest.fail(f"the dashboard did not render and refresh: {state}")
        # what the page drew and the data it drew it from, in one go (no
        # refresh can come between them)
        counts, data = driver.execute_script(
            """const n = (s) => document.querySelectorAll(s).length;
            return [{
              ctr_lines: n('#ctr-chart path.series'),
              ctr_alerts: n('#ctr-chart .alert-mark'),
              sensor_lines: n('#sensor-charts path.series'),
              anomalies: n('#sensor-charts .anomaly'),
              regime_marks: n('#sensor-charts .regime-mark'),
              heat_cells: n('#drift-heatmap rect.cell'),
              latency_lines: n('#service-charts path.series'),
              error_lines: n('#error-chart path.series'),
              quality_lines: n('#quality-charts path.series'),
              experiment_lines: n('#experiment-charts path.series'),
              experiment_charts: n('#experiment-charts .chart-title'),
              alert_rows: n('#alerts-table tbody tr'),
              resolved_rows: n('#alerts-table tbody tr.resolved'),
              resolved_badges: n('#alerts-table tbody tr.resolved .badge.resolved'),
              resolved_red: n('#alerts-table tr.resolved .badge.critical, '
                + '#alerts-table tr.resolved .badge.warning, #alerts-table tr.resolved.critical'),
              firing_badges: n('#alerts-table tbody tr:not(.resolved) .badge:not(.resolved)'),
              error: document.querySelector('#status').dataset.error || ''
            }, window.dashboardState.lastData]"""
        )
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1400, height + 20)  # the whole page on the screenshot
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "dashboard.png"))
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    finally:
        if driver is not None:
            driver.quit()
        assert worker.stop() == 0

    print(f"\ndashboard: {counts}; {time.monotonic() - began:.0f} s")
    assert not errors, f"console errors: {errors}"
    assert counts["error"] == ""
    campaigns = {r[0] for r in data["ctr"]["rows"]}
    assert counts["ctr_lines"] == len(campaigns) == CAMPAIGNS
    sensor_series = {(r[0], r[1]) for r in data["sensors"]["rows"]}
    assert counts["sensor_lines"] == len(sensor_series) == SENSORS * 3
    # single-metric anomalies are dots; the cluster method's (metric
    # "pressure|temperature|vibration") a mark on each of those metrics' charts
    metrics = {r[1] for r in data["sensors"]["rows"]}
    readings = [r for r in data["anomalies"]["rows"] if "|" not in r[1]]
    regimes = [m for r in data["anomalies"]["rows"] if "|" in r[1] for m in r[1].split("|")]
    assert counts["anomalies"] == len([r for r in readings if r[1] in metrics]) > 0
    assert counts["regime_marks"] == len([m for m in regimes if m in metrics])
    drift_cells = {(r[0], r[1], r[2]) for r in data["drift"]["rows"]}
    assert counts["heat_cells"] == len(drift_cells) > 0
    model_versions = {(r[0], r[1]) for r in data["service"]["rows"]}
    assert counts["latency_lines"] == 3 * len(model_versions) == 3 * MODELS
    assert counts["error_lines"] == len(model_versions)
    # model quality: per model version a realized line (final windows) and an estimated
    # one (CBPE, once the reference is complete) where there are points
    cols = data["quality"]["columns"]
    q = [dict(zip(cols, r, strict=True)) for r in data["quality"]["rows"]]
    lines = 0
    for mv in {(r["model_id"], r["model_version"]) for r in q}:
        mine = [r for r in q if (r["model_id"], r["model_version"]) == mv]
        lines += any(r["final"] and r["accuracy"] is not None for r in mine)
        lines += any(r["estimated_accuracy"] is not None for r in mine)
    assert counts["quality_lines"] == lines >= MODELS
    # experiments: a chart per (experiment, metric), a line per arm; the SRM's shares of
    # exp-cmp-000 and exp-cmp-001, and the guardrails of exp-model's two arms
    arms = {(r[0], r[2], r[1]) for r in data["experiments"]["rows"]}
    assert counts["experiment_lines"] == len(arms)
    assert counts["experiment_charts"] == len({(e, m) for e, m, _ in arms})
    assert {
        ("exp-model", "latency_p99", "control"),
        ("exp-model", "latency_p99", "treatment"),
    } <= arms
    assert {e for e, m, _ in arms if m == "share"} == {"exp-cmp-000", "exp-cmp-001"}
    assert counts["alert_rows"] == len(data["alerts"]["rows"]) > 0
    # resolved alerts read as resolved: the green badge, never a severity badge
    # (issue 11 point 6); their severity is kept in the data for routing
    status_at = data["alerts"]["columns"].index("status")
    resolved = [r for r in data["alerts"]["rows"] if r[status_at] == "resolved"]
    assert counts["resolved_rows"] == counts["resolved_badges"] == len(resolved) > 0
    assert counts["resolved_red"] == 0
    assert counts["firing_badges"] == len(data["alerts"]["rows"]) - len(resolved)
    assert counts["ctr_alerts"] == len(data["ctr_alerts"]["rows"]) > 0
