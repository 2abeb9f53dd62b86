"""The writer inserts every column of a table and refuses rows that do not match it
(issue 12, point 2): a misspelt key used to become the column's default silently,
because only the columns of the first row were inserted."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from schemas.tables import CTR_WINDOWS, TABLES, RowError

REPO = Path(__file__).resolve().parents[1]

ROW = {
    "window_start": 1_795_000_020_000,
    "window_end": 1_795_000_080_000,
    "campaign_id": "c1",
    "variant": "",
    "impressions": 10,
    "clicks": 1,
    "ctr": 0.1,
    "orphan_clicks": 0,
    "duplicate_clicks": 0,
    "duplicate_impressions": 0,
    "final": 1,
    "version": 2,
    "conversions": 0,
    "cvr": 0.0,
    "revenue": 0.0,
    "orphan_conversions": 0,
    "duplicate_conversions": 0,
}


def test_every_column_without_a_default_is_inserted() -> None:
    assert CTR_WINDOWS.insert_columns([ROW]) == list(ROW)
    for table in TABLES:
        assert table.required_columns == [n for n in table.column_names if n != "inserted_at"], (
            table.name
        )
    # a column with a default may be given, by every row of the batch
    given = dict(ROW, inserted_at=1_795_000_090_000)
    assert CTR_WINDOWS.insert_columns([given, given]) == [*ROW, "inserted_at"]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            {**{k: v for k, v in ROW.items() if k != "window_start"}, "window_strat": 1},
            "ctr_windows row has the unknown column(s) ['window_strat']",
        ),
        (
            {k: v for k, v in ROW.items() if k != "clicks"},
            "ctr_windows row lacks the column(s) ['clicks']",
        ),
        (dict(ROW, inserted_at=1), "differ in the optional column(s) ['inserted_at']"),
    ],
)
def test_a_row_that_does_not_match_is_refused_wherever_it_is_in_the_batch(
    row: dict, message: str
) -> None:
    for batch in ([ROW, row], [row] if "optional" not in message else [row, ROW]):
        with pytest.raises(RowError) as info:
            CTR_WINDOWS.insert_columns(batch)
        assert message in str(info.value)


CHILD = textwrap.dedent(
    """
    import json, sys
    from streams.connectors.clickhouse import ClickHouseError, Writer, connect, ensure_schema
    from schemas.tables import RowError

    row = json.loads(sys.argv[2])
    client = connect("chdb://" + sys.argv[1])
    ensure_schema(client, "streamwatch")
    writer = Writer(client, "streamwatch")
    out = {}
    bad = dict(row, campaign_id="c-bad")
    bad["window_strat"] = bad.pop("window_start")
    try:
        writer.insert("ctr_windows", [dict(row, campaign_id="c-good"), bad])
        out["refused"] = None
    except RowError as exc:
        out["refused"] = str(exc)
    writer.insert("ctr_windows", [row])
    result = client.query(
        "SELECT campaign_id, toUnixTimestamp64Milli(window_start), clicks, ctr, version "
        "FROM streamwatch.ctr_windows"
    )
    out["rows"] = [list(r) for r in result.result_rows]
    print(json.dumps(out))
    """
)


def test_writer_refuses_a_misspelt_row_and_writes_nothing_of_its_batch(tmp_path: Path) -> None:
    """Real chDB, in a child process (the pytest process never opens a data directory)."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "ch"), json.dumps(ROW)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert "unknown column(s) ['window_strat']" in out["refused"]
    assert out["rows"] == [["c1", ROW["window_start"], 1, 0.1, 2]]


def test_a_row_is_checked_where_it_is_built() -> None:
    """`Output.add_row` refuses a row that does not match its table, in the operator
    that built it (a misspelt `window_start` in the cluster rows used to pass every
    cluster test), and a row for a table that does not exist."""
    from operators.base import Output

    out = Output()
    out.add_row("ctr_windows", dict(ROW))
    misspelt = {**{k: v for k, v in ROW.items() if k != "window_start"}, "window_strat": 1}
    with pytest.raises(RowError, match=r"unknown column\(s\) \['window_strat'\]"):
        out.add_row("ctr_windows", misspelt)
    with pytest.raises(RowError, match=r"lacks the column\(s\) \['clicks'\]"):
        out.add_row("ctr_windows", {k: v for k, v in ROW.items() if k != "clicks"})
    with pytest.raises(RowError, match="no table"):
        out.add_row("ctr_window", dict(ROW))
    assert out.rows == {"ctr_windows": [ROW]}
