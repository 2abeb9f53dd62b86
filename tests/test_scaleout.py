"""Scale-out: two workers in one consumer group give exactly the results of one.

test_e2e_ctr's ground truth (4 partitions) is fed to worker A; after A has
written some windows, worker B joins the group (its own chDB data directory and
web port, the same topics and group), which moves partitions mid-run together
with their checkpointed state. Then the rest of the traffic and the tail go in.

- the union of both directories' `ctr_windows FINAL` equals the reference
  exactly: per window the final row with the highest version, and never two
  different final rows for one window (a window may be in both directories
  after its partition moved, but only with the same counts);
- the alert topic holds the alerts of an uninterrupted single-worker run, by
  (alert_id, content): a moved partition may publish an alert again, never
  with a different content;
- both workers really took part (B owns partitions and wrote windows).
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest

from operators.rules import alert_id
from tests.harness import (
    CTR_COUNTS,
    Deployment,
    WorkerProcess,
    consume_all,
    ctr_rows,
    produce,
    uninterrupted_alerts,
)
from tests.test_e2e_ctr import MIN, CtrTraffic

pytestmark = pytest.mark.integration

PARTITIONS = 4

WINDOW_SQL = (
    "SELECT toUnixTimestamp64Milli(window_start) AS ws, campaign_id, variant, impressions,"
    " clicks, orphan_clicks, duplicate_clicks, final, version FROM streamwatch.ctr_windows "
    "FINAL WHERE campaign_id NOT LIKE 'zz-%'"
)


def union_final(rows_per_dir: list[list[dict[str, Any]]]) -> list[tuple]:
    """Per window the final row with the highest version over all directories;
    two final rows of one window must agree."""
    best: dict[tuple, dict[str, Any]] = {}
    for rows in rows_per_dir:
        for r in rows:
            if r["final"] != 1:
                continue
            key = (r["ws"], r["campaign_id"], r["variant"])
            counts = tuple(r[c] for c in CTR_COUNTS)
            old = best.get(key)
            if old is not None:
                old_counts = tuple(old[c] for c in CTR_COUNTS)
                assert old_counts == counts, f"two different final rows for {key}: {old} {r}"
                if old["version"] >= r["version"]:
                    continue
            best[key] = r
    return ctr_rows(best.values())


def test_two_workers_equal_one(tmp_path, broker) -> None:
    da = Deployment(tmp_path, broker.bootstrap, "scale-a", partitions=PARTITIONS)
    db = Deployment(tmp_path, broker.bootstrap, "scale-b", partitions=PARTITIONS, shared=da)
    assert db.topics == da.topics and db.data_dir != da.data_dir
    assert db.config["kafka"]["group_id"] == da.config["kafka"]["group_id"]
    traffic = CtrTraffic(da, malformed=False, partitions=PARTITIONS)  # the valid traffic
    body, tail, expected, t0 = traffic.body, traffic.tail, traffic.expected, traffic.t0
    half = len(body) // 2

    a = WorkerProcess(da).start()
    b = WorkerProcess(db)
    try:
        produce(broker.bootstrap, body[:half])
        a.wait_until(
            lambda: a.query("SELECT count() AS n FROM streamwatch.ctr_windows")[0]["n"] > 0,
            60,
            "worker A to write windows",
        )
        b.start()
        produce(broker.bootstrap, body[half:])
        # the rebalance: B must own partitions before the tail closes every window
        b.wait_until(lambda: "assigned [(" in b.log_path.read_text(), 60, "B to get partitions")
        produce(broker.bootstrap, tail)

        def done() -> bool:
            rows = [w.query(WINDOW_SQL) for w in (a, b)]
            return len(union_final(rows)) >= len(expected)

        a.wait_until(done, 90, "every window to be final in one of the two workers")
        # B processed something of its own
        assert b.query("SELECT count() AS n FROM streamwatch.ctr_windows")[0]["n"] > 0
    finally:
        code_b = b.stop() if b.process is not None else 0
        code_a = a.stop()
    assert (code_a, code_b) == (0, 0)

    # the rebalance really moved partitions, and their state with their checkpoints
    assert "revoking partitions" in a.log_path.read_text()
    assert re.search(
        r"took over partitions \[.+\] \([1-9]\d* checkpoints found\)", b.log_path.read_text()
    )
    rows_a, rows_b = da.query(WINDOW_SQL), db.query(WINDOW_SQL)
    assert rows_a and rows_b
    assert union_final([rows_a, rows_b]) == expected

    # alerts: the ones of an uninterrupted single worker, by (alert_id, content)
    on_topic: dict[str, dict[str, Any]] = {}
    for m in consume_all(broker.bootstrap, da.topics["alerts"]):
        content = orjson.loads(m.value())
        assert on_topic.setdefault(content["alert_id"], content) == content
    reference = uninterrupted_alerts(da, body + tail)
    assert on_topic == reference
    drop_ws = t0 + 8 * MIN
    assert sorted(
        (c["rule"], c["entity"], c["status"], c["window_start"]) for c in reference.values()
    ) == [
        ("ctr_drop", "big", "firing", drop_ws),
        ("ctr_drop", "big", "resolved", drop_ws + 3 * MIN),  # 3 clear windows (issue 13)
        ("ctr_sustained_drop", "big", "firing", drop_ws),
        ("ctr_sustained_drop", "big", "resolved", drop_ws + 3 * MIN),
    ]
    assert alert_id("ctr_drop", "big", drop_ws, drop_ws + MIN, "firing", 0) in on_topic
    # and in ClickHouse: the same ids over both directories
    stored = {
        r["alert_id"]
        for d in (da, db)
        for r in d.query("SELECT alert_id FROM streamwatch.alerts FINAL")
    }
    assert stored == set(on_topic)
