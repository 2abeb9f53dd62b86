"""The decisions of /health and /health/live (streams/runtime/health.py), case by case.

The states are those the real worker's runtime and source record (plain values
here: the clock and the figures from the broker); the real worker is exercised
through these pages in tests/test_crash_only.py and tests/test_shutdown.py.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from streams.runtime.health import liveness, readiness

POLL_AGE_S = 60.0
STALL_S = 120.0


def worker(**changes: Any) -> SimpleNamespace:
    """A healthy worker owning partitions 0 and 1, just polled, watermark just moved."""
    now = time.monotonic()
    state: dict[str, Any] = {
        "failure": None,
        "healthy": True,
        "last_error": None,
        "paused_since": None,
        "paused_beat": 0.0,
        "checkpointing_since": None,
        "watermark_moved": now,
        "last_poll": now,
        "waiting": 0,
        "unassigned_since": None,
        "members_elsewhere": None,
        "partitions": {0, 1},
        "tasks": {},
    }
    state.update(changes)
    pipeline = SimpleNamespace(
        owned_partitions=lambda: set(state["partitions"]),
        watermarks=lambda: {"ctr": 1},
        tasks=state["tasks"],
    )
    runtime = SimpleNamespace(
        pipeline=pipeline,
        **{
            k: state[k]
            for k in (
                "failure",
                "healthy",
                "last_error",
                "paused_since",
                "paused_beat",
                "checkpointing_since",
                "watermark_moved",
            )
        },
    )
    source = SimpleNamespace(
        **{k: state[k] for k in ("last_poll", "waiting", "unassigned_since", "members_elsewhere")}
    )
    return SimpleNamespace(
        runtime=runtime,
        source=source,
        pipeline=pipeline,
        sinks=SimpleNamespace(buffered=0),
        settings=SimpleNamespace(health_poll_age_s=POLL_AGE_S, health_stall_s=STALL_S),
    )


def ago(seconds: float) -> float:
    return time.monotonic() - seconds


def test_healthy() -> None:
    status, body = readiness(worker())
    assert (status, body["status"], body["problems"]) == (200, "ok", [])
    assert liveness(worker())[0] == 200


def test_failed_worker_is_neither_ready_nor_live() -> None:
    w = worker(failure=("the timer", RuntimeError("x")), healthy=False, last_error="boom")
    status, body = readiness(w)
    assert (status, body["status"], body["sink_error"]) == (503, "failed", "boom")
    assert liveness(w)[0] == 503


def test_sink_failing_is_degraded_but_live() -> None:
    w = worker(healthy=False, last_error="insert failed")
    assert readiness(w)[1]["status"] == "degraded" and readiness(w)[0] == 503
    assert liveness(w)[0] == 200


@pytest.mark.parametrize("age, expected", [(POLL_AGE_S - 5, 200), (POLL_AGE_S + 5, 503)])
def test_poll_age_bound(age: float, expected: int) -> None:
    w = worker(last_poll=ago(age))
    status, body = readiness(w)
    assert status == expected
    assert liveness(w)[0] == expected
    if expected == 503:
        assert body["status"] == "stalled" and "no poll of the broker" in body["problems"][0]


def test_backpressure_pause_is_not_a_stuck_poll_while_its_loop_turns() -> None:
    paused = {"last_poll": ago(POLL_AGE_S + 100), "paused_since": ago(POLL_AGE_S + 100)}
    assert liveness(worker(**paused, paused_beat=ago(1)))[0] == 200
    # the retry loop itself stopped turning: stuck after all
    assert liveness(worker(**paused, paused_beat=ago(POLL_AGE_S + 5)))[0] == 503


def test_a_long_checkpoint_is_not_a_stuck_poll_until_health_stall_s() -> None:
    """Input waits while a checkpoint is taken (streams/runtime/cycle.py): a large
    state's may outlast the poll age; one running past health_stall_s is stuck."""
    long = {"last_poll": ago(POLL_AGE_S + 10), "checkpointing_since": ago(POLL_AGE_S + 8)}
    code, body = liveness(worker(**long))
    assert code == 200 and body["checkpointing_s"] >= POLL_AGE_S + 8
    code, body = readiness(worker(**long))
    assert code == 200 and body["problems"] == [] and body["checkpointing_s"] >= POLL_AGE_S
    stuck = {"last_poll": ago(STALL_S + 10), "checkpointing_since": ago(STALL_S + 1)}
    assert liveness(worker(**stuck))[0] == 503
    code, body = readiness(worker(**stuck))
    assert code == 503 and "no poll of the broker" in body["problems"][0]
    assert body["checkpointing_s"] is None
    # no checkpoint: the poll age alone decides, as before
    assert liveness(worker(last_poll=ago(POLL_AGE_S + 10)))[0] == 503
    assert readiness(worker())[1]["checkpointing_s"] is None


def test_watermark_stall_counts_only_while_input_waits() -> None:
    assert readiness(worker(watermark_moved=ago(STALL_S + 5), waiting=0))[0] == 200
    assert readiness(worker(watermark_moved=ago(STALL_S - 5), waiting=10))[0] == 200
    status, body = readiness(worker(watermark_moved=ago(STALL_S + 5), waiting=10))
    assert status == 503 and "the watermark has not moved" in body["problems"][0]


def test_no_partition_while_input_waits_or_others_consume() -> None:
    idle = {"partitions": set(), "unassigned_since": ago(STALL_S + 5)}
    assert readiness(worker(**idle, waiting=0))[0] == 200  # nothing to do anywhere
    assert readiness(worker(**idle, waiting=None))[0] == 200  # broker did not say
    status, body = readiness(worker(**idle, waiting=7))
    assert status == 503 and "while 7 messages wait" in body["problems"][0]
    status, body = readiness(worker(**idle, waiting=0, members_elsewhere=2))
    assert status == 503 and "2 other members" in body["problems"][0]
    # a rebalance is short: not before the bound
    young = {"partitions": set(), "unassigned_since": ago(5)}
    assert readiness(worker(**young, waiting=7))[0] == 200


def test_unjudgeable_series_are_a_detail_not_a_503() -> None:
    """Issue 14: a series the configuration can never judge (5-minute readings in a
    fixed 300 s window with min_points 30) is listed per monitor, over the partitions;
    the worker stays ready (a configuration to fix; a restart would change nothing)."""
    from operators.sensor import SensorConfig, SensorOperator
    from schemas.events import SensorReading

    def sensor_task(sensor: str, gap_ms: int) -> SimpleNamespace:
        op = SensorOperator(SensorConfig(adapt_window=False))
        t0 = 1_795_000_020_000
        op.feed(
            "sensor-readings",
            [
                SensorReading(sensor_id=sensor, ts=t0 + i * gap_ms, values={"t": 1.0})
                for i in range(20)
            ],
        )
        op.advance(t0 + 10**9)
        return SimpleNamespace(operator=op)

    tasks = {
        ("sensor", 0): sensor_task("slow-a", 300_000),
        ("sensor", 1): sensor_task("slow-b", 300_000),
        ("ctr", 0): SimpleNamespace(operator=object()),  # no such notion: not listed
    }
    status, body = readiness(worker(tasks=tasks))
    assert (status, body["status"]) == (200, "ok")
    assert body["unjudgeable"] == {"sensor": {"count": 2, "series": ["slow-a/t", "slow-b/t"]}}
    fast = {("sensor", 0): sensor_task("fast", 1000)}
    assert readiness(worker(tasks=fast))[1]["unjudgeable"] == {}
