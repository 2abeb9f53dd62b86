"""Run SQL against the project's real schema in chDB, in a child process.

chDB allows one data directory per process, and the pytest process must never
open one (the workers the integration tests start open theirs), so schema,
sample rows and queries all run in one child.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    """
    import json, sys
    import clickhouse_connect
    from streams.connectors.clickhouse import ensure_schema

    job = json.load(sys.stdin)
    client = clickhouse_connect.get_client(dsn="chdb://" + job["dir"])
    ensure_schema(client, "streamwatch")
    for table, select in job["rows"].items():
        client.command(f"INSERT INTO streamwatch.{table} {select}")
    out = {}
    for name, sql in job["queries"].items():
        try:
            result = client.query(sql)
            out[name] = {
                "ok": True,
                "columns": list(result.column_names),
                "types": [t.name for t in result.column_types],
                "rows": len(result.result_rows),
            }
        except Exception as exc:
            out[name] = {"ok": False, "error": str(exc)[:2000]}
    print(json.dumps(out))
    """
)


def run_in_chdb(
    tmp_path: Path, rows: dict[str, str], queries: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """Schema + `rows` (table -> INSERT tail) in a fresh chDB directory, then every
    query: name -> {"ok", "columns", "types", "rows"} or {"ok": False, "error"}."""
    job = {"dir": str(tmp_path / "ch"), "rows": rows, "queries": queries}
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
