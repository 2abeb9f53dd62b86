"""Pages on the worker's (faust's) web server.

/health       200 when consuming and the sinks write, 503 with the reason otherwise
/health/live  503 when the worker failed or its polling loop is stuck (liveness)
/metrics      Prometheus exposition
/api/query    ?sql=SELECT...  read-only query through the worker's ClickHouse
              client (in embedded mode the only way in while the worker runs)
/             the live dashboard (streams/static/index.html); replaces faust's
              production index {"status": "OK"}, see register_pages
/static/<f>   the dashboard's files (only those in streams/static)
/api/dashboard  everything the dashboard shows, in one JSON document
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams.health import liveness, readiness

if TYPE_CHECKING:
    from streams.worker import Worker

STATIC_DIR = Path(__file__).parent / "static"
STATIC_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

READ_ONLY_PREFIXES = ("select", "with", "show", "describe", "desc", "explain", "exists")


def check_read_only(sql: str) -> str:
    """Refuse anything but a single read statement (ClickHouse readonly=1 is the
    enforcement on servers; this also guards chDB and gives a clear message)."""
    text = sql.strip().rstrip(";").strip()
    if not text.lower().startswith(READ_ONLY_PREFIXES) or ";" in text:
        raise ValueError(
            "only a single read-only statement (SELECT, WITH, SHOW, DESCRIBE) is allowed"
        )
    return text


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value


def run_query(worker_or_writer: Any, sql: str) -> dict[str, Any]:
    text = check_read_only(sql)
    result = worker_or_writer.query(text, settings={"readonly": 1})
    return {
        "columns": list(result.column_names),
        "rows": [[_jsonable(v) for v in row] for row in result.result_rows],
    }


DB = "streamwatch"
# Each series covers the last DASHBOARD_SPAN of event time its table holds
# (the event time of simulated or replayed traffic is not the wall clock).
DASHBOARD_SPAN = "INTERVAL 2 HOUR"
MAX_ANOMALIES = 1000
MAX_ALERTS = 50


def _since(table: str, column: str) -> str:
    return f"{column} >= (SELECT max({column}) FROM {DB}.{table}) - {DASHBOARD_SPAN}"


def _ms(column: str) -> str:
    return f"toUnixTimestamp64Milli({column})"


def dashboard_queries() -> dict[str, str]:
    """The dashboard's data, one read-only query per part (times in epoch ms)."""
    return {
        # CTR per campaign (variants summed) per window
        "ctr": f"""
            SELECT campaign_id, {_ms("window_end")} AS t,
                   sum(impressions) AS imps, sum(clicks) AS clks,
                   if(imps = 0, 0, clks / imps) AS ctr
            FROM {DB}.ctr_windows FINAL WHERE {_since("ctr_windows", "window_end")}
            GROUP BY campaign_id, window_end ORDER BY campaign_id, window_end""",
        "sensors": f"""
            SELECT sensor_id, metric, {_ms("window_end")} AS t, mean
            FROM {DB}.sensor_windows FINAL WHERE {_since("sensor_windows", "window_end")}
            ORDER BY metric, sensor_id, window_end""",
        "anomalies": f"""
            SELECT * FROM (
                SELECT sensor_id, metric, {_ms("ts")} AS t, value, method, score
                FROM {DB}.sensor_anomalies FINAL WHERE {_since("sensor_anomalies", "ts")}
                ORDER BY ts DESC LIMIT {MAX_ANOMALIES}
            ) ORDER BY t""",
        "drift": f"""
            SELECT model_id, feature, {_ms("window_end")} AS t, psi
            FROM {DB}.drift_scores FINAL WHERE {_since("drift_scores", "window_end")}
            ORDER BY model_id, feature, window_end""",
        "service": f"""
            SELECT model_id, model_version, {_ms("window_end")} AS t, requests,
                   error_rate, latency_p50, latency_p95, latency_p99
            FROM {DB}.inference_windows FINAL
            WHERE {_since("inference_windows", "window_end")}
            ORDER BY model_id, model_version, window_end""",
        "alerts": f"""
            SELECT {_ms("ts")} AS t, kind, rule, severity, status, entity, metric,
                   value, threshold, message
            FROM {DB}.alerts FINAL ORDER BY ts DESC, alert_id LIMIT {MAX_ALERTS}""",
        # alert moments on the CTR chart: every CTR alert in the charted span
        "ctr_alerts": f"""
            SELECT {_ms("ts")} AS t, entity, rule, severity, status, message
            FROM {DB}.alerts FINAL
            WHERE kind = 'ctr' AND ts >= (SELECT max(window_end) FROM {DB}.ctr_windows)
                                         - {DASHBOARD_SPAN}
            ORDER BY ts""",
    }


def build_dashboard(writer: Any) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name, sql in dashboard_queries().items():
        body[name] = run_query(writer, sql)
    body["generated_at"] = _jsonable(dt.datetime.now(dt.UTC))
    return body


def register_pages(app: Any, worker: Worker) -> None:
    # "/" first: faust (0.15) mounts its production index at "/" too (the
    # production_index blueprint, served whenever web_stats_enabled is off,
    # with no setting of its own), but only when the web server starts, after
    # these pages. aiohttp resolves a path to the first resource added for it,
    # so this page is the one served (tests/test_dashboard.py checks it).
    @app.page("/", name="dashboard")
    async def dashboard(web: Any, request: Any) -> Any:
        html = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
        return web.html(html, headers={"Cache-Control": "no-cache"})

    static_files = {
        p.name: p for p in STATIC_DIR.glob("*") if p.is_file() and p.suffix in STATIC_TYPES
    }

    @app.page("/static/{name}", name="static")
    async def static(web: Any, request: Any, name: str) -> Any:
        path = static_files.get(name)
        if path is None:
            return web.json({"error": f"no static file {name!r}"}, status=404)
        return web.bytes(
            path.read_bytes(),
            content_type=STATIC_TYPES[path.suffix],
            headers={"Cache-Control": "no-cache"},
        )

    @app.page("/api/dashboard")
    async def dashboard_data(web: Any, request: Any) -> Any:
        try:
            body = await asyncio.to_thread(build_dashboard, worker.writer)
        except Exception as exc:
            return web.json({"error": str(exc).splitlines()[0][:500]}, status=503)
        return web.json(body)

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        status, body = readiness(worker)  # streams/health.py says when it is 503
        return web.json(body, status=status)

    @app.page("/health/live")
    async def live(web: Any, request: Any) -> Any:
        status, body = liveness(worker)
        return web.json(body, status=status)

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    # test-only: also needs STREAMWATCH_TEST_FAULTS=clickhouse at start-up (streams/faults.py),
    # so a configuration file alone cannot open it
    if worker.settings.debug_endpoints and "clickhouse" in worker.faults.armed:

        @app.page("/debug/clickhouse")
        async def fail_clickhouse(web: Any, request: Any) -> Any:
            # simulates an outage in the client layer (chDB cannot be stopped alone)
            worker.writer.fail_writes = request.query.get("fail") == "1"
            return web.json({"fail_writes": worker.writer.fail_writes})

    @app.page("/api/query")
    async def query(web: Any, request: Any) -> Any:
        sql = request.query.get("sql", "")
        try:
            body = await asyncio.to_thread(run_query, worker.writer, sql)
        except ValueError as exc:
            return web.json({"error": str(exc)}, status=400)
        except Exception as exc:
            return web.json({"error": str(exc).splitlines()[0][:500]}, status=400)
        return web.json(body)
