"""Quality metrics and the CBPE calibration map against scikit-learn and brute force."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve
from sklearn.isotonic import IsotonicRegression

import operators.quality
import operators.quality_calibration
import operators.quality_judge
import operators.quality_metrics
from operators.quality_calibration import CalibrationMap, isotonic_fit
from operators.quality_judge import accuracy_drop, mae_increase
from operators.quality_metrics import (
    accuracy,
    brier,
    class_report,
    ece,
    log_loss,
    regression_report,
    roc_auc,
)

REL = 1e-12


def test_doctests() -> None:
    for module in (
        operators.quality_metrics,
        operators.quality_calibration,
        operators.quality_judge,
        operators.quality,
    ):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__


weights = st.lists(st.floats(0.1, 5.0), min_size=1, max_size=200)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), n=st.integers(1, 200), k=st.integers(2, 5), weighted=st.booleans())
def test_classification_against_sklearn(
    data: st.DataObject, n: int, k: int, weighted: bool
) -> None:
    classes = [f"c{i}" for i in range(k)]
    y = data.draw(st.lists(st.sampled_from(classes), min_size=n, max_size=n))
    p = data.draw(st.lists(st.sampled_from(classes), min_size=n, max_size=n))
    w = data.draw(st.lists(st.floats(0.1, 5.0), min_size=n, max_size=n)) if weighted else None
    assert accuracy(y, p, w) == pytest.approx(skm.accuracy_score(y, p, sample_weight=w), rel=REL)
    report = class_report(y, p, w)
    labels = sorted(set(y) | set(p))
    assert report.classes == labels
    for avg, got in (
        ("macro", (report.precision_macro, report.recall_macro, report.f1_macro)),
        (None, (report.precision, report.recall, report.f1)),
    ):
        want = skm.precision_recall_fscore_support(
            y, p, labels=labels, average=avg, sample_weight=w, zero_division=0
        )[:3]
        for g, x in zip(got, want, strict=True):
            assert np.allclose(g, x, rtol=REL, atol=1e-15)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), n=st.integers(2, 300), weighted=st.booleans(), ties=st.booleans())
def test_probabilistic_against_sklearn(
    data: st.DataObject, n: int, weighted: bool, ties: bool
) -> None:
    y = data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    score = st.sampled_from([0.1, 0.3, 0.5, 0.7, 0.9]) if ties else st.floats(0.001, 0.999)
    p = data.draw(st.lists(score, min_size=n, max_size=n))
    w = data.draw(st.lists(st.floats(0.1, 5.0), min_size=n, max_size=n)) if weighted else None
    assert log_loss(y, p, w) == pytest.approx(
        skm.log_loss(y, p, sample_weight=w, labels=[0, 1]), rel=1e-10
    )
    assert brier(y, p, w) == pytest.approx(
        skm.brier_score_loss(y, p, sample_weight=w, pos_label=1), rel=1e-10, abs=1e-15
    )
    if len(set(y)) == 2:
        assert roc_auc(y, p, w) == pytest.approx(
            skm.roc_auc_score(y, p, sample_weight=w), rel=1e-10
        )
    else:
        assert roc_auc(y, p, w) is None


def ece_brute_force(conf: list[float], correct: list[int], w: list[float], bins: int) -> float:
    total = sum(w)
    out = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [i for i, c in enumerate(conf) if (lo < c <= hi) or (b == 0 and c == 0)]
        if not idx:
            continue
        wb = sum(w[i] for i in idx)
        acc = sum(w[i] * correct[i] for i in idx) / wb
        mean_conf = sum(w[i] * conf[i] for i in idx) / wb
        out += wb / total * abs(acc - mean_conf)
    return out


@settings(max_examples=150, deadline=None)
@given(data=st.data(), n=st.integers(1, 200), bins=st.integers(1, 15))
def test_ece_against_brute_force(data: st.DataObject, n: int, bins: int) -> None:
    # confidences away from the bin edges: the two bin assignments agree exactly
    conf = [
        (math.floor(c * bins) + 0.5) / bins
        for c in data.draw(st.lists(st.floats(0, 0.999), min_size=n, max_size=n))
    ]
    correct = data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    w = data.draw(st.lists(st.floats(0.1, 5.0), min_size=n, max_size=n))
    assert ece(conf, correct, w, bins) == pytest.approx(
        ece_brute_force(conf, correct, w, bins), rel=1e-10, abs=1e-14
    )


def test_ece_binary_matches_calibration_curve() -> None:
    """With every prediction of class 1 the top-label ECE is the binary reliability
    gap of sklearn's calibration_curve, weighted by the bins' counts."""
    rng = np.random.default_rng(3)
    conf = rng.uniform(0.5, 1.0, 2000)
    y = (rng.uniform(size=2000) < conf**1.5).astype(int)
    prob_true, prob_pred = calibration_curve(y, conf, n_bins=10, strategy="uniform")
    counts = np.histogram(conf, bins=np.linspace(0, 1, 11))[0]
    counts = counts[counts > 0]
    want = float(np.sum(counts * np.abs(prob_true - prob_pred)) / counts.sum())
    assert ece(conf, y, None, 10) == pytest.approx(want, rel=1e-9)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), n=st.integers(1, 200), weighted=st.booleans(), zeros=st.integers(0, 5))
def test_regression_against_sklearn(
    data: st.DataObject, n: int, weighted: bool, zeros: int
) -> None:
    y = data.draw(
        st.lists(st.floats(-1e3, 1e3).filter(lambda v: abs(v) > 1e-3), min_size=n, max_size=n)
    )
    y = [0.0] * min(zeros, n) + y[min(zeros, n) :]
    p = data.draw(st.lists(st.floats(-1e3, 1e3), min_size=n, max_size=n))
    w = data.draw(st.lists(st.floats(0.1, 5.0), min_size=n, max_size=n)) if weighted else None
    r = regression_report(y, p, w)
    assert r.mae == pytest.approx(skm.mean_absolute_error(y, p, sample_weight=w), rel=1e-10)
    rmse = math.sqrt(skm.mean_squared_error(y, p, sample_weight=w))
    assert r.rmse == pytest.approx(rmse, rel=1e-10, abs=1e-12)
    bias = np.average(np.asarray(p) - np.asarray(y), weights=w)
    assert r.mean_error == pytest.approx(bias, rel=1e-9, abs=1e-9)
    nz = [i for i, v in enumerate(y) if v != 0]
    assert r.mape_skipped == len(y) - len(nz)
    if nz:
        sub = (
            [y[i] for i in nz],
            [p[i] for i in nz],
            None if w is None else [w[i] for i in nz],
        )
        want = skm.mean_absolute_percentage_error(sub[0], sub[1], sample_weight=sub[2])
        assert r.mape == pytest.approx(want, rel=1e-10)
    else:
        assert r.mape is None


@settings(max_examples=150, deadline=None)
@given(data=st.data(), n=st.integers(1, 150), weighted=st.booleans())
def test_isotonic_against_sklearn(data: st.DataObject, n: int, weighted: bool) -> None:
    x = data.draw(st.lists(st.sampled_from([i / 20 for i in range(21)]), min_size=n, max_size=n))
    y = data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    w = data.draw(st.lists(st.floats(0.1, 5.0), min_size=n, max_size=n)) if weighted else None
    g = CalibrationMap.fit(x, y, w)
    iso = IsotonicRegression(out_of_bounds="clip").fit(x, y, sample_weight=w)
    grid = np.linspace(-0.1, 1.1, 61)
    if len(set(x)) > 1:
        assert np.allclose(g(grid), iso.predict(grid), rtol=1e-9, atol=1e-12)
    _xs, fitted = isotonic_fit(x, y, w)
    assert np.all(np.diff(fitted) >= -1e-12)


def test_fisher_and_welch_against_scipy() -> None:
    drop, p = accuracy_drop(70, 100, 450, 500)
    want = stats.fisher_exact([[70, 30], [450, 50]], alternative="less").pvalue
    assert p == pytest.approx(want, rel=1e-9)
    assert drop == pytest.approx(1 - 0.7 / 0.9)
    rng = np.random.default_rng(1)
    a, b = np.abs(rng.normal(0, 1.3, 120)), np.abs(rng.normal(0, 1.0, 400))
    inc, p = mae_increase(a.mean(), a.std(ddof=1), len(a), b.mean(), b.std(ddof=1), len(b))
    want = stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue
    assert p == pytest.approx(want, rel=1e-9)
    assert inc == pytest.approx(a.mean() / b.mean() - 1)
