"""Evidence gates: the new statistics against references, the PSI's null law by
Monte-Carlo, rule hysteresis and false-alarm budgets."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from operators.base import Observation
from operators.rules import Rule, RuleEngine
from operators.stats import (
    alpha_for_budget,
    binned_counts,
    binomial_sf_test,
    psi,
    psi_critical,
    psi_test,
    quantile_edges,
)
from streams.config import ConfigError, RuleSettings, load_settings


@pytest.mark.parametrize(
    ("k", "n", "rate"), [(0, 10, 0.1), (3, 10, 0.1), (7, 30, 0.01), (60, 100, 0.6)]
)
def test_binomial_sf_test_is_scipys_exact_binomial_test(k: int, n: int, rate: float) -> None:
    expected = stats.binomtest(k, n, rate, alternative="greater").pvalue
    assert binomial_sf_test(k, n, rate) == pytest.approx(expected, rel=1e-9)


def test_binomial_hand_case() -> None:
    # P(X >= 2), X ~ Bin(3, 0.5) = (3 + 1) / 8
    assert binomial_sf_test(2, 3, 0.5) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(5))
def test_psi_test_is_the_homogeneity_chi_square(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ref = rng.integers(1, 300, size=8)
    cur = rng.integers(0, 60, size=8)
    cur[0] = 0  # an empty window bin is fine
    expected = stats.chi2_contingency([ref, cur], correction=False)
    p, df = psi_test(ref, cur)
    assert p == pytest.approx(expected.pvalue, rel=1e-9) and df == expected.dof


def test_psi_test_drops_bins_empty_in_both_and_degenerate_cases() -> None:
    p1, df1 = psi_test([10, 0, 20, 30], [5, 0, 8, 9])
    p2, df2 = psi_test([10, 20, 30], [5, 8, 9])
    assert (p1, df1) == (p2, df2) == (pytest.approx(p2), 2)
    assert psi_test([10, 0], [3, 0]) == (1.0, 0)


def test_psi_critical_by_hand() -> None:
    # (1/200 + 1/1000) * chi2_{0.999}(9); chi2_{0.999}(9) = 27.877
    assert psi_critical(200, 1000, 10, 0.001) == pytest.approx(0.006 * 27.877, rel=1e-4)


def _null_windows(n: int, trials: int, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """PSI and its p-value for windows drawn from the reference's own population;
    the reference (m values, 10 quantile bins) is redrawn for every window."""
    rng = np.random.default_rng(seed)
    psis, ps = np.empty(trials), np.empty(trials)
    for t in range(trials):
        ref = rng.standard_normal(m)
        edges = quantile_edges(ref, 10)
        rc = binned_counts(ref, edges)
        wc = binned_counts(rng.standard_normal(n), edges)
        psis[t] = psi(rc, wc)
        ps[t] = psi_test(rc, wc)[0]
    return psis, ps


@pytest.mark.parametrize("n", [50, 200, 1000])
def test_psi_null_false_alarm_rate_is_nominal(n: int) -> None:
    trials, alpha = 4000, 0.01
    psis, ps = _null_windows(n, trials, 1000, seed=n)
    rate = float(np.mean(ps < alpha))
    # binomial 4-sigma band around the nominal level
    tol = 4 * math.sqrt(alpha * (1 - alpha) / trials)
    assert abs(rate - alpha) < tol, (n, rate)
    # the rule needs band AND evidence: never more false alarms than the level
    assert np.mean((psis >= 0.1) & (ps < alpha)) <= alpha + tol
    if n == 50:
        # why the band alone is useless in small windows: chance crosses 0.1 often
        assert np.mean(psis >= 0.1) > 0.3


def test_psi_null_quantile_matches_psi_critical_for_large_windows() -> None:
    psis, _ = _null_windows(2000, 3000, 20_000, seed=9)
    q = float(np.quantile(psis, 0.95))
    assert q == pytest.approx(psi_critical(2000, 20_000, 10, 0.05), rel=0.1)


def test_alpha_for_budget_is_sidak() -> None:
    a = alpha_for_budget(1.0, 288)
    assert 1 - (1 - a) ** 288 == pytest.approx(0.001, rel=1e-9)
    assert a == pytest.approx(0.001 / 288, rel=1e-3)  # ~ Bonferroni
    with pytest.raises(ValueError):
        alpha_for_budget(0, 10)


def test_rule_settings_take_a_budget() -> None:
    s = load_settings(
        env={},
        overrides={
            "rules": [
                {
                    "name": "e",
                    "kind": "service",
                    "metric": "error_rate",
                    "op": ">",
                    "thresholds": {"critical": 0.05},
                    "false_alarm_budget": 2.0,
                    "judgements_per_day": 1440,
                    "clear_windows": 4,
                }
            ]
        },
    )
    rule = s.rules[0].rule()
    assert rule.max_p_value == pytest.approx(alpha_for_budget(2.0, 1440))
    assert rule.clear_windows == 4
    with pytest.raises((ConfigError, ValueError)):
        RuleSettings(
            name="e",
            kind="k",
            metric="m",
            op=">",
            thresholds={"warning": 1},
            false_alarm_budget=1.0,
        )


def _obs(value: float, ts: int, p: float | None = None) -> Observation:
    return Observation(
        "service",
        "m/1",
        "error_rate",
        value,
        ts=ts,
        n=100,
        p_value=p,
        window_start=ts - 60_000,
        window_end=ts,
    )


def test_hysteresis_resolves_only_after_clear_windows() -> None:
    rule = Rule("e", "service", "error_rate", ">", {"critical": 0.05}, clear_windows=3)
    engine = RuleEngine([rule])
    seq = [0.2, 0.01, 0.01, 0.2, 0.01, 0.01, 0.01, 0.01]
    statuses = [
        [a.status for a in engine.evaluate([_obs(v, 60_000 * (i + 1))])] for i, v in enumerate(seq)
    ]
    # fires; two clear windows then out of bounds again (count restarts); resolves
    # on the third consecutive clear window
    assert statuses == [["firing"], [], [], [], [], [], ["resolved"], []]


def test_hysteresis_state_survives_snapshot_and_old_snapshots_restore() -> None:
    rule = Rule("e", "service", "error_rate", ">", {"critical": 0.05}, clear_windows=2)
    engine = RuleEngine([rule])
    engine.evaluate([_obs(0.2, 60_000), _obs(0.0, 120_000)])
    again = RuleEngine([rule])
    again.restore(engine.snapshot())
    assert [a.status for a in again.evaluate([_obs(0.0, 180_000)])] == ["resolved"]
    old = RuleEngine([rule])
    old.restore({"e\x1fm/1": ["critical", 60_000]})  # before clear_windows existed
    assert old.evaluate([_obs(0.0, 120_000)]) == []
    assert [a.status for a in old.evaluate([_obs(0.0, 180_000)])] == ["resolved"]


def test_default_error_rule_alerts_on_an_overwhelming_burst_in_a_small_window() -> None:
    rules = {r.name: r.rule() for r in load_settings(env={}).rules}
    engine = RuleEngine([rules["error_rate"]])
    # 12 errors of 40 requests against a 1 % line: p ~ 1e-14
    burst = _obs(0.3, 60_000, binomial_sf_test(12, 40, 0.01))
    assert [a.status for a in engine.evaluate([burst])] == ["firing"]
    # a 3 % blip in 100 requests (p ~ 0.08) is no evidence
    blip = RuleEngine([rules["error_rate"]])
    assert blip.evaluate([_obs(0.03, 60_000, binomial_sf_test(3, 100, 0.01))]) == []


def test_a_weak_window_over_the_line_does_not_count_towards_resolving() -> None:
    rule = Rule(
        "e", "service", "error_rate", ">", {"critical": 0.05}, max_p_value=1e-3, clear_windows=2
    )
    engine = RuleEngine([rule])
    assert [a.status for a in engine.evaluate([_obs(0.3, 60_000, 1e-9)])] == ["firing"]
    # clear, then over the line but weak (small window): the clear count restarts
    assert engine.evaluate([_obs(0.0, 120_000, 1.0)]) == []
    assert engine.evaluate([_obs(0.2, 180_000, 0.3)]) == []
    assert engine.evaluate([_obs(0.0, 240_000, 1.0)]) == []
    assert [a.status for a in engine.evaluate([_obs(0.0, 300_000, 1.0)])] == ["resolved"]


def test_binomial_llr_is_a_difference_of_scipy_log_pmfs() -> None:
    from operators.sequential_rates import binomial_llr

    for x, n in [(0, 10), (3, 20), (20, 20)]:
        expected = stats.binom.logpmf(x, n, 0.07) - stats.binom.logpmf(x, n, 0.01)
        assert binomial_llr(x, n, 0.01, 0.07) == pytest.approx(expected, rel=1e-9)


def test_cusum_p_value_is_valid_at_every_window_under_the_line() -> None:
    from operators.sequential_rates import BinomialCusum

    rng = np.random.default_rng(3)
    entities, windows, h = 400, 300, math.log(100)  # P(S_t >= h) <= 1 %
    n = rng.integers(5, 200, size=(windows, entities))
    x = rng.binomial(n, 0.01)  # exactly at the line: the worst quiet case
    c = BinomialCusum(0.01, 0.05)
    over = 0
    for t in range(windows):
        for e in range(entities):
            over += c.update(str(e), int(x[t, e]), int(n[t, e])) >= h
    rate = over / (windows * entities)
    assert rate <= 0.01 + 4 * math.sqrt(0.01 / (windows * entities) * 50)  # dependent draws


def test_cusum_catches_a_sustained_rise_no_window_shows() -> None:
    from operators.sequential_rates import BinomialCusum

    alpha = alpha_for_budget(1.0, 1440)
    rng = np.random.default_rng(5)
    delays = []
    for trial in range(50):
        c = BinomialCusum(0.01, 0.05)
        for t in range(60):
            errors = int(rng.binomial(20, 0.06))  # 20 requests a minute at 6 %
            assert binomial_sf_test(errors, 20, 0.01) > alpha or errors >= 6
            if 2 * c.p_value(c.update(str(trial), errors, 20)) < alpha:
                delays.append(t + 1)
                break
    assert len(delays) == 50 and np.median(delays) <= 15, delays


def _drift_op(pool: int):
    from operators.drift import DriftConfig, DriftOperator
    from operators.reference import build_profile

    rng = np.random.default_rng(11)
    ref = build_profile(
        [{"x": float(v), "prediction": 0.0} for v in rng.standard_normal(1000)], "m", "r"
    )
    return DriftOperator(DriftConfig(min_count=20, pool_windows=pool), references={"m": ref}), rng


def _drift_window(op, rng, s: int, n: int, shift: float) -> float:
    from schemas.events import InferenceLog

    t0 = 1_800_000_000_000 - 1_800_000_000_000 % 300_000
    start = t0 + s * 300_000
    op.feed(
        "inference-logs",
        [
            InferenceLog(request_id=f"{s}-{k}", model_id="m", model_version="1",
                         features={"x": float(v)}, prediction=0.0, latency_ms=1.0,
                         status="ok", ts=start + k)
            for k, v in enumerate(rng.standard_normal(n) + shift)
        ],
    )  # fmt: skip
    op.advance(start + 300_000)
    (o,) = [o for o in op.collect().observations if o.entity == "m/x"]
    return o.p_value


def test_pooled_drift_evidence_catches_a_sustained_shift_in_a_small_model() -> None:
    alpha = alpha_for_budget(1.0, 288)
    pooled, rng = _drift_op(12)
    single, rng2 = _drift_op(1)
    p_pooled = [_drift_window(pooled, rng, s, 25, 0.7) for s in range(12)]
    p_single = [_drift_window(single, rng2, s, 25, 0.7) for s in range(12)]
    assert min(p_pooled) < alpha  # an hour of 25 events a window: caught by pooling
    assert sum(p < alpha for p in p_single) <= 2  # window by window it mostly is not


def test_pooled_drift_p_value_is_valid_on_quiet_data() -> None:
    op, rng = _drift_op(12)
    ps = np.array([_drift_window(op, rng, s, 40, 0.0) for s in range(600)])
    # one reference for all windows: allow for its own sampling error in the band
    assert np.mean(ps < 0.01) <= 0.03, np.mean(ps < 0.01)
