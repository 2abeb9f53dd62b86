"""profile_feature's fast paths (all numbers in C; categories counted per distinct
value) give exactly the profile of the general path, value by value (issue 18)."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import msgspec
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.reference import FeatureProfile, category_key, profile_feature
from operators.stats import binned_counts, quantile_edges, systematic_sample


def general_path(values: list[Any], sample_size: int, max_categories: int) -> FeatureProfile | None:
    """The value-by-value profile (the code before the fast paths)."""
    present = [v for v in values if not (v is None or (isinstance(v, float) and math.isnan(v)))]
    if not present:
        return None
    if not any(isinstance(v, str) for v in present):
        x = np.sort(np.asarray(present, dtype=np.float64))
        edges = quantile_edges(x, 10)
        return FeatureProfile(
            kind="numeric",
            count=int(x.size),
            edges=edges.tolist(),
            counts=binned_counts(x, edges).tolist(),
            sample=systematic_sample(x, sample_size).tolist(),
            mean=float(np.mean(x)),
            std=float(np.std(x, ddof=1)) if x.size > 1 else 0.0,
        )
    ranked = sorted(
        Counter(category_key(v) for v in present).items(), key=lambda kv: (-kv[1], kv[0])
    )
    return FeatureProfile(
        kind="categorical",
        count=len(present),
        categories=[k for k, _ in ranked[:max_categories]],
        counts=[c for _, c in ranked[:max_categories]]
        + [sum(c for _, c in ranked[max_categories:])],
    )


value = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.integers(-5, 5),
    st.sampled_from([0.0, -0.0, 1.0, 1, True, False, None, float("nan"), "1", "a", "b", "2.5"]),
    st.sampled_from([np.float64(2.0), np.float32(3.0), np.float64("nan"), np.float32("nan")]),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(value, max_size=60), st.sampled_from([3, 50]), st.sampled_from([5, 5000]))
def test_profile_feature_equals_the_general_path(
    values: list[Any], max_categories: int, sample_size: int
) -> None:
    got = profile_feature(values, sample_size=sample_size, max_categories=max_categories)
    want = general_path(values, sample_size, max_categories)
    # encoded, so NaN statistics (a float32 NaN kept as a number) compare equal
    assert msgspec.json.encode(got) == msgspec.json.encode(want)


def test_fast_paths_on_warm_up_sized_columns() -> None:
    rng = np.random.default_rng(7)
    numbers = rng.normal(size=20_000).tolist() + list(range(100))
    words = [str(c) for c in rng.choice(["ios", "android", "web", 3, 3.0, 4.5], size=20_000)]
    mixed = numbers[:500] + ["x", "y"] * 30
    for values in (numbers, words, mixed, [*numbers[:50], None]):
        assert msgspec.json.encode(profile_feature(values)) == msgspec.json.encode(
            general_path(values, 5000, 50)
        )
