"""Sustained rise: the Mann-Kendall trend test over a series' last readings.

For readings x_1..x_n (in time order) the Mann-Kendall statistic (Mann 1945,
Kendall 1975) is

    S = sum_{i<j} sign(x_j - x_i)

and under "no trend" (exchangeable readings) S has mean 0 and, with ties in
groups of sizes t_g,

    Var(S) = [n(n-1)(2n+5) - sum_g t_g(t_g-1)(2t_g+5)] / 18.

The one-sided p-value of a rise uses the continuity-corrected normal
approximation z = (S - 1) / sqrt(Var S) for S > 0 (0 otherwise), p = Q(z).
The test counts pairs, not steps: a noisy but persistent rise is found, and
five strictly rising readings of noise are not (n = 5 gives at best
p = 0.014, far from the default alpha).

Readings of real plants are autocorrelated, which makes the test
over-confident (Hamed & Rao 1998); the monitor therefore also demands a
rise that is large against the series' own noise (`fit`): the total rise
(Theil-Sen slope b times the span in readings, n - 1) must exceed a
multiple of the residual scale around the Theil-Sen line,
1.4826 * median |x_i - (a + b i)| with a = median(x_i - b i): a ramp
through noise passes, a slow wander (whose residuals are as large as its
total) does not.

`learn_one` is O(n) (the new reading against the others: S is updated by
dropping the oldest reading's pairs and adding the newest's, and the tie term
by the sizes of the leaving and arriving readings' groups), compiled with
numba (issue 18: one call per closed bucket instead of two Python loops over
the window); Theil-Sen is O(n^2 log n) and computed only when the test is
significant.

>>> d = RiseDetector(size=20)
>>> for x in [0.1, -0.2, 0.3, 0.0, 0.2, -0.1, 0.1, 0.0, -0.3, 0.2]:
...     d.learn_one(x)
>>> d.p_value() > 0.1
True
>>> for i in range(20):
...     d.learn_one(0.5 * i)
>>> d.p_value() < 1e-6
True
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

import msgspec
import numpy as np
from numba import njit

from operators.detectors.likelihood import normal_sf


def mann_kendall_s(xs: list[float]) -> int:
    """S = sum over i < j of sign(x_j - x_i) (the O(n^2) definition).

    >>> mann_kendall_s([1.0, 2.0, 3.0]), mann_kendall_s([3.0, 1.0, 2.0])
    (3, -1)
    """
    s = 0
    for i, a in enumerate(xs):
        for b in xs[i + 1 :]:
            s += (b > a) - (b < a)
    return s


def mann_kendall_var(xs: list[float]) -> float:
    """Var(S) under no trend, tie-corrected."""
    n = len(xs)
    ties = sum(t * (t - 1) * (2 * t + 5) for t in Counter(xs).values() if t > 1)
    return (n * (n - 1) * (2 * n + 5) - ties) / 18.0


def theil_sen_slope(xs: list[float]) -> float:
    """Median of (x_j - x_i) / (j - i) over i < j (Sen 1968), per reading."""
    n = len(xs)
    return _median([(xs[j] - xs[i]) / (j - i) for i in range(n) for j in range(i + 1, n)])


def rise_fit(xs: list[float]) -> tuple[float, float]:
    """(total rise, residual scale) of readings xs (oldest first): the Theil-Sen slope
    times the span (n - 1), and 1.4826 * the median absolute residual around the
    Theil-Sen line."""
    n = len(xs)
    if n < 2:
        return 0.0, 0.0
    b = theil_sen_slope(xs)
    a = _median([x - b * i for i, x in enumerate(xs)])
    scale = 1.4826022185056018 * _median([abs(x - a - b * i) for i, x in enumerate(xs)])
    return b * (n - 1), scale


def _tie(t: int) -> int:
    return t * (t - 1) * (2 * t + 5)


def _median(xs: list[float]) -> float:
    v = sorted(xs)
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else 0.5 * (v[mid - 1] + v[mid])


@njit("UniTuple(int64, 4)(float64[::1], int64, int64, float64)", cache=True)
def _learn(ring: np.ndarray, head: int, n: int, x: float) -> tuple[int, int, int, int]:
    """x into the ring of the last len(ring) readings (the oldest leaves when it is
    full): (change of S, change of the tie term, new head, new n).

    A tie group is the readings equal to a value (==, so 0.0 and -0.0 are one
    group, as they are one key of a dict; a NaN is a group of its own)."""
    size = ring.shape[0]
    ds = 0
    dties = 0
    if n == size:
        old = ring[head]
        t = 1  # the leaving reading's group, itself included
        for i in range(1, n):
            v = ring[(head + i) % size]
            ds -= (v > old) - (v < old)  # the pairs (old, v) leave
            if v == old:
                t += 1
        dties -= t * (t - 1) * (2 * t + 5) - (t - 1) * (t - 2) * (2 * t + 3)
        head = (head + 1) % size
        n -= 1
    t = 1  # the arriving reading's group, itself included
    for i in range(n):
        v = ring[(head + i) % size]
        ds += (x > v) - (x < v)  # the pairs (v, x) arrive
        if v == x:
            t += 1
    ring[(head + n) % size] = x
    dties += t * (t - 1) * (2 * t + 5) - (t - 1) * (t - 2) * (2 * t + 3)
    return ds, dties, head, n + 1


class RiseDetector:
    """Mann-Kendall rise test over the last `size` readings, S kept incrementally."""

    __slots__ = ("head", "n", "ring", "s", "size", "ties")

    def __init__(self, size: int) -> None:
        if size < 3:
            raise ValueError("size must be at least 3")
        self.size = size
        # the readings, a ring of `size` (oldest at `head`)
        self.ring = np.zeros(size)
        self.head = 0
        self.n = 0
        self.s = 0
        # sum over tie groups of t(t-1)(2t+5), kept incrementally
        self.ties = 0

    def __len__(self) -> int:
        return self.n

    @property
    def values(self) -> list[float]:
        """The readings, oldest first."""
        size, head = self.size, self.head
        return [float(self.ring[(head + i) % size]) for i in range(self.n)]

    def learn_one(self, x: float) -> None:
        ds, dties, self.head, self.n = _learn(self.ring, self.head, self.n, x)
        self.s += ds
        self.ties += dties

    def learn_z(self, x: float) -> float:
        """`learn_one(x)`, then `z_score()` (one call: the sensor's rise test, once per
        closed bucket)."""
        ds, dties, self.head, n = _learn(self.ring, self.head, self.n, x)
        self.n = n
        s = self.s = self.s + ds
        ties = self.ties = self.ties + dties
        if n < 3 or s == 0:
            return 0.0
        var = (n * (n - 1) * (2 * n + 5) - ties) / 18.0
        if var <= 0.0:
            return 0.0
        return (s - (1 if s > 0 else -1)) / math.sqrt(var)

    def z_score(self) -> float:
        """The continuity-corrected standard score of S: (S - sign(S)) / sqrt(Var S)
        (0 below three readings or without variance)."""
        n = self.n
        if n < 3 or self.s == 0:
            return 0.0
        var = (n * (n - 1) * (2 * n + 5) - self.ties) / 18.0
        if var <= 0.0:
            return 0.0
        return (self.s - (1 if self.s > 0 else -1)) / math.sqrt(var)

    def p_value(self) -> float:
        """One-sided p-value of "rising" (1.0 below three readings or for S <= 0)."""
        z = self.z_score()
        return normal_sf(z) if z > 0.0 else 1.0

    def fit(self) -> tuple[float, float]:
        """`rise_fit` of the readings."""
        return rise_fit(self.values)

    def reset(self) -> None:
        self.head = self.n = self.s = self.ties = 0

    def snapshot(self) -> RiseState:
        return RiseState(size=self.size, values=self.values, s=self.s)

    def restore(self, state: RiseState | Mapping[str, Any]) -> None:
        """The detector of a checkpoint (typed, or as plain data after msgpack), its size
        included; the tie term is derived from the readings, so it is recomputed."""
        state = msgspec.convert(state, RiseState) if isinstance(state, Mapping) else state
        values = state.values[-state.size :]
        self.size = state.size
        self.ring = np.zeros(state.size)
        self.ring[: len(values)] = values
        self.head, self.n = 0, len(values)
        self.s = state.s
        self.ties = sum(_tie(t) for t in Counter(values).values())


class RiseState(msgspec.Struct):
    """`RiseDetector`'s checkpoint: its size, readings (oldest first) and S."""

    size: int
    values: list[float]
    s: int
