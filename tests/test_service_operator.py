"""Service operator: exact percentiles, error rates and confidence per model version."""

from __future__ import annotations

import math
import random

import msgspec
import numpy as np
import pytest
from scipy.stats import binom

from operators.rules import Rule, RuleEngine
from operators.service import ServiceConfig, ServiceOperator
from operators.task import MonitorTask
from schemas.events import InferenceLog
from schemas.tables import INFERENCE_WINDOWS
from tests.row_dicts import as_dicts

T0 = 1_795_000_020_000  # a minute boundary
W = 60_000
assert T0 % W == 0


def log(
    i: int,
    ts: int,
    latency: float,
    status: str = "ok",
    confidence: float | None = None,
    model: str = "m1",
    version: str = "v1",
) -> InferenceLog:
    return InferenceLog(
        request_id=f"r{i}",
        ts=ts,
        model_id=model,
        model_version=version,
        features={"x": 1.0},
        prediction=0.5,
        latency_ms=latency,
        status=status,  # type: ignore[arg-type]
        confidence=confidence,
    )


def test_hand_made_window() -> None:
    op = ServiceOperator()
    lat = [10.0, 20.0, 30.0, 40.0, 1000.0]
    events = [
        log(0, T0 + 1, lat[0], confidence=0.9),
        log(1, T0 + 2, lat[1], "error", confidence=0.4),
        log(2, T0 + 3, lat[2]),
        log(3, T0 + 59_999, lat[3], confidence=0.6),
        log(4, T0 + 30_000, lat[4], "error", confidence=0.2),
        log(5, T0 + 60_000, 5.0),  # next window
    ]
    op.feed("inference-logs", events)
    op.advance(T0 + 60_000)
    out = op.collect()
    (row,) = as_dicts(out.rows["inference_windows"])
    assert set(row) == set(INFERENCE_WINDOWS.column_names) - {"inserted_at"}
    assert (row["window_start"], row["window_end"]) == (T0, T0 + W)
    assert (row["model_id"], row["model_version"]) == ("m1", "v1")
    assert (row["requests"], row["errors"], row["error_rate"]) == (5, 2, 0.4)
    # linear interpolation: p50 = 30, p95 = 40 + 0.8 * 960, p99 = 40 + 0.96 * 960
    assert row["latency_p50"] == 30.0
    assert row["latency_p95"] == pytest.approx(808.0)
    assert row["latency_p99"] == pytest.approx(961.6)
    assert row["confidence_mean"] == pytest.approx((0.9 + 0.4 + 0.6 + 0.2) / 4)
    assert row["low_confidence_ratio"] == 0.5
    by = {o.metric: o for o in out.observations}
    assert set(by) == {"latency_p99", "error_rate", "low_confidence_ratio"}
    assert all(o.kind == "service" and o.entity == "m1/v1" for o in by.values())
    assert by["latency_p99"].value == row["latency_p99"] and by["latency_p99"].n == 5
    assert by["error_rate"].value == 0.4 and by["error_rate"].n == 5
    # the window's exact binomial test and the CUSUM's exp(-S), Bonferroni-combined
    err = by["error_rate"]
    assert err.details["p_window"] == pytest.approx(float(binom.sf(1, 5, 0.01)))
    s = 2 * math.log(0.05 / 0.01) + 3 * math.log(0.95 / 0.99)
    assert err.details["cusum"] == pytest.approx(s)
    assert err.p_value == pytest.approx(2 * float(binom.sf(1, 5, 0.01)))
    assert by["low_confidence_ratio"].value == 0.5 and by["low_confidence_ratio"].n == 4
    assert by["latency_p99"].ts == T0 + W and by["latency_p99"].window_start == T0


def test_exact_percentiles_match_numpy_and_versions_are_separate() -> None:
    rng = np.random.default_rng(0)
    lat = {"v1": rng.lognormal(4, 0.5, 5000), "v2": rng.lognormal(5, 0.8, 1234)}
    events = [
        log(i, T0 + int(rng.integers(0, W)), float(x), version=v)
        for v, xs in lat.items()
        for i, x in enumerate(xs)
    ]
    random.Random(1).shuffle(events)
    op = ServiceOperator()
    op.feed("inference-logs", events)
    op.advance(T0 + W)
    rows = {r["model_version"]: r for r in as_dicts(op.collect().rows["inference_windows"])}
    for v, xs in lat.items():
        p50, p95, p99 = np.percentile(xs, [50, 95, 99])
        assert rows[v]["latency_p50"] == pytest.approx(p50, rel=1e-12)
        assert rows[v]["latency_p95"] == pytest.approx(p95, rel=1e-12)
        assert rows[v]["latency_p99"] == pytest.approx(p99, rel=1e-12)
        assert rows[v]["requests"] == len(xs)
        assert rows[v]["errors"] == 0 and rows[v]["error_rate"] == 0.0
        assert rows[v]["confidence_mean"] is None and rows[v]["low_confidence_ratio"] is None


def test_no_confidence_means_no_low_confidence_observation() -> None:
    op = ServiceOperator()
    op.feed("inference-logs", [log(0, T0, 1.0)])
    op.advance(T0 + W)
    assert {o.metric for o in op.collect().observations} == {"latency_p99", "error_rate"}


def test_snapshot_restore_mid_window_equals_uninterrupted() -> None:
    rng = np.random.default_rng(3)
    events = [
        log(
            i,
            T0 + int(t),
            float(rng.exponential(50)),
            "error" if rng.random() < 0.05 else "ok",
            float(rng.random()),
            version="v1" if i % 3 else "v2",
        )
        for i, t in enumerate(np.sort(rng.integers(0, 3 * W, 3000)))
    ]
    whole = ServiceOperator()
    whole.feed("inference-logs", events)
    whole.advance(T0 + 3 * W)
    expected = whole.collect()

    first = ServiceOperator()
    first.feed("inference-logs", events[:1500])
    first.advance(events[1499].ts - 1)
    out = first.collect()
    state = msgspec.msgpack.decode(msgspec.msgpack.encode(first.snapshot()))
    second = ServiceOperator()
    second.restore(state)
    second.feed("inference-logs", events[1500:])
    second.advance(T0 + 3 * W)
    out.extend(second.collect())
    assert out.rows == expected.rows and out.observations == expected.observations
    assert len(as_dicts(expected.rows["inference_windows"])) == 6


def test_rules_on_service_observations() -> None:
    rules = RuleEngine(
        [
            Rule("latency_p99", "service", "latency_p99", ">", {"warning": 500.0}),
            Rule(
                "error_rate",
                "service",
                "error_rate",
                ">",
                {"critical": 0.01},
                min_samples=100,
                max_p_value=0.01,
            ),
        ]
    )
    task = MonitorTask(
        ServiceOperator(ServiceConfig()), rules, lateness_ms=0, idle_timeout_ms=10**9
    )
    # window 0: healthy; window 1: slow and 5 % errors
    events = [log(i, T0 + i * 300, 100.0) for i in range(200)]
    events += [
        log(1000 + i, T0 + W + i * 300, 900.0, "error" if i % 20 == 0 else "ok") for i in range(200)
    ]
    task.feed("inference-logs", events, now_ms=0)
    task.feed("inference-logs", [log(9999, T0 + 2 * W, 1.0)], now_ms=0)
    task.tick(now_ms=0)
    alerts = task.collect().alerts
    assert {(a.rule, a.severity, a.window_start) for a in alerts} == {
        ("latency_p99", "warning", T0 + W),
        ("error_rate", "critical", T0 + W),
    }
