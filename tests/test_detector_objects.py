"""The detector objects of issue 12, point 4 (`operators/detectors/zscore.py`, `iqr.py`,
`kmeans.py`) against independent references: numpy's mean/std and scipy's t for the
z-score, numpy's linear quartiles and Tukey's fences by hand for the IQR, river's own
`StandardScaler` + `KMeans.learn_one`/`predict_one` for the k-means distance; and a check
that no detector module depends on time, rows or episodes."""

from __future__ import annotations

import ast
import math
import random
from pathlib import Path

import numpy as np
import pytest
from river import cluster, preprocessing
from scipy import stats

from operators.detectors.iqr import IqrFences
from operators.detectors.kmeans import KMeansDistance
from operators.detectors.tail import TailProbability
from operators.detectors.zscore import ZScore

REPO = Path(__file__).resolve().parents[1]
DETECTORS = REPO / "operators" / "detectors"


def windows(seed: int, count: int = 300) -> list[tuple[np.ndarray, float]]:
    """(window, reading) pairs: normal windows of 8..60 readings, readings up to ~7 sigma out."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        n = int(rng.integers(8, 61))
        w = rng.normal(rng.normal(0, 50), rng.uniform(0.1, 10), n)
        x = float(w.mean() + rng.normal(0, 1) * rng.choice([1.0, 3.0, 7.0]) * w.std(ddof=1))
        out.append((w, x))
    return out


def test_zscore_matches_numpy_and_the_t_prediction_interval() -> None:
    plain = ZScore(threshold=3.0)
    flagged = 0
    for w, x in windows(1):
        n, mean, std = w.size, float(w.mean()), float(w.std(ddof=1))
        z_ref = abs(x - mean) / std
        assert plain.score_one(x, n, mean, std) == pytest.approx(z_ref, rel=1e-12)
        z, p, anomalous, vetoed = plain.judge_one(x, n, mean, std, alpha=1e-3)
        assert z == pytest.approx(z_ref, rel=1e-12) and p is None and not vetoed
        assert anomalous == (z_ref > 3.0)
        flagged += anomalous
        # calibrated, with a tail too short to answer: p is the small-sample one,
        # 2 P(T_{n-1} >= z / sqrt(1 + 1/n)) (Hahn & Meeker 1991, sec. 4.6)
        tail = TailProbability(history=100, min_history=1000)
        cal = ZScore(threshold=3.0, tail=tail)
        z, p, anomalous, vetoed = cal.judge_one(x, n, mean, std, alpha=1e-3)
        if z_ref > 3.0:
            p_ref = 2 * stats.t.sf(z_ref / math.sqrt(1 + 1 / n), n - 1)
            assert p == pytest.approx(p_ref, rel=1e-9)
            assert anomalous == (p_ref < 1e-3) and vetoed == (p_ref >= 1e-3)
            assert len(tail) == (0 if anomalous else 1)  # anomalies stay out of the tail
        else:
            assert p is None and not anomalous and not vetoed and len(tail) == 1
    assert flagged > 20
    assert plain.judge_one(1.0, 30, 1.0, 0.0, alpha=1e-3) is None  # a constant window


def test_zscore_p_is_the_larger_of_the_tail_and_the_small_sample_one() -> None:
    rng = random.Random(3)
    tail = TailProbability(history=2000, min_history=200)
    for _ in range(2000):
        tail.learn_one(abs(rng.gauss(0.0, 3.0)))  # a heavy series: z of 4 is usual
    cal = ZScore(threshold=3.0, tail=tail)
    own = tail.score_one(4.0)
    small = 2 * stats.t.sf(4.0 / math.sqrt(1 + 1 / 500), 499)
    assert own is not None and own > small
    assert cal.p_one(4.0, 500) == pytest.approx(own)
    _, p, anomalous, vetoed = cal.judge_one(4.0, 500, 0.0, 1.0, alpha=1e-3)
    assert p == pytest.approx(own) and vetoed and not anomalous


def test_iqr_fences_match_numpy_quartiles_and_tukey_by_hand() -> None:
    plain = IqrFences(k=1.5)
    flagged = 0
    for w, x in windows(2):
        q1, q3 = (float(q) for q in np.percentile(w, [25, 75], method="linear"))
        iqr = q3 - q1
        upper, lower = q3 + 1.5 * iqr, q1 - 1.5 * iqr
        if x > upper:
            want = ((x - upper) / iqr, upper)
        elif x < lower:
            want = ((lower - x) / iqr, lower)
        else:
            want = (0.0, upper if x >= (q1 + q3) / 2 else lower)
        score, fence, p, anomalous = plain.judge_one(x, w.size, q1, q3, alpha=1e-3)
        assert (score, fence) == pytest.approx(want, rel=1e-12)
        assert plain.score_one(x, q1, q3) == pytest.approx(want, rel=1e-12)
        assert anomalous == (x > upper or x < lower) and p is None
        flagged += anomalous
        # calibrated without a usable tail: the t(n / 2.72) approximation on the
        # spread |x - midhinge| / IQR (operators.detectors.interval's docstring)
        tail = TailProbability(history=100, min_history=1000)
        cal = IqrFences(k=1.5, tail=tail)
        score, fence, p, anomalous = cal.judge_one(x, w.size, q1, q3, alpha=1e-3)
        if want[0] > 0:
            spread = abs(x - (q1 + q3) / 2) / iqr
            t = 1.349 * spread / math.sqrt(1 + 1.238 / w.size)
            p_ref = 2 * stats.t.sf(t, w.size / 2.72)
            assert p == pytest.approx(p_ref, rel=1e-3)
            assert anomalous == (p < 1e-3)
            assert score == (want[0] if anomalous else 0.0)  # vetoed: score 0
        else:
            assert p is None and not anomalous and len(tail) == 1
    assert flagged > 20
    assert plain.judge_one(5.0, 30, 10.0, 10.0, alpha=1e-3) is None  # IQR 0


def test_kmeans_distance_matches_river_on_the_same_stream() -> None:
    features = ("hum", "temp", "vib")
    det = KMeansDistance(features, n_clusters=3, halflife=0.1, seed=7)
    scaler = preprocessing.StandardScaler()
    model = cluster.KMeans(n_clusters=3, halflife=0.1, seed=7)
    for c in range(3):
        for f in features:
            model.centers[c][f]  # draws the coordinate, in the detector's order
    rng = random.Random(5)
    for i in range(800):
        regime = rng.choice([(20.0, 50.0, 0.1), (30.0, 40.0, 0.5), (25.0, 60.0, 2.0)])
        p = {f: m + rng.gauss(0, 1) * (0.1 + m / 20) for f, m in zip(features, regime, strict=True)}
        if i > 50:  # the scaler has statistics: score before learning, as a monitor does
            z = scaler.transform_one(p)
            zv = np.array([z[f] for f in features])
            centers = np.array([[model.centers[c][f] for f in features] for c in range(3)])
            d = np.linalg.norm(centers - zv, axis=1)
            distance, center = det.nearest_one(p)
            assert distance == pytest.approx(float(d.min()), rel=1e-9, abs=1e-12)
            assert det.score_one(p) == distance
            assert center == model.predict_one(z) == int(np.argmin(d))
        det.learn_one(p)
        scaler.learn_one(p)
        model.learn_one(scaler.transform_one(p))
    for c in range(3):
        assert det.model.centers[c] == pytest.approx(dict(model.centers[c]), rel=1e-12)
    assert det.scaler.means == pytest.approx(dict(scaler.means))


def test_kmeans_distance_state_round_trip() -> None:
    det = KMeansDistance(("a", "b"), n_clusters=2, halflife=0.3, seed=1)
    rng = random.Random(2)
    stream = [{"a": rng.gauss(0, 1), "b": rng.gauss(5, 2)} for _ in range(200)]
    for p in stream[:100]:
        det.learn_one(p)
    scaler, kmeans = det.state()
    back = KMeansDistance.from_state(("a", "b"), scaler, kmeans, seed=1)
    for p in stream[100:]:
        assert back.nearest_one(p) == det.nearest_one(p)
        det.learn_one(p)
        back.learn_one(p)


FORBIDDEN = (
    "time",
    "datetime",
    "schemas.rows",
    "operators.windows",
    "operators.detectors.episode",
    "operators.base",
)


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def closure(module: str) -> set[str]:
    """The module's imports, followed through this repository's modules."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = REPO / Path(*name.split(".")).with_suffix(".py")
        if name in seen or not path.exists():
            continue
        seen.add(name)
        todo += sorted(imports_of(path))
    return seen | {
        i for m in seen for i in imports_of(REPO / Path(*m.split(".")).with_suffix(".py"))
    }


# the scoring detectors: not the episode machine itself, nor the window's kernels
# (the operator's time bookkeeping, compiled)
SCORERS = sorted(
    p.stem for p in DETECTORS.glob("*.py") if p.stem not in {"__init__", "episode", "window"}
)


def test_the_scorers_are_found() -> None:
    assert {"zscore", "iqr", "kmeans", "trend", "tail", "likelihood", "autoencoder"} <= set(SCORERS)


@pytest.mark.parametrize("name", SCORERS)
def test_detector_module_knows_nothing_of_time_rows_or_episodes(name: str) -> None:
    used = closure(f"operators.detectors.{name}")
    bad = {i for i in used for f in FORBIDDEN if i == f or i.startswith(f + ".")}
    assert not bad, f"operators.detectors.{name} imports {sorted(bad)}"
