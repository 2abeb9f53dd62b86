"""`operators.detectors.likelihood.median_mad` (the compiled median and MAD of
`AnomalyLikelihood`'s fit) against numpy's `np.median`, bit for bit: exact=True
results equal numpy's (sign included), and `_fit` equals numpy's for any history
(the values numpy decides, -0.0 and non-finite ones, go to numpy)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.detectors.likelihood import MAD_TO_SIGMA, AnomalyLikelihood, median_mad

values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-1e6, 1e6),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 1e-300, -1e-300, 1.5, 2.5]),
)


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or (
        a == b and math.copysign(1, a) == math.copysign(1, b)
    )


@settings(max_examples=1500, deadline=None)
@given(st.lists(values, min_size=1, max_size=300))
def test_median_mad_is_numpys(xs: list[float]) -> None:
    h = np.array(xs, dtype=np.float64)
    before = h.copy()
    exact, center, mad = median_mad(h)
    assert np.array_equal(h, before, equal_nan=True)  # the history is not reordered
    numpys_choice = any(not math.isfinite(x) or (x == 0.0 and math.copysign(1, x) < 0) for x in xs)
    assert exact != numpys_choice
    if exact:  # (h finite here)
        c = float(np.median(h))
        assert _same(center, c)
        assert _same(mad, float(np.median(np.abs(h - c))))


@settings(max_examples=300, deadline=None)
@given(st.lists(values, min_size=1, max_size=200))
def test_fit_is_numpys(xs: list[float]) -> None:
    lk = AnomalyLikelihood(history=500)
    lk.history.extend(xs)
    h = np.array(xs, dtype=np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf, as in the fit
        lk._fit()
        c = float(np.median(h))
        mad = float(np.median(np.abs(h - c)))
    assert _same(lk.center, c)
    assert _same(lk.scale, max(MAD_TO_SIGMA * mad, lk.min_scale))
    assert lk.since_fit == 0


def test_even_and_odd_hand_cases() -> None:
    assert median_mad(np.array([3.0, 1.0, 2.0, 10.0])) == (True, 2.5, 1.0)
    assert median_mad(np.array([5.0, 1.0, 3.0])) == (True, 3.0, 2.0)
    assert median_mad(np.array([7.0])) == (True, 7.0, 0.0)
    assert median_mad(np.array([1.0, 0.0, 0.0, -2.0])) == (True, 0.0, 0.5)
    assert median_mad(np.array([1.0, -0.0]))[0] is False
    assert median_mad(np.array([1.0, math.nan]))[0] is False


@settings(max_examples=800, deadline=None)
@given(st.lists(st.sampled_from([0.0, 1.0, -1.0, 0.5, -0.5, 2.0, 1e-300]), min_size=1, max_size=60))
def test_zero_medians_are_numpys(xs: list[float]) -> None:
    """Histories full of +0.0 (a Mann-Kendall z of a flat stretch): the compiled median
    and MAD, zeros included, are numpy's, sign and all."""
    h = np.array(xs, dtype=np.float64)
    exact, center, mad = median_mad(h)
    assert exact
    c = float(np.median(h))
    assert _same(center, c)
    assert _same(mad, float(np.median(np.abs(h - c))))
