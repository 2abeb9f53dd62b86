"""A broker that goes away and comes back does not take the worker down.

The test runs its own Tansu on a fixed port (not the session broker) and a
worker on it, publishes traffic, stops the broker for about 10 s (the worker
must stay up: the process runs and /health answers, 200 or 503), then starts
a new broker on the same port.

Tansu keeps everything in memory: the new broker has no topics, no data, no
committed offsets and no checkpoints. The worker's in-memory state (per
partition positions and windows) belongs to a log that no longer exists, so
nothing about the old traffic is asserted after the restart. What is
meaningful: the worker reconnects, consumes the traffic published on the new
broker (whose offsets start again at 0, below the positions the worker had
reached) and writes its windows, and it stops cleanly on SIGTERM.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import orjson
import pytest

from schemas.decode import Decoder
from streams.connectors import kafka
from streams.connectors.embedded import EmbeddedBroker, free_port
from streams.runtime import repartition
from streams.runtime.monitors import build_monitors
from tests.harness import Deployment, Message, WorkerProcess, ctr_tail, produce
from tests.reference import ctr_reference
from tests.test_e2e_ctr import MIN

pytestmark = pytest.mark.integration

PARTITIONS = 4


def traffic(
    d: Deployment, prefix: str, t0: int, windows: int, per_window: int
) -> tuple[list[Message], list[tuple]]:
    """In-order impressions and clicks (one click per 5 impressions) of 8 campaigns,
    then a tail per partition (an impression and its click) that finalises every
    window; and the reference rows."""
    events: list[tuple[str, dict]] = []
    for w in range(windows):
        for j in range(per_window):
            ts = t0 + w * MIN + j * (MIN // per_window)
            c = f"{prefix}{j % 8}"
            imp = {"impression_id": f"{prefix}i{w}-{j}", "ts": ts, "campaign_id": c}
            events.append(("impressions", imp | {"user_id": "u"}))
            if j % 5 == 0:
                clk = {"click_id": f"{prefix}c{w}-{j}", "impression_id": imp["impression_id"]}
                events.append(("clicks", clk | {"ts": ts + 500, "campaign_id": c, "user_id": "u"}))
    events.sort(key=lambda e: e[1]["ts"])
    topic = d.topics
    messages: list[Message] = [
        (topic[t], e["campaign_id"].encode(), orjson.dumps(e), None) for t, e in events
    ]
    messages += ctr_tail(topic, t0 + windows * MIN + 600_000 + 2 * MIN, PARTITIONS, prefix)
    decoded = [
        (t, Decoder(t).decode(orjson.dumps(e), e["campaign_id"].encode())) for t, e in events
    ]
    return messages, ctr_reference(decoded)


def windows_of(worker: WorkerProcess, prefix: str) -> list[tuple]:
    rows = worker.query(
        "SELECT toUnixTimestamp64Milli(window_start) AS ws, campaign_id, variant, impressions,"
        " clicks, orphan_clicks, duplicate_clicks FROM streamwatch.ctr_windows FINAL "
        f"WHERE final = 1 AND startsWith(campaign_id, '{prefix}')"
    )
    return sorted(tuple(r.values()) for r in rows)


def health(worker: WorkerProcess) -> int:
    """The HTTP status of /health (it must answer; 503 is an answer)."""
    try:
        with urllib.request.urlopen(worker.url("/health"), timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def consumed(worker: WorkerProcess) -> float:
    return worker.metric("streamwatch_events_consumed_total")


class NewTrafficLost(AssertionError):
    """The worker consumed the new broker's traffic but wrote none of its windows."""


# Regression guard: after a broker that lost its data (memory storage) comes
# back, offsets start over. The worker must neither write its old state onto
# the new broker (a lost group does not checkpoint) nor trust a checkpoint of
# a recreated topic (checkpoints carry topic ids), or it would skip new data.
def test_worker_survives_broker_restart(tmp_path) -> None:
    port = free_port()
    broker = EmbeddedBroker(port=port, log_path=tmp_path / "tansu-1.log").start()
    d = Deployment(tmp_path, broker.bootstrap, "restart", partitions=PARTITIONS)
    now = int(time.time() * 1000)
    t0 = now - now % MIN - 40 * MIN
    # before: more messages than after, so the new offsets stay below the old positions;
    # after: later in event time than the old tail, so not late even for the old state
    before, expected_before = traffic(d, "old", t0, windows=6, per_window=200)
    after, expected_after = traffic(d, "new", t0 + 20 * MIN, windows=3, per_window=40)
    assert len(after) < len(before) / 4

    worker = WorkerProcess(d).start()
    second: EmbeddedBroker | None = None
    processed = False
    try:
        produce(broker.bootstrap, before)
        worker.wait_until(
            lambda: windows_of(worker, "old") == expected_before, 60, "the first traffic"
        )
        assigned_before = worker.log_path.read_text().count("streamwatch.source: assigned")

        broker.stop()
        down = time.monotonic()
        statuses = []
        while time.monotonic() - down < 10:
            worker._check_alive()
            statuses.append(health(worker))
            time.sleep(1)
        assert worker.process is not None and worker.process.poll() is None
        assert len(statuses) >= 5 and set(statuses) <= {200, 503}
        consumed_before = consumed(worker)

        # A new, empty broker on the same port: the topics must be created again.
        # Committed offsets and checkpoints were only in the old broker's memory, so
        # nothing about the first traffic can be asserted from here on.
        second = EmbeddedBroker(port=port, log_path=tmp_path / "tansu-2.log").start()
        kafka.ensure_topics(d.settings())
        # and the internal topics that re-key by experiment (the worker made them at start)
        plan = next((m.plan for m in build_monitors(d.settings()) if m.plan), None)
        if plan is not None:
            repartition.ensure_internal_topics(d.settings(), plan)
        produce(second.bootstrap, after)
        # reconnected: the group is joined again on the new broker, the new traffic
        # is fetched, and the worker is healthy
        worker.wait_until(
            lambda: (
                worker.log_path.read_text().count("streamwatch.source: assigned") > assigned_before
            ),
            45,
            "the worker to join the group on the new broker",
        )
        worker.wait_until(
            lambda: consumed(worker) - consumed_before >= len(after),
            30,
            "the new traffic to be consumed",
        )
        worker.wait_until(lambda: health(worker) == 200, 30, "/health to be 200")
        deadline = time.monotonic() + 30
        while not processed and time.monotonic() < deadline:
            worker._check_alive()
            processed = windows_of(worker, "new") == expected_after
            time.sleep(0.5)
    finally:
        code = worker.stop()
        if second is not None:
            second.stop()
        broker.stop()
    assert code == 0
    if not processed:
        raise NewTrafficLost(
            f"the new broker's windows were never written; worker log: {worker.log_path}"
        )
