"""Distance of a multivariate reading to the nearest centre of an online k-means.

A reading x (a value per feature) is standardised as river's
`preprocessing.StandardScaler` does (per feature, z_f = (x_f - mean_f) / sd_f
with Welford's running mean and population variance; a feature without
variance yet scales to 0), each scaled coordinate clamped to +-`Z_MAX`
standard deviations (so d^2 <= features * (2 Z_MAX)^2 stays finite for any
finite reading), and scored by the Euclidean distance to the nearest of the k
centres of river's `cluster.KMeans`:

    score(x) = min_c || z - c ||_2.

Learning one reading (`learn_one`) is the scaler's update (Welford 1962, in
river's order: n_f += 1; m' = m + (x_f - m) / n_f;
v' = v + ((x_f - m)(x_f - m') - v) / n_f), then river's `KMeans.learn_one`
step on the newly scaled point: the nearest centre c moves toward it,
c <- c + halflife * (z - c) (MacQueen's online k-means with a constant step, as
river implements it).

Compiled (issue 18, point 1): the state is one numpy float64 array `det`
(the scaler's means, variances and counts, the k x features centres; named
views `mean`, `var`, `count`, `present`, `z`, `centers`) updated in place by
numba kernels (`transform`, `nearest_center`, `learn`, also called by the cluster
monitor's per-entity kernel, `operators.cluster_kernel`), with river's
float64 operations in river's order, so the results are river's bit for bit
(tests/test_kmeans_kernel.py compares them with river's own `StandardScaler`
and `KMeans` over hypothesis-generated streams). One subtlety: river's
`v ** 0.5` is C's `pow(v, 0.5)`, which in rare cases differs in the last bit
from `sqrt(v)`, and LLVM rewrites a constant `** 0.5` into `sqrt`; the
exponent is therefore passed to the kernels as a runtime argument (`HALF`),
which keeps the call to libm's `pow`.

river's dictionaries create an entry when a missing key is read (the
scaler's `transform_one` reads a feature's variance, and its mean only when
the variance is non-zero); which features each of them holds is kept as a
mask (`present`), so the typed state (`ScalerState`, `KMeansState`, no
pickle) is exactly what river's objects would hold. `scaler` and `model` give
river objects with this state (for checks and format-1 checkpoints). There is
no time, no rows and no alert state here (the thresholds on the distance are
the monitor's).

>>> km = KMeansDistance(("a", "b"), n_clusters=2, halflife=0.5, seed=1)
>>> for i in range(50):
...     km.learn_one({"a": float(i % 2), "b": float(i % 2)})
>>> near, far = km.score_one({"a": 0.0, "b": 0.0}), km.score_one({"a": 40.0, "b": -40.0})
>>> near < 0.1 < 10.0 < far
True
>>> km.nearest_one({"a": 1.0, "b": 1.0})[1] != km.nearest_one({"a": 0.0, "b": 0.0})[1]
True
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import msgspec
import numpy as np
from numba import njit

if TYPE_CHECKING:  # river is imported where it is used: it pulls in scikit-learn
    from river import cluster, preprocessing

# scaled coordinates are clamped to +-Z_MAX: d^2 <= features * (2 Z_MAX)^2 stays finite
Z_MAX = 1e6
#: the exponent of river's `v ** 0.5`, passed at run time (see the module docstring)
HALF = 0.5
#: rows of `present`: which features river's counts, means and vars dicts hold
COUNTS, MEANS, VARS = 0, 1, 2


def clamped(z: dict[str, float]) -> dict[str, float]:
    """`z` with every coordinate within [-Z_MAX, Z_MAX] (NaN, impossible for finite
    input, to -Z_MAX); the same dict when nothing needs it (the usual case)."""
    for v in z.values():
        if not -Z_MAX <= v <= Z_MAX:
            return {
                f: (v if -Z_MAX <= v <= Z_MAX else Z_MAX if v > 0 else -Z_MAX) for f, v in z.items()
            }
    return z


# Layout of a detector's one float64 array `det` (nf features, k centres):
#   [nf, k] + mean[nf] + var[nf] + count[nf] + present[3 * nf] + z[nf] + centres[k * nf]
# (counts are exact in a float64 below 2^53, and river divides by them as floats;
# `present` is 1.0 where river's counts, means, vars dicts hold the feature; z is
# the scaled reading). One array: each argument costs a compiled call ~0.15 µs.
H = 2


@njit("void(float64[::1], float64[::1], float64)", cache=True)
def transform(x: np.ndarray, det: np.ndarray, half: float) -> None:
    """z = river's `StandardScaler.transform_one(x)`, clamped to +-Z_MAX, into det's z."""
    nf = int(det[0])
    var, mean, z = H + nf, H, H + 6 * nf
    has_mean, has_var = H + 4 * nf, H + 5 * nf
    for f in range(nf):
        v = det[var + f]
        det[has_var + f] = 1.0  # river: `v = vars_[i]` (a defaultdict)
        if v != 0.0:  # river: `if v` (NaN is true, as here)
            det[has_mean + f] = 1.0
            zf = (x[f] - det[mean + f]) / v**half
        else:
            zf = 0.0
        if not -Z_MAX <= zf <= Z_MAX:  # `clamped`
            zf = Z_MAX if zf > 0 else -Z_MAX
        det[z + f] = zf


@njit("UniTuple(float64, 2)(float64[::1])", cache=True)
def nearest_center(det: np.ndarray) -> tuple[float, float]:
    """(distance, index as a float) of the centre nearest to det's z; the first on ties."""
    nf, k = int(det[0]), int(det[1])
    z, c0 = H + 6 * nf, H + 7 * nf
    best, best_c = math.inf, -1
    for c in range(k):
        d2 = 0.0
        row = c0 + c * nf
        for f in range(nf):
            diff = det[row + f] - det[z + f]
            d2 += diff * diff
        if d2 < best:
            best, best_c = d2, c
    return math.sqrt(best), float(best_c)


@njit("void(float64[::1], float64[::1], float64, float64)", cache=True)
def learn(x: np.ndarray, det: np.ndarray, rate: float, half: float) -> None:
    """river's `scaler.learn_one(x)`, then `KMeans.learn_one(scaler.transform_one(x))`."""
    nf = int(det[0])
    mean, var, count, z, c0 = H, H + nf, H + 2 * nf, H + 6 * nf, H + 7 * nf
    for f in range(nf):
        n = det[count + f] + 1.0
        det[count + f] = n
        det[H + 3 * nf + f] = det[H + 4 * nf + f] = det[H + 5 * nf + f] = 1.0
        old = det[mean + f]
        new = old + (x[f] - old) / n
        det[mean + f] = new
        det[var + f] = det[var + f] + ((x[f] - old) * (x[f] - new) - det[var + f]) / n
    transform(x, det, half)
    c = int(nearest_center(det)[1])
    if c < 0:  # no centre (k = 0; with the clamp, distances are finite): river's KeyError
        raise KeyError("no nearest centre")
    row = c0 + c * nf
    for f in range(nf):
        det[row + f] = det[row + f] + rate * (det[z + f] - det[row + f])


class ScalerState(msgspec.Struct):
    """river's `preprocessing.StandardScaler`: per feature the readings counted, the
    running mean and the running population variance (Welford)."""

    counts: dict[str, int]
    means: dict[str, float]
    vars: dict[str, float]


class KMeansState(msgspec.Struct):
    """river's `cluster.KMeans`: its step size and the centres, by cluster index (a
    coordinate per feature of the model)."""

    halflife: float
    centers: list[dict[str, float]]


class KMeansDistance:
    """Scaler and online k-means of one entity: `score_one` is the distance of the
    scaled reading to the nearest centre, `learn_one` river's step. The state is the
    arrays `mean`, `var`, `count`, `present` (features) and `centers` (k x features)."""

    __slots__ = ("det", "features", "halflife", "seed")

    def __init__(
        self, features: tuple[str, ...], n_clusters: int, halflife: float, seed: int | None
    ) -> None:
        from river import cluster  # here, not at import: river pulls in scikit-learn

        model = cluster.KMeans(n_clusters=n_clusters, halflife=halflife, seed=seed)
        # river draws each centre coordinate when first read: draw them all now, in
        # a fixed order (centre by centre, features in the model's order)
        centers = [[model.centers[c][f] for f in features] for c in range(n_clusters)]
        self._init(features, halflife, seed, n_clusters, centers)

    @classmethod
    def with_centers(
        cls,
        features: tuple[str, ...],
        halflife: float,
        seed: int | None,
        centers: list[list[float]],
    ) -> KMeansDistance:
        """A new detector whose k-means starts from `centers` (k lists of one value per
        feature, in `features`' order) instead of drawing them through river: for a
        caller that has them already, e.g. the same seeded draws for every entity
        (`operators.cluster.initial_centers`)."""
        d = cls.__new__(cls)
        d._init(features, halflife, seed, len(centers), centers)
        return d

    @classmethod
    def of_array(
        cls, features: tuple[str, ...], halflife: float, seed: int | None, det: np.ndarray
    ) -> KMeansDistance:
        """A detector whose state is `det` (taken, not copied), laid out as a detector
        of these features makes it: for a caller that copies a new detector's array
        instead of making one (`operators.cluster.new_detector`)."""
        d = cls.__new__(cls)
        d.features, d.halflife, d.seed, d.det = features, float(halflife), seed, det
        return d

    def _init(
        self,
        features: tuple[str, ...],
        halflife: float,
        seed: int | None,
        k: int,
        centers: list[list[float]],
    ) -> None:
        nf = len(features)
        self.features = features
        self.halflife = float(halflife)
        self.seed = seed
        det = self.det = np.zeros(H + 7 * nf + k * nf)
        det[0], det[1] = nf, k
        if k and nf:
            self.centers[:] = centers

    # named views of `det` (the kernels update it in place), made when read: a new
    # entity's detector is made per sensor, and its views are for checks and state
    @property
    def mean(self) -> np.ndarray:
        nf = int(self.det[0])
        return self.det[H : H + nf]

    @property
    def var(self) -> np.ndarray:
        nf = int(self.det[0])
        return self.det[H + nf : H + 2 * nf]

    @property
    def count(self) -> np.ndarray:
        nf = int(self.det[0])
        return self.det[H + 2 * nf : H + 3 * nf]

    @property
    def present(self) -> np.ndarray:
        nf = int(self.det[0])
        return self.det[H + 3 * nf : H + 6 * nf].reshape(3, nf)

    @property
    def z(self) -> np.ndarray:
        nf = int(self.det[0])
        return self.det[H + 6 * nf : H + 7 * nf]

    @property
    def centers(self) -> np.ndarray:
        nf, k = int(self.det[0]), int(self.det[1])
        return self.det[H + 7 * nf :].reshape(k, nf)

    def _x(self, x: dict[str, float]) -> np.ndarray:
        return np.array([x[f] for f in self.features], dtype=np.float64)

    def transform_one(self, x: dict[str, float]) -> dict[str, float]:
        """x scaled by the scaler's current statistics, clamped to +-Z_MAX."""
        transform(self._x(x), self.det, HALF)
        return dict(zip(self.features, self.z.tolist(), strict=True))

    def nearest(self, z: dict[str, float]) -> tuple[float, int]:
        """Euclidean distance of the scaled point z to the nearest centre, and that centre."""
        self.z[:] = [z[f] for f in self.features]
        distance, c = nearest_center(self.det)
        return distance, int(c)

    def nearest_one(self, x: dict[str, float]) -> tuple[float, int]:
        """(distance, centre) of reading x: its scaled point's nearest centre."""
        transform(self._x(x), self.det, HALF)
        distance, c = nearest_center(self.det)
        return distance, int(c)

    def score_one(self, x: dict[str, float]) -> float:
        """The distance of reading x's scaled point to the nearest centre."""
        return self.nearest_one(x)[0]

    def learn_one(self, x: dict[str, float]) -> None:
        """Learn one reading: the scaler, then river's k-means step on the scaled point
        (c <- c + halflife * (z - c) for the nearest centre c)."""
        learn(self._x(x), self.det, self.halflife, HALF)

    @property
    def scaler(self) -> preprocessing.StandardScaler:
        """A river `StandardScaler` holding this scaler's statistics (a copy)."""
        from river import preprocessing

        s = self.scaler_state()
        scaler = preprocessing.StandardScaler()
        scaler.counts.update(s.counts)
        scaler.means.update(s.means)
        scaler.vars.update(s.vars)
        return scaler

    @property
    def model(self) -> cluster.KMeans:
        """A river `KMeans` holding these centres (a copy)."""
        from river import cluster

        model = cluster.KMeans(n_clusters=len(self.centers), halflife=self.halflife, seed=self.seed)
        for c, row in enumerate(self.centers.tolist()):
            model.centers[c].update(zip(self.features, row, strict=True))
        return model

    def scaler_state(self) -> ScalerState:
        """The scaler as river's three dicts, with the features each of them holds."""
        feats = self.features
        counts = [int(c) for c in self.count.tolist()]
        means, vars_ = self.mean.tolist(), self.var.tolist()
        has = self.present.tolist()
        return ScalerState(
            counts={f: counts[i] for i, f in enumerate(feats) if has[COUNTS][i]},
            means={f: means[i] for i, f in enumerate(feats) if has[MEANS][i]},
            vars={f: vars_[i] for i, f in enumerate(feats) if has[VARS][i]},
        )

    def state(self) -> tuple[ScalerState, KMeansState]:
        """The scaler and k-means as typed state (river's named fields)."""
        centers = [dict(zip(self.features, row, strict=True)) for row in self.centers.tolist()]
        return self.scaler_state(), KMeansState(halflife=self.halflife, centers=centers)

    @classmethod
    def from_state(
        cls,
        features: tuple[str, ...],
        scaler: ScalerState,
        kmeans: KMeansState,
        seed: int | None,
    ) -> KMeansDistance:
        """The live detector of its typed state: the scaler's statistics and the centres
        into the arrays."""
        from river import cluster

        d = cls.__new__(cls)
        model = cluster.KMeans(n_clusters=len(kmeans.centers), halflife=kmeans.halflife, seed=seed)
        for c, coordinates in enumerate(kmeans.centers):
            model.centers[c].update(coordinates)
        # a coordinate missing from the state is drawn as river would draw it
        centers = [[model.centers[c][f] for f in features] for c in range(len(kmeans.centers))]
        d._init(features, kmeans.halflife, seed, len(kmeans.centers), centers)
        for i, f in enumerate(features):
            if f in scaler.counts:
                d.count[i], d.present[COUNTS, i] = scaler.counts[f], 1
            if f in scaler.means:
                d.mean[i], d.present[MEANS, i] = scaler.means[f], 1
            if f in scaler.vars:
                d.var[i], d.present[VARS, i] = scaler.vars[f], 1
        return d
