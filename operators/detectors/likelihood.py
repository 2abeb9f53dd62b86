"""Anomaly likelihood: a raw score as a tail probability against the series' own history.

The documented equivalent of the anomaly likelihood of Numenta's HTM detector
in NAB (Ahmad, Lavin, Purdy & Agha 2017, "Unsupervised real-time anomaly
detection for streaming data", Neurocomputing 262, section 4.3): the raw
score is first averaged over the last `short` readings (a sustained
deviation accumulates, a single noisy score does not), and that short-term
average m is compared with the distribution of the same averages over the
series' recent normal history:

    z = (m - median(H)) / (1.4826 * MAD(H))          robust standard score
    p = Q(z) = 1/2 * erfc(z / sqrt(2))               upper tail of N(0, 1)

H holds the last `history` short-term averages of readings that were not
anomalous (p >= `alpha`): an anomalous stretch cannot calibrate itself away
(masking). HTM fits a normal distribution with mean and variance; here the
median and the MAD (Hampel 1974; 1.4826 = 1 / Phi^-1(3/4) makes it consistent
with sigma for normal data) replace them, so a few large historical scores do
not inflate the scale. As in HTM, the estimates are refitted every `refit`
readings, not per reading (amortised O(history log history) / refit). The
scale is floored at `min_scale` (a constant history would otherwise make any
change infinitely unlikely). `log=True` judges log(m + eps), the logarithm
of the short-term average (for positive, right-skewed scores such as squared
errors or distances).

With `p` the monitor can state its false-alarm budget: on normal data
P(p < alpha) ~= alpha per judged reading (exactly so when the short-term
averages are normal; tests/test_detectors.py measures it).

>>> import random
>>> rng = random.Random(1)
>>> lk = AnomalyLikelihood(short=1, history=500, min_history=100, refit=10)
>>> ps = [lk.score_one(rng.gauss(0.0, 1.0)) for _ in range(600)]
>>> round(lk.score_one(5.0), 6) < 1e-5      # five sigma above the history
True
>>> 0.3 < lk.score_one(0.0) < 0.7           # the median of the history
True
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

import msgspec
import numpy as np
from numba import njit

MAD_TO_SIGMA = 1.4826022185056018  # 1 / Phi^-1(3/4)
SQRT2 = math.sqrt(2.0)  # (the float math.sqrt(2.0) gives: the same divisor every time)


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z.

    >>> round(normal_sf(0.0), 3), round(normal_sf(1.959964), 4)
    (0.5, 0.025)
    """
    return 0.5 * math.erfc(z / SQRT2)


@njit("float64(float64[::1])", cache=True)
def _median(a: np.ndarray) -> float:
    """np.median of a (finite values; a is reordered)."""
    n = len(a)
    half = n // 2
    part = np.partition(a, half)
    hi = part[half]
    if n % 2:
        return hi
    lo = part[0]
    for i in range(1, half):  # the largest below the middle: order statistic half - 1
        if part[i] > lo:
            lo = part[i]
    return (lo + hi) / 2.0


@njit("Tuple((boolean, float64, float64))(float64[::1])", cache=True)
def median_mad(h: np.ndarray) -> tuple[bool, float, float]:
    """(exact, median(h), median(|h - median(h)|)) of n >= 1 values, as numpy's
    `np.median` gives them: the order statistic n // 2 (odd n) or the mean of the two
    middle ones, (a + b) / 2 (even n: numpy's `mean` of the two, one add and one
    divide), found by partitioning (O(n), `np.partition` like numpy). exact is False,
    the rest unset, when a value is not finite or is -0.0 (numpy's NaN propagation,
    and which signed zero it selects, are numpy's: the caller asks numpy then). Without
    -0.0, equal values are the same float, so every way of selecting the order
    statistics gives the same ones, and +0.0 sums as numpy sums it; the deviations are
    never -0.0 (abs), so only h needs the check.

    >>> median_mad(np.array([3.0, 1.0, 2.0, 10.0]))
    (True, 2.5, 1.0)
    """
    n = len(h)
    for i in range(n):
        x = h[i]
        if not np.isfinite(x) or (x == 0.0 and math.copysign(1.0, x) < 0.0):
            return False, 0.0, 0.0
    center = _median(h.copy())
    d = np.abs(h - center)
    return True, center, _median(d)


#: the default floor of the fitted scale (a constant history has a MAD of 0)
MIN_SCALE = 1e-9


class AnomalyLikelihood:
    """Tail probability of a score's short-term average against its normal history."""

    __slots__ = (
        "_history",
        "_pos",
        "_ring",
        "_synced",
        "alpha",
        "center",
        "eps",
        "log",
        "min_history",
        "min_scale",
        "recent",
        "refit",
        "scale",
        "short",
        "since_fit",
        "total",
        "window",
    )

    def __init__(
        self,
        short: int = 10,
        history: int = 1000,
        min_history: int = 50,
        refit: int = 100,  # HTM re-estimates every 100 records too
        alpha: float = 1e-3,
        min_scale: float = MIN_SCALE,
        log: bool = False,
        eps: float = 1e-12,
    ) -> None:
        self.short = short
        self.min_history = min_history
        self.refit = refit
        self.alpha = alpha
        self.min_scale = min_scale
        self.log = log
        self.eps = eps
        self.window: deque[float] = deque(maxlen=short)
        self.total = 0.0
        self._history: deque[float] = deque(maxlen=history)
        # the history's values again, as a float64 ring (their order aside) for `_fit`
        # (no copy of the deque per fit): written at _pos, valid while _synced (the
        # `history` property hands the deque out, which may be changed: unsynced)
        self._ring = np.zeros(history)
        self._pos = 0
        self._synced = True
        self.recent: list[float] = []  # averages waiting to enter the history
        self.center = 0.0
        self.scale = 0.0
        self.since_fit = refit  # fit at the first chance

    @property
    def history(self) -> deque[float]:
        """The normal short-term averages, oldest first (at most `history` of them)."""
        self._synced = False  # (the caller may change it: `_fit` copies it again)
        return self._history

    def _keep(self, m: float) -> None:
        """m into the history (and its ring)."""
        self._history.append(m)
        ring = self._ring
        if len(ring):
            pos = self._pos
            ring[pos] = m  # (full: over the oldest, which the deque dropped)
            pos += 1
            self._pos = 0 if pos == len(ring) else pos

    def score_one(self, score: float) -> float:
        """Add a raw score; the tail probability of the short-term average (1.0 while
        the history is shorter than `min_history`). Normal averages enter the history."""
        # (`normal_sf` inlined: the sensor's rise test calls this once per closed
        # bucket of every series)
        window = self.window
        total = self.total
        if len(window) == self.short:
            total -= window[0]
        window.append(score)
        total += score
        self.total = total
        m = total / len(window)
        if self.log:  # the log of the arithmetic mean: a geometric mean would let the
            # many small errors of a chi-square-like score hide a shift of its mean
            m = math.log(max(m, 0.0) + self.eps)
        nh = len(self._history)
        if nh < self.min_history:
            self._keep(m)
            self.since_fit = self.refit
            return 1.0
        # a young history is refitted more often (every quarter of its length)
        refit = self.refit
        quarter = nh // 4
        if self.since_fit >= (refit if refit <= quarter else quarter):  # min(refit, quarter)
            self._fit()
        self.since_fit += 1
        p = 0.5 * math.erfc(((m - self.center) / self.scale) / SQRT2)  # normal_sf
        if p >= self.alpha:
            self._keep(m)
        return p

    def learn_one(self, score: float) -> None:
        """Admit the current short-term average to the history whatever its
        probability (a new regime that persists becomes normal: the monitor calls
        this once it decides so, after `score_one` of the same reading)."""
        m = self.total / len(self.window) if self.window else score
        self._keep(math.log(max(m, 0.0) + self.eps) if self.log else m)

    def _fit(self) -> None:
        history = self._history
        n = len(history)
        # numpy's median and MAD, compiled (`median_mad`) on the ring: for finite values
        # without -0.0 they are functions of the values alone, not of their order
        # (`median_mad`); otherwise numpy's own on the history in order (numpy's choice
        # of signed zero and its NaN are as they were)
        ring = self._ring
        if not self._synced:  # (changed from outside: copied again)
            ring[:n] = np.fromiter(history, dtype=float, count=n)
            self._pos = 0 if n == len(ring) else n
            self._synced = True
        exact, center, mad = median_mad(ring[:n])
        if not exact:
            h = np.fromiter(history, dtype=float, count=n)
            center = float(np.median(h))
            mad = float(np.median(np.abs(h - center)))
        self.center = center
        self.scale = max(MAD_TO_SIGMA * mad, self.min_scale)
        self.since_fit = 0

    def snapshot(self) -> LikelihoodState:
        return LikelihoodState(
            window=list(self.window),
            total=self.total,
            history=list(self._history),
            center=self.center,
            scale=self.scale,
            since_fit=self.since_fit,
        )

    def restore(self, state: LikelihoodState | Mapping[str, Any]) -> None:
        """The state of a checkpoint (typed, or as plain data after msgpack)."""
        if isinstance(state, Mapping):
            state = msgspec.convert(state, LikelihoodState)
        self.window.clear()
        self.window.extend(state.window)
        self.total = state.total
        self.history.clear()
        self.history.extend(state.history)
        self.center, self.scale, self.since_fit = state.center, state.scale, state.since_fit


class LikelihoodState(msgspec.Struct):
    """`AnomalyLikelihood`'s checkpoint."""

    window: list[float]  # the last `short` scores
    total: float  # their running sum as it is (its rounding included)
    history: list[float]  # the normal short-term averages, oldest first
    center: float  # the last fit's median
    scale: float  # and its scale (1.4826 MAD, floored)
    since_fit: int  # readings since that fit


def likelihood_state_from_format_1(old: Mapping[str, Any]) -> dict[str, Any]:
    """State format 1 ({"window", "history", "fit": [center, scale, since_fit], "total"})
    as plain `LikelihoodState` data."""
    center, scale, since_fit = old["fit"]
    return {
        "window": list(old["window"]),
        "total": float(old["total"]),
        "history": list(old["history"]),
        "center": float(center),
        "scale": float(scale),
        "since_fit": int(since_fit),
    }
