"""ClickHouse tables the project writes, generated from their typed rows (`schemas.rows`).

Each table is its row type's columns (fields with their ClickHouse types, in
order), then `inserted_at`, which ClickHouse fills, and the options attached to
the row type (`__table__`); the DDL (`schema_sql`, checked in as
deploy/clickhouse/001_schema.sql) and the writer's columns come from here.

Idempotency: every table is a ReplacingMergeTree whose sorting key is the
identity of a row (a window of a key, an alert id, a topic offset). A worker
that restarts or replays re-emits the same rows with the same key, and
`SELECT ... FINAL` returns one row per key (the highest `version` where a
table has one, e.g. a CTR window's final row over its provisional one).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import msgspec.inspect

from schemas.rows import (
    ROWS,
    TIME,
    AlertRow,
    CtrWindowRow,
    DeadLetterRow,
    DriftScoreRow,
    ExperimentWindowRow,
    InferenceWindowRow,
    LateEventRow,
    QualityWindowRow,
    Row,
    SensorAnomalyRow,
    SensorWindowRow,
    SrmCheckRow,
)

# Columns ClickHouse fills itself, last in every table: no field of any row.
SERVER_COLUMNS: tuple[tuple[str, str], ...] = (("inserted_at", f"{TIME} DEFAULT now64(3)"),)


class RowError(ValueError):
    """A row that does not belong where it is sent: a bug where the row was built."""


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[tuple[str, str], ...]
    order_by: tuple[str, ...]
    comment: str
    #: the row type the table is generated from; its fields are the inserted columns
    row: type[Row]
    version: str | None = None
    partition_by: str | None = None
    # columns added after the table was first released: `CREATE TABLE IF NOT
    # EXISTS` leaves an existing table as it is, so these come by ALTER TABLE
    added: tuple[str, ...] = ()
    #: the row fields that hold JSON objects or arrays in a String column (the writer
    #: encodes them)
    json_fields: tuple[str, ...] = ()

    @property
    def column_names(self) -> list[str]:
        return [name for name, _ in self.columns]

    @property
    def insert_columns(self) -> tuple[str, ...]:
        """The columns the writer inserts: every field of the row type, in order (every
        column of the table but those ClickHouse fills, `inserted_at`)."""
        return self.row.__struct_fields__

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


def table_of(row: type[Row]) -> Table:
    """The table of a row type: its fields with their ClickHouse types, then
    SERVER_COLUMNS, and the options of `row.__table__`.

    >>> table = table_of(LateEventRow)
    >>> table.name, table.columns[:2], table.columns[-1][0]
    ('late_events', (('monitor', 'LowCardinality(String)'), ('source_topic', \
'LowCardinality(String)')), 'inserted_at')
    """
    options = row.__table__
    columns: list[tuple[str, str]] = []
    json_fields: list[str] = []
    for field in msgspec.inspect.type_info(row).fields:
        meta = field.type
        if not isinstance(meta, msgspec.inspect.Metadata) or "clickhouse" not in (meta.extra or {}):
            raise TypeError(f"{row.__name__}.{field.name} has no ClickHouse type")
        columns.append((field.name, meta.extra["clickhouse"]))
        if isinstance(meta.type, msgspec.inspect.DictType | msgspec.inspect.ListType):
            json_fields.append(field.name)
    columns += SERVER_COLUMNS
    names = {name for name, _ in columns}
    for name in (*options.order_by, *options.added, *filter(None, [options.version])):
        if name not in names:
            raise TypeError(f"{row.__name__}.__table__ names {name!r}, which is no column")
    return Table(
        name=options.name,
        columns=tuple(columns),
        order_by=options.order_by,
        comment=options.comment,
        row=row,
        version=options.version,
        partition_by=options.partition_by,
        added=options.added,
        json_fields=tuple(json_fields),
    )


CTR_WINDOWS = table_of(CtrWindowRow)
SENSOR_ANOMALIES = table_of(SensorAnomalyRow)
SENSOR_WINDOWS = table_of(SensorWindowRow)
DRIFT_SCORES = table_of(DriftScoreRow)
INFERENCE_WINDOWS = table_of(InferenceWindowRow)
SRM_CHECKS = table_of(SrmCheckRow)
QUALITY_WINDOWS = table_of(QualityWindowRow)
EXPERIMENT_WINDOWS = table_of(ExperimentWindowRow)
ALERTS = table_of(AlertRow)
DEAD_LETTERS = table_of(DeadLetterRow)
LATE_EVENTS = table_of(LateEventRow)

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
assert tuple(t.row for t in TABLES) == ROWS, "a row type without its table constant"
TABLES_BY_NAME = {t.name: t for t in TABLES}
TABLE_OF_ROW: dict[type[Row], Table] = {t.row: t for t in TABLES}


def schema_sql(database: str = "streamwatch") -> str:
    """The whole DDL: database and every table, as applied at start and checked in."""
    statements = [f"CREATE DATABASE IF NOT EXISTS {database};"]
    statements += [t.ddl(database) for t in TABLES]
    return "\n\n".join(statements) + "\n"
