"""A new cluster entity's detector (`operators.cluster.new_detector`, issue 18 point 3:
the seeded centres drawn once per (features, k, seed)) is the one river's seeded
`KMeans` gives it (`KMeansDistance(features, ...)`, which draws them per entity), array
for array, whatever the features, k, seed and the order entities are made in."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.cluster import ClusterConfig, new_detector
from operators.detectors.kmeans import KMeansDistance

FEATURES = st.lists(st.sampled_from(["a", "b", "c", "pressure", "temp"]), min_size=1, unique=True)


@settings(max_examples=60, deadline=None)
@given(
    models=st.lists(
        st.tuples(FEATURES, st.integers(1, 5), st.integers(0, 3), st.sampled_from([0.05, 0.5])),
        min_size=1,
        max_size=6,
    )
)
def test_new_detector_is_rivers_seeded_kmeans(
    models: list[tuple[list[str], int, int, float]],
) -> None:
    for features, k, seed, halflife in models:  # repeats reuse the drawn centres
        feats = tuple(sorted(features))
        cfg = ClusterConfig(n_clusters=k, seed=seed, halflife=halflife)
        got = new_detector(feats, cfg)
        want = KMeansDistance(feats, k, halflife, seed)
        assert got.det.tobytes() == want.det.tobytes()
        assert (got.features, got.halflife, got.seed) == (want.features, want.halflife, want.seed)
        assert got.state() == want.state()
        got.learn_one(dict.fromkeys(feats, 1.5))  # its own arrays: no other model moves
        assert new_detector(feats, cfg).det.tobytes() == want.det.tobytes()


def test_without_a_seed_each_model_draws_its_own_centres() -> None:
    cfg = ClusterConfig(n_clusters=3, seed=None)
    a, b = new_detector(("a", "b"), cfg), new_detector(("a", "b"), cfg)
    assert not np.array_equal(a.centers, b.centers)
