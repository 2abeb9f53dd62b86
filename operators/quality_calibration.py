"""Label-free accuracy: confidence-based performance estimation (CBPE).

NannyML's CBPE ("Confidence-based Performance Estimation", NannyML docs,
How it works / Performance estimation,
https://nannyml.readthedocs.io/en/stable/how_it_works/performance_estimation.html)
estimates a classifier's performance without labels from the confidence of
its predictions: when the confidence c of a prediction is a calibrated
probability of being right, the expected accuracy of a window is

    E[accuracy] = sum_i w_i P(correct | c_i) / sum_i w_i  ~  sum_i w_i g(c_i) / sum_i w_i

where g is a calibration map fitted on a reference with labels. As NannyML
does by default, g is an isotonic regression of "correct" (0/1) on the
confidence (Zadrozny & Elkan 2002, "Transforming classifier scores into
accurate multiclass probability estimates", KDD), fitted by the
pool-adjacent-violators algorithm (Ayer et al. 1955) and evaluated between
its knots by linear interpolation, clipped at the ends (as
sklearn.isotonic.IsotonicRegression(out_of_bounds="clip"), which the tests
compare it with).

When it holds: the estimate is unbiased while g stays right, i.e. while
P(correct | confidence) is what it was on the reference — covariate shift
(the inputs move, the model's confidence follows) is fine; concept drift
(the same inputs now have other labels) is not: the model stays confident
and the estimate stays high while the realized accuracy falls. That is why
the realized rows replace the estimate, and the degradation alerts are
judged on realized rows only.
"""

from __future__ import annotations

import msgspec
import numpy as np
from numpy.typing import ArrayLike, NDArray


def isotonic_fit(
    x: ArrayLike, y: ArrayLike, weights: ArrayLike | None = None
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Knots (x, g(x)) of the weighted least-squares non-decreasing fit of y on x.

    Equal x are pooled first (their weighted mean), then adjacent blocks that
    violate monotonicity are merged until none does (PAVA).

    >>> xs, gs = isotonic_fit([0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1])
    >>> xs.tolist(), gs.tolist()
    ([0.1, 0.2, 0.3, 0.4], [0.0, 0.5, 0.5, 1.0])
    """
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    w = np.ones(len(xa)) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(xa) == 0:
        raise ValueError("isotonic_fit needs at least one point")
    ux, inverse = np.unique(xa, return_inverse=True)
    wsum = np.bincount(inverse, weights=w, minlength=len(ux))
    ysum = np.bincount(inverse, weights=w * ya, minlength=len(ux))
    # blocks as a stack of (weighted mean, weight, number of knots)
    means: list[float] = []
    weights_: list[float] = []
    sizes: list[int] = []
    for m, wt in zip((ysum / wsum).tolist(), wsum.tolist(), strict=True):
        means.append(m)
        weights_.append(wt)
        sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            m2, w2, s2 = means.pop(), weights_.pop(), sizes.pop()
            m1, w1 = means[-1], weights_[-1]
            means[-1] = (m1 * w1 + m2 * w2) / (w1 + w2)
            weights_[-1] = w1 + w2
            sizes[-1] += s2
    fitted = np.repeat(np.asarray(means), sizes)
    return ux, fitted


class CalibrationMap(msgspec.Struct):
    """g(confidence) = P(correct | confidence), fitted on the reference's labelled pairs:
    its knots (x ascending, g(x)). A msgspec Struct, so a fitted map is a typed field of
    its owner's checkpointed state (`operators.state`).

    >>> g = CalibrationMap.fit([0.5, 0.6, 0.9, 0.95], [0, 1, 1, 1])
    >>> round(g.expected_accuracy([0.55, 0.92]), 4)
    0.75
    >>> g.x, g.y
    ([0.5, 0.6, 0.9, 0.95], [0.0, 1.0, 1.0, 1.0])
    """

    x: list[float]
    y: list[float]

    @classmethod
    def fit(
        cls, confidence: ArrayLike, correct: ArrayLike, weights: ArrayLike | None = None
    ) -> CalibrationMap:
        x, y = isotonic_fit(confidence, correct, weights)
        return cls(x.tolist(), y.tolist())

    def __call__(self, confidence: ArrayLike) -> NDArray[np.float64]:
        c = np.asarray(confidence, dtype=np.float64)
        if len(self.x) == 1:
            return np.full(c.shape, float(self.y[0]))
        return np.interp(c, np.asarray(self.x), np.asarray(self.y))  # clips at the end knots

    def expected_accuracy(self, confidence: ArrayLike, weights: ArrayLike | None = None) -> float:
        """CBPE: the weighted mean of the calibrated confidences."""
        g = self(confidence)
        w = np.ones(len(g)) if weights is None else np.asarray(weights, dtype=np.float64)
        return float(np.sum(w * g) / np.sum(w))


__all__ = ["CalibrationMap", "isotonic_fit"]
