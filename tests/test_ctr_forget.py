"""The CTR join forgets a final window's impressions through `CtrOperator.arrivals`
(each window start's claimed ids, in claim order: `_forget_until`), not through the
windows' id lists: the two must name the same ids, on every impression path (per
event, the per-batch cache, in line), after a restore, and with conversions, or the
index keeps impressions it should have forgotten (a click after its window's final
row would count) or drops ones still open. Here, after every step of a stream with
watermarks moving in between, the index holds exactly the ids of the open windows
and `arrivals` the same ids under their windows' starts; at the end, nothing."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.ctr import CtrConfig, CtrOperator
from operators.windows import window_start
from tests.test_ctr_impression_batch import (
    MIN,
    AlwaysCached,
    AlwaysInLine,
    PerEvent,
    T,
    batches,
    impression,
)

LOOPS = [PerEvent, AlwaysCached, AlwaysInLine, CtrOperator]


def assert_index_matches_windows(op: CtrOperator) -> None:
    """The index holds the open windows' ids, once each, and `arrivals` lists each of
    them once under its window's start (empty lists allowed: a duplicate alone)."""
    open_ids = Counter(imp_id for _, _, w in op.windows.items() for imp_id in w.ids)
    assert open_ids == Counter(op.impressions.keys())
    by_start = Counter(
        (start, imp_id) for start, ids in op.arrivals.items() for imp_id in ids if ids
    )
    size = op.config.window_ms
    assert by_start == Counter(
        (window_start(ref.ts, size), imp_id) for imp_id, ref in op.impressions.items()
    )


@settings(max_examples=100, deadline=None)
@given(
    batches(),
    st.booleans(),
    st.sampled_from(LOOPS),
    st.lists(st.integers(0, 8 * MIN), min_size=8, max_size=8),
    st.integers(0, 8),
)
def test_arrivals_name_the_open_windows_ids(
    stream: list[tuple[str, list[Any]]],
    conversions: bool,
    loop: type[CtrOperator],
    watermarks: list[int],
    restore_at: int,
) -> None:
    config = CtrConfig(attribution_ms=2 * MIN, conversions=conversions)
    op = loop(config)
    for step, ((source, events), mark) in enumerate(zip(stream, watermarks, strict=False)):
        if step == restore_at:  # the derived indexes rebuilt from a snapshot
            restored = loop(config)
            restored.restore(op.snapshot())
            op = restored
        op.feed(source, events)
        op.advance(T + mark)
        assert_index_matches_windows(op)
    op.advance(T + 100 * MIN)
    assert op.impressions == {}
    assert op.arrivals == {}


@pytest.mark.parametrize("loop", LOOPS)
def test_a_duplicate_alone_in_a_start_leaves_nothing_behind(loop: type[CtrOperator]) -> None:
    """A batch whose only impression at a start is a duplicate (of one at another
    start) opens no window there; whatever it left in `arrivals` goes when the
    watermark passes that start."""
    op = loop(CtrConfig(attribution_ms=MIN))
    op.feed("impressions", [impression(1, 0, 0, None)])
    op.feed("impressions", [impression(1, 3 * MIN, 0, None)])  # i1 again, later start
    assert [start for start, _, _ in op.windows.items()] == [window_start(T, MIN)]
    op.advance(T + 10 * MIN)
    assert op.impressions == {}
    assert op.arrivals == {}
