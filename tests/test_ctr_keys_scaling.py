"""The shortcuts that keep the CTR cost per event flat in the number of campaigns
(issue 18, point 3) give what the general paths give."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from operators import ctr
from operators.ctr import CtrConfig, CtrOperator, CtrWindow
from operators.ctr_evidence import judged_units
from operators.windows import TumblingWindows
from schemas.events import Click, Conversion, Impression
from schemas.rows import CtrWindowRow

T = 1_790_000_000_000  # an event time the schemas accept
window_counts = st.lists(
    st.tuples(
        st.integers(0, 3).map(lambda s: s * 60_000),
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(["", "A", "B"]),
        st.integers(0, 50),
        st.integers(0, 5),
    ),
    max_size=30,
    unique_by=lambda w: w[:3],
)


@settings(max_examples=300, deadline=None)
@given(window_counts)
def test_ordered_units_equal_the_general_path(windows: list) -> None:
    ordered = sorted(windows, key=lambda w: w[:3])
    assert judged_units(ordered, ordered=True) == judged_units(windows)


def test_sorted_order_follows_added_and_removed_keys() -> None:
    windows: TumblingWindows[CtrWindow] = TumblingWindows(60_000, CtrWindow)
    for key in [("b", ""), ("a", "")]:
        windows.at(key, 1_000).imps += 1
    assert [k for _, k, _ in windows.ending_between(0, 60_000)] == [("a", ""), ("b", "")]
    windows.at(("0", ""), 2_000)  # added after the order was read
    del windows.by_start[0][("b", "")]  # removed in place (as the quality monitor does)
    assert [k for _, k, _ in windows.ending_between(0, 60_000)] == [("0", ""), ("a", "")]
    assert [k for _, k, _ in windows.pop_ending_until(60_000)] == [("0", ""), ("a", "")]


def _full_row(start: int, key: tuple[str, str], w: CtrWindow, final: bool, version: int) -> dict:
    """The row built by keyword, as before the templates."""
    return msgspec.to_builtins(
        CtrWindowRow(
            window_start=start,
            window_end=start + 60_000,
            campaign_id=key[0],
            variant=key[1],
            impressions=w.imps,
            clicks=w.clicks,
            ctr=w.clicks / w.imps if w.imps else 0.0,
            orphan_clicks=w.orphans,
            duplicate_clicks=w.dup_clicks,
            duplicate_impressions=w.dup_imps,
            final=int(final),
            version=version,
            conversions=len(w.converted),
            cvr=len(w.converted) / w.clicks if w.clicks else 0.0,
            revenue=w.revenue(),
            orphan_conversions=w.orphan_convs,
            duplicate_conversions=w.dup_convs,
        )
    )


def test_rows_from_templates_equal_rows_built_by_keyword() -> None:
    op = CtrOperator(CtrConfig(conversions=True))
    cases = [
        (0, ("c", "A"), CtrWindow(imps=3, clicks=1, orphans=2, dup_clicks=1, dup_imps=4)),
        (60_000, ("c", ""), CtrWindow(orphans=1)),
        (0, ("d", "B"), CtrWindow(imps=2, clicks=1, converted={"i": ctr.Converted(5, "x", 2.5)})),
        (0, ("e", ""), CtrWindow(imps=1, orphan_convs=1)),
    ]
    expected = []
    for final, version in [(False, 1), (True, 2), (True, 3)]:
        for start, key, w in cases:
            op._emit_row(start, key, w, final, version if version == 3 else None)
            expected.append(_full_row(start, key, w, final, version))
    rows = op.collect().rows["ctr_windows"]
    assert [msgspec.to_builtins(r) for r in rows] == expected


def test_shared_empty_containers_stay_empty() -> None:
    """New windows share their empty clicked/counted/converted containers; the
    operator must give a window its own before writing (else every window would
    see another's clicks)."""
    op = CtrOperator(CtrConfig(conversions=True, attribution_ms=60_000))
    imps = [
        Impression(impression_id=f"i{n}", ts=T + n, campaign_id=f"c{n % 3}", user_id="u")
        for n in range(6)
    ]
    clicks = [
        Click(
            click_id=f"k{n}",
            ts=T + 9 + n,
            impression_id=f"i{n}",
            campaign_id=f"c{n % 3}",
            user_id="u",
        )
        for n in range(0, 6, 2)
    ]
    convs = [
        Conversion(
            conversion_id=f"v{n}",
            ts=T + 20 + n,
            click_id=f"k{n}",
            campaign_id=f"c{n % 3}",
            user_id="u",
            value=1.0,
        )
        for n in (0, 4)
    ]
    op.feed("impressions", imps)
    op.feed("clicks", clicks)
    op.feed("conversions", convs)
    assert ctr._NO_CLICKED == [] and ctr._NO_COUNTED == [] and ctr._NO_CONVERTED == {}
    assert ctr._NO_IDS == [] and ctr._NO_TIMES == []
    assert sorted(i for _, _, w in op.windows.items() for i in w.ids) == [f"i{n}" for n in range(6)]
    clicked = sorted(i for _, _, w in op.windows.items() for i in w.clicked)
    assert clicked == ["i0", "i2", "i4"]
    assert sorted(i for _, _, w in op.windows.items() for i in w.converted) == ["i0", "i4"]
    for _, _, w in op.windows.items():
        assert len(w.clicked) == w.clicks  # each window only its own
