"""Pages on the worker's (faust's) web server.

/health       200 when consuming and the sinks write, 503 with the reason otherwise
/metrics      Prometheus exposition
/api/query    ?sql=SELECT...  read-only query through the worker's ClickHouse
              client (in embedded mode the only way in while the worker runs)
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from streams.worker import Worker

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


def register_pages(app: Any, worker: Worker) -> None:
    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        runtime = worker.runtime
        body = {
            "status": "ok" if runtime.healthy else "degraded",
            "sink_error": runtime.last_error,
            "buffered_rows": worker.sinks.buffered,
            "partitions": sorted(worker.pipeline.owned_partitions()),
            "watermarks": runtime.pipeline.watermarks(),
        }
        return web.json(body, status=200 if runtime.healthy else 503)

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    if worker.settings.debug_endpoints:

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
