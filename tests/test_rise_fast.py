"""The rise test's per-bucket fast paths (issue 18, point 4) against references.

- `AnomalyLikelihood` fits on a float64 ring that mirrors its history deque (no copy of
  the deque per fit) and has `normal_sf` inlined: its probabilities, fits and snapshots
  must be bit for bit those of the plain deque implementation below (the code before
  the change, numpy's `np.median` for the median and MAD), whatever mix of `score_one`,
  `learn_one`, outside changes of `history` and snapshot/restore.
- `RiseDetector.learn_z` (the update and the z-score in one call) against the O(n^2)
  Mann-Kendall definition (`mann_kendall_s`, `mann_kendall_var`).
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.detectors.likelihood import MAD_TO_SIGMA, AnomalyLikelihood, normal_sf
from operators.detectors.trend import RiseDetector, mann_kendall_s, mann_kendall_var


class _PlainLikelihood:
    """The reference: the history a deque, each fit numpy's median and MAD of it."""

    def __init__(self, short: int, history: int, min_history: int, refit: int, alpha: float):
        self.short, self.min_history, self.refit, self.alpha = short, min_history, refit, alpha
        self.min_scale, self.eps = 1e-9, 1e-12
        self.window: deque[float] = deque(maxlen=short)
        self.total = 0.0
        self.history: deque[float] = deque(maxlen=history)
        self.center = self.scale = 0.0
        self.since_fit = refit

    def score_one(self, score: float) -> float:
        if len(self.window) == self.short:
            self.total -= self.window[0]
        self.window.append(score)
        self.total += score
        m = self.total / len(self.window)
        if len(self.history) < self.min_history:
            self.history.append(m)
            self.since_fit = self.refit
            return 1.0
        if self.since_fit >= min(self.refit, len(self.history) // 4):
            h = np.array(self.history, dtype=float)
            self.center = float(np.median(h))
            mad = float(np.median(np.abs(h - self.center)))
            self.scale = max(MAD_TO_SIGMA * mad, self.min_scale)
            self.since_fit = 0
        self.since_fit += 1
        p = normal_sf((m - self.center) / self.scale)
        if p >= self.alpha:
            self.history.append(m)
        return p

    def learn_one(self, score: float) -> None:
        self.history.append(self.total / len(self.window) if self.window else score)


def _same(a: float, b: float) -> bool:
    """Equal as floats, the sign of zero and NaN included."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1, a) == math.copysign(1, b)


# small values with many ties (and zeros of both signs, and a few NaN), so that the
# medians, the ties and the masking (alpha) are all exercised
_VALUES = st.one_of(
    st.integers(-6, 6).map(lambda i: i / 2.0),
    st.sampled_from([0.0, -0.0, float("nan")]),
    st.floats(-1e3, 1e3, allow_nan=False),
)
_OPS = st.lists(
    st.tuples(st.sampled_from(["score"] * 8 + ["learn", "extend", "restore"]), _VALUES),
    min_size=40,
    max_size=150,
)


@settings(max_examples=40, deadline=None)
@given(
    ops=_OPS,
    short=st.integers(1, 3),
    history=st.integers(1, 16),
    min_history=st.integers(0, 12),
    refit=st.integers(1, 12),
    alpha=st.sampled_from([1e-3, 0.2, 0.6]),
)
def test_likelihood_ring_is_the_deque_fit(
    ops: list[tuple[str, float]],
    short: int,
    history: int,
    min_history: int,
    refit: int,
    alpha: float,
) -> None:
    lk = AnomalyLikelihood(
        short=short, history=history, min_history=min_history, refit=refit, alpha=alpha
    )
    ref = _PlainLikelihood(short, history, min_history, refit, alpha)
    for op, x in ops:
        if op == "score":
            if min_history == 0 and not ref.history:
                continue  # (no history to fit: numpy's median of nothing, not the point)
            assert _same(lk.score_one(x), ref.score_one(x))
        elif op == "learn":
            lk.learn_one(x)
            ref.learn_one(x)
        elif op == "extend":  # a change from outside (as tests/test_likelihood_median.py)
            lk.history.extend([x, x / 3.0])
            ref.history.extend([x, x / 3.0])
        else:  # snapshot and restore into a fresh one
            restored = AnomalyLikelihood(
                short=short, history=history, min_history=min_history, refit=refit, alpha=alpha
            )
            restored.restore(lk.snapshot())
            lk = restored
        assert _same(lk.center, ref.center) and _same(lk.scale, ref.scale)
        assert lk.since_fit == ref.since_fit
        if lk._synced:  # the ring holds the history's values (white box: the fits' input)
            ring = np.sort(lk._ring[: len(ref.history)])
            assert np.array_equal(ring, np.sort(np.array(ref.history)), equal_nan=True)
    snap = lk.snapshot()
    assert len(snap.history) == len(ref.history)
    assert all(_same(a, b) for a, b in zip(snap.history, ref.history, strict=True))


@settings(max_examples=60, deadline=None)
@given(
    xs=st.lists(st.integers(-4, 4).map(float) | st.floats(-10, 10), max_size=80),
    size=st.integers(3, 25),
)
def test_learn_z_is_the_mann_kendall_z(xs: list[float], size: int) -> None:
    d = RiseDetector(size)
    seen: list[float] = []
    for x in xs:
        z = d.learn_z(x)
        seen = [*seen, x][-size:]
        n, s = len(seen), mann_kendall_s(seen)
        var = mann_kendall_var(seen)
        want = 0.0 if n < 3 or s == 0 or var <= 0.0 else (s - (1 if s > 0 else -1)) / math.sqrt(var)
        assert z == want and z == d.z_score()
        assert d.values == seen and d.s == s
