"""The worker against a real ClickHouse server, over HTTP: skipped without one.

chDB (the embedded engine of every other integration test) does not exercise
the HTTP path: authentication, compression, connection errors and retries,
`readonly=1` enforced by the server. These tests do, when STREAMWATCH_CLICKHOUSE
is an http:// or https:// URL with credentials; otherwise they are skipped.
Kafka is the suite's own Tansu broker (the `broker` fixture), as everywhere.

Run them against the ClickHouse of docker-compose.yml (service `clickhouse`,
localhost:8123, user and password `streamwatch`); the compose Kafka is not needed:

    docker compose up -d clickhouse
    STREAMWATCH_CLICKHOUSE=http://streamwatch:streamwatch@localhost:8123/streamwatch \\
        .venv/bin/pytest tests/test_clickhouse_server.py -v -rs

Each test creates the schema in a fresh database `streamwatch_test_<random>`
over HTTP and drops it at the end, so the user needs CREATE/DROP DATABASE (the
compose user has them). The URL's own database (here `streamwatch`) must exist;
nothing is written to it.

The outage test stops the server mid-run and starts it again, with shell
commands run from the repository root:

    STREAMWATCH_TEST_CLICKHOUSE_STOP   default: docker compose stop clickhouse
    STREAMWATCH_TEST_CLICKHOUSE_START  default: docker compose start clickhouse

(set both for a server that is not the compose service, e.g. `sudo systemctl
stop clickhouse-server`). The server is started again in a `finally`, whatever
happens. The same checks with the failure injected in the client layer instead,
on chDB, are tests/test_outage.py.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas.tables import TABLES
from streams.connectors.clickhouse import connect, ensure_schema
from tests.harness import (
    ROOT,
    Deployment,
    WorkerProcess,
    committed,
    input_ends,
    produce,
)
from tests.test_e2e_ctr import MALFORMED, MIN, CtrTraffic
from tests.test_outage import (
    OUTAGE_SETTINGS,
    check_outage,
    consumed,
    outage_traffic,
    wait_written,
    window_rows,
)

URL = os.environ.get("STREAMWATCH_CLICKHOUSE", "")
STOP = os.environ.get("STREAMWATCH_TEST_CLICKHOUSE_STOP") or "docker compose stop clickhouse"
START = os.environ.get("STREAMWATCH_TEST_CLICKHOUSE_START") or "docker compose start clickhouse"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not URL.startswith(("http://", "https://")),
        reason="needs a ClickHouse server: set STREAMWATCH_CLICKHOUSE to its http(s):// URL, "
        "e.g. http://streamwatch:streamwatch@localhost:8123/streamwatch after "
        "`docker compose up -d clickhouse` (see tests/test_clickhouse_server.py)",
    ),
]


class Server:
    """The ClickHouse server at `url`, and a fresh database on it for one test."""

    # what /health's sink_error says while the server is down (streams.connectors.clickhouse.Writer)
    outage_error = "insert into"

    def __init__(self, url: str) -> None:
        self.url = url
        self.database = f"streamwatch_test_{secrets.token_hex(4)}"

    def client(self, readonly: bool = False) -> Any:
        return connect(self.url, readonly=readonly)

    def create(self) -> None:
        """The schema, in this test's database, over HTTP."""
        ensure_schema(self.client(), self.database)

    def drop(self) -> None:
        self.wait_up(120)
        self.client().command(f"DROP DATABASE IF EXISTS {self.database} SYNC")

    def deployment(self, tmp: Path, bootstrap: str, name: str, **overrides: Any) -> Deployment:
        """A worker configuration writing to this server and database."""
        return Deployment(
            tmp, bootstrap, name, clickhouse_dsn=self.url, database=self.database, **overrides
        )

    def stop(self) -> None:
        _shell(STOP)

    def start(self) -> None:
        _shell(START)

    def wait_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.client().command("SELECT 1")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)


def _shell(command: str) -> None:
    done = subprocess.run(
        command, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"`{command}` failed ({done.returncode}):\n{done.stderr}"


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server(URL)
    s.create()
    try:
        yield s
    finally:
        s.drop()


def _count(worker: WorkerProcess, sql: str) -> int:
    return worker.query(sql)[0]["n"]


def test_worker_writes_exact_windows_and_query_is_read_only(tmp_path, broker, server) -> None:
    db = server.database
    d = server.deployment(tmp_path, broker.bootstrap, "chs-ctr")
    traffic = CtrTraffic(d)
    worker = WorkerProcess(d).start()
    try:
        # the schema this test created over HTTP, in its own database
        tables = worker.query(f"SELECT name FROM system.tables WHERE database = '{db}'")
        assert sorted(r["name"] for r in tables) == sorted(t.name for t in TABLES)
        produce(broker.bootstrap, traffic.messages)
        final = (
            f"SELECT count() AS n FROM {db}.ctr_windows FINAL "
            "WHERE final = 1 AND campaign_id NOT LIKE 'zz-%'"
        )
        worker.wait_until(
            lambda: _count(worker, final) >= len(traffic.expected), 120, "every window final"
        )
        worker.wait_until(
            lambda: (
                _count(worker, f"SELECT count() AS n FROM {db}.alerts FINAL") >= 2
                and _count(worker, f"SELECT count() AS n FROM {db}.dead_letters FINAL")
                >= len(MALFORMED)
            ),
            30,
            "alerts and dead letters in ClickHouse",
        )
        assert worker.wait_http("/health", 10)["status"] == "ok"
    finally:
        assert worker.stop() == 0

    # read back with `streamwatch query`: its own read-only HTTP client
    assert window_rows(d) == traffic.expected
    finals = d.query(f"SELECT min(final) AS f FROM {db}.ctr_windows FINAL")
    assert finals == [{"f": 1}]
    alerts = d.query(
        "SELECT rule, entity, status, toUnixTimestamp64Milli(window_start) AS ws "
        f"FROM {db}.alerts FINAL ORDER BY ts, status"
    )
    drop = traffic.drop_ws
    assert [tuple(a.values()) for a in alerts] == [
        ("ctr_drop", "big", "firing", drop),
        ("ctr_drop", "big", "resolved", drop + MIN),
    ]
    letters = d.query(f"SELECT reason FROM {db}.dead_letters FINAL")
    assert sorted(r["reason"] for r in letters) == sorted(r for *_, r in MALFORMED)

    # `streamwatch query` refuses writes with an error; a SELECT works
    for sql in (
        f"INSERT INTO {db}.late_events SELECT * FROM {db}.late_events",
        f"DROP TABLE {db}.ctr_windows",
    ):
        done = d.cli("query", sql)
        assert done.returncode != 0 and "only SELECT" in done.stderr, (sql, done.stderr)
    # ... and its query on the server really runs with readonly=2 (no writes; the
    # limits are set in the same request) and the time limit, which the server enforces
    done = d.cli(
        "query",
        "--json",
        "SELECT name, value FROM system.settings "
        "WHERE name IN ('readonly', 'max_execution_time', 'max_threads') ORDER BY name",
    )
    assert done.returncode == 0, done.stderr
    settings = {r["name"]: r["value"] for r in map(orjson.loads, done.stdout.splitlines())}
    assert settings == {"max_execution_time": "10", "max_threads": "1", "readonly": "2"}
    done = d.cli("query", "SELECT 1 SETTINGS readonly = 0")
    assert done.returncode != 0 and "SETTINGS" in done.stderr, done.stderr
    readonly = server.client(readonly=True)
    for sql in (f"DROP TABLE {db}.ctr_windows", f"TRUNCATE TABLE {db}.ctr_windows"):
        with pytest.raises(Exception, match=r"(?i)readonly"):
            readonly.command(sql)
    assert window_rows(d) == traffic.expected  # nothing changed


def test_wrong_password_is_refused_clearly(tmp_path, broker) -> None:
    """Authentication over HTTP: a wrong password fails with one clear line that
    does not show the password."""
    parts = urllib.parse.urlsplit(URL)
    wrong = "not-the-password-7f3a"
    netloc = f"{parts.username or 'default'}:{wrong}@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    bad_url = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    bad = Deployment(tmp_path, broker.bootstrap, "chs-auth", clickhouse_dsn=bad_url)
    done = bad.cli("query", "SELECT 1")
    assert done.returncode != 0
    # refused by the server (AUTHENTICATION_FAILED, code 516), not unreachable
    assert "authentication" in done.stderr.lower() or "516" in done.stderr, done.stderr
    assert wrong not in done.stderr + done.stdout, done.stderr


def test_outage_by_stopping_the_server(tmp_path, broker, server) -> None:
    """The server goes away mid-run: the worker stays up, reports degraded, keeps its
    rows buffered at the bound, stops consuming there and commits nothing; once the
    server is back, every row is written exactly and the offsets are committed."""
    d = server.deployment(tmp_path, broker.bootstrap, "chs-outage", **OUTAGE_SETTINGS)
    traffic = outage_traffic(d)
    worker = WorkerProcess(d).start()
    stopping = False
    try:
        worker.wait_until(
            lambda: worker.wait_http("/health", 10, accept_503=True)["status"] == "ok",
            60,
            "a healthy start",
        )
        stopping = True
        server.stop()
        check_outage(worker, d, traffic.messages, server.outage_error)
        server.start()
        stopping = False
        # retries back off up to 30 s; the server needs a while to start as well
        wait_written(worker, traffic.expected, server.database, timeout=240)
        worker.wait_until(
            lambda: worker.wait_http("/health", 10, accept_503=True)["status"] == "ok",
            60,
            "health to recover",
        )
        assert consumed(worker) >= len(traffic.messages)
        ends = input_ends(d)
        worker.wait_until(lambda: committed(d) == ends, 60, "every offset committed")
    finally:
        try:
            if stopping:  # whatever failed: the server runs again after the test
                server.start()
        finally:
            code = worker.stop()
    assert code == 0
    assert window_rows(d) == traffic.expected
