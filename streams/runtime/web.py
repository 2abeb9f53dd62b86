"""Pages on the worker's (faust's) web server.

/health       200 when consuming and the sinks write, 503 with the reason otherwise
/health/live  503 when the worker failed or its polling loop is stuck (liveness)
/metrics      Prometheus exposition
/api/query    one read-only SELECT through a ClickHouse client of its own:
              GET ?sql=... or POST (a JSON body {"sql": ...} or the SQL as text)
/             the live dashboard (streams/runtime/static/index.html); replaces faust's
              production index {"status": "OK"}, see register_pages
/static/<f>   the dashboard's files (only those in streams/runtime/static)
/api/dashboard  everything the dashboard shows, in one JSON document

Every /api/ (and /debug/) request passes `refusal` first: the bearer token
when STREAMWATCH_WEB_TOKEN is set, and never a request from another origin
(a page elsewhere must not be able to use the browser of someone on this
machine). Queries are judged by `streams.connectors.sqlguard` and run within the limits
of `streams.connectors.clickhouse.read_limits`, on threads of their own, so neither the
event loop nor the pipeline's threads wait for them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import hmac
import ipaddress
import logging
import math
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams.connectors.clickhouse import ClickHouseError, QueryBusy, Reader
from streams.connectors.sqlguard import QueryRefused, one_line
from streams.runtime.health import liveness, readiness

if TYPE_CHECKING:
    from streams.config import Settings
    from streams.runtime.parts import WorkerParts

log = logging.getLogger("streamwatch.web")

STATIC_DIR = Path(__file__).parent / "static"
STATIC_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
GUARDED_PREFIXES = ("/api/", "/debug/")
MAX_PENDING = 4  # requests per reader, running or waiting
INT64_MIN, UINT64_MAX = -(2**63), 2**64 - 1


def jsonable(value: Any, nonfinite_as_text: bool = True) -> Any:
    """Any value clickhouse-connect returns, as plain JSON data.

    Exact where JSON numbers are not: Decimal and integers beyond 64 bits
    (Int128/UInt256) become strings, NaN/inf become "nan"/"inf"/"-inf" (or
    null for the dashboard's charts); IPv4/IPv6/UUID/Enum are their text,
    Map a JSON object (keys as text), Array/Tuple lists, DateTime ISO 8601
    in UTC with milliseconds, bytes UTF-8 (undecodable bytes escaped as \\xNN).

    >>> jsonable([ipaddress.IPv4Address("1.2.3.4"), decimal.Decimal("1.10"), 2**70])
    ['1.2.3.4', '1.10', '1180591620717411303424']
    >>> jsonable({1: float("nan")}), jsonable(float("-inf"), nonfinite_as_text=False)
    ({'1': 'nan'}, None)
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if INT64_MIN <= value <= UINT64_MAX else str(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return str(value) if nonfinite_as_text else None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="backslashreplace")
    if isinstance(value, dict):
        return {
            k if isinstance(k, str) else str(jsonable(k, nonfinite_as_text)): jsonable(
                v, nonfinite_as_text
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v, nonfinite_as_text) for v in value]
    if isinstance(value, decimal.Decimal | uuid.UUID | ipaddress.IPv4Address):
        return str(value)
    return str(value)  # IPv6Address, Enum members, anything else: its text


def run_query(reader: Reader, sql: str) -> dict[str, Any]:
    """One judged, limited read; the result as JSON-ready columns and rows."""
    columns, rows = reader.read(sql)
    return {"columns": columns, "rows": [[jsonable(v) for v in row] for row in rows]}


def refusal(settings: Settings, path: str, headers: Any, host: str) -> tuple[int, str] | None:
    """Why this request to a guarded path is refused (status, message), or None.

    - another origin: `Sec-Fetch-Site` other than same-origin/none (every
      current browser sends it, also for <img>/<script>/form requests), or an
      `Origin` whose host is not this request's `Host`;
    - no token configured: the Host must be an IP address or localhost, so
      a page on another site cannot reach this server through a DNS name of
      its own that resolves here (DNS rebinding);
    - a token configured: `Authorization: Bearer <token>`, compared in
      constant time.

    >>> from streams.config import Settings
    >>> refusal(Settings(), "/api/query", {"Sec-Fetch-Site": "cross-site"}, "127.0.0.1:6066")
    (403, 'cross-origin request refused')
    >>> refusal(Settings(), "/api/query", {}, "127.0.0.1:6066") is None
    True
    """
    if not path.startswith(GUARDED_PREFIXES):
        return None
    site = headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return 403, "cross-origin request refused"
    origin = headers.get("Origin")
    if origin is not None and (origin == "null" or urlsplit(origin).netloc != host):
        return 403, "cross-origin request refused"
    token = settings.web_token
    if not token:
        name = urlsplit(f"//{host}").hostname or ""
        if name != "localhost" and not _is_ip(name):
            return 403, (
                f"host name {name!r} refused: without STREAMWATCH_WEB_TOKEN the API answers "
                "only requests addressed to an IP address or localhost"
            )
        return None
    given = headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        value.strip().encode(), token.encode()
    ):
        return 401, "a bearer token is required (STREAMWATCH_WEB_TOKEN)"
    return None


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class Readers:
    """The web server's readers, opened on first use (a second chDB handle on
    the worker's engine, or a second HTTP client), each with its own threads:
    ad-hoc queries never wait behind the dashboard or the other way round, and
    neither uses the default executor the pipeline's inserts and commits run in."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._readers: dict[str, Reader] = {}
        self.pending: dict[str, int] = {}
        self._opening = threading.Lock()
        self.pools = {
            "query": ThreadPoolExecutor(2, thread_name_prefix="sw-query"),
            "dashboard": ThreadPoolExecutor(1, thread_name_prefix="sw-dashboard"),
        }

    def reader(self, name: str) -> Reader:
        with self._opening:  # the pool's threads may ask at once
            if name not in self._readers:
                s = self.settings
                self._readers[name] = Reader.open(
                    s.clickhouse_dsn(), s.clickhouse.database, s.query_timeout_s, s.query_max_rows
                )
            return self._readers[name]

    async def run(self, name: str, fn: Any, *args: Any) -> Any:
        # a bounded queue: past MAX_PENDING waiting requests, refuse at once
        if self.pending.get(name, 0) >= MAX_PENDING:
            raise QueryBusy(f"{MAX_PENDING} queries are already waiting; try again later")
        self.pending[name] = self.pending.get(name, 0) + 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self.pools[name], lambda: fn(self.reader(name), *args)
            )
        finally:
            self.pending[name] -= 1


def error_status(exc: BaseException) -> tuple[int, str]:
    """HTTP status and one-line message for a failed query."""
    if isinstance(exc, QueryRefused):
        return 400, str(exc)
    if isinstance(exc, QueryBusy):
        return 503, str(exc)
    if isinstance(exc, ClickHouseError):
        return 400, one_line(exc)
    return 500, f"{type(exc).__name__}: {one_line(exc)}"


DB = "streamwatch"
# Each series covers the last DASHBOARD_SPAN of event time its table holds
# (the event time of simulated or replayed traffic is not the wall clock).
DASHBOARD_SPAN = "INTERVAL 2 HOUR"
MAX_ANOMALIES = 1000
MAX_ALERTS = 50
MAX_CAUSED = 20  # latest firing alerts with possible causes (docs/causes.md)


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
        # model quality: realized accuracy of final windows, and the CBPE estimate
        "quality": f"""
            SELECT model_id, model_version, {_ms("window_end")} AS t, final, accuracy,
                   estimated_accuracy, mae, coverage
            FROM {DB}.quality_windows FINAL
            WHERE model_version != '' AND {_since("quality_windows", "window_end")}
            ORDER BY model_id, model_version, window_end""",
        "alerts": f"""
            SELECT {_ms("ts")} AS t, kind, rule, severity, status, entity, metric,
                   value, threshold, message,
                   JSONExtractArrayRaw(details, 'possible_causes') AS causes
            FROM {DB}.alerts FINAL ORDER BY ts DESC, alert_id LIMIT {MAX_ALERTS}""",
        # the latest firing alerts that name possible causes (each cause: a JSON object)
        "caused": f"""
            SELECT {_ms("ts")} AS t, kind, rule, severity, entity, message,
                   JSONExtractArrayRaw(details, 'possible_causes') AS causes
            FROM {DB}.alerts FINAL
            WHERE status = 'firing' AND JSONHas(details, 'possible_causes')
            ORDER BY ts DESC, alert_id LIMIT {MAX_CAUSED}""",
        # experiments (issue 16): each arm's traffic share per window (the SRM's view)
        # and its guardrail metrics (p99 latency, error rate) against the control
        "experiments": f"""
            SELECT experiment, variant, metric, {_ms("window_end")} AS t, value,
                   control_value, p_value
            FROM {DB}.experiment_windows FINAL
            WHERE variant != '' AND metric IN ('share', 'latency_p99', 'error_rate')
              AND {_since("experiment_windows", "window_end")}
            ORDER BY experiment, metric, variant, window_end""",
        # alert moments on the experiment charts: SRM and experiment alerts in the span
        "experiment_alerts": f"""
            SELECT {_ms("ts")} AS t, kind, entity, rule, severity, status, message
            FROM {DB}.alerts FINAL
            WHERE kind IN ('srm', 'experiment')
              AND ts >= (SELECT max(window_end) FROM {DB}.experiment_windows)
                        - {DASHBOARD_SPAN}
            ORDER BY ts""",
        # alert moments on the CTR chart: every CTR alert in the charted span
        "ctr_alerts": f"""
            SELECT {_ms("ts")} AS t, entity, rule, severity, status, message
            FROM {DB}.alerts FINAL
            WHERE kind = 'ctr' AND ts >= (SELECT max(window_end) FROM {DB}.ctr_windows)
                                         - {DASHBOARD_SPAN}
            ORDER BY ts""",
    }


def build_dashboard(reader: Reader) -> dict[str, Any]:
    """The dashboard's document (the project's own SQL: limited, not judged)."""
    body: dict[str, Any] = {}
    for name, sql in dashboard_queries().items():
        columns, rows = reader.read(sql, judged=False)
        body[name] = {
            "columns": columns,
            "rows": [[jsonable(v, nonfinite_as_text=False) for v in row] for row in rows],
        }
    body["generated_at"] = jsonable(dt.datetime.now(dt.UTC))
    return body


def _json(web: Any, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Any:
    # serialised here: faust's orjson refuses IPv4, Decimal and >64-bit integers
    return web.bytes(
        orjson.dumps(body), content_type="application/json", status=status, headers=headers
    )


async def _sql_of(request: Any) -> str:
    """The SQL text of a /api/query request: ?sql=, or a POST body (JSON or text)."""
    if request.method != "POST":
        return str(request.query.get("sql", ""))
    raw = await request.read()
    if request.content_type == "application/json":
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise QueryRefused(f"the request body is not JSON: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("sql"), str):
            raise QueryRefused('the JSON body must be {"sql": "SELECT ..."}')
        return str(data["sql"])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise QueryRefused("the request body is not UTF-8 text") from None


def register_pages(app: Any, worker: WorkerParts) -> None:
    from aiohttp import web as aiohttp_web
    from faust.web import View

    settings = worker.settings
    readers = Readers(settings)

    # every route, present and future: the guard runs before the handler
    @aiohttp_web.middleware
    async def guard(request: Any, handler: Any) -> Any:
        refused = refusal(settings, request.path, request.headers, request.host)
        if refused is not None:
            status, message = refused
            extra = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
            return aiohttp_web.Response(
                body=orjson.dumps({"error": message}),
                status=status,
                content_type="application/json",
                headers=extra,
            )
        return await handler(request)

    app.web.web_app.middlewares.append(guard)

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
            body = await readers.run("dashboard", build_dashboard)
        except Exception as exc:
            return _json(web, {"error": error_status(exc)[1]}, status=503)
        return _json(web, body)

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        status, body = readiness(worker)  # streams/runtime/health.py says when it is 503
        # a receiver that is down is reported, never a 503: alerts wait durably in the
        # delivery log, and taking the pipeline out of service would not bring it back
        delivery = getattr(worker.app, "streamwatch_delivery", None)
        if delivery is not None:
            body["delivery"] = delivery.status()
        return web.json(body, status=status)

    @app.page("/health/live")
    async def live(web: Any, request: Any) -> Any:
        status, body = liveness(worker)
        return web.json(body, status=status)

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    # test-only: also needs STREAMWATCH_TEST_FAULTS=clickhouse at start-up
    # (streams/runtime/faults.py), so a configuration file alone cannot open it
    if worker.settings.debug_endpoints and "clickhouse" in worker.faults.armed:

        @app.page("/debug/clickhouse")
        async def fail_clickhouse(web: Any, request: Any) -> Any:
            # simulates an outage in the client layer (chDB cannot be stopped alone)
            worker.writer.fail_writes = request.query.get("fail") == "1"
            return web.json({"fail_writes": worker.writer.fail_writes})

    @app.page("/api/query")
    class QueryView(View):
        """GET ?sql= for short reads, POST for any length (the CLI posts)."""

        async def get(self, request: Any) -> Any:
            return await self.answer(request)

        async def post(self, request: Any) -> Any:
            return await self.answer(request)

        async def answer(self, request: Any) -> Any:
            try:
                sql = await _sql_of(request)
                body = await readers.run("query", run_query, sql)
            except Exception as exc:
                status, message = error_status(exc)
                if status == 500:
                    log.error("/api/query failed: %s", message)
                return _json(self, {"error": message}, status=status)
            return _json(self, body)
