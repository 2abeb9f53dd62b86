"""operators.sequential against scipy, hand-computed cases and simulation."""

from __future__ import annotations

import doctest
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom, fisher_exact

import operators.baseline
import operators.ctr
import operators.ctr_evidence
import operators.exact
import operators.sequential
from operators.baseline import ClearedRate
from operators.exact import fisher_less_small_counts
from operators.sequential import (
    Cusum,
    binomial_llr,
    bonferroni_alpha,
    cusum_threshold,
    windows_per_1000_entity_days,
)


def test_doctests() -> None:
    modules = (operators.sequential, operators.baseline, operators.exact, operators.ctr_evidence)
    for module in (*modules, operators.ctr):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 5000),
    frac=st.floats(0, 1),
    p0=st.floats(1e-4, 0.9),
    d=st.floats(0.01, 0.99),
)
def test_binomial_llr_is_scipys_log_pmf_ratio(n: int, frac: float, p0: float, d: float) -> None:
    k = round(frac * n)
    p1 = p0 * (1 - d)
    want = binom.logpmf(k, n, p1) - binom.logpmf(k, n, p0)
    got = float(binomial_llr(k, n, p0, p1))
    assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-7)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-50, 50), min_size=1, max_size=200))
def test_cusum_is_cumsum_minus_its_running_minimum(xs: list[float]) -> None:
    """Page's recursion equals C_t - min(0, min_{s<=t} C_s) with C the cumulative sum."""
    c = Cusum()
    got = [c.update(x) for x in xs]
    cum = np.cumsum(xs)
    want = cum - np.minimum(0.0, np.minimum.accumulate(cum))
    assert np.allclose(got, want, atol=1e-9)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50)), min_size=1, max_size=60),
    st.sampled_from([math.inf, 6.0]),
)
def test_binomial_cusum_is_cusum_of_binomial_llrs(
    windows: list[tuple[int, int]], cap: float
) -> None:
    """The keyed BinomialCusum steps like one Cusum fed its windows' binomial LLRs
    (scipy's log pmf ratio), its checkpoint a float per key that restores as is."""
    from operators.sequential_rates import BinomialCusum

    b, c = BinomialCusum(0.02, 0.1, cap), Cusum(cap=cap)
    for x, extra in windows:
        llr = binom.logpmf(x, x + extra, 0.1) - binom.logpmf(x, x + extra, 0.02)
        assert math.isclose(b.update("k", x, x + extra), c.update(llr), abs_tol=1e-9)
    restored = BinomialCusum(0.02, 0.1, cap)
    restored.restore(b.snapshot())
    assert restored.state == b.state
    assert math.isclose(b.snapshot().get("k", 0.0), c.statistic, abs_tol=1e-9)


def test_cusum_cap_and_reset() -> None:
    c = Cusum(cap=5.0)
    assert [c.update(x) for x in (4.0, 4.0, -2.0)] == [4.0, 5.0, 3.0]
    c.reset()
    assert c.statistic == 0.0


def test_false_alarm_bound_holds_in_simulation() -> None:
    """Under H0 the CUSUM restarts an SPRT at most once per step, each reaching h with
    probability <= exp(-h) (Wald), so P(alarm within T steps) <= T exp(-h)."""
    rng = np.random.default_rng(5)
    steps, paths, n, p0 = 400, 4000, 40, 0.05
    bound = 0.05
    h = cusum_threshold(steps / bound)
    k = rng.binomial(n, p0, size=(paths, steps))
    llr = binomial_llr(k, n, p0, p0 * 0.5)
    s = np.zeros(paths)
    alarmed = np.zeros(paths, dtype=bool)
    for t in range(steps):
        s = np.maximum(0.0, s + llr[:, t])
        alarmed |= s >= h
    assert alarmed.mean() <= bound
    # and the detector is not inert: a halved rate is found within the same steps
    k1 = rng.binomial(n, p0 * 0.5, size=(200, steps))
    s = np.zeros(200)
    found = np.zeros(200, dtype=bool)
    for t in range(60):
        s = np.maximum(0.0, s + binomial_llr(k1[:, t], n, p0, p0 * 0.5))
        found |= s >= h
    assert found.mean() > 0.9


def test_threshold_and_budget_hand_cases() -> None:
    assert math.isclose(math.exp(cusum_threshold(12_345.0)), 12_345.0)
    assert windows_per_1000_entity_days(300_000) == 288_000
    assert bonferroni_alpha(2.0, 4_000_000) == 5e-7
    assert bonferroni_alpha(10.0, 5.0) == 1.0


def test_budget_derives_the_ctr_levels() -> None:
    cfg = operators.ctr.CtrConfig(false_alarms_per_1000_campaign_days=2.0, levels_per_campaign=1)
    tests = 1440 * 1000 * (2 + len(cfg.drops_to_detect))
    assert math.isclose(cfg.window_alpha, 2.0 / tests)
    assert math.isclose(cfg.evidence_threshold, math.log(tests / 2.0))
    assert operators.ctr.CtrConfig(cusum_threshold=7.0).evidence_threshold == 7.0


def test_cleared_rate_blocks_pool_the_last_windows() -> None:
    r = ClearedRate(size=4, min_windows=1, min_trials=0, max_pending=100, block=2)
    for i in range(9):
        r.hold("k", i, 10)
        r.commit("k")
    # blocks of 2: [0+1], [2+3], [4+5], [6+7], [8]; at most 4/2 + 1 = 3 kept
    assert r.get("k") == (4 + 5 + 6 + 7 + 8, 50)


def test_cleared_rate_pending_overflow_and_drop() -> None:
    r = ClearedRate(size=10, min_windows=1, min_trials=0, max_pending=2)
    a = r.hold("k", 1, 10)
    r.hold("k", 2, 10)
    r.drop("k", a)  # judged anomalous on its own
    r.hold("k", 3, 10)
    r.hold("k", 4, 10)  # three held: the oldest enters
    assert r.get("k") == (2, 10)
    state = r.snapshot()
    r2 = ClearedRate(size=10, min_windows=1, min_trials=0, max_pending=2)
    r2.restore(state)
    r2.commit("k")
    assert r2.get("k") == (9, 30)


@settings(max_examples=200, deadline=None)
@given(
    a=st.integers(0, 60),
    b=st.integers(0, 600),
    c=st.integers(0, 5000),
    d=st.integers(0, 60000),
)
def test_fisher_small_counts_is_scipys_fisher_exact(a: int, b: int, c: int, d: int) -> None:
    got = float(fisher_less_small_counts([a], [b], [c], [d])[0])
    if min(a + b, c + d, a + c, b + d) == 0:
        assert got == 1.0
        return
    want = float(fisher_exact([[a, b], [c, d]], alternative="less").pvalue)
    assert math.isclose(got, min(want, 1.0), rel_tol=1e-9, abs_tol=1e-300)


def test_fisher_small_counts_large_tables_fall_back_to_scipy() -> None:
    got = fisher_less_small_counts([1500, 2], [8500, 98], [20000, 10], [80000, 90])
    want = [
        fisher_exact([[1500, 8500], [20000, 80000]], alternative="less").pvalue,
        fisher_exact([[2, 98], [10, 90]], alternative="less").pvalue,
    ]
    assert np.allclose(got, want, rtol=1e-9)
