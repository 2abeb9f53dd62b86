"""ClickHouse tables the project writes: one definition each, DDL generated from it.

Idempotency: every table is a ReplacingMergeTree whose sorting key is the
identity of a row (a window of a key, an alert id, a topic offset). A worker
that restarts or replays re-emits the same rows with the same key, and
`SELECT ... FINAL` returns one row per key (the highest `version` where a
table has one, e.g. a CTR window's final row over its provisional one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

TIME = "DateTime64(3, 'UTC')"


class RowError(ValueError):
    """A row that does not match its table: a bug where the row was built."""


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[tuple[str, str], ...]
    order_by: tuple[str, ...]
    comment: str
    version: str | None = None
    partition_by: str | None = None
    # columns added after the table was first released: `CREATE TABLE IF NOT
    # EXISTS` leaves an existing table as it is, so these come by ALTER TABLE
    added: tuple[str, ...] = ()

    @property
    def column_names(self) -> list[str]:
        return [name for name, _ in self.columns]

    @property
    def required_columns(self) -> list[str]:
        """The columns a row must give: all but those with a DEFAULT (`inserted_at`)."""
        return [name for name, kind in self.columns if " DEFAULT " not in kind]

    @cached_property
    def _known(self) -> frozenset[str]:
        return frozenset(self.column_names)

    @cached_property
    def _required(self) -> frozenset[str]:
        return frozenset(self.required_columns)

    def check_row(self, row: dict[str, Any]) -> None:
        """Raise RowError unless `row` gives every column without a DEFAULT and no
        column the table lacks: the check of `insert_columns`, made where a row is
        built (`operators.base.Output.add_row`), so a misspelt key fails in the code
        that misspelt it.

        >>> CLUSTER_ROW = {"ts": 1, "sensor_id": "s", "metric": "m", "value": 1.0,
        ...     "method": "cluster", "score": 2.0, "threshold": 1.0, "window_strat": 0,
        ...     "window_end": 1}
        >>> try:
        ...     SENSOR_ANOMALIES.check_row(CLUSTER_ROW)
        ... except RowError as exc:
        ...     print(str(exc).split(":")[0])
        a sensor_anomalies row has the unknown column(s) ['window_strat']
        """
        keys = row.keys()
        if not (self._required <= keys <= self._known):
            raise RowError(self._mismatch(row, set(self._required)))

    def insert_columns(self, rows: Sequence[dict[str, Any]]) -> list[str]:
        """The columns to insert `rows` with: every column of the table, less those
        with a DEFAULT the rows leave out (`inserted_at`). Every row must have exactly
        these keys: a misspelt key or a missing column raises RowError instead of
        becoming the column's default.

        >>> try:
        ...     LATE_EVENTS.insert_columns([{"monitor": "ctr", "offest": 3}])
        ... except RowError as exc:
        ...     print(exc)
        a late_events row has the unknown column(s) ['offest']: {'monitor': 'ctr', 'offest': 3}
        """
        if not rows:
            return []
        first = rows[0]
        required = self.required_columns
        names = [n for n in self.column_names if n in first or n in required]
        expected = set(names)
        for row in rows:
            if row.keys() != expected:
                raise RowError(self._mismatch(row, expected))
        return names

    def _mismatch(self, row: dict[str, Any], expected: set[str]) -> str:
        unknown = sorted(set(row) - set(self.column_names))
        missing = sorted(set(self.required_columns) - set(row))
        shown = repr(row)
        shown = shown if len(shown) <= 300 else shown[:300] + "..."
        if unknown:
            return f"a {self.name} row has the unknown column(s) {unknown}: {shown}"
        if missing:
            return f"a {self.name} row lacks the column(s) {missing}: {shown}"
        odd = sorted(set(row) ^ expected)
        return f"the {self.name} rows of one batch differ in the optional column(s) {odd}: {shown}"

    def ddl(self, database: str = "streamwatch") -> str:
        cols = ",\n".join(f"    `{name}` {kind}" for name, kind in self.columns)
        engine = f"ReplacingMergeTree({self.version})" if self.version else "ReplacingMergeTree"
        parts = [
            f"CREATE TABLE IF NOT EXISTS {database}.{self.name}\n(\n{cols}\n)",
            f"ENGINE = {engine}",
        ]
        if self.partition_by:
            parts.append(f"PARTITION BY {self.partition_by}")
        parts.append(f"ORDER BY ({', '.join(self.order_by)})")
        parts.append(f"COMMENT '{self.comment}'")
        statements = ["\n".join(parts) + ";"]
        names = self.column_names
        for name in self.added:
            kind = dict(self.columns)[name]
            after = names[names.index(name) - 1]
            statements.append(
                f"ALTER TABLE {database}.{self.name} ADD COLUMN IF NOT EXISTS "
                f"`{name}` {kind} AFTER `{after}`;"
            )
        return "\n".join(statements)


CTR_WINDOWS = Table(
    name="ctr_windows",
    columns=(
        ("window_start", TIME),
        ("window_end", TIME),
        ("campaign_id", "String"),
        ("variant", "String"),
        ("impressions", "UInt64"),
        ("clicks", "UInt64"),
        ("ctr", "Float64"),
        ("orphan_clicks", "UInt64"),
        ("duplicate_clicks", "UInt64"),
        ("duplicate_impressions", "UInt64"),
        ("final", "UInt8"),
        ("version", "UInt32"),
        # v2 conversions (version 3: conversions at or after window_end + attribution_ms)
        ("conversions", "UInt64"),
        ("cvr", "Float64"),
        ("revenue", "Float64"),
        ("orphan_conversions", "UInt64"),
        ("duplicate_conversions", "UInt64"),
        ("inserted_at", f"{TIME} DEFAULT now64(3)"),
    ),
    order_by=("campaign_id", "variant", "window_start"),
    version="version",
    partition_by="toYYYYMM(window_start)",
    comment="Tumbling event-time CTR windows; final=1 once the attribution window has passed; "
    "conversions of clicks (cvr = conversions / clicks, revenue) complete once the conversion "
    "window has passed too (version 3 where they changed after the final row)",
    # added in v2: tables created before get them by ALTER TABLE at start
    added=("conversions", "cvr", "revenue", "orphan_conversions", "duplicate_conversions"),
)

SENSOR_ANOMALIES = Table(
    name="sensor_anomalies",
    columns=(
        ("ts", TIME),
        ("sensor_id", "String"),
        ("metric", "String"),
        ("value", "Float64"),
        ("method", "LowCardinality(String)"),
        ("score", "Float64"),
        ("threshold", "Float64"),
        ("window_start", TIME),
        ("window_end", TIME),
        ("inserted_at", f"{TIME} DEFAULT now64(3)"),
    ),
    order_by=("sensor_id", "metric", "method", "ts"),
    partition_by="toYYYYMM(ts)",
    comment="Anomalous sensor readings, one row per reading, metric and detection method",
)

SENSOR_WINDOWS = Table(
    name="sensor_windows",
    columns=(
        ("window_start", TIME),
        ("window_end", TIME),
        ("sensor_id", "String"),
        ("metric", "String"),
        ("n", "UInt64"),
        ("min", "Float64"),
        ("max", "Float64"),
        ("mean", "Float64"),
        ("p95", "Float64"),
        ("inserted_at", f"{TIME} DEFAULT now64(3)"),
    ),
    order_by=("sensor_id", "metric", "window_start"),
    partition_by="toYYYYMM(window_start)",
    comment="Per-window aggregates of sensor metrics",
)

DRIFT_SCORES = Table(
    name="drift_scores",
    columns=(
        ("window_start", TIME),
        ("window_end", TIME),
        ("model_id", "String"),
        ("model_version", "String"),
        ("feature", "String"),
        ("psi", "Float64"),
        ("ks", "Nullable(Float64)"),
        ("ks_pvalue", "Nullable(Float64)"),
        ("chi2", "Nullable(Float64)"),
        ("chi2_pvalue", "Nullable(Float64)"),
        ("js", "Float64"),
        ("n", "UInt64"),
        ("reference_version", "String"),
        ("inserted_at", f"{TIME} DEFAULT now64(3)"),
    ),
    order_by=("model_id", "feature", "window_start"),
    partition_by="toYYYYMM(window_start)",
    comment="Drift of each feature and the prediction against the reference profile",
)

INFERENCE_WINDOWS = Table(
    name="inference_windows",
    columns=(
        ("window_start", TIME),
        ("window_end", TIME),
        ("model_id", "String"),
        ("model_version", "String"),
        ("requests", "UInt64"),
        ("errors", "UInt64"),
        ("error_rate", "Float64"),
        ("latency_p50", "Float64"),
        ("latency_p95", "Float64"),
        ("latency_p99", "Float64"),
        ("confidence_mean", "Nullable(Float64)"),
        ("low_confidence_ratio", "Nullable(Float64)"),
        ("inserted_at", f"{TIME} DEFAULT now64(3)"),
    ),
    order_by=("model_id", "model_version", "window_start"),
    partition_by="toYYYYMM(window_start)",
    comment="Service health of each model version per tumbling window",
)

SRM_CHECKS = Table(
    name="srm_checks",
    columns=(
        ("window_start", TIME),
        ("window_end", TIME),
        ("experiment", "String"),
        ("unit", "LowCardinality(String)"),
        ("variants", "String"),
        ("counts", "String"),
        ("expected", "String"),
        ("unexpected", "String"),
        ("chi2", "Float64"),
        ("p_value", "Float64"),
        ("total", "UInt64"),
        ("srm", "UInt8"),
        ("inserted_at", f"{TIME} DEFAULT now64(3)"),
    ),
    order_by=("experiment", "unit", "window_start"),
    partition_by="toYYYYMM(window_start)",
    comment="Sample-ratio-mismatch tests per experiment and window; counts etc. are JSON",
)

QUALITY_WINDOWS = Table(
    name="quality_windows",
    columns=(
        ("window_start", TIME),
        ("window_end", TIME),
        ("model_id", "String"),
        ("model_version", "String"),
        ("estimated", "UInt8"),
        ("predictions", "UInt64"),
        ("labelled", "UInt64"),
        ("coverage", "Float64"),
        ("orphan_labels", "UInt64"),
        ("duplicate_labels", "UInt64"),
        ("duplicate_predictions", "UInt64"),
        ("task", "LowCardinality(String)"),
        ("accuracy", "Nullable(Float64)"),
        ("precision_macro", "Nullable(Float64)"),
        ("recall_macro", "Nullable(Float64)"),
        ("f1_macro", "Nullable(Float64)"),
        ("log_loss", "Nullable(Float64)"),
        ("brier", "Nullable(Float64)"),
        ("roc_auc", "Nullable(Float64)"),
        ("ece", "Nullable(Float64)"),
        ("per_class", "String"),
        ("mae", "Nullable(Float64)"),
        ("rmse", "Nullable(Float64)"),
        ("mape", "Nullable(Float64)"),
        ("mape_skipped", "UInt64"),
        ("mean_error", "Nullable(Float64)"),
        ("estimated_accuracy", "Nullable(Float64)"),
        ("final", "UInt8"),
        ("version", "UInt32"),
        ("inserted_at", f"{TIME} DEFAULT now64(3)"),
    ),
    order_by=("model_id", "model_version", "window_start"),
    version="version",
    partition_by="toYYYYMM(window_start)",
    comment="Model quality from labels per model version and window of the prediction time; "
    "estimated=1 is a label-free CBPE estimate that the final realized row (final=1) replaces",
)


EXPERIMENT_WINDOWS = Table(
    name="experiment_windows",
    columns=(
        ("window_start", TIME),
        ("window_end", TIME),
        ("experiment", "String"),
        ("variant", "String"),
        ("metric", "LowCardinality(String)"),
        ("value", "Float64"),
        ("n", "UInt64"),
        ("control_value", "Nullable(Float64)"),
        ("p_value", "Nullable(Float64)"),
        ("inserted_at", f"{TIME} DEFAULT now64(3)"),
    ),
    order_by=("experiment", "metric", "variant", "window_start"),
    partition_by="toYYYYMM(window_start)",
    comment="Per experiment arm and window: shares, guardrail metrics, crossover; "
    "control_value is the expected share or the control arm value",
)

ALERTS = Table(
    name="alerts",
    columns=(
        ("alert_id", "String"),
        ("ts", TIME),
        ("kind", "LowCardinality(String)"),
        ("rule", "LowCardinality(String)"),
        ("severity", "LowCardinality(String)"),
        ("status", "LowCardinality(String)"),
        ("entity", "String"),
        ("metric", "String"),
        ("value", "Float64"),
        ("threshold", "Float64"),
        ("window_start", f"Nullable({TIME})"),
        ("window_end", f"Nullable({TIME})"),
        ("message", "String"),
        ("details", "String"),
        ("inserted_at", f"{TIME} DEFAULT now64(3)"),
    ),
    order_by=("alert_id",),
    partition_by="toYYYYMM(ts)",
    comment="Every alert event also published on the alerts topic; details is a JSON object",
)

DEAD_LETTERS = Table(
    name="dead_letters",
    columns=(
        ("ts", TIME),
        ("source_topic", "LowCardinality(String)"),
        ("partition", "UInt32"),
        ("offset", "UInt64"),
        ("key", "Nullable(String)"),
        ("reason", "LowCardinality(String)"),
        ("error", "String"),
        ("raw", "String"),
        ("raw_truncated", "UInt8"),
        ("raw_size", "UInt64"),
        ("raw_sha256", "String"),
        ("inserted_at", f"{TIME} DEFAULT now64(3)"),
    ),
    order_by=("source_topic", "partition", "offset"),
    comment="Rejected input messages (also on the dead-letter topic) with the reason; raw is "
    "base64 of the first bytes when raw_truncated",
    # added in v2: tables created before get them by ALTER TABLE at start
    added=("raw_truncated", "raw_size", "raw_sha256"),
)

LATE_EVENTS = Table(
    name="late_events",
    columns=(
        ("monitor", "LowCardinality(String)"),
        ("source_topic", "LowCardinality(String)"),
        ("partition", "UInt32"),
        ("offset", "UInt64"),
        ("event_ts", TIME),
        ("watermark", TIME),
        ("window_start", TIME),
        ("key", "String"),
        ("inserted_at", f"{TIME} DEFAULT now64(3)"),
    ),
    order_by=("monitor", "source_topic", "partition", "offset"),
    comment="Events later than the allowed lateness: not in any window, copied to late-events",
)

TABLES: tuple[Table, ...] = (
    CTR_WINDOWS,
    SENSOR_ANOMALIES,
    SENSOR_WINDOWS,
    DRIFT_SCORES,
    INFERENCE_WINDOWS,
    SRM_CHECKS,
    QUALITY_WINDOWS,
    EXPERIMENT_WINDOWS,
    ALERTS,
    DEAD_LETTERS,
    LATE_EVENTS,
)
TABLES_BY_NAME = {t.name: t for t in TABLES}


def schema_sql(database: str = "streamwatch") -> str:
    """The whole DDL: database and every table, as applied at start and checked in."""
    statements = [f"CREATE DATABASE IF NOT EXISTS {database};"]
    statements += [t.ddl(database) for t in TABLES]
    return "\n\n".join(statements) + "\n"
