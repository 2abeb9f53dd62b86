"""The drift and service monitors' per-window fast paths (issue 18) against references.

- `ks_statistic` (one merge) and the drift operator's `_ks` against
  `operators.stats.ks_2samp_from_sorted` (binary searches): the same D, bit for bit,
  and where the kernel refuses (NaN, unsorted, empty) the reference's own verdict.
- `binned_counts_sorted` and `_FeatureRef.bin_sorted` against `binned_counts`, for any
  ascending values (ties, -0.0, infinities, NaN last) and any cut points.
- `fsum`/`exact_sum` against `math.fsum`, value and error alike.
- `chi2_sf`/`chi2_isf` against scipy.stats.chi2's sf/isf.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from operators.drift import _FeatureRef, _ks
from operators.drift_kernel import binned_counts_sorted, exact_sum, fsum, ks_statistic
from operators.reference import FeatureProfile
from operators.stats import binned_counts, chi2_isf, chi2_sf, ks_2samp_from_sorted

# a sample of one against one has en = round(1/2) = 0: scipy's kstwo divides by it,
# in the reference and the fast path alike
pytestmark = pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")

# few distinct values, so ties within and across the samples are common
_TIED = st.sampled_from([-math.inf, -2.5, -1.0, -0.0, 0.0, 0.5, 1.0, 3.0, math.inf])
_VALUE = st.one_of(_TIED, st.floats(-1e6, 1e6, allow_nan=False))
_SAMPLE = st.lists(_VALUE, max_size=60)


def _outcome(f: Any, *args: Any) -> str:
    """What `f(*args)` returns, or the type of what it raises, as its repr (exact for
    floats, and a NaN equals a NaN)."""
    try:
        return repr(f(*args))
    except Exception as exc:  # compared between the two paths
        return repr(type(exc))


@settings(max_examples=200, deadline=None)
@given(_SAMPLE, _SAMPLE, st.booleans())
def test_ks_statistic_is_the_searchsorted_one(a: list[float], b: list[float], nan: bool) -> None:
    ref = np.sort(np.array(a + [math.nan] * nan, dtype=np.float64))
    cur = np.sort(np.array(b, dtype=np.float64))
    d = ks_statistic(ref, cur)
    if ref.size and cur.size and not nan:
        assert d == ks_2samp_from_sorted(ref, cur)[0]
    else:
        assert math.isnan(d)  # the caller's cue to use the reference
    assert _outcome(_ks, ref, cur) == _outcome(ks_2samp_from_sorted, ref, cur)


@settings(max_examples=200, deadline=None)
@given(st.lists(_VALUE, min_size=2, max_size=40), _SAMPLE)
def test_ks_of_an_unsorted_reference_is_the_reference(a: list[float], b: list[float]) -> None:
    ref = np.array(a, dtype=np.float64)  # as given, maybe out of order
    cur = np.sort(np.array(b, dtype=np.float64))
    if np.all(ref[1:] >= ref[:-1]):
        ref = ref[::-1].copy()
    if ref[0] == ref[-1]:
        return  # constant: no order to break
    assert math.isnan(ks_statistic(ref, cur))
    assert _outcome(_ks, ref, cur) == _outcome(ks_2samp_from_sorted, ref, cur)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.one_of(_VALUE, st.just(math.nan)), max_size=80),
    st.lists(_TIED | st.floats(-10, 10), min_size=1, max_size=12),
)
def test_binned_counts_sorted_is_binned_counts(values: list[float], cuts: list[float]) -> None:
    x = np.sort(np.array(values, dtype=np.float64))
    edges = np.sort(np.array(cuts, dtype=np.float64))
    fast = binned_counts_sorted(x, edges)
    assert fast.dtype == np.int64
    assert fast.tolist() == binned_counts(x, edges).tolist()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_VALUE, max_size=60),
    st.lists(st.one_of(_TIED, st.just(math.nan), st.floats(-10, 10)), min_size=1, max_size=12),
)
def test_bin_sorted_of_any_cut_points(values: list[float], cuts: list[float]) -> None:
    """Cut points as a profile may hold them, in any order or with a NaN: the fast path
    only where they are ascending and NaN-free, the reference elsewhere."""
    profile = FeatureProfile(
        kind="numeric", count=1, edges=cuts, counts=[1] * (len(cuts) + 1), sample=[0.0]
    )
    f = _FeatureRef("x", profile)
    x = np.sort(np.array(values, dtype=np.float64))
    assert f.bin_sorted(x).tolist() == binned_counts(x, f.edges).tolist()


_SUMMAND = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(0, 1),
    st.sampled_from([1e308, -1e308, 1e-16, 1.0, 1e16, 5e-324, -0.0]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_SUMMAND, max_size=80))
def test_exact_sum_is_math_fsum(values: list[float]) -> None:
    a = np.array(values, dtype=np.float64)
    try:
        expected = math.fsum(values)
    except OverflowError:
        assert math.isnan(exact_sum(a))  # the kernel gives up: fsum raises for the caller
    else:
        got = exact_sum(a)
        assert repr(got) == repr(expected) or math.isnan(got)  # NaN: gave up (overflow)
    assert _outcome(fsum, a) == _outcome(math.fsum, values)


@pytest.mark.parametrize(
    "values",
    [
        [1e-16, 1.0, 1e16],  # the half-even fix-up across partials
        [1e308, 1e308, -1e308],  # intermediate overflow: fsum's OverflowError
        [math.inf, 1.0],
        [math.inf, -math.inf],  # fsum's ValueError
        [math.nan, 1.0],
        [],
    ],
)
def test_fsum_special_cases(values: list[float]) -> None:
    assert _outcome(fsum, np.array(values, dtype=np.float64)) == _outcome(math.fsum, values)


def test_read_only_arrays() -> None:
    """A read-only array (a snapshot's buffer, say) is taken too: copied for numba."""
    a = np.array([0.25, 0.5, 0.75])
    a.flags.writeable = False
    assert fsum(a) == math.fsum(a.tolist())
    assert _outcome(_ks, a, a) == _outcome(ks_2samp_from_sorted, a, a)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.floats(allow_nan=True),
        st.floats(0, 200),
        st.sampled_from([0.0, -0.0, 1e-300, math.inf]),
    ),
    st.integers(-1, 80),
)
def test_chi2_tails_are_scipys(x: float, df: int) -> None:
    for fast, slow in ((chi2_sf, stats.chi2.sf), (chi2_isf, stats.chi2.isf)):
        q = x if fast is chi2_sf else min(abs(x), 1.0) if x == x else x
        assert repr(fast(q, df)) == repr(float(slow(q, df)))
