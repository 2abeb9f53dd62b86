"""The user documentation (docs/): its SQL runs, it covers everything, its links resolve.

Every ```sql block in docs/ runs against the project's real tables in chDB (schema from
streams.connectors.clickhouse.ensure_schema, a few rows in every table). chDB allows one data
directory per process, so the schema, the rows and all queries run in ONE child process; the pytest
process never opens chDB. A query with a misspelt column runs alongside and must fail, which
proves the check is live.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from schemas.tables import TABLES
from streams.runtime.monitors import OPERATORS
from tests.chdb_child import run_in_chdb

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
SQL_BLOCK = re.compile(r"```sql\n(.*?)```", re.DOTALL)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
NEGATIVE = "__negative__"

# A few rows in every table, with explicit columns (values chosen to meet the docs' filters).
ROWS = {
    "ctr_windows": """
        (window_start, window_end, campaign_id, variant, impressions, clicks, ctr,
         orphan_clicks, duplicate_clicks, duplicate_impressions, final, version)
        SELECT toStartOfMinute(now()) - INTERVAL number MINUTE,
               toStartOfMinute(now()) - INTERVAL number MINUTE + INTERVAL 1 MINUTE,
               concat('cmp-', toString(number % 2 + 1)), ['', 'A', 'B'][number % 3 + 1],
               1000, 10 + number, (10 + number) / 1000, number % 2, 1, 0, number % 2 + 0, 1
        FROM numbers(12)""",
    "sensor_anomalies": """
        (ts, sensor_id, metric, value, method, score, threshold, window_start, window_end)
        SELECT now() - INTERVAL number MINUTE, concat('s-', toString(number % 2 + 1)), 'temp',
               99.5, ['zscore', 'iqr', 'rise', 'cluster'][number % 4 + 1], 5.2, 4.5,
               now() - INTERVAL 5 MINUTE, now()
        FROM numbers(8)""",
    "sensor_windows": """
        (window_start, window_end, sensor_id, metric, n, min, max, mean, p95)
        SELECT toStartOfMinute(now()) - INTERVAL number MINUTE,
               toStartOfMinute(now()) - INTERVAL number MINUTE + INTERVAL 1 MINUTE,
               concat('s-', toString(number % 2 + 1)), 'temp', 60, 19.0, 23.0, 21.0, 22.5
        FROM numbers(6)""",
    "drift_scores": """
        (window_start, window_end, model_id, model_version, feature, psi, ks, ks_pvalue,
         chi2, chi2_pvalue, js, n, reference_version)
        SELECT toStartOfFiveMinutes(now()) - INTERVAL (5 * number) MINUTE,
               toStartOfFiveMinutes(now()) - INTERVAL (5 * number - 5) MINUTE,
               'm-1', 'v1', ['f1', 'color', '__prediction__'][number % 3 + 1], 0.05 * number,
               if(number % 3 = 1, NULL, 0.1), if(number % 3 = 1, NULL, 0.5),
               if(number % 3 = 1, 3.2, NULL), if(number % 3 = 1, 0.2, NULL), 0.01, 500,
               'warmup:v1'
        FROM numbers(6)""",
    "inference_windows": """
        (window_start, window_end, model_id, model_version, requests, errors, error_rate,
         latency_p50, latency_p95, latency_p99, confidence_mean, low_confidence_ratio)
        SELECT toStartOfMinute(now()) - INTERVAL number MINUTE,
               toStartOfMinute(now()) - INTERVAL number MINUTE + INTERVAL 1 MINUTE,
               concat('m-', toString(number % 2 + 1)), 'v1', 100, number, number / 100,
               20.0, 80.0, 120.0 + number, 0.9, NULL
        FROM numbers(6)""",
    "srm_checks": """
        (window_start, window_end, experiment, unit, variants, counts, expected, unexpected,
         chi2, p_value, total, srm)
        SELECT toStartOfFiveMinutes(now()) - INTERVAL (5 * number) MINUTE,
               toStartOfFiveMinutes(now()) - INTERVAL (5 * number - 5) MINUTE,
               'exp-1', 'impressions', 'A,B', '{"A":500,"B":430}', '{"A":0.5,"B":0.5}',
               '{}', 5.2, if(number = 0, 0.0001, 0.2), 930, number = 0
        FROM numbers(3)""",
    "quality_windows": """
        (window_start, window_end, model_id, model_version, estimated, predictions, labelled,
         coverage, orphan_labels, duplicate_labels, duplicate_predictions, task, accuracy,
         precision_macro, recall_macro, f1_macro, log_loss, brier, roc_auc, ece, per_class,
         mae, rmse, mape, mape_skipped, mean_error, estimated_accuracy, final, version)
        SELECT toStartOfFiveMinutes(now()) - INTERVAL (5 * number) MINUTE,
               toStartOfFiveMinutes(now()) - INTERVAL (5 * number - 5) MINUTE,
               ['m-1', 'm-reg'][number % 2 + 1], if(number = 5, '', 'v1'), number = 0, 600,
               540, 0.9, number = 5, 1, 0, ['classification', 'regression'][number % 2 + 1],
               if(number % 2 = 0, 0.8, NULL), 0.7, 0.7, 0.7, 0.45, 0.15, 0.85, 0.03, '{}',
               if(number % 2 = 1, 2.5, NULL), 3.1, 0.1, 0, 0.2,
               if(number % 2 = 0, 0.78, NULL), number > 0, if(number > 0, 2, 1)
        FROM numbers(6)""",
    "experiment_windows": """
        (window_start, window_end, experiment, variant, metric, value, n, control_value, p_value)
        SELECT toStartOfFiveMinutes(now()) - INTERVAL (5 * intDiv(number, 4)) MINUTE,
               toStartOfFiveMinutes(now()) - INTERVAL (5 * intDiv(number, 4) - 5) MINUTE,
               'exp-1', ['control', 'treatment'][number % 2 + 1],
               ['share', 'share', 'share_cumulative', 'share_cumulative',
                'latency_p99', 'latency_p99', 'error_rate', 'error_rate'][number % 8 + 1],
               if(number % 2 = 0, 0.54, 0.46), 500, 0.5, 0.0004
        FROM numbers(24)""",
    "alerts": """
        (alert_id, ts, kind, rule, severity, status, entity, metric, value, threshold,
         window_start, window_end, message, details)
        SELECT concat('alert-', toString(number)), now() - INTERVAL number MINUTE,
               ['ctr', 'change'][number % 2 + 1],
               ['ctr_floor', 'ctr_change_adwin'][number % 2 + 1],
               ['warning', 'critical'][number % 2 + 1], if(number = 3, 'resolved', 'firing'),
               'cmp-1', 'ctr', 0.001, 0.005, now() - INTERVAL 10 MINUTE,
               now() - INTERVAL 9 MINUTE, 'CTR below the floor',
               '{"direction":"down","level_after":0.01,"level_before":0.02,"n":500,"p_value":1e-5}'
        FROM numbers(4)""",
    "dead_letters": """
        (ts, source_topic, partition, offset, key, reason, error, raw)
        SELECT now() - INTERVAL number MINUTE, 'impressions', 0, number, 'cmp-1',
               ['invalid_json', 'missing_field', 'wrong_type'][number % 3 + 1], 'bad', 'e30='
        FROM numbers(6)""",
    "late_events": """
        (monitor, source_topic, partition, offset, event_ts, watermark, window_start, key)
        SELECT ['ctr', 'sensor'][number % 2 + 1], 'impressions', 0, number,
               now() - INTERVAL 20 MINUTE, now() - INTERVAL number MINUTE,
               toStartOfMinute(now() - INTERVAL 20 MINUTE), 'cmp-1'
        FROM numbers(4)""",
}


def sql_blocks() -> dict[str, str]:
    """'page #n' -> SQL of every ```sql block in docs/."""
    out = {}
    for page in PAGES:
        for n, block in enumerate(SQL_BLOCK.findall(page.read_text(encoding="utf-8")), 1):
            out[f"{page.relative_to(REPO)} #{n}"] = block.strip().rstrip(";")
    return out


def test_rows_cover_every_table() -> None:
    assert set(ROWS) == {t.name for t in TABLES}


def test_every_sql_block_runs_in_chdb(tmp_path: Path) -> None:
    queries = sql_blocks()
    assert len(queries) >= 20, f"expected the docs' example queries, found {len(queries)}"
    for name, sql in queries.items():
        for m in re.finditer(r"FROM streamwatch\.(\w+)(\s+\w+)?", sql):
            assert (m.group(2) or "").strip() == "FINAL", f"{name}: {m.group(0)} without FINAL"
    # negative control: a misspelt column must fail, or the check proves nothing
    queries[NEGATIVE] = "SELECT campaign_idd FROM streamwatch.ctr_windows FINAL"
    results = run_in_chdb(tmp_path, ROWS, queries)
    negative = results.pop(NEGATIVE)
    assert not negative["ok"], "a query with a misspelt column succeeded: the check is dead"
    assert "campaign_idd" in negative["error"]
    failed = {name: r["error"] for name, r in results.items() if not r["ok"]}
    assert not failed, "\n\n".join(f"{n}:\n{e}" for n, e in failed.items())
    assert any(r["rows"] > 0 for r in results.values())


def test_every_table_and_monitor_is_documented() -> None:
    text = "\n".join(p.read_text(encoding="utf-8") for p in PAGES)
    for table in TABLES:
        assert f"`{table.name}`" in text, f"table {table.name} is not documented"
        assert f"streamwatch.{table.name} FINAL" in text, f"no example query reads {table.name}"
    for name in OPERATORS:
        page = DOCS / "monitors" / f"{name}.md"
        assert page.exists(), f"monitor {name} has no page"
        assert f"[monitors.{name}]" in page.read_text(encoding="utf-8")
        assert f"monitors/{name}.md" in (DOCS / "README.md").read_text(encoding="utf-8")


def link_targets() -> list[tuple[Path, str]]:
    out = []
    for page in [*PAGES, REPO / "README.md"]:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if not re.match(r"^[a-z]+:", target) and not target.startswith("#"):
                out.append((page, target))
    return out


@pytest.mark.parametrize(
    ("page", "target"), link_targets(), ids=lambda v: v.name if isinstance(v, Path) else v
)
def test_relative_links_resolve(page: Path, target: str) -> None:
    path = (page.parent / target.split("#", 1)[0]).resolve()
    assert path.exists(), f"{page.relative_to(REPO)} links to missing {target}"


def test_links_are_checked() -> None:
    targets = {t for _, t in link_targets()}
    assert "monitors/ctr.md" in targets and "../README.md" in targets
