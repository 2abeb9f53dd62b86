"""Distance of a multivariate reading to the nearest centre of an online k-means.

A reading x (a value per feature) is standardised by river's
`preprocessing.StandardScaler` (per feature, z_f = (x_f - mean_f) / sd_f with
Welford's running mean and population variance), each scaled coordinate
clamped to +-`Z_MAX` standard deviations (so d^2 <= features * (2 Z_MAX)^2
stays finite for any finite reading), and scored by the Euclidean distance to
the nearest of the k centres of river's `cluster.KMeans`:

    score(x) = min_c || z - c ||_2.

Learning one reading (`learn_one`) is the scaler's update, then river's
`KMeans.learn_one` step on the newly scaled point: the nearest centre c moves
toward it, c <- c + halflife * (z - c) (MacQueen's online k-means with a
constant step, as river implements it). Only the search for that centre is
`nearest` (a loop over the features) instead of river's `predict_one`, which
builds a key set and a generator per centre (several times slower:
BENCHMARKS.md, "Measurements behind design choices");
tests/test_detector_objects.py checks centres and distances against river's
own `learn_one`/`predict_one` on the same stream.

The state is river's scaler and centres, as the typed `ScalerState` and
`KMeansState` (no pickle); there is no time, no rows and no alert state here
(the thresholds on the distance are the monitor's).

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

import msgspec
from river import cluster, preprocessing

# scaled coordinates are clamped to +-Z_MAX: d^2 <= features * (2 Z_MAX)^2 stays finite
Z_MAX = 1e6


def clamped(z: dict[str, float]) -> dict[str, float]:
    """`z` with every coordinate within [-Z_MAX, Z_MAX] (NaN, impossible for finite
    input, to -Z_MAX); the same dict when nothing needs it (the usual case)."""
    for v in z.values():
        if not -Z_MAX <= v <= Z_MAX:
            return {
                f: (v if -Z_MAX <= v <= Z_MAX else Z_MAX if v > 0 else -Z_MAX) for f, v in z.items()
            }
    return z


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
    scaled reading to the nearest centre, `learn_one` river's step."""

    __slots__ = ("features", "model", "scaler")

    def __init__(
        self, features: tuple[str, ...], n_clusters: int, halflife: float, seed: int | None
    ) -> None:
        self.features = features
        self.scaler = preprocessing.StandardScaler()
        self.model = cluster.KMeans(n_clusters=n_clusters, halflife=halflife, seed=seed)
        for c in range(n_clusters):  # draw every coordinate now, in a fixed order
            center = self.model.centers[c]
            for f in features:
                center[f]  # a defaultdict: the access draws the coordinate

    def transform_one(self, x: dict[str, float]) -> dict[str, float]:
        """x scaled by the scaler's current statistics, clamped to +-Z_MAX."""
        return clamped(self.scaler.transform_one(x))

    def nearest(self, z: dict[str, float]) -> tuple[float, int]:
        """Euclidean distance of the scaled point z to the nearest centre, and that centre."""
        best, best_c = math.inf, -1
        features = self.features
        for c, center in self.model.centers.items():
            d2 = 0.0
            for f in features:
                diff = center[f] - z[f]
                d2 += diff * diff
            if d2 < best:
                best, best_c = d2, c
        return math.sqrt(best), best_c

    def nearest_one(self, x: dict[str, float]) -> tuple[float, int]:
        """(distance, centre) of reading x: its scaled point's nearest centre."""
        return self.nearest(clamped(self.scaler.transform_one(x)))

    def score_one(self, x: dict[str, float]) -> float:
        """The distance of reading x's scaled point to the nearest centre."""
        return self.nearest(clamped(self.scaler.transform_one(x)))[0]

    def learn_one(self, x: dict[str, float]) -> None:
        """Learn one reading: the scaler, then river's k-means step on the scaled point
        (c <- c + halflife * (z - c) for the nearest centre c)."""
        self.scaler.learn_one(x)
        z = clamped(self.scaler.transform_one(x))
        center = self.model.centers[self.nearest(z)[1]]
        rate = self.model.halflife
        for f in self.features:
            center[f] += rate * (z[f] - center[f])

    def state(self) -> tuple[ScalerState, KMeansState]:
        """The scaler and k-means as typed state, read off the live river objects."""
        scaler, model = self.scaler, self.model
        return (
            ScalerState(
                counts=dict(scaler.counts), means=dict(scaler.means), vars=dict(scaler.vars)
            ),
            KMeansState(
                halflife=model.halflife,
                centers=[dict(model.centers[c]) for c in range(len(model.centers))],
            ),
        )

    @classmethod
    def from_state(
        cls,
        features: tuple[str, ...],
        scaler: ScalerState,
        kmeans: KMeansState,
        seed: int | None,
    ) -> KMeansDistance:
        """The live detector of its typed state: river's scaler and k-means given back
        their statistics and centres."""
        d = cls.__new__(cls)
        d.features = features
        d.scaler = preprocessing.StandardScaler()
        d.scaler.counts.update(scaler.counts)
        d.scaler.means.update(scaler.means)
        d.scaler.vars.update(scaler.vars)
        centers = kmeans.centers
        d.model = cluster.KMeans(n_clusters=len(centers), halflife=kmeans.halflife, seed=seed)
        # every coordinate of the model's features is set, so the centres' seeded
        # Gaussian default (river draws a missing coordinate) is never reached again
        for c, coordinates in enumerate(centers):
            d.model.centers[c].update(coordinates)
        return d
