"""Typed rows (issue 12, point 2): each table's row is a msgspec Struct in `schemas.rows`, from
which the DDL, the JSON Schema and the writer's columns are generated; a misspelt or missing
field fails where the row is built."""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import jsonschema
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import operators.cluster
from operators.base import Output
from schemas.generate import JSON_DIR, artefacts
from schemas.rows import ROWS, Row, SensorAnomalyRow, String, TableOptions, clickhouse
from schemas.tables import (
    SERVER_COLUMNS,
    TABLE_OF_ROW,
    TABLES,
    TABLES_BY_NAME,
    schema_sql,
    table_of,
)
from tests.conformance_inputs import GENERATORS
from tests.row_dicts import as_dicts, sample_row

REPO = Path(__file__).resolve().parents[1]
# schema_sql() as written by hand in schemas/tables.py at 9da71f9, before the tables were
# generated from the row types (tests/artifacts, kept in git)
BEFORE = REPO / "tests" / "artifacts" / "schema_sql_9da71f9.sql"


def test_the_generated_ddl_equals_the_hand_written_one() -> None:
    assert schema_sql() == BEFORE.read_text()
    checked_in = (REPO / "deploy" / "clickhouse" / "001_schema.sql").read_text()
    assert checked_in.split("\n", 1)[1] == BEFORE.read_text()


@pytest.mark.parametrize("row_type", ROWS, ids=lambda r: r.__name__)
def test_each_table_is_its_row_type(row_type: type[Row]) -> None:
    table = TABLE_OF_ROW[row_type]
    assert TABLES_BY_NAME[row_type.__table__.name] is table and table.row is row_type
    fields = row_type.__struct_fields__
    assert table.insert_columns == fields
    assert table.column_names == [*fields, *(name for name, _ in SERVER_COLUMNS)]
    assert set(table.order_by) <= set(fields) and set(table.added) <= set(fields)
    assert row_type.__struct_defaults__ == (), "every column is required: no defaults"
    assert [t.row for t in TABLES] == list(ROWS)


# -- a misspelt or missing field fails where the row is built ---------------------------


@settings(max_examples=60, deadline=None)
@given(row_type=st.sampled_from(ROWS), data=st.data())
def test_a_missing_field_fails_at_construction(row_type: type[Row], data: Any) -> None:
    fields = msgspec.structs.asdict(sample_row(row_type))
    dropped = data.draw(st.sampled_from(sorted(fields)))
    del fields[dropped]
    with pytest.raises(TypeError, match=f"Missing required argument '{dropped}'"):
        row_type(**fields)


@settings(max_examples=60, deadline=None)
@given(
    row_type=st.sampled_from(ROWS),
    data=st.data(),
    unknown=st.from_regex(r"[a-z][a-z_]{0,20}", fullmatch=True),
)
def test_an_unknown_or_misspelt_field_fails_at_construction(
    row_type: type[Row], data: Any, unknown: str
) -> None:
    fields = msgspec.structs.asdict(sample_row(row_type))
    if unknown in fields:
        return
    with pytest.raises(TypeError, match=f"Unexpected keyword argument '{unknown}'"):
        row_type(**fields, **{unknown: 1})
    # a misspelling: one field under another name (two letters swapped)
    name = data.draw(st.sampled_from([f for f in fields if len(f) > 2]))
    misspelt = name[:-2] + name[-1] + name[-2]
    if misspelt in fields:
        return
    fields[misspelt] = fields.pop(name)
    with pytest.raises(TypeError, match=f"Unexpected keyword argument '{misspelt}'"):
        row_type(**fields)


def test_window_strat_in_a_cluster_row_fails_where_it_is_built() -> None:
    """The misspelling that used to pass every cluster test (issue 12): the cluster operator
    with `window_strat` in its row raises TypeError at its first anomaly."""
    good = dict(ts=1, sensor_id="s", metric="m", value=1.0, method="cluster", score=2.0)
    good.update(threshold=1.0, window_start=0, window_end=1)
    SensorAnomalyRow(**good)
    bad = {**good, "window_strat": good.pop("window_start")}
    with pytest.raises(TypeError, match="Unexpected keyword argument 'window_strat'"):
        SensorAnomalyRow(**bad)

    source = inspect.getsource(operators.cluster)
    at = source.index("window_start=window_start,", source.index("SensorAnomalyRow("))
    broken = _module_from(source[:at] + "window_strat" + source[at + len("window_start") :])
    case = GENERATORS["cluster"]()
    op = broken.ClusterOperator(broken.ClusterConfig(**case.options))
    with pytest.raises(TypeError, match="Unexpected keyword argument 'window_strat'"):
        for source_topic, event in case.events:
            op.feed(source_topic, [event])
            op.advance(event.ts)


def _module_from(source: str) -> Any:
    spec = importlib.util.spec_from_loader("cluster_misspelt", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        exec(compile(source, "cluster_misspelt.py", "exec"), module.__dict__)
    finally:
        del sys.modules[spec.name]
    return module


def test_output_keys_rows_by_their_table() -> None:
    out = Output()
    rows = [sample_row(r, seed=i) for i, r in enumerate(ROWS)]
    for row in rows:
        out.add_row(row)
    assert out.rows == {r.__table__.name: [r] for r in rows}
    assert as_dicts(out.rows["late_events"])[0]["key"] == rows[-1].key  # type: ignore[attr-defined]


def test_a_row_type_needs_a_clickhouse_type_and_real_option_columns() -> None:
    class NoType(Row):
        __table__ = TableOptions(name="t", order_by=("a",), comment="")
        a: int

    with pytest.raises(TypeError, match=r"NoType\.a has no ClickHouse type"):
        table_of(NoType)

    class BadKey(Row):
        __table__ = TableOptions(name="t", order_by=("b",), comment="")
        a: String

    with pytest.raises(TypeError, match="names 'b', which is no column"):
        table_of(BadKey)

    class Json(Row):
        __table__ = TableOptions(name="t", order_by=("a",), comment="")
        a: String
        b: Annotated[list[int], clickhouse("String")]

    assert table_of(Json).json_fields == ("b",)


# -- JSON Schema --------------------------------------------------------------------------


@pytest.mark.parametrize("row_type", ROWS, ids=lambda r: r.__name__)
def test_each_row_type_has_a_current_json_schema(row_type: type[Row]) -> None:
    path = JSON_DIR / f"{row_type.__table__.name}.row.json"
    assert path in artefacts()
    assert path.read_text() == artefacts()[path], "run `python -m schemas.generate`"
    schema = json.loads(path.read_text())
    table = TABLE_OF_ROW[row_type]
    props = schema["$defs"][row_type.__name__]["properties"]
    assert list(props) == list(table.insert_columns)
    kinds = dict(table.columns)
    assert {n: p["x-clickhouse-type"] for n, p in props.items()} == {n: kinds[n] for n in props}
    for nulls in (False, True):
        row = sample_row(row_type, nulls=nulls)
        doc = json.loads(msgspec.json.encode(row))
        jsonschema.validate(doc, schema)
        assert msgspec.json.decode(msgspec.json.encode(row), type=row_type) == row
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**doc, "window_strat": 0}, schema)
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({**doc, "window_strat": 0}, row_type)
