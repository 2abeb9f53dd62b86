"""Drift statistics against independent references (scipy, numpy, hand computation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.spatial.distance import jensenshannon

from operators.stats import (
    binned_counts,
    chi_square,
    fisher_exact_less,
    js_divergence,
    ks_2samp_from_sorted,
    psi,
    quantile_edges,
    systematic_sample,
)

counts = st.lists(st.integers(min_value=0, max_value=1000), min_size=2, max_size=12).filter(
    lambda c: sum(c) > 0
)


def test_psi_by_hand_two_bins() -> None:
    # e = (0.5, 0.5), a = (0.25, 0.75)
    expected = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert psi([50, 50], [25, 75]) == pytest.approx(expected, rel=1e-12)
    assert psi([50, 50], [25, 75]) == pytest.approx(0.274653, abs=1e-6)


def test_psi_by_hand_three_bins_with_an_empty_bin() -> None:
    # e = (0.2, 0.3, 0.5); a = (0, 0.5, 0.5) -> the empty bin is clipped to eps
    eps = 1e-4
    e = [0.2, 0.3, 0.5]
    a = [eps, 0.5, 0.5]
    expected = sum((ai - ei) * math.log(ai / ei) for ai, ei in zip(a, e, strict=True))
    assert psi([20, 30, 50], [0, 10, 10], eps=eps) == pytest.approx(expected, rel=1e-12)


def test_psi_vectorised_along_last_axis() -> None:
    ref = np.array([10, 20, 30])
    cur = np.array([[10, 20, 30], [30, 20, 10]])
    out = psi(ref, cur)
    assert out.shape == (2,)
    assert out[0] == 0.0
    assert out[1] == pytest.approx(psi(ref, cur[1]))


@settings(max_examples=200, deadline=None)
@given(counts, st.data())
def test_psi_non_negative_and_zero_for_same_distribution(e: list[int], data) -> None:
    a = data.draw(st.lists(st.integers(0, 1000), min_size=len(e), max_size=len(e)))
    if sum(a) > 0:
        assert psi(e, a) >= 0.0
    assert psi(e, e) == 0.0
    assert psi(e, [3 * x for x in e]) == pytest.approx(0.0, abs=1e-12)  # proportions equal


@settings(max_examples=200, deadline=None)
@given(counts, st.data())
def test_js_symmetric_bounded_and_equal_to_scipy(p: list[int], data) -> None:
    q = data.draw(st.lists(st.integers(0, 1000), min_size=len(p), max_size=len(p)))
    if sum(q) == 0:
        q[0] = 1
    js = js_divergence(p, q)
    assert 0.0 <= js <= 1.0
    assert js == pytest.approx(js_divergence(q, p), abs=1e-12)
    assert js == pytest.approx(jensenshannon(p, q, base=2) ** 2, abs=1e-9)
    assert js_divergence(p, p) == pytest.approx(0.0, abs=1e-12)


def test_js_disjoint_is_one() -> None:
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)


@pytest.mark.parametrize("shift", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("sizes", [(5000, 2000), (300, 200), (1000, 1000)])
def test_ks_matches_scipy(shift: float, sizes: tuple[int, int]) -> None:
    rng = np.random.default_rng(7)
    ref = np.sort(rng.normal(size=sizes[0]))
    cur = np.sort(rng.normal(shift, 1.0, size=sizes[1]))
    d, p = ks_2samp_from_sorted(ref, cur)
    asymp = stats.ks_2samp(ref, cur, method="asymp")
    assert d == pytest.approx(asymp.statistic, abs=1e-12)
    assert p == pytest.approx(asymp.pvalue, rel=1e-9, abs=1e-300)
    exact = stats.ks_2samp(ref, cur)  # the statistic does not depend on the method
    assert d == pytest.approx(exact.statistic, abs=1e-12)


def test_ks_with_ties_matches_scipy() -> None:
    rng = np.random.default_rng(3)
    ref = np.sort(rng.integers(0, 5, size=800).astype(float))
    cur = np.sort(rng.integers(0, 6, size=500).astype(float))
    d, p = ks_2samp_from_sorted(ref, cur)
    res = stats.ks_2samp(ref, cur, method="asymp")
    assert d == pytest.approx(res.statistic, abs=1e-12)
    assert p == pytest.approx(res.pvalue, rel=1e-9)


def test_chi_square_matches_scipy() -> None:
    props = np.array([0.5, 0.3, 0.15, 0.05])
    obs = np.array([480, 320, 140, 60])
    chi2, p = chi_square(props, obs)
    ref = stats.chisquare(obs, f_exp=props * obs.sum())
    assert chi2 == pytest.approx(ref.statistic, rel=1e-12)
    assert p == pytest.approx(ref.pvalue, rel=1e-9)


def test_chi_square_zero_expected_bin_is_finite_and_large() -> None:
    eps = 1e-4
    props = np.array([0.6, 0.4, 0.0])  # the "other" bin never seen in the reference
    obs = np.array([50, 40, 10])
    chi2, p = chi_square(props, obs, eps=eps)
    floored = np.maximum(props, eps) / np.maximum(props, eps).sum()
    ref = stats.chisquare(obs, f_exp=floored * obs.sum())
    assert math.isfinite(chi2)
    assert chi2 == pytest.approx(ref.statistic, rel=1e-12)
    assert chi2 > 900 and p < 1e-10
    assert chi_square([1.0], [5]) == (0.0, 1.0)


def test_quantile_edges_and_binned_counts() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=10_000)
    edges = quantile_edges(x, 10)
    assert np.allclose(edges, np.quantile(x, np.arange(1, 10) / 10))
    c = binned_counts(x, edges)
    assert c.sum() == x.size and len(c) == 10
    assert np.all(np.abs(c - 1000) <= 1)
    # brute force: the bin of v is the number of edges <= v
    vals = np.array([-100.0, edges[0], edges[0] - 1e-9, edges[-1], 100.0])
    brute = np.bincount([int(np.sum(edges <= v)) for v in vals], minlength=len(edges) + 1)
    assert binned_counts(vals, edges).tolist() == brute.tolist()


def test_quantile_edges_with_ties_are_unique() -> None:
    x = np.array([0.0] * 70 + [1.0] * 30)
    edges = quantile_edges(x, 10)
    assert np.all(np.diff(edges) > 0)
    c = binned_counts(x, edges)
    assert c.sum() == 100
    assert len(quantile_edges(np.ones(10))) == 1


def test_systematic_sample_is_order_statistics() -> None:
    x = np.arange(10_001, dtype=float)
    s = systematic_sample(x, 101)
    assert s.tolist() == list(range(0, 10_001, 100))
    assert systematic_sample(x[:50], 101).size == 50


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(*[st.integers(min_value=0, max_value=400)] * 4), min_size=1, max_size=20))
def test_fisher_exact_less_is_scipys_2x2_test_table_by_table(tables: list) -> None:
    # zero rows and columns included (scipy's p = 1); equal to the last bit
    a, b, c, d = (np.array(col) for col in zip(*tables, strict=True))
    got = fisher_exact_less(a, b, c, d)
    want = [
        stats.fisher_exact([[w, x], [y, z]], alternative="less").pvalue for w, x, y, z in tables
    ]
    assert got.tolist() == [float(p) for p in want]


def test_fisher_exact_less_by_hand() -> None:
    # [[0, 5], [5, 0]]: a = 0 is the only table this low given the margins:
    # P(X = 0) = C(5,0) C(5,5) / C(10,5) = 1 / 252
    assert fisher_exact_less([0], [5], [5], [0])[0] == pytest.approx(1 / 252, rel=1e-12)
    assert fisher_exact_less([0, 3], [0, 3], [4, 3], [4, 3]).tolist()[0] == 1.0  # empty row
