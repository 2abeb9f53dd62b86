"""Exact tests for small counts against large references, vectorised.

`fisher_less_small_counts` is Fisher's exact test (one-sided, "less"; Fisher 1922)
of many 2x2 tables [[a, b], [c, d]] whose top-left counts are small (a window's
clicks) while the other row may be large (a baseline of hours):

    p = P(X <= a) = sum_{x=lo}^{a} C(n1, x) C(n2, K - x) / C(n1 + n2, K)

with n1 = a + b, n2 = c + d, K = a + c and lo = max(0, K - n2), the
hypergeometric lower tail, each term from log-gamma functions. Its cost grows
with max(a), not with the size of the reference, where scipy's
`hypergeom.cdf` grows with the reference (BENCHMARKS.md, "Measurements behind
design choices"). The result equals `scipy.stats.fisher_exact(..., alternative="less")`
to ~1e-12 relative (tests/test_sequential.py).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import gammaln

# scipy.stats is imported where it is used: at import it costs ~0.4 s of CPU in every
# process that reads the configuration (the CLI), most of which never call it

MAX_SUMMED = 1000  # tables with more top-left counts than this go to scipy


def _log_choose(n: NDArray[np.float64], k: NDArray[np.float64]) -> NDArray[np.float64]:
    return gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)


def fisher_less_small_counts(
    a: ArrayLike, b: ArrayLike, c: ArrayLike, d: ArrayLike
) -> NDArray[np.float64]:
    """One-sided ("less") Fisher p-values, element-wise; 1 where a margin is 0.

    >>> from scipy.stats import fisher_exact
    >>> p = fisher_less_small_counts([3, 0], [297, 220], [240, 290], [2160, 2000])
    >>> q = [fisher_exact([[3, 297], [240, 2160]], alternative="less").pvalue,
    ...      fisher_exact([[0, 220], [290, 2000]], alternative="less").pvalue]
    >>> bool(np.allclose(p, q, rtol=1e-10))
    True
    """
    a, b, c, d = (np.asarray(x, dtype=np.int64) for x in (a, b, c, d))
    p = np.ones(a.shape, dtype=np.float64)
    n1, n2, k = a + b, c + d, a + c
    ok = (n1 > 0) & (n2 > 0) & (k > 0) & (b + d > 0)
    if not ok.any():
        return p
    big = ok & (a > MAX_SUMMED)
    if big.any():  # many terms: scipy's hypergeometric cdf is the cheaper one there
        from scipy.stats import hypergeom

        p[big] = np.minimum(hypergeom.cdf(a[big], (n1 + n2)[big], n1[big], k[big]), 1.0)
        ok &= ~big
        if not ok.any():
            return p
    a, n1, n2, k = (x[ok].astype(np.float64) for x in (a, n1, n2, k))
    lo = np.maximum(0.0, k - n2)
    xs = np.arange(0, int(a.max()) + 1, dtype=np.float64)[None, :]
    valid = (xs >= lo[:, None]) & (xs <= a[:, None])
    # clip outside the support so the log-gammas stay finite; masked out below
    x = np.where(valid, xs, lo[:, None])
    log_pmf = (
        _log_choose(n1[:, None], x)
        + _log_choose(n2[:, None], k[:, None] - x)
        - _log_choose(n1 + n2, k)[:, None]
    )
    p[ok] = np.minimum(np.where(valid, np.exp(log_pmf), 0.0).sum(axis=1), 1.0)
    return p


__all__ = ["fisher_less_small_counts"]
