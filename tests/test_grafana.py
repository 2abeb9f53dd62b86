"""The Grafana dashboard (deploy/grafana/dashboards/streamwatch.json).

Structure: valid JSON with a uid and title, unique panel ids, a gridPos on every panel
inside the 24-column grid, and every data source uid one of the provisioned ones.

SQL: every ClickHouse query of the dashboard (panels, annotations, template variables) has
its grafana-clickhouse-datasource macros replaced by concrete SQL and runs against the
project's real tables in chDB (schema from streams.connectors.clickhouse.ensure_schema, a few
rows in every table). chDB allows one data directory per process, so the schema, the rows and all
queries run in ONE child process; the pytest process never opens chDB.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas.tables import TABLES
from tests.chdb_child import run_in_chdb

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "streamwatch.json"
DATASOURCES = REPO / "deploy" / "grafana" / "provisioning" / "datasources"
CLICKHOUSE_UID = "streamwatch-clickhouse"
PROMETHEUS_UID = "streamwatch-prometheus"

# Values the template variables take in the "selected" run (rows below contain them).
SELECTED = {"campaign": ["cmp-1", "cmp-2"], "model": ["m-1"], "sensor": ["s-1"]}

# A few rows in every table, around now() so that the time filter below finds them.
ROWS = {
    "ctr_windows": """
        SELECT toStartOfMinute(now()) - INTERVAL (number % 5) MINUTE,
               toStartOfMinute(now()) - INTERVAL (number % 5) MINUTE + INTERVAL 1 MINUTE,
               concat('cmp-', toString(number % 3)), if(number % 2 = 0, '', 'B'),
               1000, 10 + number, (10 + number) / 1000, 1, 0, 0, number % 2, 1,
               number % 3, (number % 3) / (10 + number), 40.0 * (number % 3), 0, 0, now64(3)
        FROM numbers(10)""",
    "sensor_anomalies": """
        SELECT now() - INTERVAL number MINUTE, concat('s-', toString(number % 2)), 'temp',
               99.5, ['zscore', 'iqr', 'rise', 'cluster'][number % 4 + 1], 5.2, 4.5,
               now() - INTERVAL 5 MINUTE, now(), now64(3)
        FROM numbers(8)""",
    "sensor_windows": """
        SELECT toStartOfMinute(now()) - INTERVAL number MINUTE,
               toStartOfMinute(now()) - INTERVAL number MINUTE + INTERVAL 1 MINUTE,
               concat('s-', toString(number % 2)), 'temp', 60, 19.0, 23.0, 21.0 + number, 22.5,
               now64(3)
        FROM numbers(6)""",
    "drift_scores": """
        SELECT toStartOfFiveMinutes(now()) - INTERVAL (5 * intDiv(number, 3)) MINUTE,
               toStartOfFiveMinutes(now()) - INTERVAL (5 * intDiv(number, 3) - 5) MINUTE,
               'm-1', 'v1', ['f1', 'f2', 'prediction'][number % 3 + 1], 0.05 * number,
               0.1, 0.5, NULL, NULL, 0.01, 500, 'warmup', now64(3)
        FROM numbers(6)""",
    "inference_windows": """
        SELECT toStartOfMinute(now()) - INTERVAL number MINUTE,
               toStartOfMinute(now()) - INTERVAL number MINUTE + INTERVAL 1 MINUTE,
               concat('m-', toString(number % 2 + 1)), 'v1', 100, number, number / 100,
               20.0, 80.0, 120.0 + number, 0.9, 0.01, now64(3)
        FROM numbers(6)""",
    "srm_checks": """
        SELECT toStartOfFiveMinutes(now()) - INTERVAL (5 * number) MINUTE,
               toStartOfFiveMinutes(now()) - INTERVAL (5 * number - 5) MINUTE,
               'exp-1', 'impression', '["A","B"]', '{"A":500,"B":430}', '{"A":0.5,"B":0.5}',
               '[]', 5.2, if(number = 0, 0.0001, 0.2), 930, number = 0, now64(3)
        FROM numbers(3)""",
    "quality_windows": """
        SELECT toStartOfFiveMinutes(now()) - INTERVAL (5 * number) MINUTE,
               toStartOfFiveMinutes(now()) - INTERVAL (5 * number - 5) MINUTE,
               ['m-1', 'm-2'][number % 2 + 1], 'v1', 0, 600, 540, 0.9, 0, 1, 0,
               ['classification', 'regression'][number % 2 + 1],
               if(number % 2 = 0, 0.8, NULL), 0.7, 0.7, 0.7, 0.45, 0.15, 0.85, 0.03, '{}',
               if(number % 2 = 1, 2.5, NULL), 3.1, 0.1, 0, 0.2,
               if(number % 2 = 0, 0.78, NULL), 1, 2, now64(3)
        FROM numbers(6)""",
    "experiment_windows": """
        SELECT toStartOfFiveMinutes(now()) - INTERVAL (5 * intDiv(number, 8)) MINUTE,
               toStartOfFiveMinutes(now()) - INTERVAL (5 * intDiv(number, 8) - 5) MINUTE,
               'exp-1', ['control', 'treatment'][number % 2 + 1],
               ['share', 'share', 'share_cumulative', 'share_cumulative',
                'latency_p99', 'latency_p99', 'error_rate', 'error_rate'][number % 8 + 1],
               if(number % 2 = 0, 0.54, 0.46), 500, 0.5, 0.0004, now64(3)
        FROM numbers(24)""",
    "alerts": """
        SELECT concat('alert-', toString(number)), now() - INTERVAL number MINUTE, 'ctr',
               'ctr_floor', ['warning', 'critical'][number % 2 + 1],
               if(number = 3, 'resolved', 'firing'), 'cmp-1', 'ctr', 0.001, 0.005,
               now() - INTERVAL 10 MINUTE, now() - INTERVAL 9 MINUTE, 'CTR below the floor',
               '{}', now64(3)
        FROM numbers(4)""",
    "dead_letters": """
        SELECT now() - INTERVAL number MINUTE, 'impressions', 0, number, 'big',
               ['invalid_json', 'missing_field', 'wrong_type'][number % 3 + 1], 'bad', 'e30=',
               0, 2, '44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a', now64(3)
        FROM numbers(6)""",
    "late_events": """
        SELECT ['ctr', 'sensor'][number % 2 + 1], 'impressions', 0, number,
               now() - INTERVAL 20 MINUTE, now() - INTERVAL number MINUTE,
               toStartOfMinute(now() - INTERVAL 20 MINUTE), 'big', now64(3)
        FROM numbers(4)""",
}


# --------------------------------------------------------------------------- helpers


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def provisioned_uids() -> dict[str, str]:
    uids: dict[str, str] = {}
    for path in sorted(DATASOURCES.glob("*.y*ml")):
        for source in yaml.safe_load(path.read_text(encoding="utf-8"))["datasources"]:
            uids[source["uid"]] = source["type"]
    return uids


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))


def clickhouse_queries(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """name -> {"sql", "format"} of every ClickHouse query in the dashboard."""
    out: dict[str, dict[str, Any]] = {}
    for p in all_panels(dashboard["panels"]):
        for t in p.get("targets", []):
            if t["datasource"]["uid"] == CLICKHOUSE_UID:
                name = f"panel {p['id']} {p['title']!r} {t['refId']}"
                out[name] = {"sql": t["rawSql"], "format": t.get("queryType")}
    for a in dashboard["annotations"]["list"]:
        if a["datasource"].get("uid") == CLICKHOUSE_UID:
            out[f"annotation {a['name']!r}"] = {"sql": a["target"]["rawSql"], "format": "table"}
    for v in dashboard["templating"]["list"]:
        if v["datasource"]["uid"] == CLICKHOUSE_UID:
            out[f"variable {v['name']}"] = {"sql": v["query"]["rawSql"], "format": "table"}
    return out


def _macro_args(sql: str, start: int) -> tuple[list[str], int]:
    """Comma-separated arguments of the macro call whose '(' is at sql[start]."""
    depth, args, current, i = 0, [], "", start
    while True:
        ch = sql[i]
        if ch == "(":
            depth += 1
            if depth > 1:
                current += ch
        elif ch == ")":
            depth -= 1
            if depth == 0:
                args.append(current.strip())
                return args, i + 1
            current += ch
        elif ch == "," and depth == 1:
            args.append(current.strip())
            current = ""
        else:
            current += ch
        i += 1


def expand(sql: str, variables: dict[str, list[str] | None]) -> str:
    """Replace the plugin's macros and the template variables as Grafana would.

    Time range: the last day. `variables` maps a variable to its selected values, or
    to None for "All". Anything left starting with `$` fails the test.
    """
    frm, to = "(now() - INTERVAL 1 DAY)", "(now() + INTERVAL 1 HOUR)"
    functions = {
        "$__timeFilter": lambda a: f"({a[0]} >= toDateTime{frm} AND {a[0]} <= toDateTime{to})",
        "$__timeFilter_ms": lambda a: (
            f"({a[0]} >= toDateTime64{frm[:-1]}, 3) AND {a[0]} <= toDateTime64{to[:-1]}, 3))"
        ),
        "$__dateFilter": lambda a: f"({a[0]} >= toDate{frm} AND {a[0]} <= toDate{to})",
        "$__timeInterval": lambda a: f"toStartOfInterval(toDateTime({a[0]}), INTERVAL 60 second)",
        "$__conditionalAll": lambda a: "1=1" if variables[a[1].lstrip("$")] is None else a[0],
    }
    for name in sorted(functions, key=len, reverse=True):
        while (i := sql.find(name + "(")) >= 0:
            args, end = _macro_args(sql, i + len(name))
            sql = sql[:i] + functions[name](args) + sql[end:]
    for var, values in variables.items():
        quoted = ",".join(f"'{v}'" for v in (values or ["__all__"]))
        sql = sql.replace(f"${{{var}:singlequote}}", quoted)
    constants = {
        "$__fromTime_ms": f"toDateTime64{frm[:-1]}, 3)",
        "$__toTime_ms": f"toDateTime64{to[:-1]}, 3)",
        "$__fromTime": f"toDateTime{frm}",
        "$__toTime": f"toDateTime{to}",
        "$__interval_s": "60",
    }
    for name, value in constants.items():
        sql = sql.replace(name, value)
    leftover = re.findall(r"\$\{?\w+", sql)
    assert not leftover, f"unexpanded macro or variable {leftover} in: {sql}"
    return sql


def assert_query_ok(name: str, result: dict[str, Any], fmt: str | None) -> None:
    assert result["ok"], f"{name} failed in chDB:\n{result.get('error')}"
    assert result["rows"] > 0, f"{name} returned no rows although every table has data"
    if fmt == "timeseries":
        assert result["columns"][0] == "time", f"{name}: a time series needs `time` first"
        assert result["types"][0].startswith("DateTime"), f"{name}: `time` is {result['types'][0]}"


# --------------------------------------------------------------------------- structure


def test_dashboard_is_well_formed() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "streamwatch-overview"
    assert dashboard["title"]
    assert "id" not in dashboard or dashboard["id"] is None, "provisioned dashboards have no id"
    panels = list(all_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(ids)}"
    uids = provisioned_uids()
    assert uids.get(CLICKHOUSE_UID) == "grafana-clickhouse-datasource"
    assert uids.get(PROMETHEUS_UID) == "prometheus"
    occupied: set[tuple[int, int]] = set()
    for p in panels:
        assert p.get("title"), f"panel {p['id']} has no title"
        pos = p["gridPos"]
        assert set(pos) == {"h", "w", "x", "y"}, f"panel {p['id']}: gridPos {pos}"
        assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] >= 0 and pos["x"] + pos["w"] <= 24
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & occupied, f"panel {p['id']} {p['title']!r} overlaps another"
        occupied |= cells
        if p["type"] == "row":
            continue
        assert p["targets"], f"panel {p['id']} {p['title']!r} has no query"
        for t in [p, *p["targets"]]:
            ds = t["datasource"]
            assert uids.get(ds["uid"]) == ds["type"], f"panel {p['id']}: unknown datasource {ds}"
        for t in p["targets"]:
            assert t.get("rawSql") or t.get("expr"), f"panel {p['id']}: empty query {t}"
    for a in dashboard["annotations"]["list"]:
        if a.get("builtIn"):
            continue
        assert uids.get(a["datasource"]["uid"]) == a["datasource"]["type"]
    for v in dashboard["templating"]["list"]:
        assert uids.get(v["datasource"]["uid"]) == v["datasource"]["type"]


def test_dashboard_covers_what_operators_watch() -> None:
    dashboard = load_dashboard()
    sql = " ".join(q["sql"] for q in clickhouse_queries(dashboard).values())
    for table in TABLES:
        assert f"streamwatch.{table.name} FINAL" in sql, f"no panel reads {table.name} FINAL"
    # every ReplacingMergeTree read goes through FINAL
    for m in re.finditer(r"FROM streamwatch\.(\w+)(\s+\w+)?", sql):
        assert (m.group(2) or "").strip() == "FINAL", f"{m.group(0)} without FINAL"
    assert "final = 1" in sql, "CTR must come from final windows"
    for column in ("latency_p50", "latency_p95", "latency_p99", "psi", "p_value", "mean"):
        assert column in sql
    exprs = " ".join(
        t["expr"]
        for p in all_panels(dashboard["panels"])
        for t in p.get("targets", [])
        if t["datasource"]["uid"] == PROMETHEUS_UID
    )
    for metric in (
        "streamwatch_events_consumed_total",
        "streamwatch_events_rejected_total",
        "streamwatch_sink_buffered_rows",
        "streamwatch_watermark_delay_seconds",
    ):
        assert metric in exprs, f"no Prometheus panel shows {metric}"
    names = {a["name"] for a in dashboard["annotations"]["list"]}
    assert any("alert" in n.lower() for n in names)


def test_macro_expansion() -> None:
    sql = (
        "SELECT $__timeInterval(ts) AS time FROM t WHERE $__timeFilter(ts) AND "
        "$__conditionalAll(a IN (${campaign:singlequote}), $campaign) AND x > $__interval_s"
    )
    selected = expand(sql, {"campaign": ["c1", "c2"]})
    assert "a IN ('c1','c2')" in selected and "toStartOfInterval(toDateTime(ts)" in selected
    assert "1=1" in expand(sql, {"campaign": None})
    with pytest.raises(AssertionError, match="unexpanded"):
        expand("SELECT $__unknownMacro(x)", {})


# --------------------------------------------------------------------------- SQL in chDB


@pytest.fixture(scope="module")
def chdb_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    queries = clickhouse_queries(load_dashboard())
    assert len(queries) >= 15
    jobs: dict[str, str] = {}
    for name, q in queries.items():
        jobs[f"{name} [All]"] = expand(q["sql"], dict.fromkeys(SELECTED))
        jobs[f"{name} [selected]"] = expand(q["sql"], SELECTED)
    # negative control: the CTR panel's query with one column misspelt must fail
    ctr = next(
        q["sql"] for q in queries.values() if "ctr_windows" in q["sql"] and "ctr" in q["sql"]
    )
    jobs["negative: missing column"] = expand(
        ctr.replace("sum(clicks)", "sum(clicks_missing)", 1), dict.fromkeys(SELECTED)
    )
    assert jobs["negative: missing column"] != expand(ctr, dict.fromkeys(SELECTED))
    results = run_in_chdb(tmp_path_factory.mktemp("grafana-chdb"), ROWS, jobs)
    return {"queries": queries, "results": results}


def _query_names() -> list[str]:
    return list(clickhouse_queries(load_dashboard()))


@pytest.mark.parametrize("name", _query_names())
def test_clickhouse_query_runs_on_real_tables(chdb_results, name) -> None:
    fmt = chdb_results["queries"][name]["format"]
    for mode in ("All", "selected"):
        key = f"{name} [{mode}]"
        assert_query_ok(key, chdb_results["results"][key], fmt)


def test_query_with_missing_column_fails(chdb_results) -> None:
    result = chdb_results["results"]["negative: missing column"]
    assert not result["ok"]
    assert "clicks_missing" in result["error"]
    with pytest.raises(AssertionError, match="failed in chDB"):
        assert_query_ok("negative", result, "timeseries")
