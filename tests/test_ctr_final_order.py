"""The CTR operator's final rows take each start's windows as listed for its provisional
rows (`CtrOperator._final_order`, issue 18 point 3) only while its keys are unchanged:
a window added to the start after its provisional rows is in its final rows and judged."""

from __future__ import annotations

from operators.ctr import CtrConfig, CtrOperator
from schemas.events import Impression
from schemas.rows import CtrWindowRow

T = 1_790_000_040_000  # a window start (a whole minute) the schemas accept


def imp(imp_id: str, ts: int, campaign: str) -> Impression:
    return Impression(impression_id=imp_id, ts=ts, campaign_id=campaign, user_id="u")


def final_rows(op: CtrOperator) -> list[tuple[str, int, int]]:
    rows = op.collect().rows.get(CtrWindowRow.__table__.name, [])
    return [(r.campaign_id, r.impressions, r.orphan_clicks) for r in rows if r.final]


def test_a_window_added_after_the_provisional_rows_is_final_too() -> None:
    op = CtrOperator(CtrConfig(attribution_ms=60_000))
    op.feed("impressions", [imp(f"i{c}", T + 1_000, c) for c in ("b", "d")])
    op.advance(T + 60_000)  # the provisional rows of the start
    assert op._listed  # listed for the final rows
    # no event adds a key to a start past its provisional rows (orphans are placed
    # before them); a window added anyway must not be missed
    op.windows.at(("a", ""), T + 2_000).orphans += 1
    op.advance(T + 120_000)
    assert final_rows(op) == [("a", 0, 1), ("b", 1, 0), ("d", 1, 0)]
    assert not op._listed


def test_unchanged_keys_take_the_listed_windows() -> None:
    op = CtrOperator(CtrConfig(attribution_ms=60_000))
    op.feed("impressions", [imp(f"i{c}", T + 1_000, c) for c in ("b", "a")])
    op.advance(T + 60_000)
    (keys, windows), *_ = op._listed.values()
    op.feed("impressions", [imp("late", T + 59_000, "a")])  # same key
    op.advance(T + 120_000)
    assert final_rows(op) == [("a", 2, 0), ("b", 1, 0)]
    assert keys == [("a", ""), ("b", "")] and windows[0].imps == 2
