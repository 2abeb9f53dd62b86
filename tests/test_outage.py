"""ClickHouse outage: results wait in memory (bounded), nothing is committed past
them, consumption pauses at the bound, and everything is written once it is back.

Here the outage is injected in the client layer (the worker's debug endpoint
makes every insert fail: chDB runs inside the worker and cannot be stopped
alone); tests/test_clickhouse_server.py runs the same checks with a real
ClickHouse server that is stopped and started.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.harness import (
    Deployment,
    Message,
    WorkerProcess,
    committed,
    ctr_rows,
    input_ends,
    produce,
)
from tests.test_e2e_ctr import CtrTraffic

pytestmark = pytest.mark.integration

# small batches and bound, so the bound is reached with little traffic
OUTAGE_SETTINGS: dict[str, Any] = {
    "batch_size": 100,
    "max_buffered_rows": 100,
    "flush_interval_s": 0.2,
    "checkpoint_interval_s": 0.5,
}


def consumed(worker: WorkerProcess) -> float:
    return worker.metric("streamwatch_events_consumed_total")


def outage_traffic(d: Deployment) -> CtrTraffic:
    """test_e2e_ctr's valid traffic (other seeds), shuffled, with its tail."""
    return CtrTraffic(d, seed=5, shuffle_seed=2, malformed=False)


def check_outage(
    worker: WorkerProcess, d: Deployment, messages: list[Message], sink_error: str
) -> None:
    """With ClickHouse already failing: publish `messages`, then check that the worker
    stays up, reports degraded (`sink_error` in the reason), keeps its rows buffered at
    the bound, stops consuming there (backpressure, not drops) and commits nothing."""
    bound = d.config["max_buffered_rows"]
    produce(d.bootstrap, messages)

    def degraded() -> bool:
        body = worker.wait_http("/health", 10, accept_503=True)
        return body["status"] == "degraded" and body["buffered_rows"] >= bound

    worker.wait_until(degraded, 60, "the sink to fail and rows to pile up")
    offsets = committed(d)
    first = consumed(worker)
    buffered = set()
    for _ in range(8):  # 4 s: consumption would go on well within that if it could
        time.sleep(0.5)
        health = worker.wait_http("/health", 10, accept_503=True)  # still up and answering
        assert health["status"] == "degraded" and sink_error in health["sink_error"], health
        buffered.add(health["buffered_rows"])
    print("consumed", first, "of", len(messages), "buffered rows", buffered, "bound", bound)
    # backpressure: at the bound, consumption stops although input remains
    assert consumed(worker) == first < len(messages)
    # nothing written, nothing dropped, no more taken: the buffer stays as it is,
    # at the bound plus at most what the last batch before the pause produced
    assert len(buffered) == 1, buffered
    assert bound <= buffered.pop() <= bound + d.config["batch_size"]
    # no offset moves while results are unwritten
    assert offsets == committed(d)


def wait_written(
    worker: WorkerProcess, expected: list, database: str = "streamwatch", timeout: float = 120
) -> None:
    def written() -> bool:
        rows = worker.query(
            f"SELECT count() AS n FROM {database}.ctr_windows FINAL "
            "WHERE final = 1 AND campaign_id NOT LIKE 'zz-%'"
        )
        return rows[0]["n"] >= len(expected)

    worker.wait_until(written, timeout, "every window written after the outage")


def window_rows(d: Deployment) -> list[tuple]:
    """The `ctr_windows FINAL` rows of the traffic (not the tail), read with the CLI."""
    return ctr_rows(
        d.query(
            "SELECT toUnixTimestamp64Milli(window_start) AS ws, campaign_id, variant,"
            " impressions, clicks, orphan_clicks, duplicate_clicks"
            f" FROM {d.database}.ctr_windows FINAL WHERE campaign_id NOT LIKE 'zz-%'"
        )
    )


def _setup(tmp_path, broker, name: str) -> tuple[Deployment, list[Message], list[tuple]]:
    d = Deployment(tmp_path, broker.bootstrap, name, debug_endpoints=True, **OUTAGE_SETTINGS)
    traffic = outage_traffic(d)
    return d, traffic.messages, traffic.expected


def _outage(worker: WorkerProcess, d: Deployment, messages: list[Message]) -> None:
    """Fail writes, publish, and check the worker buffers, pauses and commits nothing."""
    assert worker.wait_http("/debug/clickhouse?fail=1", 10) == {"fail_writes": True}
    check_outage(worker, d, messages, "injected")


def test_clickhouse_outage_buffers_pauses_and_recovers(tmp_path, broker) -> None:
    d, messages, expected = _setup(tmp_path, broker, "outage")
    worker = WorkerProcess(d).start()
    try:
        _outage(worker, d, messages)
        worker.wait_http("/debug/clickhouse?fail=0", 10)
        wait_written(worker, expected)
        worker.wait_until(
            lambda: worker.wait_http("/health", 10)["status"] == "ok", 30, "health to recover"
        )
        assert consumed(worker) >= len(messages)
    finally:
        assert worker.stop() == 0
    assert window_rows(d) == expected
    # offsets were committed once the results were durable: every input offset
    assert committed(d) == input_ends(d)


def test_worker_killed_during_outage_loses_nothing(tmp_path, broker) -> None:
    """Buffered results die with the process; the checkpoint brings them back."""
    d, messages, expected = _setup(tmp_path, broker, "outage-kill")
    worker = WorkerProcess(d).start()
    try:
        _outage(worker, d, messages)
    finally:
        worker.kill()
    worker = WorkerProcess(d, "restarted").start()  # ClickHouse healthy again
    try:
        wait_written(worker, expected)
    finally:
        assert worker.stop() == 0
    assert window_rows(d) == expected
