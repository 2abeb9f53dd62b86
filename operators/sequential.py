"""Sequential evidence: a one-sided CUSUM of log-likelihood ratios, and the
thresholds that hold a false-alarm budget across many entities.

Page's CUSUM (Page 1954, "Continuous inspection schemes", Biometrika 41) for a
change from a density f0 to f1 accumulates the log-likelihood ratio of each
new observation x_t and forgets evidence that points the other way:

    S_0 = 0,   S_t = max(0, S_{t-1} + log f1(x_t) / f0(x_t)),   alarm when S_t >= h

Lorden (1971, "Procedures for reacting to a change in distribution", Ann.
Math. Statist. 42) showed it is optimal for the worst-case detection delay at
a given in-control average run length (ARL0, the mean number of observations
between false alarms), and, by Wald's inequality for the SPRT the CUSUM
restarts after every return to 0 (P(an SPRT started under f0 ever reaches h)
<= exp(-h)), that

    ARL0 >= exp(h)      so      h = log(ARL0)

guarantees at least that ARL0, whatever the (independent) observations are
and however often one looks: the statistic is checked after every window by
design, so peeking does not inflate the false-alarm rate (unlike repeating a
fixed-sample test every window). The bound is conservative (the true ARL0 is
usually several times exp(h)); the delay to detect a change of Kullback-Leibler
divergence KL per observation is about h / KL observations.

For counts of clicks out of impressions the observation of one window is
(k, n) and the ratio of "CTR = p1" to "CTR = p0" is binomial (the binomial
coefficients cancel):

    llr(k, n) = k * log(p1 / p0) + (n - k) * log((1 - p1) / (1 - p0))

`cusum_update` is the recursion, the one every CUSUM of the project steps
with (`Cusum` here, the keyed `BinomialCusum` and the SRM monitor's in
operators/sequential_rates.py). `Cusum` is a small river-style detector (no
time, rows or alert state): feed it increments with `update`, read `statistic`.
"""

from __future__ import annotations

import math

import msgspec
import numpy as np
from numpy.typing import ArrayLike, NDArray

MS_PER_DAY = 86_400_000


def binomial_llr(k: ArrayLike, n: ArrayLike, p0: ArrayLike, p1: ArrayLike) -> NDArray[np.float64]:
    """log P(k | n, p1) - log P(k | n, p0) for Binomial counts, element-wise.

    >>> round(float(binomial_llr(0, 200, 0.12, 0.06)), 4)  # 200 impressions, no click
    13.1916
    >>> round(float(binomial_llr(30, 300, 0.1, 0.05)), 4)  # a normal window: evidence against
    -6.1963
    """
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    p0 = np.asarray(p0, dtype=np.float64)
    p1 = np.asarray(p1, dtype=np.float64)
    return k * np.log(p1 / p0) + (n - k) * (np.log1p(-p1) - np.log1p(-p0))


def cusum_threshold(arl0: float) -> float:
    """The CUSUM threshold h = log(ARL0) that guarantees an in-control average run
    length of at least `arl0` observations (Lorden 1971, via Wald's inequality).

    >>> round(cusum_threshold(1_000_000), 3)
    13.816
    """
    if arl0 <= 1:
        raise ValueError("arl0 must be > 1")
    return math.log(arl0)


def windows_per_1000_entity_days(window_ms: int) -> float:
    """How many windows 1,000 entities close in a day each.

    >>> windows_per_1000_entity_days(60_000)
    1440000.0
    """
    return 1000 * MS_PER_DAY / window_ms


def bonferroni_alpha(false_alarms: float, tests: float) -> float:
    """The per-test significance level that keeps the expected number of false
    alarms among `tests` tests of true null hypotheses at most `false_alarms`
    (Boole's inequality: E[false alarms] = tests * alpha; Bonferroni 1936).

    >>> bonferroni_alpha(1.0, 1_440_000 * 9)
    7.71604938271605e-08
    """
    if false_alarms <= 0 or tests <= 0:
        raise ValueError("false_alarms and tests must be > 0")
    return min(1.0, false_alarms / tests)


def cusum_update(statistic: float, llr: float, cap: float | None = None) -> float:
    """One step of Page's recursion: min(cap, max(0, S + llr)), no cap when None.

    An undefined increment (NaN, e.g. 0 * log(p1 / 0) for an outcome the null
    calls impossible and that did not occur) is no evidence: max(0, NaN) is 0.

    >>> cusum_update(3.0, -5.0), cusum_update(3.0, 4.0), cusum_update(3.0, 4.0, cap=5.0)
    (0.0, 7.0, 5.0)
    """
    s = max(0.0, statistic + llr)
    return s if cap is None else min(cap, s)


class Cusum(msgspec.Struct, omit_defaults=True, gc=False):
    """One-sided CUSUM of log-likelihood-ratio increments, optionally capped.

    `cap` (>= the alarm threshold, or None) bounds how much evidence can pile
    up during a long incident, so that once the data turn normal again the
    statistic falls back below the threshold after about (cap - h) nats of
    evidence for recovery, not after as long as the incident lasted.

    Its state is its fields (a msgspec Struct): it snapshots and restores as a
    typed field of its owner's state (`operators.state`), e.g. the CTR judge's.

    >>> c = Cusum(cap=20.0)
    >>> [c.update(x) for x in (3.0, -1.0, -5.0, 12.0, 30.0, -4.0)]
    [3.0, 2.0, 0.0, 12.0, 20.0, 16.0]
    >>> msgspec.convert(msgspec.to_builtins(c), Cusum) == c
    True
    """

    cap: float | None = None
    statistic: float = 0.0

    def update(self, llr: float) -> float:
        self.statistic = cusum_update(self.statistic, llr, self.cap)
        return self.statistic

    def reset(self) -> None:
        self.statistic = 0.0


__all__ = [
    "Cusum",
    "binomial_llr",
    "bonferroni_alpha",
    "cusum_threshold",
    "cusum_update",
    "windows_per_1000_entity_days",
]
