"""The CTR operator's loops over a batch of impressions (`_impressions_cached`, with its
per-batch windows by campaign, issue 18 point 4; `_impressions_in_line`; and
`_impressions`, which chooses between them) leave exactly the state the per-event
path (`_impression`, one event at a time) leaves: the same snapshot, byte for byte
(windows in the same order, ids in arrival order, times from the index in its order),
after every batch, with impressions with and without a variant (None and "" the same
window), duplicates within a batch and across batches, clicks waiting for impressions
(counted, duplicate, or orphans outside the attribution, whose windows are made
between two impressions of a batch), windows holding only orphans before their first
impression, batches straddling window starts and out-of-order times."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators import ctr
from operators.ctr import CtrConfig, CtrOperator
from schemas.events import Click, Impression

T = 1_790_000_000_000  # an event time the schemas accept
MIN = 60_000


class PerEvent(CtrOperator):
    """The reference: every impression through `_impression`."""

    def _impressions(self, events: Sequence[Impression]) -> None:
        for event in events:
            self._impression(event)


class AlwaysCached(CtrOperator):
    """Every batch through the per-batch windows (most batches of the strategy are
    small, with nearly a window per impression, which `_impressions` sends in line)."""

    def _impressions(self, events: Sequence[Impression]) -> None:
        self._impressions_cached(events)


class AlwaysInLine(CtrOperator):
    def _impressions(self, events: Sequence[Impression]) -> None:
        self._impressions_in_line(events)


def impression(i: int, ts: int, campaign: int, variant: str | None) -> Impression:
    return Impression(
        impression_id=f"i{i}",
        ts=T + ts,
        user_id="u",
        campaign_id=f"c{campaign}",
        variant=variant,
    )


def click(n: int, i: int, ts: int, campaign: int) -> Click:
    return Click(
        click_id=f"k{n}", impression_id=f"i{i}", ts=T + ts, user_id="u", campaign_id=f"c{campaign}"
    )


@st.composite
def batches(draw: st.DrawFn) -> list[tuple[str, list[Any]]]:
    """Batches of one source each: impressions (ids drawn from a small range, so some
    repeat) and clicks on those ids (some before their impression, some far after)."""
    out: list[tuple[str, list[Any]]] = []
    clicks = 0
    for _ in range(draw(st.integers(1, 8))):
        if draw(st.booleans()):
            imps = draw(
                st.lists(
                    st.builds(
                        impression,
                        st.integers(0, 40),
                        st.integers(0, 3 * MIN),
                        st.integers(0, 3),
                        st.sampled_from([None, None, None, "", "a", "b"]),
                    ),
                    max_size=30,
                )
            )
            out.append(("impressions", imps))
        else:
            n = draw(st.integers(0, 6))
            cl = []
            for _ in range(n):
                clicks += 1
                cl.append(
                    click(
                        clicks,
                        draw(st.integers(0, 40)),
                        draw(st.integers(0, 6 * MIN)),
                        draw(st.integers(0, 3)),
                    )
                )
            out.append(("clicks", cl))
    return out


def snapshot_bytes(op: CtrOperator) -> bytes:
    return msgspec.msgpack.encode(op.snapshot())


@settings(max_examples=150, deadline=None)
@given(batches(), st.booleans(), st.sampled_from([AlwaysCached, AlwaysInLine, CtrOperator]))
def test_batch_loops_equal_per_event_path(
    stream: list[tuple[str, list[Any]]], conversions: bool, loop: type[CtrOperator]
) -> None:
    config = CtrConfig(attribution_ms=2 * MIN, conversions=conversions)
    op, ref = loop(config), PerEvent(config)
    for source, events in stream:
        op.feed(source, events)
        ref.feed(source, events)
        assert snapshot_bytes(op) == snapshot_bytes(ref)
        assert op.memory_items() == ref.memory_items()
    # and the rows, once the watermark has passed every window
    op.advance(T + 100 * MIN)
    ref.advance(T + 100 * MIN)
    assert msgspec.to_builtins(op.collect().rows) == msgspec.to_builtins(ref.collect().rows)


def test_the_reference_is_the_per_event_path() -> None:
    """`PerEvent` takes `_impression` (a test of the test): a changed `_impression`
    shows in it and not in the operator's batch loop."""
    calls: list[str] = []

    class Counting(PerEvent):
        def _impression(self, imp: Impression) -> None:
            calls.append(imp.impression_id)
            super()._impression(imp)

    Counting().feed("impressions", [impression(1, 0, 0, None), impression(2, 0, 0, "a")])
    assert calls == ["i1", "i2"]


def test_impressions_chooses_the_loop_by_the_windows_per_batch() -> None:
    """Few windows per batch: the cached loop; a batch with a window for most of its
    impressions sends the next ones in line, and then the cache is tried again."""
    chosen: list[str] = []

    class Watched(CtrOperator):
        def _impressions_cached(self, events: Sequence[Impression]) -> int:
            chosen.append("cached")
            return super()._impressions_cached(events)

        def _impressions_in_line(self, events: Sequence[Impression]) -> None:
            chosen.append("in line")
            super()._impressions_in_line(events)

    op = Watched()
    few = [impression(i, i, i % 2, None) for i in range(100)]
    op.feed("impressions", few)
    assert chosen == ["cached"]
    many = [impression(1000 + i, i, i, None) for i in range(100)]
    for _ in range(ctr.IN_LINE_BATCHES + 2):
        op.feed("impressions", many)
    assert chosen == ["cached", "cached"] + ["in line"] * ctr.IN_LINE_BATCHES + ["cached"]


@pytest.mark.parametrize("loop", [AlwaysCached, AlwaysInLine])
@pytest.mark.parametrize("variant", [None, "a"])
def test_a_duplicate_opening_a_key_makes_no_window(
    loop: type[CtrOperator], variant: str | None
) -> None:
    """The batch loops find (or make) an impression's window before they claim its
    index entry: a duplicate impression that would be the first of its key's window
    (another campaign, another window start) counts in its original's window and makes
    no window of its own, as on the per-event path."""
    op, ref = loop(), PerEvent()
    for stream in (op, ref):
        stream.feed("impressions", [impression(1, 0, 0, variant)])
        # the same id again, later and for another campaign: a duplicate of i1
        stream.feed("impressions", [impression(1, 2 * MIN, 1, variant), impression(2, 0, 0, None)])
    assert snapshot_bytes(op) == snapshot_bytes(ref)
    windows = {key: w for _, key, w in op.windows.items()}
    assert sorted(windows) == sorted({("c0", variant or ""), ("c0", "")})  # none of c1
    assert windows["c0", variant or ""].dup_imps == 1
