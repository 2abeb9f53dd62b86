"""The row of every ClickHouse table, as a typed definition: one source of truth.

Each table's row is a msgspec Struct whose fields are the table's columns, in
order, each annotated with its ClickHouse type; the table's options (sorting
key, version column, partitioning, comment, columns added after release) are
attached to the row type as `__table__`. From these definitions come:

- the DDL (`schemas.tables`: `TABLES`, `schema_sql`, the ALTERs of `added`),
- the JSON Schema of each row (`python -m schemas.generate`, `schemas/json/<table>.row.json`),
- the columns the writer inserts (`streams.connectors.clickhouse.Writer`: every field).

Operators build rows by keyword, so a misspelt or missing column fails where the
row is built, with a TypeError naming it:

>>> SensorAnomalyRow(ts=1, sensor_id="s", metric="m", value=1.0, method="cluster",
...     score=2.0, threshold=1.0, window_strat=0, window_end=1)
Traceback (most recent call last):
...
TypeError: Unexpected keyword argument 'window_strat'

Rows are frozen: a row once emitted is what the writer inserts. Field types are
the Python values the operators give (msgspec checks them on decoding, e.g. a
row read back from JSON, not on construction, which stays cheap). Every table
also has `inserted_at` (ClickHouse fills it: `DEFAULT now64(3)`), which is no
field of a row (`schemas.tables.SERVER_COLUMNS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import msgspec

TIME = "DateTime64(3, 'UTC')"


def clickhouse(kind: str, **meta: Any) -> msgspec.Meta:
    """The metadata of a column of ClickHouse type `kind` (shown in its JSON Schema as
    `x-clickhouse-type`), with any other msgspec constraint (`ge=0`)."""
    return msgspec.Meta(
        extra={"clickhouse": kind}, extra_json_schema={"x-clickhouse-type": kind}, **meta
    )


# The column types, by the Python value an operator gives for them.
Time = Annotated[int, clickhouse(TIME, description="epoch milliseconds, UTC")]
NullableTime = Annotated[
    int | None, clickhouse(f"Nullable({TIME})", description="epoch milliseconds, UTC")
]
String = Annotated[str, clickhouse("String")]
NullableString = Annotated[str | None, clickhouse("Nullable(String)")]
Label = Annotated[str, clickhouse("LowCardinality(String)")]
UInt64 = Annotated[int, clickhouse("UInt64", ge=0)]
UInt32 = Annotated[int, clickhouse("UInt32", ge=0)]
Flag = Annotated[int, clickhouse("UInt8", ge=0, le=1)]
Float64 = Annotated[float, clickhouse("Float64")]
NullableFloat64 = Annotated[float | None, clickhouse("Nullable(Float64)")]
# a String column holding a JSON object: the writer encodes it (orjson)
JsonCounts = Annotated[dict[str, int], clickhouse("String")]
JsonShares = Annotated[dict[str, float], clickhouse("String")]


@dataclass(frozen=True)
class TableOptions:
    """What a table is beyond its columns: attached to its row type as `__table__`."""

    name: str
    order_by: tuple[str, ...]
    comment: str
    version: str | None = None
    partition_by: str | None = None
    # columns added after the table was first released: `CREATE TABLE IF NOT
    # EXISTS` leaves an existing table as it is, so these come by ALTER TABLE
    added: tuple[str, ...] = ()


class Row(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A row of one table (`__table__`); subclasses declare its columns as fields.

    Every field is required (no defaults), as every column is inserted; an unknown
    field fails on construction (TypeError) and on decoding (ValidationError), so
    the JSON Schema says `additionalProperties: false`."""

    __table__: ClassVar[TableOptions]


class CtrWindowRow(Row):
    __table__ = TableOptions(
        name="ctr_windows",
        order_by=("campaign_id", "variant", "window_start"),
        version="version",
        partition_by="toYYYYMM(window_start)",
        comment="Tumbling event-time CTR windows; final=1 once the attribution window has passed; "
        "conversions of clicks (cvr = conversions / clicks, revenue) complete once the "
        "conversion window has passed too (version 3 where they changed after the final row)",
        # added in v2: tables created before get them by ALTER TABLE at start
        added=("conversions", "cvr", "revenue", "orphan_conversions", "duplicate_conversions"),
    )

    window_start: Time
    window_end: Time
    campaign_id: String
    variant: String
    impressions: UInt64
    clicks: UInt64
    ctr: Float64
    orphan_clicks: UInt64
    duplicate_clicks: UInt64
    duplicate_impressions: UInt64
    final: Flag
    version: UInt32
    # v2 conversions (version 3: conversions at or after window_end + attribution_ms)
    conversions: UInt64
    cvr: Float64
    revenue: Float64
    orphan_conversions: UInt64
    duplicate_conversions: UInt64


class SensorAnomalyRow(Row):
    __table__ = TableOptions(
        name="sensor_anomalies",
        order_by=("sensor_id", "metric", "method", "ts"),
        partition_by="toYYYYMM(ts)",
        comment="Anomalous sensor readings, one row per reading, metric and detection method",
    )

    ts: Time
    sensor_id: String
    metric: String
    value: Float64
    method: Label
    score: Float64
    threshold: Float64
    window_start: Time
    window_end: Time


class SensorWindowRow(Row):
    __table__ = TableOptions(
        name="sensor_windows",
        order_by=("sensor_id", "metric", "window_start"),
        partition_by="toYYYYMM(window_start)",
        comment="Per-window aggregates of sensor metrics",
    )

    window_start: Time
    window_end: Time
    sensor_id: String
    metric: String
    n: UInt64
    min: Float64
    max: Float64
    mean: Float64
    p95: Float64


class DriftScoreRow(Row):
    __table__ = TableOptions(
        name="drift_scores",
        order_by=("model_id", "feature", "window_start"),
        partition_by="toYYYYMM(window_start)",
        comment="Drift of each feature and the prediction against the reference profile",
    )

    window_start: Time
    window_end: Time
    model_id: String
    model_version: String
    feature: String
    psi: Float64
    ks: NullableFloat64
    ks_pvalue: NullableFloat64
    chi2: NullableFloat64
    chi2_pvalue: NullableFloat64
    js: Float64
    n: UInt64
    reference_version: String


class InferenceWindowRow(Row):
    __table__ = TableOptions(
        name="inference_windows",
        order_by=("model_id", "model_version", "window_start"),
        partition_by="toYYYYMM(window_start)",
        comment="Service health of each model version per tumbling window",
    )

    window_start: Time
    window_end: Time
    model_id: String
    model_version: String
    requests: UInt64
    errors: UInt64
    error_rate: Float64
    latency_p50: Float64
    latency_p95: Float64
    latency_p99: Float64
    confidence_mean: NullableFloat64
    low_confidence_ratio: NullableFloat64


class SrmCheckRow(Row):
    __table__ = TableOptions(
        name="srm_checks",
        order_by=("experiment", "unit", "window_start"),
        partition_by="toYYYYMM(window_start)",
        comment="Sample-ratio-mismatch tests per experiment and window; counts etc. are JSON",
    )

    window_start: Time
    window_end: Time
    experiment: String
    unit: Label
    variants: String  # the tested arms, comma-separated
    counts: JsonCounts
    expected: JsonShares
    unexpected: JsonCounts
    chi2: Float64
    p_value: Float64
    total: UInt64
    srm: Flag


class QualityWindowRow(Row):
    __table__ = TableOptions(
        name="quality_windows",
        order_by=("model_id", "model_version", "window_start"),
        version="version",
        partition_by="toYYYYMM(window_start)",
        comment="Model quality from labels per model version and window of the prediction "
        "time; estimated=1 is a label-free CBPE estimate that the final realized row "
        "(final=1) replaces",
    )

    window_start: Time
    window_end: Time
    model_id: String
    model_version: String
    estimated: Flag
    predictions: UInt64
    labelled: UInt64
    coverage: Float64
    orphan_labels: UInt64
    duplicate_labels: UInt64
    duplicate_predictions: UInt64
    task: Label
    accuracy: NullableFloat64
    precision_macro: NullableFloat64
    recall_macro: NullableFloat64
    f1_macro: NullableFloat64
    log_loss: NullableFloat64
    brier: NullableFloat64
    roc_auc: NullableFloat64
    ece: NullableFloat64
    per_class: String  # JSON object: class -> precision, recall, f1, support
    mae: NullableFloat64
    rmse: NullableFloat64
    mape: NullableFloat64
    mape_skipped: UInt64
    mean_error: NullableFloat64
    estimated_accuracy: NullableFloat64
    final: Flag
    version: UInt32


class ExperimentWindowRow(Row):
    __table__ = TableOptions(
        name="experiment_windows",
        order_by=("experiment", "metric", "variant", "window_start"),
        partition_by="toYYYYMM(window_start)",
        comment="Per experiment arm and window: shares, guardrail metrics, crossover; "
        "control_value is the expected share or the control arm value",
    )

    window_start: Time
    window_end: Time
    experiment: String
    variant: String
    metric: Label
    value: Float64
    n: UInt64
    control_value: NullableFloat64
    p_value: NullableFloat64


class AlertRow(Row):
    __table__ = TableOptions(
        name="alerts",
        order_by=("alert_id",),
        partition_by="toYYYYMM(ts)",
        comment="Every alert event also published on the alerts topic; details is a JSON object",
    )

    alert_id: String
    ts: Time
    kind: Label
    rule: Label
    severity: Label
    status: Label
    entity: String
    metric: String
    value: Float64
    threshold: Float64
    window_start: NullableTime
    window_end: NullableTime
    message: String
    details: String  # the alert's details as JSON, keys sorted


class DeadLetterRow(Row):
    __table__ = TableOptions(
        name="dead_letters",
        order_by=("source_topic", "partition", "offset"),
        comment="Rejected input messages (also on the dead-letter topic) with the reason; raw "
        "is base64 of the first bytes when raw_truncated",
        # added in v2: tables created before get them by ALTER TABLE at start
        added=("raw_truncated", "raw_size", "raw_sha256"),
    )

    ts: Time
    source_topic: Label
    partition: UInt32
    offset: UInt64
    key: NullableString
    reason: Label
    error: String
    raw: String
    raw_truncated: Annotated[bool, clickhouse("UInt8")]
    raw_size: UInt64
    raw_sha256: String


class LateEventRow(Row):
    __table__ = TableOptions(
        name="late_events",
        order_by=("monitor", "source_topic", "partition", "offset"),
        comment="Events later than the allowed lateness: not in any window, copied to late-events",
    )

    monitor: Label
    source_topic: Label
    partition: UInt32
    offset: UInt64
    event_ts: Time
    watermark: Time
    window_start: Time
    key: String


#: every row type, in the order of the DDL
ROWS: tuple[type[Row], ...] = (
    CtrWindowRow,
    SensorAnomalyRow,
    SensorWindowRow,
    DriftScoreRow,
    InferenceWindowRow,
    SrmCheckRow,
    QualityWindowRow,
    ExperimentWindowRow,
    AlertRow,
    DeadLetterRow,
    LateEventRow,
)
