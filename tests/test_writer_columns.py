"""The writer inserts every column of a table, from typed rows (issue 12, point 2): a
misspelt key used to become the column's default silently, because only the columns of
the first row were inserted; rows are now typed (`schemas.rows`), the writer inserts every
field of the table's row type and refuses a row of another type."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from schemas.rows import CtrWindowRow, LateEventRow
from schemas.tables import CTR_WINDOWS, LATE_EVENTS, TABLES, RowError
from streams.connectors.clickhouse import columns_of
from tests.row_dicts import sample_row

REPO = Path(__file__).resolve().parents[1]


def test_every_column_but_the_servers_is_inserted() -> None:
    for table in TABLES:
        assert list(table.insert_columns) == [n for n in table.column_names if n != "inserted_at"]
    rows = [sample_row(CtrWindowRow, seed) for seed in range(3)]
    columns = columns_of(CTR_WINDOWS, rows)
    assert len(columns) == len(CTR_WINDOWS.insert_columns)
    assert list(columns[CTR_WINDOWS.insert_columns.index("clicks")]) == [r.clicks for r in rows]


def test_a_row_of_another_type_is_refused_wherever_it_is_in_the_batch() -> None:
    good, other = sample_row(CtrWindowRow), sample_row(LateEventRow)
    for batch in ([good, other], [other, good], [other]):
        with pytest.raises(RowError, match="a LateEventRow row sent to ctr_windows"):
            columns_of(CTR_WINDOWS, batch)
    assert list(columns_of(LATE_EVENTS, [other])[-1]) == [other.key]


CHILD = textwrap.dedent(
    """
    import json, sys
    from streams.connectors.clickhouse import Writer, connect, ensure_schema
    from schemas.rows import ROWS, CtrWindowRow, LateEventRow
    from schemas.tables import TABLE_OF_ROW, RowError
    from tests.row_dicts import sample_row, as_dicts

    client = connect("chdb://" + sys.argv[1])
    ensure_schema(client, "streamwatch")
    writer = Writer(client, "streamwatch")
    out = {"tables": {}}
    for row_type in ROWS:
        table = TABLE_OF_ROW[row_type]
        rows = [sample_row(row_type, 0), sample_row(row_type, 1, nulls=True)]
        writer.insert(table.name, rows)
        cells = [
            f"toUnixTimestamp64Milli(`{name}`)" if "DateTime64" in kind else f"`{name}`"
            for name, kind in table.columns
            if name in table.insert_columns
        ]
        order = ", ".join(f"`{c}`" for c in table.order_by)
        result = client.query(
            f"SELECT {', '.join(cells)}, inserted_at > 0 FROM streamwatch.{table.name} "
            f"ORDER BY {order}"
        )
        out["tables"][table.name] = {
            "sent": as_dicts(sorted(rows, key=lambda r: [getattr(r, c) for c in table.order_by])),
            "read": [list(r) for r in result.result_rows],
        }
    good = sample_row(CtrWindowRow, 7)
    try:
        writer.insert("ctr_windows", [good, sample_row(LateEventRow)])
        out["refused"] = None
    except RowError as exc:
        out["refused"] = str(exc)
    out["ctr_rows"] = client.query("SELECT count() FROM streamwatch.ctr_windows").result_rows[0][0]
    print(json.dumps(out, default=str))
    """
)


def test_every_column_of_every_table_is_written_and_read_back(tmp_path: Path) -> None:
    """Real chDB, in a child process (the pytest process never opens a data directory):
    two rows of each table (every nullable column set, then None) read back column by
    column equal what was sent; a batch with a row of another type writes nothing."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "ch")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(out["tables"]) == {t.name for t in TABLES}
    for name, got in out["tables"].items():
        assert len(got["read"]) == 2, name
        for sent, read in zip(got["sent"], got["read"], strict=True):
            *values, filled = read
            assert filled == 1, f"{name}: inserted_at filled by ClickHouse"
            expected = [
                json.dumps(v, separators=(",", ":")) if isinstance(v, dict) else v
                for v in sent.values()
            ]
            expected = [int(v) if isinstance(v, bool) else v for v in expected]
            assert values == expected, name
    assert "a LateEventRow row sent to ctr_windows" in out["refused"]
    assert out["ctr_rows"] == 2  # the two of the first loop, nothing of the refused batch
