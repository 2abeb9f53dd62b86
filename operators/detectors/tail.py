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
from collections.abc import Mapping
from typing import Any

import msgspec
import numpy as np
from numba import njit

from operators.state import pack_f64, unpack_f64

# the history's ring buffer: [head, count, since_fit, cap] + values[cap], grown by
# doubling up to `history` (a new series costs 64 slots, not `history`); its layout is
# what the sensor monitor's compiled per-series run (`operators.sensor_run`)
# learns into, reading by reading, without a Python call
RING_HEAD, RING_COUNT, RING_SINCE, RING_CAP = range(4)
RING_H = 4
RING_INITIAL = 64


@njit("boolean(float64[::1], float64, int64)", cache=True)
def ring_learn(buf: np.ndarray, s: float, history: int) -> bool:
    """Append s (the oldest leaves once `history` are kept); False, unchanged, when
    the ring must grow first (full below `history`: `TailProbability.grown`)."""
    head, count, cap = int(buf[RING_HEAD]), int(buf[RING_COUNT]), int(buf[RING_CAP])
    if cap == 0:  # history 0: nothing is kept (as a deque of maxlen 0)
        pass
    elif count < cap:
        buf[RING_H + (head + count) % cap] = s
        buf[RING_COUNT] = count + 1
    elif cap < history:
        return False
    else:
        buf[RING_H + head] = s
        buf[RING_HEAD] = (head + 1) % cap
    buf[RING_SINCE] += 1.0
    return True


def _ring(cap: int) -> np.ndarray:
    buf = np.zeros(RING_H + cap)
    buf[RING_CAP] = cap
    return buf


class TailProbability:
    __slots__ = (
        "beta",
        "buf",
        "fitted",
        "history",
        "min_history",
        "refit",
        "tail",
        "tail_share",
        "u",
    )

    def __init__(
        self, history: int = 1000, min_history: int = 100, tail: float = 0.1, refit: int = 25
    ) -> None:
        if not 0.0 < tail < 1.0 or min_history < 10:
            raise ValueError("tail must be in (0, 1) and min_history >= 10")
        self.min_history = min_history
        self.tail = tail
        self.refit = refit
        self.history = history
        self.buf = _ring(min(history, RING_INITIAL))  # the history, oldest first
        self.buf[RING_SINCE] = refit  # scores learnt since the last fit
        self.fitted = np.empty(0)  # the history at the last fit
        self.u = 0.0
        self.beta = 0.0
        self.tail_share = 0.0

    def fresh_sharing_ring(self) -> TailProbability:
        """A new tail as `__init__` makes one with this one's settings, without its
        allocations: its ring and `fitted` are this one's own arrays, so this one must be
        fresh and never written (a template), and the copy's ring must be replaced before
        it is written (`operators.sensor_slots.SeriesSlots.attach` copies it into the
        series' region; a fit replaces `fitted`). ~0.7 µs against ~2.8 µs for `__init__`:
        a sensor fleet makes two per new series (issue 18, point 3)."""
        t = TailProbability.__new__(TailProbability)
        t.min_history, t.tail, t.refit, t.history = (
            self.min_history,
            self.tail,
            self.refit,
            self.history,
        )
        t.buf, t.fitted = self.buf, self.fitted
        t.u, t.beta, t.tail_share = self.u, self.beta, self.tail_share
        return t

    def __len__(self) -> int:
        return int(self.buf[RING_COUNT])

    @property
    def since_fit(self) -> int:
        """Scores learnt since the last fit."""
        return int(self.buf[RING_SINCE])

    @since_fit.setter
    def since_fit(self, value: int) -> None:
        self.buf[RING_SINCE] = value

    @property
    def values(self) -> list[float]:
        """The history, oldest first (a copy)."""
        return self.ordered().tolist()

    def ordered(self) -> np.ndarray:
        """The history, oldest first, as a new array."""
        buf = self.buf
        head, count, cap = int(buf[RING_HEAD]), int(buf[RING_COUNT]), int(buf[RING_CAP])
        if head == 0:
            return buf[RING_H : RING_H + count].copy()
        ring = buf[RING_H : RING_H + cap]
        return np.concatenate((ring[head:], ring[:head]))

    def grown(self) -> bool:
        """Double the ring (up to `history`) if it is full below it; False if it is not."""
        buf = self.buf
        cap = int(buf[RING_CAP])
        if int(buf[RING_COUNT]) < cap or cap >= self.history:
            return False
        values = self.ordered()
        new = _ring(min(self.history, 2 * cap))
        new[RING_H : RING_H + len(values)] = values
        new[RING_COUNT] = len(values)
        new[RING_SINCE] = buf[RING_SINCE]
        self.buf = new
        return True

    def learn_one(self, s: float) -> None:
        """Add a normal score (the oldest leaves beyond `history`)."""
        if not ring_learn(self.buf, s, self.history):
            self.grown()
            ring_learn(self.buf, s, self.history)

    def _fit(self) -> None:
        # a partition, not a sort: O(n) (numpy's introselect); the body is counted
        # against this array when asked
        v = self.fitted = self.ordered()
        n = len(v)
        k = max(1, int(self.tail * n))  # the k largest scores are the tail
        part = np.partition(v, n - k - 1)
        u = float(part[n - k - 1])
        self.u = u
        self.tail_share = k / n
        self.beta = float(part[n - k :].mean()) - u
        self.buf[RING_SINCE] = 0.0

    def score_one(self, s: float) -> float | None:
        """The tail probability of s against the history (None below min_history)."""
        buf = self.buf
        if buf[RING_COUNT] < self.min_history:
            return None
        if buf[RING_SINCE] >= self.refit:
            self._fit()
        if s > self.u:
            if self.beta <= 0.0:
                return 0.0  # a constant tail: anything above it is beyond the history
            return self.tail_share * math.exp(-(s - self.u) / self.beta)
        v = self.fitted
        return int(np.count_nonzero(v >= s)) / len(v)

    def snapshot(self) -> TailState:
        fit = None
        since_fit = self.since_fit
        if since_fit < self.refit:  # the fit is still in use: keep it as it is
            fit = TailFit(self.u, self.beta, self.tail_share, self.fitted.tolist())
        return TailState(values=self.values, since_fit=since_fit, fit=fit)

    def snapshot_packed(self) -> PackedTailState:
        """`snapshot` with the history and the fitted copy as packed float64 bytes
        (`operators.state.pack_f64`): one copy of each array, no Python float per value
        (the sensor monitor's checkpoint, issue 18)."""
        fit = None
        since_fit = self.since_fit
        values = self.ordered()
        if since_fit < self.refit:
            fitted = self.fitted
            shared = _shared(fitted, values, len(values) - since_fit)
            head = pack_f64(fitted[: len(fitted) - shared])
            fit = PackedTailFit(self.u, self.beta, self.tail_share, head, shared)
        return PackedTailState(values=pack_f64(values), since_fit=since_fit, fit=fit)

    def restore(self, state: TailState | Mapping[str, Any]) -> None:
        """The history of a checkpoint (typed, or as plain data after msgpack)."""
        state = msgspec.convert(state, TailState) if isinstance(state, Mapping) else state
        fit = state.fit
        self._restore(
            np.asarray(state.values, dtype=float),
            state.since_fit,
            None if fit is None else (fit.u, fit.beta, fit.tail_share, fit.fitted),
        )

    def restore_packed(self, state: PackedTailState) -> None:
        """The history of a packed checkpoint (`snapshot_packed`)."""
        fit, values = state.fit, unpack_f64(state.values)
        fit_of = None
        if fit is not None:
            fitted = np.concatenate((unpack_f64(fit.head), values[: fit.shared]))
            fit_of = (fit.u, fit.beta, fit.tail_share, fitted)
        self._restore(values, state.since_fit, fit_of)

    def _restore(
        self,
        values: np.ndarray,
        since_fit: int,
        fit: tuple[float, float, float, Any] | None,
    ) -> None:
        """The ring of `values` (oldest first; the last `history` kept) and the fit
        (u, beta, tail share, the history as fitted) or None."""
        values = values[-self.history :] if self.history else values[:0]
        cap = min(self.history, RING_INITIAL)
        while cap < len(values):
            cap = min(self.history, 2 * cap)
        buf = self.buf = _ring(cap)
        buf[RING_H : RING_H + len(values)] = values
        buf[RING_COUNT] = len(values)
        buf[RING_SINCE] = since_fit
        if fit is not None:
            self.u, self.beta, self.tail_share, fitted = fit
            # its own array (a packed one is a read-only view of the checkpoint's bytes)
            self.fitted = np.array(fitted, dtype=float)
        else:  # no fit in use: the next `score_one` fits afresh
            self.fitted = np.empty(0)
            buf[RING_SINCE] = max(since_fit, self.refit)


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


class PackedTailFit(msgspec.Struct):
    """`TailFit` with the fitted history packed (`operators.state.pack_f64`) and not
    written twice: the history as fitted is `head` followed by the first `shared` values
    of the state's history (which has moved on by `since_fit` scores since the fit: the
    rest of the two is the same, and was half a sensor series' checkpoint, issue 18)."""

    u: float
    beta: float
    tail_share: float
    head: bytes  # the fitted values the history no longer holds (all of them: shared 0)
    shared: int  # then this many values from the start of the history


def _shared(fitted: np.ndarray, values: np.ndarray, k: int) -> int:
    """k if the last k fitted values are the first k of `values`, bit for bit (as the
    history moves on, scores leave its front and arrive at its back), else 0.

    >>> a = np.array([1.0, 2.0, 3.0])
    >>> _shared(a, np.array([2.0, 3.0, 4.0]), 2), _shared(a, np.array([2.0, -0.0]), 2)
    (2, 0)
    """
    if not 0 < k <= min(len(fitted), len(values)):
        return 0
    same = np.array_equal(fitted[len(fitted) - k :].view(np.int64), values[:k].view(np.int64))
    return k if same else 0


class PackedTailState(msgspec.Struct):
    """`TailState` with the arrays packed (`operators.state.pack_f64`): the same
    values, bit for bit, as one bytes field each."""

    values: bytes
    since_fit: int
    fit: PackedTailFit | None = None


def packed_tail_state(plain: Mapping[str, Any]) -> dict[str, Any]:
    """Plain `TailState` data as plain `PackedTailState` data (a state upgrade)."""
    fit = plain.get("fit")
    if fit is not None:
        fit = {
            "u": fit["u"],
            "beta": fit["beta"],
            "tail_share": fit["tail_share"],
            "head": pack_f64(fit["fitted"]),
            "shared": 0,
        }
    return {"values": pack_f64(plain["values"]), "since_fit": plain["since_fit"], "fit": fit}


def tail_state_from_format_1(old: Mapping[str, Any]) -> dict[str, Any]:
    """State format 1 ({"values", "since_fit", "fit": [u, beta, share, fitted]?}) as
    plain `TailState` data."""
    fit = None
    if "fit" in old:
        u, beta, share, fitted = old["fit"]
        fit = {"u": u, "beta": beta, "tail_share": share, "fitted": list(fitted)}
    return {"values": list(old["values"]), "since_fit": int(old["since_fit"]), "fit": fit}
