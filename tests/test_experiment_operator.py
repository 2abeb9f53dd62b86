"""Experiment guardrails (mSPRT), ramp: against the published formula, an independent
numerical reference, a false-alarm simulation under continuous monitoring, and the
operator on hand-made experiments."""

from __future__ import annotations

import doctest
import math
import random

import msgspec
import numpy as np
import pytest
from scipy import integrate
from scipy.stats import norm

import operators.experiment
import operators.msprt
from operators.experiment import EXPERIMENT_TABLE, ExperimentConfig, ExperimentOperator
from operators.msprt import Moments, always_valid_p, difference, mixture_lr
from operators.rules import RuleEngine
from operators.task import MonitorTask
from schemas.events import Impression, InferenceLog
from streams.config import DEFAULT_RULES
from tests.row_dicts import as_dicts

T0 = 1_795_000_200_000
W = 300_000
RULES = [r.rule() for r in DEFAULT_RULES if r.kind == "experiment"]


def test_doctests() -> None:
    for module in (operators.msprt, operators.experiment):
        assert doctest.testmod(module).failed == 0


@pytest.mark.parametrize(
    ("delta", "variance", "tau2"),
    [(0.0, 1e-4, 1e-4), (0.02, 1e-4, 1e-4), (-0.03, 4e-4, 1e-3), (0.5, 0.01, 0.04)],
)
def test_mixture_lr_equals_the_integral_it_stands_for(delta, variance, tau2) -> None:
    """Lambda = integral of N(delta; theta, V) / N(delta; 0, V) over theta ~ N(0, tau^2),
    computed numerically (scipy.integrate.quad): the closed form of Johari et al."""

    def integrand(theta: float) -> float:
        ratio = norm.pdf(delta, theta, math.sqrt(variance)) / norm.pdf(
            delta, 0, math.sqrt(variance)
        )
        return ratio * norm.pdf(theta, 0, math.sqrt(tau2))

    reference, _ = integrate.quad(integrand, -20 * math.sqrt(tau2), 20 * math.sqrt(tau2))
    assert mixture_lr(delta, variance, tau2) == pytest.approx(reference, rel=1e-6)


def test_hand_case() -> None:
    # V = tau^2 = 1e-4, delta = 0.02: sqrt(1/2) * exp(1e-4 * 4e-4 / (2 * 1e-4 * 2e-4)) = e / sqrt 2
    assert mixture_lr(0.02, 1e-4, 1e-4) == pytest.approx(math.e / math.sqrt(2))
    assert always_valid_p(1.0, 0.02, 1e-4, 1e-4) == pytest.approx(math.sqrt(2) / math.e)
    assert always_valid_p(0.3, 0.02, 1e-4, 1e-4) == 0.3  # never rises
    m = Moments()
    for x in (1.0, 2.0, 4.0):
        m.add(x)
    assert (m.mean, m.variance) == (pytest.approx(7 / 3), pytest.approx(np.var([1, 2, 4], ddof=1)))
    c = Moments()
    for x in (0.0, 1.0, 2.0):
        c.add(x)
    delta, v = difference(m, c)
    assert delta == pytest.approx(4 / 3) and v == pytest.approx(m.variance / 3 + c.variance / 3)


def test_false_alarm_rate_under_continuous_monitoring() -> None:
    """A/A: two arms with the same 5 % error rate, 200 requests each per window, the
    always-valid p-value looked at after each of 60 windows, 4,000 experiments. The share
    that ever reaches p < alpha stays at or below alpha; a fixed-sample z-test looked at
    the same way exceeds it several times (the peeking problem the mSPRT solves)."""
    rng = np.random.default_rng(7)
    sims, looks, per_window, rate, alpha, tau2 = 4000, 60, 200, 0.05, 0.05, 0.02**2
    errors_t = rng.binomial(per_window, rate, size=(sims, looks)).cumsum(axis=1)
    errors_c = rng.binomial(per_window, rate, size=(sims, looks)).cumsum(axis=1)
    n = per_window * np.arange(1, looks + 1)
    pt, pc = errors_t / n, errors_c / n
    variance = pt * (1 - pt) / n + pc * (1 - pc) / n
    variance = np.where(variance > 0, variance, np.nan)
    delta = pt - pc
    lam = np.sqrt(variance / (variance + tau2)) * np.exp(
        tau2 * delta**2 / (2 * variance * (variance + tau2))
    )
    p_always = np.minimum.accumulate(np.minimum(np.nan_to_num(1 / lam, nan=1.0), 1.0), axis=1)
    ever_always = float(np.mean(p_always.min(axis=1) < alpha))
    z = np.abs(delta) / np.sqrt(variance)
    ever_naive = float(np.mean(np.nanmax(z, axis=1) > norm.ppf(1 - alpha / 2)))
    # binomial standard error of the estimate at alpha: ~0.0034
    assert ever_always <= alpha + 0.01, ever_always
    assert ever_naive > 3 * alpha, ever_naive
    # the same with the operator's code path (always_valid_p per look), a subset
    for s in range(50):
        p = 1.0
        for k in range(looks):
            if not math.isnan(variance[s, k]):
                p = always_valid_p(p, float(delta[s, k]), float(variance[s, k]), tau2)
        assert p == pytest.approx(p_always[s, -1])


# -- the operator ---------------------------------------------------------------


def log(i: int, ts: int, variant: str, latency: float, error: bool = False) -> InferenceLog:
    return InferenceLog(
        request_id=f"r{i}",
        ts=ts,
        model_id="m",
        model_version="1",
        features={},
        prediction=0.0,
        latency_ms=latency,
        status="error" if error else "ok",
        experiment="exp1",
        variant=variant,
    )


def imp(i: int, ts: int, variant: str) -> Impression:
    return Impression(
        impression_id=f"i{i}",
        ts=ts,
        campaign_id="c",
        user_id=f"u{i}",
        experiment="exp1",
        variant=variant,
    )


def traffic(windows: int, slow_from: int | None = None, seed: int = 1):
    """Per window 300 requests per arm; latency lognormal around 100 ms; the treatment's
    latency x1.5 from window `slow_from` on."""
    rng = random.Random(seed)
    logs = []
    k = 0
    for w in range(windows):
        for variant in ("control", "treatment"):
            factor = (
                1.5 if variant == "treatment" and slow_from is not None and w >= slow_from else 1
            )
            for _ in range(300):
                ts = T0 + w * W + rng.randrange(W)
                logs.append(
                    log(
                        k,
                        ts,
                        variant,
                        100 * factor * rng.lognormvariate(0, 0.3),
                        rng.random() < 0.01,
                    )
                )
                k += 1
    logs.sort(key=lambda e: e.ts)
    return logs


def run(events_by_source, cfg: ExperimentConfig | None = None, split_at: int | None = None):
    def new() -> MonitorTask:
        # idle after 5 ms of the test's clock (10 ms a batch): a source with nothing in
        # this batch does not hold the watermark
        return MonitorTask(ExperimentOperator(cfg), RuleEngine(RULES), 0, 5)

    task = new()
    rows, alerts = [], []
    merged = sorted(
        [(e.ts, s, e) for s, events in events_by_source.items() for e in events],
        key=lambda t: t[0],
    )
    for i in range(0, len(merged), 97):
        if split_at is not None and i >= split_at:
            state = msgspec.msgpack.decode(msgspec.msgpack.encode(task.snapshot()))
            task = new()
            task.restore(state)
            split_at = None
        now = i * 10
        for source in ("impressions", "inference-logs"):
            batch = [e for _, s, e in merged[i : i + 97] if s == source]
            assert task.feed(source, batch, now_ms=now) == []
        task.tick(now_ms=now)
        out = task.collect()
        rows += as_dicts(out.rows.get(EXPERIMENT_TABLE, []))
        alerts += out.alerts
    now = len(merged) * 10 + 100
    task.feed("inference-logs", [log(-1, T0 + 1000 * W, "control", 1.0)], now_ms=now)
    task.feed("impressions", [imp(-1, T0 + 1000 * W, "control")], now_ms=now)
    task.tick(now_ms=now)
    out = task.collect()
    rows += as_dicts(out.rows.get(EXPERIMENT_TABLE, []))
    alerts += out.alerts
    return rows, alerts


def test_latency_regression_stops_the_arm() -> None:
    rows, alerts = run({"inference-logs": traffic(8, slow_from=4)})
    firing = [a for a in alerts if a.status == "firing"]
    assert {a.rule for a in firing} >= {"experiment_guardrail_latency_p99"}
    a = next(a for a in firing if a.rule == "experiment_guardrail_latency_p99")
    assert a.severity == "critical" and a.entity == "exp1/treatment"
    assert a.window_start >= T0 + 4 * W  # not before the regression
    assert a.message.startswith("stop or roll back arm treatment of exp1: p99 latency")
    assert a.details["always_valid_p"] < 0.001
    assert a.details["treatment_value"] > 1.2 * a.details["control_value"]
    p99 = [r for r in rows if r["metric"] == "latency_p99" and r["variant"] == "treatment"]
    assert len(p99) == 8 and all(r["control_value"] is not None for r in p99)


def test_equal_arms_raise_nothing() -> None:
    rows, alerts = run({"inference-logs": traffic(12)})
    assert [a for a in alerts if a.rule.startswith("experiment_guardrail")] == []
    assert {r["metric"] for r in rows} == {"error_rate", "latency_p95", "latency_p99"}


def test_ramp_jump_warns() -> None:
    events = []
    k = 0
    for w in range(4):
        share = 0.1 if w < 2 else 0.5  # treatment from 10 % to 50 % of traffic
        for j in range(400):
            variant = "treatment" if j < 400 * share else "control"
            events.append(imp(k, T0 + w * W + j * 700, variant))
            k += 1
    rows, alerts = run({"impressions": events})
    [ramp] = [a for a in alerts if a.rule == "experiment_ramp"]
    assert ramp.severity == "warning" and ramp.window_start == T0 + 2 * W
    # both arms moved by 0.4: the ramped (treatment) arm is named, in every process
    assert ramp.details["variant"] == "treatment"
    assert ramp.details["change"] == pytest.approx(0.4)
    shares = [r for r in rows if r["metric"] == "impression_share" and r["variant"] == "treatment"]
    assert [round(r["value"], 2) for r in shares] == [0.1, 0.1, 0.5, 0.5]


@pytest.mark.parametrize("split_at", [100, 1500, 3000])
def test_restore_continues_identically(split_at: int) -> None:
    source = {"inference-logs": traffic(6, slow_from=3, seed=4)}
    assert run(source, split_at=split_at) == run(source)


def test_error_rate_breach_names_both_values_and_the_evidence() -> None:
    rng = random.Random(9)
    logs = []
    for w in range(4):
        for variant, rate in (("control", 0.01), ("treatment", 0.10)):
            for j in range(300):
                ts = T0 + w * W + rng.randrange(W)
                logs.append(
                    log(
                        w * 1000 + j + (500 if variant == "treatment" else 0),
                        ts,
                        variant,
                        100.0 + rng.random(),
                        rng.random() < rate,
                    )
                )
    logs.sort(key=lambda e: e.ts)
    rows, alerts = run({"inference-logs": logs})
    [a] = [
        a for a in alerts if a.rule == "experiment_guardrail_error_rate" and a.status == "firing"
    ]
    assert a.severity == "critical" and a.entity == "exp1/treatment"
    d = a.details
    assert d["treatment_value"] - d["control_value"] > 0.02 and d["always_valid_p"] < 0.001
    assert f"error rate {d['treatment_value']:.2%} against {d['control_value']:.2%}" in a.message
    errors = [r for r in rows if r["metric"] == "error_rate" and r["variant"] == "treatment"]
    assert [r["p_value"] for r in errors] == sorted((r["p_value"] for r in errors), reverse=True)
