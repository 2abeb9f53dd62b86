"""ClickHouse access: one client for the embedded engine (chDB) and for servers.

`clickhouse_connect.get_client(dsn=...)` gives the same client object for
`chdb:///path` (in-process ClickHouse) and for `http(s)://user:pass@host:port/db`.
chDB allows one process per data directory, so in embedded mode every read
while the worker runs goes through the worker's process. Reads that people
ask for (the web server's /api/query and dashboard, `streamwatch query`) go
through a `Reader`: a client of its own (in chDB a second connection handle on
the same engine, with its own lock), never the `Writer`'s, so a slow read
cannot delay an insert or a commit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import orjson

from schemas.rows import Row
from schemas.tables import TABLES_BY_NAME, RowError, Table, schema_sql
from streams.connectors.sqlguard import Judge, QueryRefused, one_line


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


def columns_of(spec: Table, rows: Sequence[Row]) -> list[Sequence[Any]]:
    """The rows as columns, every column of `spec.insert_columns` (all fields of its row
    type), JSON fields encoded. Raises RowError for a row of another type: no row can
    lack a column or give one the table does not have (it was built from the type).

    >>> from schemas.rows import LateEventRow
    >>> from schemas.tables import LATE_EVENTS, SRM_CHECKS
    >>> late = LateEventRow(monitor="ctr", source_topic="clicks", partition=0, offset=7,
    ...     event_ts=1, watermark=2, window_start=0, key="c1")
    >>> columns_of(LATE_EVENTS, [late])
    [('ctr',), ('clicks',), (0,), (7,), (1,), (2,), (0,), ('c1',)]
    >>> columns_of(SRM_CHECKS, [late])
    Traceback (most recent call last):
    ...
    schemas.tables.RowError: a LateEventRow row sent to srm_checks, whose rows are SrmCheckRow
    """
    for kind in {row.__class__ for row in rows}:
        if kind is not spec.row:
            raise RowError(
                f"a {kind.__name__} row sent to {spec.name}, whose rows are {spec.row.__name__}"
            )
    # fields in declaration order = insert_columns; zip transposes rows into columns
    # (several times faster than a getattr per cell: BENCHMARKS.md)
    columns: list[Sequence[Any]] = list(zip(*map(msgspec.structs.astuple, rows), strict=True))
    for name in spec.json_fields:
        i = spec.insert_columns.index(name)
        columns[i] = [None if v is None else orjson.dumps(v).decode() for v in columns[i]]
    return columns


class Writer:
    """Inserts typed rows (`schemas.rows`) into the project's tables: every column but
    those ClickHouse fills (`inserted_at`), column-oriented.

    Thread-safe: the worker calls it from a thread so the event loop keeps
    running while ClickHouse works. `fail_writes` lets tests simulate an outage
    in the client layer (the embedded engine cannot be stopped separately).
    """

    def __init__(self, client: Any, database: str) -> None:
        self.client = client
        self.database = database
        self.lock = threading.Lock()
        self.fail_writes = False

    def insert(self, table: str, rows: Sequence[Row]) -> float:
        """Insert `rows`; return seconds taken. Raises ClickHouseError on failure, and
        `schemas.tables.RowError` (before anything is written) for a row that is not of
        the table's row type."""
        if not rows:
            return 0.0
        spec = TABLES_BY_NAME[table]
        data = columns_of(spec, rows)
        started = time.perf_counter()
        with self.lock:
            if self.fail_writes:
                raise ClickHouseError("ClickHouse writes are failing (injected)")
            try:
                self.client.insert(
                    f"{self.database}.{table}",
                    data,
                    column_names=list(spec.insert_columns),
                    column_oriented=True,
                )
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


# ClickHouse's error codes for the limits of read_limits, and the setting behind each
LIMIT_HINTS = {
    "TIMEOUT_EXCEEDED": "the time limit is query_timeout_s in the configuration",
    "TOO_MANY_ROWS_OR_BYTES": "the result limit is query_max_rows rows (and 64 MB)",
}


class QueryBusy(RuntimeError):
    """Another read holds this reader for longer than the bounded wait."""


def read_limits(timeout_s: float, max_result_rows: int) -> dict[str, Any]:
    """ClickHouse settings sent with every read a person asks for.

    readonly=2: no writes or DDL, but the limits below may be set in the same
    request (readonly=1 refuses to change even max_execution_time); the query
    text itself cannot change settings because `streams.connectors.sqlguard` refuses any
    SETTINGS clause. max_threads=1 keeps an expensive read from taking the
    cores the pipeline needs (measured on chDB: with it, inserts beside a
    saturating read kept their usual latency; BENCHMARKS.md).
    """
    return {
        "readonly": 2,
        "max_execution_time": max(1, round(timeout_s)),
        "timeout_overflow_mode": "throw",
        "max_rows_to_read": 2_000_000_000,
        "max_bytes_to_read": 50_000_000_000,
        "read_overflow_mode": "throw",
        "max_result_rows": max_result_rows,
        "max_result_bytes": 64_000_000,
        "result_overflow_mode": "throw",
        "max_memory_usage": 2_000_000_000,
        "max_threads": 1,
    }


class Reader:
    """Limited reads on a client of their own (see the module's docstring).

    One read at a time per reader; a caller waits at most `wait_s` for the
    previous one (bounded by its own time limit) and then gets QueryBusy.
    """

    def __init__(self, client: Any, database: str, limits: dict[str, Any], wait_s: float) -> None:
        self.client = client
        self.database = database
        self.limits = limits
        self.wait_s = wait_s
        self.lock = threading.Lock()
        self.judge = Judge(client)

    @classmethod
    def open(
        cls, dsn: str, database: str, timeout_s: float = 10, max_result_rows: int = 100_000
    ) -> Reader:
        return cls(connect(dsn), database, read_limits(timeout_s, max_result_rows), timeout_s + 5)

    def read(self, sql: str, judged: bool = True) -> tuple[list[str], list[Sequence[Any]]]:
        """Run one read; `judged=False` only for the project's own constant SQL.

        Raises QueryRefused (not a plain read), QueryBusy, or ClickHouseError
        (ClickHouse's own message, one line: a limit, a syntax or type error).
        """
        if not self.lock.acquire(timeout=self.wait_s):
            raise QueryBusy(f"another query is still running (waited {self.wait_s:.0f} s)")
        try:
            text = self.judge.check(sql) if judged else sql
            try:
                result = self.client.query(text, settings=self.limits)
            except QueryRefused:
                raise
            except Exception as exc:
                message = _clickhouse_message(exc)
                for code, hint in LIMIT_HINTS.items():
                    if code in message:
                        message += f"; {hint}"
                raise ClickHouseError(message) from None
            return list(result.column_names), result.result_rows
        finally:
            self.lock.release()


def _clickhouse_message(exc: BaseException) -> str:
    """ClickHouse's message in one line, without the client's wrapping."""
    text = one_line(exc)
    if "DB::Exception: " in text:
        code = text.split("DB::Exception: ", 1)[0].strip().removesuffix(".")
        body = text.split("DB::Exception: ", 1)[1]
        while "DB::Exception: " in body:  # chDB nests the same message
            body = body.split("DB::Exception: ", 1)[1]
        text = f"{body} ({code})" if code.startswith("Code:") else body
    return text[:500]
