"""Model-quality metrics of one window of labelled predictions, in numpy.

Every metric takes optional sample weights (the labels' `weight`, 1 when
absent) and follows scikit-learn's definition, which the unit tests check it
against (`tests/test_quality_metrics.py`); numpy only at run time.

Classification (`y` and `pred` are class names as strings):

    accuracy      = sum w [y = pred] / sum w
    precision_c   = sum w [pred = c, y = c] / sum w [pred = c]      (0 when 0 / 0)
    recall_c      = sum w [pred = c, y = c] / sum w [y = c]         (0 when 0 / 0)
    f1_c          = 2 tp_c / (2 tp_c + fp_c + fn_c)                 (0 when 0 / 0)
    macro x       = the unweighted mean of x_c over the classes seen in y or pred
                    (sklearn's `average="macro"`, `zero_division=0`)

Binary probabilities (`p` = probability of the positive class, `y01` in {0, 1}):

    log loss      = -sum w (y log p + (1 - y) log(1 - p)) / sum w, p clipped to
                    [eps, 1 - eps], eps the float64 machine epsilon (sklearn.metrics.log_loss)
    Brier score   = sum w (p - y)^2 / sum w                  (sklearn.metrics.brier_score_loss)
    ROC AUC       = P(score of a positive > score of a negative) + P(tie) / 2, weighted by
                    w_i w_j over the pairs (Hanley & McNeil 1982; sklearn.metrics.roc_auc_score)

Calibration (top-label confidence `conf` and `correct` in {0, 1}):

    ECE           = sum_b (W_b / W) |acc_b - conf_b| over `bins` equal-width bins of
                    the confidence, (0, 1/B], (1/B, 2/B], ... (0 in the first); acc_b and
                    conf_b the weighted means in bin b (Naeini, Cooper & Hauskrecht 2015,
                    "Obtaining well calibrated probabilities using Bayesian binning", AAAI;
                    Guo et al. 2017, "On calibration of modern neural networks", ICML)

Regression (`y`, `pred` numbers):

    MAE = sum w |e| / sum w,  RMSE = sqrt(sum w e^2 / sum w),  mean error = sum w e / sum w
    with e = pred - y (mean error > 0: the model over-predicts);
    MAPE = sum w |e| / |y| / sum w over the labels y != 0 only: a zero label has no
    relative error (sklearn divides by max(|y|, eps) instead and reports ~1e15); the
    rows count the skipped labels in `mape_skipped`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

EPS = float(np.finfo(np.float64).eps)


def _w(weights: ArrayLike | None, n: int) -> NDArray[np.float64]:
    if weights is None:
        return np.ones(n)
    return np.asarray(weights, dtype=np.float64)


def accuracy(y: ArrayLike, pred: ArrayLike, weights: ArrayLike | None = None) -> float:
    """Weighted share of correct predictions.

    >>> accuracy(["a", "b", "a"], ["a", "a", "a"])
    0.6666666666666666
    """
    ya, pa = np.asarray(y), np.asarray(pred)
    w = _w(weights, len(ya))
    return float(np.sum(w * (ya == pa)) / np.sum(w))


@dataclass
class ClassReport:
    """Per-class and macro precision, recall and F1 (sklearn's macro, zero_division=0)."""

    classes: list[str]
    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[float]  # weighted count of each class among the labels

    @property
    def precision_macro(self) -> float:
        return float(np.mean(self.precision))

    @property
    def recall_macro(self) -> float:
        return float(np.mean(self.recall))

    @property
    def f1_macro(self) -> float:
        return float(np.mean(self.f1))


def class_report(y: ArrayLike, pred: ArrayLike, weights: ArrayLike | None = None) -> ClassReport:
    """Precision, recall and F1 per class over the sorted union of labels and predictions.

    >>> r = class_report(["a", "a", "b", "b"], ["a", "b", "b", "b"])
    >>> r.classes, r.precision, r.recall
    (['a', 'b'], [1.0, 0.6666666666666666], [0.5, 1.0])
    """
    ya, pa = np.asarray(y), np.asarray(pred)
    w = _w(weights, len(ya))
    classes = sorted(set(ya.tolist()) | set(pa.tolist()))
    prec, rec, f1, support = [], [], [], []
    for c in classes:
        is_y, is_p = ya == c, pa == c
        tp = float(np.sum(w[is_y & is_p]))
        fp = float(np.sum(w[~is_y & is_p]))
        fn = float(np.sum(w[is_y & ~is_p]))
        prec.append(tp / (tp + fp) if tp + fp > 0 else 0.0)
        rec.append(tp / (tp + fn) if tp + fn > 0 else 0.0)
        f1.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else 0.0)
        support.append(tp + fn)
    return ClassReport(classes, prec, rec, f1, support)


def log_loss(y01: ArrayLike, p: ArrayLike, weights: ArrayLike | None = None) -> float:
    """Binary cross-entropy of the positive-class probability `p` (natural log).

    >>> round(log_loss([1, 0], [0.8, 0.4]), 6)
    0.366985
    """
    ya = np.asarray(y01, dtype=np.float64)
    pa = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    w = _w(weights, len(ya))
    losses = -(ya * np.log(pa) + (1 - ya) * np.log1p(-pa))
    return float(np.sum(w * losses) / np.sum(w))


def brier(y01: ArrayLike, p: ArrayLike, weights: ArrayLike | None = None) -> float:
    """Mean squared difference between the positive-class probability and the outcome.

    >>> round(brier([1, 0], [0.8, 0.4]), 6)
    0.1
    """
    ya = np.asarray(y01, dtype=np.float64)
    pa = np.asarray(p, dtype=np.float64)
    w = _w(weights, len(ya))
    return float(np.sum(w * (pa - ya) ** 2) / np.sum(w))


def roc_auc(y01: ArrayLike, score: ArrayLike, weights: ArrayLike | None = None) -> float | None:
    """Weighted Mann-Whitney AUC (ties count 1/2); None when only one class is present.

    Sort by score; for each group of tied scores, the positives in it beat the
    negatives of all lower groups and tie with the negatives of their own group.

    >>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    ya = np.asarray(y01, dtype=np.float64)
    sa = np.asarray(score, dtype=np.float64)
    w = _w(weights, len(ya))
    pos_w, neg_w = w * ya, w * (1 - ya)
    total_pos, total_neg = float(pos_w.sum()), float(neg_w.sum())
    if total_pos <= 0 or total_neg <= 0:
        return None
    uniq, inverse = np.unique(sa, return_inverse=True)
    pos_g = np.bincount(inverse, weights=pos_w, minlength=len(uniq))
    neg_g = np.bincount(inverse, weights=neg_w, minlength=len(uniq))
    neg_below = np.cumsum(neg_g) - neg_g
    wins = float(np.sum(pos_g * (neg_below + 0.5 * neg_g)))
    return wins / (total_pos * total_neg)


def ece(
    conf: ArrayLike, correct: ArrayLike, weights: ArrayLike | None = None, bins: int = 10
) -> float:
    """Expected calibration error of top-label confidences over equal-width bins.

    >>> round(ece([0.9, 0.9, 0.6, 0.6], [1, 1, 1, 0], bins=10), 12)
    0.1
    """
    ca = np.asarray(conf, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    w = _w(weights, len(ca))
    # bin b holds (b/B, (b+1)/B]; a confidence of exactly 0 goes to the first bin
    idx = np.clip(np.ceil(ca * bins).astype(np.int64) - 1, 0, bins - 1)
    wb = np.bincount(idx, weights=w, minlength=bins)
    accb = np.bincount(idx, weights=w * ok, minlength=bins)
    confb = np.bincount(idx, weights=w * ca, minlength=bins)
    used = wb > 0
    gaps = np.abs(accb[used] - confb[used])  # = W_b |acc_b - conf_b|
    return float(gaps.sum() / wb.sum())


@dataclass
class RegressionReport:
    mae: float
    rmse: float
    mean_error: float
    mape: float | None  # None when every label is 0
    mape_skipped: int  # labels of 0, left out of MAPE
    abs_errors: NDArray[np.float64] = field(repr=False)


def regression_report(
    y: ArrayLike, pred: ArrayLike, weights: ArrayLike | None = None
) -> RegressionReport:
    """MAE, RMSE, mean error (bias, pred - y) and MAPE without the zero labels.

    >>> r = regression_report([2.0, 0.0, 4.0], [3.0, 1.0, 2.0])
    >>> r.mae, r.mean_error, r.mape, r.mape_skipped
    (1.3333333333333333, 0.0, 0.5, 1)
    """
    ya = np.asarray(y, dtype=np.float64)
    pa = np.asarray(pred, dtype=np.float64)
    w = _w(weights, len(ya))
    e = pa - ya
    a = np.abs(e)
    sw = float(w.sum())
    nz = ya != 0
    mape = float(np.sum(w[nz] * a[nz] / np.abs(ya[nz])) / np.sum(w[nz])) if nz.any() else None
    return RegressionReport(
        mae=float(np.sum(w * a) / sw),
        rmse=math.sqrt(float(np.sum(w * e * e) / sw)),
        mean_error=float(np.sum(w * e) / sw),
        mape=mape,
        mape_skipped=int(np.count_nonzero(~nz)),
        abs_errors=a,
    )


__all__ = [
    "ClassReport",
    "RegressionReport",
    "accuracy",
    "brier",
    "class_report",
    "ece",
    "log_loss",
    "regression_report",
    "roc_auc",
]
