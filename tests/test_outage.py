"""ClickHouse outage: results wait in memory (bounded), nothing is committed past
them, consumption pauses at the bound, and everything is written once it is back."""

from __future__ import annotations

import random
import time

import orjson
import pytest

from schemas.decode import Decoder
from tests.harness import Deployment, WorkerProcess, produce
from tests.reference import ctr_reference
from tests.test_e2e_ctr import MIN, build_traffic, shuffle_within

pytestmark = pytest.mark.integration


def consumed(worker: WorkerProcess) -> float:
    return worker.metric("streamwatch_events_consumed_total")


def committed_offsets(bootstrap: str, group: str, topic: str) -> list[int]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return [tp.offset for tp in c.committed([TopicPartition(topic, p) for p in parts], 10)]
    finally:
        c.close()


def _setup(tmp_path, broker, name: str):
    d = Deployment(
        tmp_path,
        broker.bootstrap,
        name,
        debug_endpoints=True,
        batch_size=100,
        max_buffered_rows=100,
        flush_interval_s=0.2,
        checkpoint_interval_s=0.5,
    )
    now = int(time.time() * 1000)
    t0 = now - now % MIN - 60 * MIN
    events, _ = build_traffic(t0, seed=5)
    ordered = shuffle_within(events, 10_000, random.Random(2))
    messages = [(d.topics[t], e["campaign_id"].encode(), orjson.dumps(e), None) for t, e in ordered]
    last = max(e["ts"] for _, e in events)
    tail_ts = last - last % MIN + MIN + 600_000 + 20_000
    for p in range(4):
        c = f"zz-tail-{p}"
        imp = {"impression_id": f"tail{p}", "ts": tail_ts, "campaign_id": c, "user_id": "u"}
        clk = {
            "click_id": f"t{p}",
            "impression_id": f"tail{p}",
            "ts": tail_ts,
            "campaign_id": c,
            "user_id": "u",
        }
        messages.append((d.topics["impressions"], c.encode(), orjson.dumps(imp), p))
        messages.append((d.topics["clicks"], c.encode(), orjson.dumps(clk), p))
    decoded = [
        (t, Decoder(t).decode(orjson.dumps(e), e["campaign_id"].encode())) for t, e in events
    ]
    return d, messages, ctr_reference(decoded)


def _outage(worker: WorkerProcess, d: Deployment, broker, messages) -> None:
    """Fail writes, publish, and check the worker buffers, pauses and commits nothing."""
    assert worker.wait_http("/debug/clickhouse?fail=1", 10) == {"fail_writes": True}
    produce(broker.bootstrap, messages)

    def degraded() -> bool:
        body = worker.wait_http("/health", 10, accept_503=True)
        return body["status"] == "degraded" and body["buffered_rows"] >= 100

    worker.wait_until(degraded, 60, "the sink to fail and rows to pile up")
    offsets = committed_offsets(broker.bootstrap, f"{d.name}-group", d.topics["impressions"])
    first = consumed(worker)
    time.sleep(4)
    # backpressure: at the bound, consumption stops although input remains
    assert consumed(worker) == first < len(messages)
    health = worker.wait_http("/health", 10, accept_503=True)
    assert "injected" in health["sink_error"]
    # no offset moves while results are unwritten
    assert offsets == committed_offsets(
        broker.bootstrap, f"{d.name}-group", d.topics["impressions"]
    )


def _wait_written(worker: WorkerProcess, expected: list) -> None:
    def written() -> bool:
        rows = worker.query(
            "SELECT count() AS n FROM streamwatch.ctr_windows FINAL "
            "WHERE final = 1 AND campaign_id NOT LIKE 'zz-%'"
        )
        return rows[0]["n"] >= len(expected)

    worker.wait_until(written, 120, "every window written after the outage")


def _rows(d: Deployment) -> list:
    rows = d.query(
        "SELECT toUnixTimestamp64Milli(window_start) AS ws, campaign_id, variant, impressions,"
        " clicks, orphan_clicks, duplicate_clicks FROM streamwatch.ctr_windows FINAL "
        "WHERE campaign_id NOT LIKE 'zz-%'"
    )
    return sorted(tuple(r.values()) for r in rows)


def test_clickhouse_outage_buffers_pauses_and_recovers(tmp_path, broker) -> None:
    d, messages, expected = _setup(tmp_path, broker, "outage")
    worker = WorkerProcess(d).start()
    try:
        _outage(worker, d, broker, messages)
        worker.wait_http("/debug/clickhouse?fail=0", 10)
        _wait_written(worker, expected)
        worker.wait_until(
            lambda: worker.wait_http("/health", 10)["status"] == "ok", 30, "health to recover"
        )
        assert consumed(worker) >= len(messages)
    finally:
        assert worker.stop() == 0
    assert _rows(d) == expected
    # offsets were committed once the results were durable
    assert all(
        o >= 0 for o in committed_offsets(broker.bootstrap, "outage-group", d.topics["impressions"])
    )


def test_worker_killed_during_outage_loses_nothing(tmp_path, broker) -> None:
    """Buffered results die with the process; the checkpoint brings them back."""
    d, messages, expected = _setup(tmp_path, broker, "outage-kill")
    worker = WorkerProcess(d).start()
    try:
        _outage(worker, d, broker, messages)
    finally:
        worker.kill()
    worker = WorkerProcess(d, "restarted").start()  # ClickHouse healthy again
    try:
        _wait_written(worker, expected)
    finally:
        assert worker.stop() == 0
    assert _rows(d) == expected
