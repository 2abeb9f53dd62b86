"""Rules written in SQL (streams.runtime.sql_rules) against real chDB tables.

Seed 004's example rule (error count per model over a minute, HAVING
error_count > 100) fires on the model whose row matches and resolves when the
row disappears; bad rules are refused at start with the rule's name and key;
a slow rule skips ticks (counted) and never makes `tick` wait; a rule past its
time limit fails alone.
"""

from __future__ import annotations

import time
from concurrent import futures
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from schemas.rows import InferenceWindowRow
from streams.config import ConfigError, Settings
from streams.connectors.clickhouse import Writer, connect, ensure_schema
from streams.runtime.sql_rules import SqlRules
from tests.test_causes_docs import example

pytestmark = pytest.mark.integration

T0 = int(datetime(2026, 6, 1, tzinfo=UTC).timestamp() * 1000)
MIN = 60_000


def rule(**kw: Any) -> dict[str, Any]:
    """docs/causes.md's example rule (seed 004's: error count per model over a minute,
    HAVING error_count > 100, on the event time the table holds), with changes."""
    return {**example()["sql_rules"][0], **kw}


def settings(tmp: Path, *rules: dict[str, Any]) -> Settings:
    return msgspec.convert({"data_dir": str(tmp), "sql_rules": list(rules)}, Settings)


@pytest.fixture(scope="module")
def chdb(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Writer]:
    tmp = tmp_path_factory.mktemp("sqlrules")
    s = settings(tmp)
    client = connect(s.clickhouse_dsn())
    ensure_schema(client, "streamwatch")
    return tmp, Writer(client, "streamwatch")


def window(model: str, start: int, errors: int) -> InferenceWindowRow:
    return InferenceWindowRow(
        window_start=start,
        window_end=start + MIN,
        model_id=model,
        model_version="1",
        requests=10_000,
        errors=errors,
        error_rate=errors / 10_000,
        latency_p50=1.0,
        latency_p95=2.0,
        latency_p99=3.0,
        confidence_mean=None,
        low_confidence_ratio=None,
    )


def run_once(rules: SqlRules, now: float) -> list[Any]:
    """One due run, waited for, then judged."""
    alerts = rules.tick(now)
    for state in rules.states.values():
        if state.running is not None:
            futures.wait([state.running], timeout=30)
    return alerts + rules.tick(now)


def test_seed_rule_fires_on_its_row_and_resolves_when_the_row_is_gone(chdb) -> None:
    tmp, writer = chdb
    writer.insert("inference_windows", [window("m0", T0, 150), window("m1", T0, 20)])
    rules = SqlRules(settings(tmp, rule()))
    rules.validate()
    try:
        (fired,) = run_once(rules, 1_000.0)
        assert (fired.kind, fired.rule, fired.entity, fired.status) == (
            "sql",
            "model_errors",
            "m0",
            "firing",
        )
        assert (fired.severity, fired.value, fired.threshold) == ("critical", 150.0, 100.0)
        assert fired.message.startswith("SQL rule model_errors: model_id m0 has error_count 150")
        assert run_once(rules, 1_030.0) == []  # not due yet: nothing ran
        assert run_once(rules, 1_060.0) == []  # ran; still matching: no new alert
        writer.insert("inference_windows", [window("m0", T0 + MIN, 5)])
        (resolved,) = run_once(rules, 1_120.0)
        assert (resolved.entity, resolved.status) == ("m0", "resolved")
        assert resolved.message.startswith("SQL rule model_errors: model_id m0 no longer matches")
        # the same slot gives the same id: a replayed run de-duplicates
        slot = 1_080_000  # 1120 s floored to the 60 s interval
        assert (resolved.window_start, resolved.window_end) == (slot, slot + MIN)
    finally:
        rules.stop()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sql": "INSERT INTO streamwatch.alerts SELECT * FROM numbers(1)"}, "sql is refused"),
        ({"sql": "SELECT * FROM file('/etc/passwd')"}, "sql is refused"),
        ({"sql": "SELEC model_id"}, "sql is refused"),
        ({"entity_column": "model"}, "entity_column: the query's result has no column 'model'"),
        ({"value_column": "errors"}, "value_column: the query's result has no column 'errors'"),
    ],
)
def test_bad_rules_are_refused_at_start_naming_rule_and_key(chdb, changes, message) -> None:
    tmp, _ = chdb
    rules = SqlRules(settings(tmp, rule(name="bad", **changes)))
    try:
        with pytest.raises(ConfigError) as caught:
            rules.validate()
        assert str(caught.value).startswith(f"sql_rules[0] (bad).{message}"), caught.value
    finally:
        rules.stop()


def test_a_slow_rule_skips_ticks_without_stalling_and_a_limit_stops_it(chdb) -> None:
    tmp, _ = chdb
    slow = rule(
        name="slow",
        # about 2 s: sleepEachRow over 4 rows of one block
        sql="SELECT 'x' AS entity, sum(sleepEachRow(0.5)) + 200 AS v FROM numbers(4)",
        entity_column="entity",
        value_column="v",
        interval_s=0.2,
        timeout_s=30,
    )
    rules = SqlRules(settings(tmp, slow))
    rules.validate()
    try:
        began = time.monotonic()
        waits = []
        while time.monotonic() - began < 1.5:
            t = time.monotonic()
            rules.tick()
            waits.append(time.monotonic() - t)
            time.sleep(0.1)
        assert max(waits) < 0.1, waits  # tick never waits for the query
        assert rules.skips["slow"] >= 3
        assert rules.states["slow"].running is not None
    finally:
        rules.stop()
    limited = rule(
        name="limited",
        sql="SELECT 'x' AS entity, sum(sleepEachRow(1)) AS v FROM numbers(3)",
        entity_column="entity",
        value_column="v",
        timeout_s=1,
    )
    rules = SqlRules(settings(tmp, limited))
    try:
        assert run_once(rules, 0.0) == []
        assert "TIMEOUT_EXCEEDED" in rules.errors["limited"], rules.errors
    finally:
        rules.stop()
