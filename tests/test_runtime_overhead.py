"""Issue 18 (per-event overhead): the faster paths give what the plain loops gave.

- `operators.drift._numbers` on a list accumulator (a window opened before its
  model's reference existed): the numbers, in order, strings left out.
- `operators.causes._latest`: the latest time per (key, value) pair with a value,
  pairs in order of first appearance, for batches in time order (the zipped path)
  and out of it (the loop).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.causes import _latest
from operators.drift import _numbers

finite = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(acc=st.lists(finite | st.sampled_from(["ios", "1.5", ""]), max_size=50))
def test_numbers_of_a_list_are_its_floats_in_order(acc: list[float | str]) -> None:
    before = list(acc)
    x = _numbers(acc)
    expected = np.array([v for v in acc if not isinstance(v, str)], dtype=np.float64)
    assert x.dtype == np.float64
    assert x.tolist() == expected.tolist()
    x.sort()  # callers sort it in place: it must be writable and not the input
    assert acc == before  # the accumulator is left as it was


def _reference(events: list[Any]) -> dict[tuple[str, str], int]:
    """The loop `RelationLearner.observe` ran before issue 18."""
    latest: dict[tuple[str, str], int] = {}
    for e in events:
        key, value, ts = e.campaign_id, e.model_id, e.ts
        if value and latest.get((key, value), -1) < ts:
            latest[key, value] = ts
    return latest


event = st.builds(
    SimpleNamespace,
    campaign_id=st.sampled_from(["c1", "c2", "c3"]),
    model_id=st.sampled_from(["m1", "m2", "", None]),
    ts=st.integers(0, 20),
)


@settings(max_examples=400, deadline=None)
@given(events=st.lists(event, max_size=30), in_order=st.booleans())
def test_latest_per_pair_equals_the_event_loop(events: list[Any], in_order: bool) -> None:
    if in_order:
        events = sorted(events, key=lambda e: e.ts)
    got = _latest(events, "campaign_id", "model_id")
    assert list(got.items()) == list(_reference(events).items())
