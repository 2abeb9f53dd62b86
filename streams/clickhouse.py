"""ClickHouse access: one client for the embedded engine (chDB) and for servers.

`clickhouse_connect.get_client(dsn=...)` gives the same client object for
`chdb:///path` (in-process ClickHouse) and for `http(s)://user:pass@host:port/db`.
chDB allows one process per data directory, so in embedded mode every read
while the worker runs goes through the worker's own client.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from schemas.tables import TABLES_BY_NAME, schema_sql


class ClickHouseError(RuntimeError):
    pass


def connect(dsn: str, readonly: bool = False) -> Any:
    """A clickhouse-connect client for `dsn`; `readonly` asks the server for readonly=1."""
    import clickhouse_connect

    settings: dict[str, Any] = {}
    if readonly and not dsn.startswith("chdb://"):
        settings["readonly"] = 1
    if dsn.startswith("chdb://"):
        path = dsn.removeprefix("chdb://")
        if path:
            Path(path).mkdir(parents=True, exist_ok=True)
        try:
            import chdb  # noqa: F401
        except ImportError:
            raise ClickHouseError(
                "the embedded ClickHouse needs chdb-core: pip install 'streamwatch[embedded]', "
                "or set STREAMWATCH_CLICKHOUSE to a server URL"
            ) from None
    try:
        return clickhouse_connect.get_client(dsn=dsn, settings=settings)
    except Exception as exc:
        raise ClickHouseError(f"cannot open ClickHouse at {_safe(dsn)}: {exc}") from exc


def _safe(dsn: str) -> str:
    if "@" in dsn and "://" in dsn:
        scheme, rest = dsn.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return dsn


def ensure_schema(client: Any, database: str) -> None:
    for statement in schema_sql(database).split(";\n"):
        if statement.strip():
            client.command(statement)


def _cell(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "String" and isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return value


class Writer:
    """Inserts rows (dicts keyed by column name) into the project's tables.

    Thread-safe: the worker calls it from a thread so the event loop keeps
    running while ClickHouse works. `fail_writes` lets tests simulate an outage
    in the client layer (the embedded engine cannot be stopped separately).
    """

    def __init__(self, client: Any, database: str) -> None:
        self.client = client
        self.database = database
        self.lock = threading.Lock()
        self.fail_writes = False

    def insert(self, table: str, rows: Sequence[dict[str, Any]]) -> float:
        """Insert `rows`; return seconds taken. Raises ClickHouseError on failure."""
        if not rows:
            return 0.0
        spec = TABLES_BY_NAME[table]
        columns = [(n, k) for n, k in spec.columns if n in rows[0]]
        names = [n for n, _ in columns]
        data = [[_cell(k, row.get(n)) for n, k in columns] for row in rows]
        started = time.perf_counter()
        with self.lock:
            if self.fail_writes:
                raise ClickHouseError("ClickHouse writes are failing (injected)")
            try:
                self.client.insert(f"{self.database}.{table}", data, column_names=names)
            except Exception as exc:
                raise ClickHouseError(f"insert into {table} failed: {exc}") from exc
        return time.perf_counter() - started

    def query(
        self,
        sql: str,
        parameters: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> Any:
        with self.lock:
            return self.client.query(sql, parameters=parameters, settings=settings)
