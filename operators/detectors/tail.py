"""Tail probability of a score against the series' own recent scores (peaks over threshold).

How unusual is score s for this series? With the last `history` normal
scores H (n of them):

- inside the body, s <= u: the empirical survival function,
  p = #{h in H : h >= s} / n;
- in the tail, s > u, where u is the (1 - `tail`) quantile of H: the
  peaks-over-threshold model of extreme value theory (Pickands 1975;
  Balkema & de Haan 1974) with an exponential excess distribution (the
  generalised Pareto with shape 0, the Gumbel domain that covers normal,
  gamma and lognormal-like scores):

      p = (#{h > u} / n) * exp(-(s - u) / beta),   beta = mean(h - u | h > u)

  (beta is the exponential's maximum-likelihood scale). This is the method of
  SPOT (Siffer, Fouque, Termier & Largouet 2017, "Anomaly detection in
  streams with extreme value theory", KDD), with the shape fixed at 0 so that
  a few hundred scores give a stable fit, and it reaches probabilities far
  below 1/n, which the empirical function alone cannot.

A heavy-tailed series has a large beta, so its big scores are not improbable;
a quiet one has a small beta. River-style: `learn_one(s)` adds a normal
score to H (O(1): the monitor does not add its anomalies, so an anomalous
stretch cannot calibrate itself away), `score_one(s)` returns p. The sorted
history, u and beta are rebuilt only when `score_one` is asked and at least
`refit` scores arrived since (a monitor asks only for readings already
beyond its raw threshold, a small share), so the per-reading cost is an
append. Until H holds `min_history` scores, `score_one` returns None (no
calibration yet).

>>> import random
>>> rng = random.Random(0)
>>> tail = TailProbability(history=2000, min_history=200)
>>> for _ in range(2000):
...     tail.learn_one(abs(rng.gauss(0.0, 1.0)))
>>> p = tail.score_one(4.0)             # P(|Z| > 4) = 6.3e-5 for a normal Z
>>> 1e-6 < p < 1e-3
True
>>> 0.2 < tail.score_one(1.0) < 0.45    # P(|Z| >= 1) = 0.317
True
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

import msgspec
import numpy as np


class TailProbability:
    __slots__ = (
        "beta",
        "fitted",
        "min_history",
        "refit",
        "since_fit",
        "tail",
        "tail_share",
        "u",
        "values",
    )

    def __init__(
        self, history: int = 1000, min_history: int = 100, tail: float = 0.1, refit: int = 25
    ) -> None:
        if not 0.0 < tail < 1.0 or min_history < 10:
            raise ValueError("tail must be in (0, 1) and min_history >= 10")
        self.min_history = min_history
        self.tail = tail
        self.refit = refit
        self.values: deque[float] = deque(maxlen=history)
        self.fitted = np.empty(0)  # the history at the last fit
        self.u = 0.0
        self.beta = 0.0
        self.tail_share = 0.0
        self.since_fit = refit  # scores learnt since the last fit

    def __len__(self) -> int:
        return len(self.values)

    def learn_one(self, s: float) -> None:
        """Add a normal score (the oldest leaves beyond `history`)."""
        self.values.append(s)
        self.since_fit += 1

    def _fit(self) -> None:
        # a partition, not a sort: O(n) (numpy's introselect); the body is counted
        # against this array when asked
        n = len(self.values)
        v = self.fitted = np.fromiter(self.values, dtype=float, count=n)
        k = max(1, int(self.tail * n))  # the k largest scores are the tail
        part = np.partition(v, n - k - 1)
        u = float(part[n - k - 1])
        self.u = u
        self.tail_share = k / n
        self.beta = float(part[n - k :].mean()) - u
        self.since_fit = 0

    def score_one(self, s: float) -> float | None:
        """The tail probability of s against the history (None below min_history)."""
        if len(self.values) < self.min_history:
            return None
        if self.since_fit >= self.refit:
            self._fit()
        if s > self.u:
            if self.beta <= 0.0:
                return 0.0  # a constant tail: anything above it is beyond the history
            return self.tail_share * math.exp(-(s - self.u) / self.beta)
        v = self.fitted
        return int(np.count_nonzero(v >= s)) / len(v)

    def snapshot(self) -> TailState:
        fit = None
        if self.since_fit < self.refit:  # the fit is still in use: keep it as it is
            fit = TailFit(self.u, self.beta, self.tail_share, self.fitted.tolist())
        return TailState(values=list(self.values), since_fit=self.since_fit, fit=fit)

    def restore(self, state: TailState | Mapping[str, Any]) -> None:
        """The history of a checkpoint (typed, or as plain data after msgpack)."""
        state = msgspec.convert(state, TailState) if isinstance(state, Mapping) else state
        self.values.clear()
        self.values.extend(state.values)
        self.since_fit = state.since_fit
        fit = state.fit
        if fit is not None:
            self.u, self.beta, self.tail_share = fit.u, fit.beta, fit.tail_share
            self.fitted = np.asarray(fit.fitted, dtype=float)
        else:  # no fit in use: the next `score_one` fits afresh
            self.fitted = np.empty(0)
            self.since_fit = max(self.since_fit, self.refit)


class TailFit(msgspec.Struct):
    """The fit `score_one` judges against: the threshold u, the exponential scale beta,
    the tail's share of the history and the history as it was fitted."""

    u: float
    beta: float
    tail_share: float
    fitted: list[float]


class TailState(msgspec.Struct):
    """`TailProbability`'s checkpoint: the history, scores since the last fit, and that
    fit while it is still in use (None: the next `score_one` refits anyway)."""

    values: list[float]
    since_fit: int
    fit: TailFit | None = None


def tail_state_from_format_1(old: Mapping[str, Any]) -> dict[str, Any]:
    """State format 1 ({"values", "since_fit", "fit": [u, beta, share, fitted]?}) as
    plain `TailState` data."""
    fit = None
    if "fit" in old:
        u, beta, share, fitted = old["fit"]
        fit = {"u": u, "beta": beta, "tail_share": share, "fitted": list(fitted)}
    return {"values": list(old["values"]), "since_fit": int(old["since_fit"]), "fit": fit}
