"""The sinks' close->delivery delays: measured only once rows are written, kept on failure.

`streams.runtime.sinks.Sinks` with the real ClickHouse writer over chDB, its outage injected the
way the worker's own tests inject it (`Writer.fail_writes`), and a real confluent-kafka
producer (nothing is produced: these rows go to ClickHouse only). chDB allows one data
directory per process and the pytest process opens none, so the scenario runs in a child
and reports what it saw.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    """
    import json, sys, time
    from confluent_kafka import Producer
    from streams.connectors.clickhouse import Writer, connect, ensure_schema
    from streams.runtime.sinks import SinkError, Sinks
    from schemas.rows import CtrWindowRow

    client = connect("chdb://" + sys.argv[1])
    ensure_schema(client, "streamwatch")
    writer = Writer(client, "streamwatch")
    producer = Producer({"bootstrap.servers": "127.0.0.1:1", "log_level": 0})
    sinks = Sinks(writer, producer, topics=None)
    row = {
        "window_start": 1_795_000_020_000, "window_end": 1_795_000_080_000,
        "campaign_id": "c1", "variant": "", "impressions": 10, "clicks": 1, "ctr": 0.1,
        "orphan_clicks": 0, "duplicate_clicks": 0, "duplicate_impressions": 0,
        "final": 1, "version": 2, "conversions": 0, "cvr": 0.0, "revenue": 0.0,
        "orphan_conversions": 0, "duplicate_conversions": 0,
    }
    rows = [CtrWindowRow(**dict(row, campaign_id=f"c{i}")) for i in range(2)]
    out = {}
    sinks.rows("ctr_windows", rows)
    writer.fail_writes = True
    try:
        sinks.flush(timeout=1)
        out["failed"] = False
    except SinkError:
        out["failed"] = True
    out["delays_after_failure"] = len(sinks.delays["row"])
    out["buffered_after_failure"] = sinks.buffered
    time.sleep(0.05)
    writer.fail_writes = False
    sinks.flush(timeout=1)
    out["delays"] = list(sinks.delays["row"])
    out["buffered"] = sinks.buffered
    sinks.flush(timeout=1)
    out["delays_after_empty_flush"] = len(sinks.delays["row"])
    out["rows_in_table"] = client.query(
        "SELECT count() FROM streamwatch.ctr_windows"
    ).result_rows[0][0]
    print(json.dumps(out))
    """
)


def test_row_delays_are_recorded_when_written_and_kept_across_a_failure(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "ch")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["failed"]  # the outage reached the flush as a SinkError
    assert seen["delays_after_failure"] == 0  # nothing delivered, nothing measured
    assert seen["buffered_after_failure"] == 2  # and nothing lost
    assert seen["buffered"] == 0 and seen["rows_in_table"] == 2
    assert len(seen["delays"]) == 2  # one per row
    assert all(d >= 0.05 for d in seen["delays"])  # from creation, not from the retry
    assert seen["delays_after_empty_flush"] == 2  # a flush with nothing new adds nothing
