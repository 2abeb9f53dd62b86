"""Rules written in ClickHouse SQL, run on a schedule against the tables.

    [[sql_rules]]
    name = "model_errors"
    sql = '''
      SELECT model_id, sum(errors) AS error_count
      FROM streamwatch.inference_windows FINAL
      WHERE window_end > now64(3) - INTERVAL 1 MINUTE
      GROUP BY model_id HAVING error_count > 100'''
    entity_column = "model_id"
    value_column = "error_count"
    op = ">"
    thresholds = { critical = 100 }
    interval_s = 60

Each result row is an observation (kind `sql`, metric = the rule's name,
entity from `entity_column`, value from `value_column`) for the same rule
engine every monitor uses (`operators.rules`: severities, cooldown, the
deterministic alert_id); the window of a run is its slot of `interval_s`
(wall clock: the rule reads tables, not events). A firing entity whose row is
gone from a later run resolves.

Checked at start (`SqlRules.validate`): the text is one plain read
(`streams.connectors.sqlguard`, ClickHouse's own parser), and its result names the entity
and value columns (the query runs with LIMIT 0); an error names the rule and
its configuration key. Each run has its own reader (`streams.connectors.clickhouse.Reader`:
readonly, `timeout_s`, `max_rows`), never the writer's client, and runs in a
thread of its own: a run still going when the next is due skips that tick
(counted in `streamwatch_sql_rule_skips_total`), so a slow rule can never
stall the pipeline.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter

from operators.base import Observation
from operators.rules import Rule, RuleEngine
from schemas.events import Alert
from streams.config import ConfigError, Settings, SqlRuleSettings
from streams.connectors.clickhouse import ClickHouseError, Reader
from streams.connectors.sqlguard import QueryRefused

if TYPE_CHECKING:
    from streams.runtime.parts import WorkerParts

log = logging.getLogger("streamwatch.sql_rules")

RUNS = Counter("streamwatch_sql_rule_runs_total", "SQL rule runs, by outcome", ["rule", "outcome"])
SKIPS = Counter(
    "streamwatch_sql_rule_skips_total",
    "SQL rule runs skipped because the previous run was still going",
    ["rule"],
)


def engine_rule(s: SqlRuleSettings) -> Rule:
    message = s.message or (
        f"SQL rule {s.name}: {s.entity_column} {{entity}} has {s.value_column} "
        f"{{value:.4g}} ({{op}} {{threshold:.4g}})"
    )
    return Rule(
        name=s.name,
        kind="sql",
        metric=s.name,
        op=s.op,
        thresholds=dict(s.thresholds),
        cooldown_s=s.cooldown_s,
        message=message,
        resolved_message=f"SQL rule {s.name}: {s.entity_column} {{entity}} no longer matches",
    )


def _clear_value(rule: Rule) -> float:
    """A value on the line that does not cross it: the observation of a row gone."""
    line = rule.thresholds[min(rule.thresholds, key=("info", "warning", "critical").index)]
    if rule.op == ">=":
        return math.nextafter(line, -math.inf)
    if rule.op == "<=":
        return math.nextafter(line, math.inf)
    return line


@dataclass
class _State:
    settings: SqlRuleSettings
    reader: Reader
    next_due: float = 0.0
    running: Future[tuple[list[str], list[Any]]] | None = None
    slot: int = 0  # the window start (ms) of the run in flight
    firing: frozenset[str] = frozenset()


class SqlRules:
    """The configured SQL rules of one worker: validation, schedule, observations."""

    def __init__(self, settings: Settings, readers: dict[str, Reader] | None = None) -> None:
        self.settings = settings
        self.rules: dict[str, Rule] = {}
        for i, s in enumerate(settings.sql_rules):
            try:
                self.rules[s.name] = engine_rule(s)
            except ValueError as exc:
                raise ConfigError(f"sql_rules[{i}] ({s.name}): {exc}") from None
        self.engine = RuleEngine(self.rules.values())
        readers = readers or {}
        self.states = {
            s.name: _State(
                s,
                readers.get(s.name)
                or Reader.open(
                    settings.clickhouse_dsn(), settings.clickhouse.database, s.timeout_s, s.max_rows
                ),
            )
            for s in settings.sql_rules
        }
        self.pool = ThreadPoolExecutor(max(1, len(self.states)), thread_name_prefix="sw-sql-rule")
        self.skips: dict[str, int] = dict.fromkeys(self.states, 0)
        self.errors: dict[str, str] = {}

    def validate(self) -> None:
        """Refuse, with the rule's name and key, a rule that is not a plain read or
        whose result lacks its entity or value column."""
        names = [s.name for s in self.settings.sql_rules]
        if len(set(names)) != len(names):
            raise ConfigError(f"sql_rules: names must be unique, got {names}")
        for i, (name, state) in enumerate(self.states.items()):
            where = f"sql_rules[{i}] ({name})"
            sql = state.settings.sql.strip().rstrip(";")
            try:
                columns, _ = state.reader.read(f"SELECT * FROM (\n{sql}\n) LIMIT 0")
            except QueryRefused as exc:
                raise ConfigError(f"{where}.sql is refused: {exc}") from None
            except ClickHouseError as exc:
                raise ConfigError(f"{where}.sql does not run: {exc}") from None
            for key in ("entity_column", "value_column"):
                column = getattr(state.settings, key)
                if column not in columns:
                    raise ConfigError(
                        f"{where}.{key}: the query's result has no column {column!r} "
                        f"(it has {columns})"
                    )

    def tick(self, now: float | None = None) -> list[Alert]:
        """Start the runs that are due, and judge those that finished. Never waits."""
        now = time.time() if now is None else now
        alerts: list[Alert] = []
        for name, state in self.states.items():
            if state.running is not None and state.running.done():
                alerts.extend(self._judge(state, state.running))
                state.running = None
            if now < state.next_due:
                continue
            interval = state.settings.interval_s
            state.next_due = now + interval
            if state.running is not None:
                self.skips[name] += 1
                SKIPS.labels(name).inc()
                log.warning("SQL rule %s: the previous run is still going; skipped", name)
                continue
            slot_ms = round(interval * 1000)
            state.slot = int(now * 1000) // slot_ms * slot_ms
            sql = state.settings.sql.strip().rstrip(";")
            state.running = self.pool.submit(state.reader.read, sql)
        return alerts

    def _judge(self, state: _State, run: Future[tuple[list[str], list[Any]]]) -> list[Alert]:
        s = state.settings
        try:
            columns, rows = run.result()
        except Exception as exc:
            RUNS.labels(s.name, "error").inc()
            self.errors[s.name] = str(exc)
            log.warning("SQL rule %s failed: %s", s.name, exc)
            return []
        if rows and not {s.entity_column, s.value_column} <= set(columns):
            RUNS.labels(s.name, "error").inc()
            self.errors[s.name] = f"the result has no column {s.entity_column} or {s.value_column}"
            return []
        RUNS.labels(s.name, "ok").inc()
        self.errors.pop(s.name, None)
        # an empty result may come without column names: no row matches
        entity_at = columns.index(s.entity_column) if rows else 0
        value_at = columns.index(s.value_column) if rows else 0
        start, end = state.slot, state.slot + round(s.interval_s * 1000)
        observations: list[Observation] = []
        seen: set[str] = set()
        for row in rows:
            entity, value = row[entity_at], row[value_at]
            try:
                number = float(value)
            except (TypeError, ValueError):
                log.warning("SQL rule %s: %r is not a number; row skipped", s.name, value)
                continue
            if entity is None or not math.isfinite(number):
                continue
            seen.add(str(entity))
            observations.append(Observation("sql", str(entity), s.name, number, end, 1, start, end))
        rule = self.rules[s.name]
        for entity in sorted(state.firing - seen):  # its row is gone: resolves
            observations.append(
                Observation(
                    "sql", entity, s.name, _clear_value(rule), end, 1, start, end, {"row_gone": 1}
                )
            )
        alerts = self.engine.evaluate(observations)
        for alert in alerts:
            if alert.status == "firing":
                state.firing = state.firing | {alert.entity}
            else:
                state.firing = state.firing - {alert.entity}
        return alerts

    def stop(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def install(worker: WorkerParts) -> SqlRules | None:
    """Validate the configured SQL rules and run them on the worker's faust timer;
    their alerts go out through the worker's sinks, under the runtime's lock."""
    if not worker.settings.sql_rules:
        return None
    rules = SqlRules(worker.settings)
    rules.validate()

    @worker.app.timer(interval=1.0)
    async def sql_rules_tick() -> None:
        alerts = rules.tick()
        if alerts:
            async with worker.runtime.lock:
                worker.sinks.alerts(alerts)

    return rules
