"""The CTR operator's batch loop over impressions (`CtrOperator._impressions`, with its
per-batch windows by campaign, issue 18 point 4) leaves exactly the state the
per-event path (`_impression`, one event at a time) leaves: the same snapshot, byte
for byte (windows in the same order, ids in arrival order, times from the index in
its order), after every batch, with impressions with and without a variant (None and
"" the same window), duplicates within a batch and across batches, clicks waiting for
impressions (counted, duplicate, or orphans outside the attribution, whose windows are
made between two impressions of a batch), windows holding only orphans before their
first impression, batches straddling window starts and out-of-order times."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.ctr import CtrConfig, CtrOperator
from schemas.events import Click, Impression

T = 1_790_000_000_000  # an event time the schemas accept
MIN = 60_000


class PerEvent(CtrOperator):
    """The reference: every impression through `_impression`."""

    def _impressions(self, events: Sequence[Impression]) -> None:
        for event in events:
            self._impression(event)


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
@given(batches(), st.booleans())
def test_batch_loop_equals_per_event_path(
    stream: list[tuple[str, list[Any]]], conversions: bool
) -> None:
    config = CtrConfig(attribution_ms=2 * MIN, conversions=conversions)
    op, ref = CtrOperator(config), PerEvent(config)
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
