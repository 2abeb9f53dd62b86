"""The web server cannot change anything (issue 11, point 3; contract v2).

Against the real worker (its own process, the real broker, chDB): every
attack on /api/query and `streamwatch query` fails with a one-line error and
touches nothing; cross-origin requests and requests without the token are
refused; the server listens on loopback unless told otherwise; a slow query
neither blocks the web server nor delays a single insert or commit of the
pipeline, which keeps writing throughout (dead letters from a steady stream
of bad messages, whose inserts are timed by the worker's own histogram).
Every ClickHouse type the query path returns prints, in JSON and in the
CLI's table, and SQL longer than a URL works.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.config import Settings, load_settings
from streams.runtime.web import refusal
from tests.harness import Deployment, WorkerProcess, produce

pytestmark = pytest.mark.integration

TOKEN = "t0k3n-for-tests"
TIMEOUT_S = 3
MAX_ROWS = 1000
# Slow per row (~40 ns on one core here) so that the time limit, not the 2e9 rows-read
# limit, stops it: a bare cityHash64(number) reads 2e9 rows within 3 s on a fast machine.
SLOW_QUERY = (
    "SELECT count() FROM system.numbers WHERE cityHash64(repeat(toString(number), 20)) = {}"
)


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory, broker: Any) -> Any:
    tmp = tmp_path_factory.mktemp("websec")
    d = Deployment(
        tmp,
        broker.bootstrap,
        "websec",
        partitions=1,
        web_token=TOKEN,
        query_timeout_s=TIMEOUT_S,
        query_max_rows=MAX_ROWS,
    )
    w = WorkerProcess(d).start()
    try:
        yield w
    finally:
        assert w.stop() == 0


@pytest.fixture(scope="module")
def open_worker(tmp_path_factory: pytest.TempPathFactory, broker: Any) -> Any:
    """A worker with the defaults: no token (as in the report)."""
    d = Deployment(
        tmp_path_factory.mktemp("websec-open"), broker.bootstrap, "websec-open", partitions=1
    )
    w = WorkerProcess(d).start()
    try:
        yield w
    finally:
        assert w.stop() == 0


def call(
    w: WorkerProcess,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    token: str | None = TOKEN,
    timeout: float = 30,
) -> tuple[int, Any, dict[str, str]]:
    """(status, JSON body, headers) of one request; errors are answers too."""
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(w.url(path), data=body, headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, orjson.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read()), dict(exc.headers)


def get_query(w: WorkerProcess, sql: str, **kwargs: Any) -> tuple[int, Any, dict[str, str]]:
    return call(w, "/api/query?" + urllib.parse.urlencode({"sql": sql}), **kwargs)


def post_query(w: WorkerProcess, sql: str, **kwargs: Any) -> tuple[int, Any, dict[str, str]]:
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    return call(w, "/api/query", orjson.dumps({"sql": sql}), headers=headers, **kwargs)


def one_line_error(body: Any) -> str:
    assert set(body) == {"error"}, body
    message = body["error"]
    assert isinstance(message, str) and message and "\n" not in message, message
    assert "Traceback" not in message
    return message


# -- attacks -----------------------------------------------------------------

ATTACKS = [
    ("SELECT 1 INTO OUTFILE '{target}' TRUNCATE", "INTO OUTFILE"),
    ("SELECT 'x' INTO OUTFILE '{target}' AND STDOUT", "INTO OUTFILE"),
    ("SELECT * FROM (SELECT 1) INTO OUTFILE '{target}'", "INTO OUTFILE"),
    ("SELECT * FROM file('/etc/passwd', 'LineAsString')", "table function file()"),
    ("SELECT file('/etc/hostname')", "function file()"),
    ("SELECT * FROM url('http://127.0.0.1:1/x', 'TSV', 'a String')", "table function url()"),
    ("SELECT * FROM executable('sh', 'TSV', 'a String')", "table function executable()"),
    ("SELECT * FROM remote('127.0.0.1', system.one)", "table function remote()"),
    ("SELECT * FROM s3('http://127.0.0.1:1/b/k', 'TSV')", "table function s3()"),
    ("SELECT * FROM mysql('127.0.0.1:1', 'd', 't', 'u', 'p')", "table function mysql()"),
    ("SELECT * FROM view(SELECT * FROM file('/etc/passwd'))", "table function file()"),
    ("SELECT 1 IN (SELECT * FROM url('http://127.0.0.1:1/'))", "table function url()"),
    ("SELECT 1 SETTINGS readonly = 0", "SETTINGS"),
    ("SELECT * FROM (SELECT 1 SETTINGS max_execution_time = 3600)", "SETTINGS"),
    ("SELECT 1; DROP TABLE streamwatch.alerts", "Multi-statements"),
    ("SELECT 1 /* one */; /* two */ DROP TABLE streamwatch.alerts", "Multi-statements"),
    (
        "SELECT 1 -- a comment\n; INSERT INTO streamwatch.alerts SELECT * FROM streamwatch.alerts",
        "Multi-statements",
    ),
    ("INSERT INTO streamwatch.alerts SELECT * FROM streamwatch.alerts", "only SELECT"),
    ("INSERT INTO streamwatch.dead_letters VALUES (1)", "only SELECT"),
    ("DROP TABLE streamwatch.alerts", "only SELECT"),
    ("TRUNCATE TABLE streamwatch.alerts", "only SELECT"),
    ("ALTER TABLE streamwatch.alerts DELETE WHERE 1", "only SELECT"),
    ("CREATE TABLE streamwatch.x (a UInt8) ENGINE = File(TSV, '/tmp/x')", "only SELECT"),
    ("SYSTEM SHUTDOWN", "only SELECT"),
    ("KILL QUERY WHERE 1", "only SELECT"),
    ("SET readonly = 0", "only SELECT"),
    ("EXPLAIN SELECT 1", "only SELECT"),
    ("SELECT 1 FORMAT TSV", "FORMAT"),
    ("SELEC 1", "Syntax error"),
    ("", "empty"),
]


@pytest.mark.parametrize(("template", "reason"), ATTACKS)
def test_each_attack_fails_with_one_line_and_touches_nothing(
    worker: WorkerProcess, tmp_path: Path, template: str, reason: str
) -> None:
    target = tmp_path / "written-by-an-attack"
    sql = template.format(target=target)
    for send in (get_query, post_query):
        status, body, _ = send(worker, sql)
        assert status == 400, (sql, status, body)
        assert reason in one_line_error(body), (sql, body)
    assert not target.exists()
    # the tables are all there, and so is their data
    status, body, _ = post_query(
        worker,
        "SELECT count() FROM system.tables WHERE database = 'streamwatch' AND name = 'alerts'",
    )
    assert status == 200 and body["rows"] == [[1]]


def test_the_cli_refuses_the_same_way(worker: WorkerProcess, tmp_path: Path) -> None:
    target = tmp_path / "cli-outfile"
    for sql, reason in [
        (f"SELECT 1 INTO OUTFILE '{target}'", "INTO OUTFILE"),
        ("SELECT * FROM file('/etc/passwd')", "table function file()"),
        ("SELECT 1; DROP TABLE streamwatch.alerts", "Multi-statements"),
        ("SELECT 1 SETTINGS readonly = 0", "SETTINGS"),
    ]:
        done = worker.d.cli("query", sql)
        assert done.returncode == 1, done
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and reason in lines[0], done.stderr
        assert "Traceback" not in done.stdout + done.stderr
    assert not target.exists()


def test_limits_are_enforced_by_the_server(worker: WorkerProcess) -> None:
    status, body, _ = post_query(worker, f"SELECT number FROM numbers({MAX_ROWS * 10})")
    assert status == 400 and "Limit for result exceeded" in one_line_error(body)
    status, body, _ = post_query(worker, f"SELECT number FROM numbers({MAX_ROWS})")
    assert status == 200 and len(body["rows"]) == MAX_ROWS
    # 900 rows of 100 kB: under the row limit, over the 64 MB result limit
    status, body, _ = post_query(
        worker, "SELECT repeat(toString(number), 100000) FROM numbers(900)"
    )
    assert status == 400 and "Limit for result exceeded" in one_line_error(body)


# -- who may ask -------------------------------------------------------------


def test_token_is_required_on_every_api_path(worker: WorkerProcess) -> None:
    for path in ("/api/query?sql=SELECT%201", "/api/dashboard"):
        for token in (None, "wrong", TOKEN + "x", ""):
            status, body, headers = call(worker, path, token=token)
            assert status == 401, (path, token, status)
            assert "token" in one_line_error(body)
            assert headers.get("WWW-Authenticate") == "Bearer"
            assert TOKEN not in orjson.dumps(body).decode()
    status, body, _ = get_query(worker, "SELECT 1 AS one")
    assert status == 200 and body == {"columns": ["one"], "rows": [[1]]}
    # the page itself, its files, /health and /metrics need no token
    for path in ("/", "/static/dashboard.js", "/metrics"):
        with urllib.request.urlopen(worker.url(path), timeout=10) as response:
            assert response.status == 200
    assert TOKEN not in worker.log()


def test_cross_origin_requests_are_refused(worker: WorkerProcess, tmp_path: Path) -> None:
    target = tmp_path / "img-attack"
    sql = f"SELECT 1 INTO OUTFILE '{target}'"
    # what a browser sends for <img src=http://127.0.0.1:6066/api/query?sql=...>
    # on another site: no Origin, Sec-Fetch-Site cross-site (and no token)
    for token in (None, TOKEN):
        for headers in (
            {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Dest": "image"},
            {"Sec-Fetch-Site": "same-site"},
            {"Origin": "http://evil.example"},
            {"Origin": "null"},
            {"Origin": "http://127.0.0.1:1"},
        ):
            status, body, response_headers = get_query(worker, sql, headers=headers, token=token)
            assert status in (401, 403) if token is None else status == 403, (headers, status)
            one_line_error(body)
            assert "Access-Control-Allow-Origin" not in response_headers
            status, body, _ = post_query(worker, "SELECT 1", headers=headers, token=token)
            assert status in (401, 403) if token is None else status == 403
    assert not target.exists()
    # the same page (same origin) may ask
    same = {"Origin": f"http://127.0.0.1:{worker.d.web_port}", "Sec-Fetch-Site": "same-origin"}
    status, body, _ = post_query(worker, "SELECT 2 AS two", headers=same)
    assert status == 200 and body["rows"] == [[2]]


def test_without_a_token_only_ip_or_localhost_hosts_are_answered() -> None:
    """DNS rebinding: a name of the attacker's that resolves to 127.0.0.1."""
    open_settings = Settings()
    assert refusal(open_settings, "/api/query", {}, "127.0.0.1:6066") is None
    assert refusal(open_settings, "/api/query", {}, "localhost:6066") is None
    assert refusal(open_settings, "/api/query", {}, "[::1]:6066") is None
    status, message = refusal(open_settings, "/api/query", {}, "evil.example:6066") or (0, "")
    assert status == 403 and "STREAMWATCH_WEB_TOKEN" in message
    assert refusal(open_settings, "/metrics", {}, "evil.example:6066") is None
    guarded = Settings(web_token="abc")
    assert refusal(guarded, "/api/x", {"Authorization": "Bearer abc"}, "evil.example") is None
    assert refusal(guarded, "/api/x", {"Authorization": "Basic abc"}, "h")[0] == 401  # type: ignore[index]


def test_the_web_server_listens_on_loopback_by_default(worker: WorkerProcess) -> None:
    port = worker.d.web_port
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.rsplit(":", 1)
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                listening.add(address)
    assert listening == {"0100007F"}, listening  # 127.0.0.1 only, no 0.0.0.0 / ::
    # the setting and the variable that change it
    assert Settings().web_bind == "127.0.0.1"
    assert load_settings(env={"STREAMWATCH_WEB_BIND": "0.0.0.0"}).web_bind == "0.0.0.0"
    env = {"STREAMWATCH_WEB_TOKEN": "s3cret"}
    assert load_settings(env=env).masked()["web_token"] == "***"
    dockerfile = (Path(__file__).parent.parent / "deploy" / "Dockerfile").read_text()
    assert "STREAMWATCH_WEB_BIND=0.0.0.0" in dockerfile


# -- a slow query stalls nothing ---------------------------------------------


def _metric_samples(w: WorkerProcess) -> dict[str, float]:
    with urllib.request.urlopen(w.url("/metrics"), timeout=10) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out


def _inserts(samples: dict[str, float], le: str | None = None) -> float:
    prefix = "streamwatch_clickhouse_write_seconds_"
    if le is None:
        return sum(v for k, v in samples.items() if k.startswith(prefix + "count{"))
    return sum(
        v for k, v in samples.items() if k.startswith(prefix + "bucket{") and f'le="{le}"' in k
    )


def test_a_slow_query_delays_no_insert_and_no_commit(worker: WorkerProcess, broker: Any) -> None:
    topic = worker.d.topics["sensor_readings"]
    stop = threading.Event()

    def bad_messages() -> None:
        # each one is a dead letter: a row for ClickHouse every flush
        n = 0
        while not stop.is_set():
            produce(broker.bootstrap, [(topic, b"k", b"not json %d" % n, None) for _ in range(5)])
            n += 1
            time.sleep(0.1)

    feeder = threading.Thread(target=bad_messages, daemon=True)
    feeder.start()
    try:
        worker.wait_until(
            lambda: _inserts(_metric_samples(worker)) > 0, 60, "the first dead-letter insert"
        )
        before = _metric_samples(worker)
        result: dict[str, Any] = {}

        def slow() -> None:
            began = time.monotonic()
            result["answer"] = post_query(worker, SLOW_QUERY.format(0))
            result["seconds"] = time.monotonic() - began

        query = threading.Thread(target=slow)
        query.start()
        # meanwhile the web server answers at once
        time.sleep(0.5)
        began = time.monotonic()
        with urllib.request.urlopen(worker.url("/metrics"), timeout=10) as response:
            assert response.status == 200
        assert time.monotonic() - began < 1.0
        query.join(30)
        after = _metric_samples(worker)
    finally:
        stop.set()
        feeder.join(30)

    status, body, _ = result["answer"]
    assert status == 400 and "Timeout exceeded" in one_line_error(body)
    assert TIMEOUT_S <= result["seconds"] < TIMEOUT_S + 5
    inserts = _inserts(after) - _inserts(before)
    fast = _inserts(after, "0.5") - _inserts(before, "0.5")
    assert inserts >= TIMEOUT_S, f"only {inserts} inserts during a {TIMEOUT_S} s query"
    assert fast == inserts, f"{inserts - fast} of {inserts} inserts took over 0.5 s"
    checkpoints = after["streamwatch_checkpoints_total"] - before["streamwatch_checkpoints_total"]
    assert checkpoints >= TIMEOUT_S - 1, f"{checkpoints} checkpoints during the query"
    # and the dead letters it wrote meanwhile are readable
    status, body, _ = post_query(worker, "SELECT count() FROM streamwatch.dead_letters")
    assert status == 200 and body["rows"][0][0] > 0


# -- what comes back ---------------------------------------------------------

TYPES = {
    "ipv4": ("toIPv4('1.2.3.4')", "1.2.3.4"),
    "ipv6": ("toIPv6('2001:db8::1')", "2001:db8::1"),
    "uuid": (
        "toUUID('61f0c404-5cb3-11e7-907b-a6006ad3dba0')",
        "61f0c404-5cb3-11e7-907b-a6006ad3dba0",
    ),
    "decimal": ("toDecimal64('12345678901.2345', 4)", "12345678901.2345"),
    "map": ("map('a', 1, 'b', 2)", {"a": 1, "b": 2}),
    "ipmap": ("map(toIPv4('1.1.1.1'), [toDecimal32('1.5', 2)])", {"1.1.1.1": ["1.50"]}),
    "array": ("[1, 2, 3]", [1, 2, 3]),
    "tuple": ("(1, 'a', toIPv4('8.8.8.8'))", [1, "a", "8.8.8.8"]),
    "nullable": ("CAST(NULL AS Nullable(Int32))", None),
    "enum": ("CAST('b' AS Enum8('a' = 1, 'b' = 2))", "b"),
    "date": ("toDate('2026-01-02')", "2026-01-02"),
    "datetime": ("toDateTime('2026-01-02 03:04:05', 'UTC')", "2026-01-02T03:04:05.000Z"),
    "datetime64": ("toDateTime64('2026-01-02 03:04:05.123', 3, 'UTC')", "2026-01-02T03:04:05.123Z"),
    "int128": (
        "toInt128('-170141183460469231731687303715884105728')",
        "-170141183460469231731687303715884105728",
    ),
    "uint256": (
        "toUInt256('115792089237316195423570985008687907853269984665640564039457584007913129639935')",
        "115792089237316195423570985008687907853269984665640564039457584007913129639935",
    ),
    "uint64": ("toUInt64('18446744073709551615')", 18446744073709551615),
    "nan": ("nan", "nan"),
    "inf": ("-inf", "-inf"),
    "float": ("toFloat64(0.25)", 0.25),
    "fixed": ("toFixedString('ab', 2)", "ab"),
    "bool": ("true", True),
}


def test_every_type_prints_in_json_and_in_the_cli(worker: WorkerProcess) -> None:
    sql = "SELECT " + ", ".join(f"{expr} AS {name}" for name, (expr, _) in TYPES.items())
    status, body, _ = post_query(worker, sql)
    assert status == 200, body
    assert body["columns"] == list(TYPES)
    assert dict(zip(body["columns"], body["rows"][0], strict=True)) == {
        name: expected for name, (_, expected) in TYPES.items()
    }
    # the table, as wide as it needs (COLUMNS): every value in its printed form
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "query", sql],
        env={**worker.d.env(), "COLUMNS": "2000"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    cells = [c.strip() for c in done.stdout.splitlines()[3].split("│")[1:-1]]
    assert cells == [
        "1.2.3.4",
        "2001:db8::1",
        "61f0c404-5cb3-11e7-907b-a6006ad3dba0",
        "12345678901.2345",
        '{"a":1,"b":2}',
        '{"1.1.1.1":["1.50"]}',
        "[1,2,3]",
        '[1,"a","8.8.8.8"]',
        "NULL",
        "b",
        "2026-01-02",
        "2026-01-02T03:04:05.000Z",
        "2026-01-02T03:04:05.123Z",
        "-170141183460469231731687303715884105728",
        "115792089237316195423570985008687907853269984665640564039457584007913129639935",
        "18446744073709551615",
        "nan",
        "-inf",
        "0.25",
        "ab",
        "true",
    ], done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    done = worker.d.cli("query", "--json", sql)
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout.splitlines()[0])["ipv4"] == "1.2.3.4"


def test_long_sql_works_through_post_and_the_cli(worker: WorkerProcess) -> None:
    values = ", ".join(str(i) for i in range(4000))  # about 19 kB of SQL
    sql = f"SELECT sum(x) AS total FROM (SELECT arrayJoin([{values}]) AS x)"
    assert len(sql) > 16_000
    status, body, _ = post_query(worker, sql)
    assert status == 200 and body["rows"] == [[sum(range(4000))]]
    status, body, _ = call(worker, "/api/query", sql.encode(), {"Content-Type": "text/plain"})
    assert status == 200 and body["rows"] == [[sum(range(4000))]]
    done = worker.d.cli("query", "--json", sql)
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout) == {"total": sum(range(4000))}
    # a malformed body is a one-line error too
    status, body, _ = call(worker, "/api/query", b"{not json", {"Content-Type": "application/json"})
    assert status == 400 and "not JSON" in one_line_error(body)


def test_queries_run_with_readonly_and_the_limits(worker: WorkerProcess) -> None:
    status, body, _ = post_query(
        worker,
        "SELECT name, value FROM system.settings WHERE name IN "
        "('readonly', 'max_execution_time', 'max_threads', 'result_overflow_mode') ORDER BY name",
    )
    assert status == 200, body
    assert dict(body["rows"]) == {
        "max_execution_time": str(TIMEOUT_S),
        "max_threads": "1",
        "readonly": "2",
        "result_overflow_mode": "throw",
    }
    # SHOW TABLES is a read too
    status, body, _ = post_query(worker, "SHOW TABLES FROM streamwatch")
    assert status == 200 and ["alerts"] in body["rows"], body


# -- in a real browser -------------------------------------------------------


def _chromium(performance_log: bool = False) -> Any:
    from tests.test_dashboard import CHROMEDRIVER, CHROMIUM, browser

    if not performance_log:
        return browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser()  # fails with what to install when something is missing
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


def test_the_dashboard_asks_for_the_token_once_and_keeps_it(worker: WorkerProcess) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _chromium()
    try:
        driver.get(worker.url("/"))
        prompt = WebDriverWait(driver, 15).until(lambda d: d.switch_to.alert)
        assert "STREAMWATCH_WEB_TOKEN" in prompt.text
        prompt.send_keys(TOKEN)
        prompt.accept()

        def rendered(d: Any) -> Any:
            state = d.execute_script("return window.dashboardState")
            return state["renders"] >= 1 and state["lastError"] is None and state

        WebDriverWait(driver, 20).until(rendered)
        stored = driver.execute_script("return sessionStorage.getItem('streamwatch.token')")
        assert stored == TOKEN
        assert driver.execute_script("return localStorage.length + document.cookie.length") == 0
        # a reload in the same tab: no second question, the data loads
        driver.refresh()
        WebDriverWait(driver, 20).until(rendered)
        state = driver.execute_script("return window.dashboardState")
        assert state["tokenAsked"] is False
    finally:
        driver.quit()


def test_a_page_on_another_site_cannot_use_the_api(
    open_worker: WorkerProcess, tmp_path: Path
) -> None:
    """The reported attack: <img src=http://127.0.0.1:PORT/api/query?sql=...> (and a
    no-cors POST) on another site, in a real Chromium, against a worker without
    a token; the requests reach the worker and are answered 403 (the origin
    check alone: without it they are answered 400 and 200), and nothing is written."""
    worker = open_worker
    import http.server
    import json

    from streams.connectors.embedded import free_port

    target = tmp_path / "from-the-browser"
    sql = f"SELECT 1 INTO OUTFILE '{target}'"
    api = worker.url("/api/query")
    page = f"""<!doctype html><html><body>
      <img src="{api}?{urllib.parse.urlencode({"sql": sql})}">
      <img src="{api}?{urllib.parse.urlencode({"sql": "SELECT 42"})}">
      <script>
        fetch({json.dumps(api)}, {{method: "POST", mode: "no-cors",
          headers: {{"Content-Type": "text/plain"}}, body: "SELECT 43"}});
      </script></body></html>""".encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: Any) -> None:
            pass

    port = free_port()
    server = http.server.HTTPServer(("127.0.0.1", port), Page)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    driver = _chromium(performance_log=True)
    try:
        driver.get(f"http://localhost:{port}/")  # another site than 127.0.0.1
        # requestId -> URL, and the status line each got (ExtraInfo: also for
        # responses Chromium then withholds from the page, as for these images)
        urls: dict[str, str] = {}
        codes: dict[str, int] = {}
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and len(set(codes) & set(urls)) < 3:
            for entry in driver.get_log("performance"):
                message = orjson.loads(entry["message"])["message"]
                params = message.get("params", {})
                if message["method"] == "Network.requestWillBeSent":
                    if params["request"]["url"].startswith(api):
                        urls[params["requestId"]] = params["request"]["url"]
                elif message["method"] == "Network.responseReceivedExtraInfo":
                    codes[params["requestId"]] = params["statusCode"]
            time.sleep(0.3)
        statuses = {urls[k]: v for k, v in codes.items() if k in urls}
    finally:
        driver.quit()
        server.shutdown()
    assert len(statuses) == 3, statuses
    assert set(statuses.values()) == {403}, statuses
    assert not target.exists()


def test_many_slow_queries_are_bounded_and_the_dashboard_still_answers(
    worker: WorkerProcess,
) -> None:
    slow = SLOW_QUERY.format(1)
    answers: list[tuple[int, Any, dict[str, str]]] = []

    def ask() -> None:
        answers.append(post_query(worker, slow, timeout=60))

    began = time.monotonic()
    threads = [threading.Thread(target=ask) for _ in range(7)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    # the dashboard has its own reader and threads: it does not queue behind them
    asked = time.monotonic()
    status, body, _ = call(worker, "/api/dashboard")
    assert status == 200 and "alerts" in body
    assert time.monotonic() - asked < TIMEOUT_S
    for t in threads:
        t.join(60)
    assert time.monotonic() - began < 4 * TIMEOUT_S + 10
    statuses = sorted(a[0] for a in answers)
    messages = [one_line_error(a[1]) for a in answers]
    assert set(statuses) <= {400, 503} and len(answers) == 7, statuses
    assert any("already waiting" in m for m in messages), messages  # the bounded queue
    assert any("Timeout exceeded" in m for m in messages), messages  # the time limit


# -- what users are told to run is accepted ----------------------------------

JUDGE_CHILD = """
import json, sys
import clickhouse_connect
from streams.connectors.sqlguard import Judge, QueryRefused
job = json.load(sys.stdin)
judge = Judge(clickhouse_connect.get_client(dsn="chdb://" + job["dir"]))
out = {}
for name, sql in job["queries"].items():
    try:
        judge.check(sql)
        out[name] = None
    except QueryRefused as exc:
        out[name] = str(exc)
print(json.dumps(out))
"""


def test_the_documented_queries_and_the_dashboard_pass_the_judge(tmp_path: Path) -> None:
    """Every ```sql block in docs/, the README's query and the dashboard's own SQL
    are plain reads: the judge must accept them all (and still refuse a write,
    the negative control), in a child process (chDB: one data dir per process)."""
    import json
    import re

    from streams.runtime.web import dashboard_queries
    from tests.test_docs import sql_blocks

    queries = {**sql_blocks(), **{f"dashboard {k}": v for k, v in dashboard_queries().items()}}
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for n, sql in enumerate(re.findall(r'streamwatch query "([^"]+)"', readme)):
        queries[f"README #{n}"] = sql
    assert len(queries) > 25
    queries["negative"] = "INSERT INTO streamwatch.alerts SELECT * FROM streamwatch.alerts"
    done = subprocess.run(
        [sys.executable, "-c", JUDGE_CHILD],
        input=json.dumps({"dir": str(tmp_path / "ch"), "queries": queries}),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parent.parent,
    )
    assert done.returncode == 0, done.stderr
    refused = json.loads(done.stdout.splitlines()[-1])
    assert refused.pop("negative"), "the judge accepted an INSERT: the check is dead"
    wrongly = {name: reason for name, reason in refused.items() if reason}
    assert not wrongly, wrongly
