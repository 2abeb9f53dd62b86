"""`CtrJudge._learning` (the `ctr` observations of the units still learning, built by
one C-level `map` over the columns; issue 18 point 3) gives exactly the observations
of the per-unit loop it replaced: the same values (`k / n`, `start + window_ms`), the
same details, in the same order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from operators.base import Observation
from operators.ctr import CtrConfig
from operators.ctr_evidence import CtrJudge

units = st.lists(
    st.tuples(
        st.integers(0, 10**13),  # window start (ms)
        st.sampled_from(["c", "c/A", "d", "é/B"]),
        st.sampled_from(["campaign", "variant"]),
        st.integers(1, 10**6),  # impressions: a unit has some
        st.integers(0, 10**6),
        st.floats(0.0, 1.0),
    ),
    max_size=40,
)


def per_unit(window_ms: int, unit: tuple[int, str, str, int, int, float]) -> Observation:
    """The reference: one unit's observation, as the loop built it."""
    start, entity, level, n, k, p_floor = unit
    end = start + window_ms
    counts = {"impressions": n, "clicks": k, "level": level}
    return Observation("ctr", entity, "ctr", k / n, end, n, start, end, counts, p_floor)


@settings(max_examples=200, deadline=None)
@given(units, st.sampled_from([60_000, 1, 7_919]))
def test_learning_equals_per_unit_observations(
    drawn: list[tuple[int, str, str, int, int, float]], window_ms: int
) -> None:
    judge = CtrJudge(CtrConfig(window_ms=window_ms))
    out: list[Observation] = [per_unit(window_ms, (0, "before", "campaign", 1, 0, 0.5))]
    columns = tuple(list(c) for c in zip(*drawn, strict=True)) if drawn else ([],) * 6
    judge._learning(out, *columns)
    want = [per_unit(window_ms, (0, "before", "campaign", 1, 0, 0.5))]
    want += [per_unit(window_ms, unit) for unit in drawn]
    assert out == want
    # equal and of the same types (an int where the loop gave a float would compare
    # equal, but not be the same row downstream)
    assert [[type(v) for v in msgspec_fields(o)] for o in out] == [
        [type(v) for v in msgspec_fields(o)] for o in want
    ]
    assert [o.details for o in out] == [o.details for o in want]


def msgspec_fields(obs: Observation) -> list[object]:
    return [getattr(obs, name) for name in obs.__struct_fields__]
