"""The drift and service monitors' per-window statistics, without their per-call overhead.

Scoring a window was a tenth of the drift + service pipeline's CPU (issue 18: ~11 ms
per 5-minute window of 22,500 inference logs, ~0.5 µs per log). Three of its steps
are computed here the cheaper way, each with exactly the result of the reference it
replaces (the property tests of tests/test_drift_kernel.py hold them equal):

- `ks_statistic`: the two-sample Kolmogorov-Smirnov D of two ascending samples by
  one merge of the two (O(m + n)), instead of `operators.stats.ks_2samp_from_sorted`'s
  two binary searches per point (2 (m + n) log searches, ~0.75 ms for a window's
  2,000 points against a reference's 5,000). The counts at every point are the same
  integers, so D is the same float.
- `binned_counts_sorted`: the bin counts of an ascending array as differences of the
  cut points' positions in it (k binary searches) instead of one search per value
  (`operators.stats.binned_counts`, ~0.3 ms for 22,500 values).
- `exact_sum`: `math.fsum` (Shewchuk's exact partials, then the correctly rounded
  sum with CPython's half-even fix-up), compiled: math.fsum over a window's
  confidences read them back as 22,500 Python floats first (~1.5 ms).

Each returns NaN (or None) where its input is outside what it handles (a NaN, an
unsorted array, a non-finite sum), and the caller then uses the reference.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# partials of `exact_sum`: at most ~40 non-overlapping doubles span the float64
# range (2,098 bits / 53); beyond CAP the kernel gives up (NaN: the caller's fsum)
CAP = 64


@njit("float64(float64[::1], float64[::1])", cache=True)
def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """D = max over every point z of a and b of |#(a <= z) / len(a) - #(b <= z) / len(b)|,
    for ascending a and b without NaN (NaN when one is unsorted, holds a NaN or is
    empty). The counts are numpy.searchsorted(., z, side="right")'s, taken by
    walking both arrays once per side, and divided as numpy divides them."""
    n1, n2 = a.size, b.size
    if n1 == 0 or n2 == 0:
        return math.nan
    for i in range(n1):
        if a[i] != a[i] or (i > 0 and a[i] < a[i - 1]):
            return math.nan
    for i in range(n2):
        if b[i] != b[i] or (i > 0 and b[i] < b[i - 1]):
            return math.nan
    d = 0.0
    for points in (a, b):
        j1 = j2 = 0
        for i in range(points.size):
            z = points[i]
            while j1 < n1 and a[j1] <= z:
                j1 += 1
            while j2 < n2 and b[j2] <= z:
                j2 += 1
            v = abs(j1 / n1 - j2 / n2)
            if v > d:
                d = v
    return d


def binned_counts_sorted(values: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """`operators.stats.binned_counts(values, cuts)` for an ascending `values` (as
    numpy.sort leaves it: NaN last) and ascending `cuts` without NaN: the count of
    bin j, the values with exactly j cut points <= them, is the number of values
    below c_(j+1) less those below c_j (numpy's order on both sides, so -0.0, the
    infinities and a trailing NaN, which no cut point exceeds, land alike)."""
    at = np.searchsorted(values, cuts, side="left")
    return np.diff(at, prepend=0, append=values.size).astype(np.int64)


@njit("float64(float64[::1])", cache=True)
def exact_sum(values: np.ndarray) -> float:
    """math.fsum(values), or NaN where a value or a partial sum is not finite (or the
    partials overflow CAP): CPython's algorithm (Modules/mathmodule.c, math_fsum)
    step for step; the sum is the correctly rounded one, ties to even."""
    p = np.empty(CAP)
    n = 0
    for k in range(values.size):
        x = values[k]
        i = 0
        for j in range(n):  # x added to the partials, the non-zero low parts kept
            y = p[j]
            if abs(x) < abs(y):
                x, y = y, x
            hi = x + y
            lo = y - (hi - x)
            if lo != 0.0:
                p[i] = lo
                i += 1
            x = hi
        n = i
        if x != 0.0:
            if not math.isfinite(x) or n == CAP:
                return math.nan
            p[n] = x
            n += 1
    hi = 0.0
    lo = 0.0
    if n > 0:
        n -= 1
        hi = p[n]
        while n > 0:  # the exact sum from the top, until it is inexact
            x = hi
            n -= 1
            y = p[n]
            hi = x + y
            lo = y - (hi - x)
            if lo != 0.0:
                break
        # half-even rounding across several partials (sum([1e-16, 1, 1e16]))
        if n > 0 and ((lo < 0.0 and p[n - 1] < 0.0) or (lo > 0.0 and p[n - 1] > 0.0)):
            y = lo * 2.0
            x = hi + y
            if y == x - hi:
                hi = x
    return hi


def kernel_array(values: np.ndarray) -> np.ndarray:
    """`values` as the kernels take them: a C-contiguous, writable float64 array (no
    copy unless it is not one already: numba's signatures refuse a read-only array)."""
    return np.require(values, np.float64, ["C", "W"])


def fsum(values: np.ndarray) -> float:
    """math.fsum of a float64 array: `exact_sum`, or math.fsum itself where the kernel
    gives up (an infinity, a NaN, an overflow: fsum's own verdict, error included)."""
    total = exact_sum(kernel_array(values))
    if total != total:
        return math.fsum(values.tolist())
    return total


__all__ = ["binned_counts_sorted", "exact_sum", "fsum", "kernel_array", "ks_statistic"]
