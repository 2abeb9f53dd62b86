"""CTR operator against hand-computed windows and a brute-force reference."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom, fisher_exact

from operators.ctr import CtrConfig, CtrOperator
from operators.rules import Rule, RuleEngine
from operators.task import MonitorTask
from tests.ctr_replay import clk, imp, replay, within_lateness
from tests.reference import ctr_reference
from tests.row_dicts import as_dicts

T0 = 1_795_000_020_000  # 2026-11-18, a window boundary (divisible by 60 000)
assert T0 % 60_000 == 0


def final_rows(op: CtrOperator) -> list[dict]:
    return [r for r in as_dicts(op.collect().rows.get("ctr_windows", [])) if r["final"]]


def test_hand_computed_window() -> None:
    op = CtrOperator()
    op.feed(
        "impressions",
        [imp("a", T0 + 1_000), imp("b", T0 + 2_000), imp("c", T0 + 59_999), imp("d", T0 + 60_000)],
    )
    op.feed(
        "clicks",
        [
            clk("k1", "a", T0 + 5_000),  # counts
            clk("k2", "a", T0 + 6_000),  # second click on a: duplicate
            clk("k3", "b", T0 + 2_000 + 600_001),  # 1 ms past attribution: orphan
            clk("k4", "zz", T0 + 30_000),  # impression never seen: orphan
            clk("k5", "c", T0 + 59_999 + 600_000),  # exactly at the limit: counts
        ],
    )
    op.advance(T0 + 60_000)  # first window closes: provisional row
    provisional = as_dicts(op.collect().rows["ctr_windows"])
    assert [(r["window_start"], r["final"], r["impressions"]) for r in provisional] == [(T0, 0, 3)]
    assert provisional[0]["orphan_clicks"] == 1  # k4 resolved: watermark passed it
    op.advance(T0 + 60_000 + 600_000)  # attribution over: final row
    rows = final_rows(op)
    assert len(rows) == 1
    row = rows[0]
    assert (row["impressions"], row["clicks"], row["duplicate_clicks"]) == (3, 2, 1)
    assert row["orphan_clicks"] == 1
    assert row["ctr"] == 2 / 3
    assert row["version"] == 2
    # k3 is an orphan in the window of its own time (T0 + 602 001 -> window T0 + 600 000)
    op.advance(T0 + 10**8)
    later = {(r["window_start"], r["campaign_id"]): r for r in final_rows(op)}
    assert later[(T0 + 600_000, "c1")]["orphan_clicks"] == 1
    assert later[(T0 + 60_000, "c1")]["impressions"] == 1


def test_click_before_impression_joins_and_duplicates_impressions_are_counted() -> None:
    op = CtrOperator()
    op.feed("clicks", [clk("k1", "a", T0 + 3_000)])
    op.advance(T0 + 2_000)  # watermark not past the click yet
    op.feed("impressions", [imp("a", T0 + 1_000), imp("a", T0 + 1_000)])
    op.advance(T0 + 700_000)
    (row,) = final_rows(op)
    assert (row["clicks"], row["orphan_clicks"], row["duplicate_impressions"]) == (1, 0, 1)


def test_variants_are_separate_windows_and_empty_state_after_final() -> None:
    op = CtrOperator()
    op.feed("impressions", [imp("a", T0, variant="A"), imp("b", T0, variant="B")])
    op.feed("clicks", [clk("k", "b", T0 + 1)])
    op.advance(T0 + 660_000)
    rows = {r["variant"]: r for r in final_rows(op)}
    assert rows["A"]["clicks"] == 0 and rows["B"]["clicks"] == 1
    assert not op.impressions and not op.pending and len(op.windows) == 0


def test_lagging_watermark_emits_only_the_final_row() -> None:
    op = CtrOperator()
    op.feed("impressions", [imp("a", T0)])
    op.advance(T0 + 10**7)
    rows = as_dicts(op.collect().rows["ctr_windows"])
    assert [r["final"] for r in rows] == [1]


def test_snapshot_restore_round_trip_mid_window() -> None:
    events = _random_stream(random.Random(7), 400)
    whole = _run(events, split_at=None)
    resumed = _run(events, split_at=len(events) // 2)
    assert resumed == whole


def test_drop_rule_fires_once_and_resolves() -> None:
    rules = RuleEngine(
        [Rule("ctr_drop", "ctr", "ctr_drop", ">", {"critical": 0.5}, cooldown_s=0, min_samples=50)]
    )
    task = MonitorTask(CtrOperator(CtrConfig(attribution_ms=60_000)), rules, 0, 10**9)
    n = 0
    alerts = []
    # 6 windows at CTR 0.1, then 2 at 0.02 (drop 80 %), then back to 0.1
    for w, rate in enumerate([0.1] * 6 + [0.02] * 2 + [0.1] * 2):
        imps, clicks = [], []
        for j in range(200):
            n += 1
            ts = T0 + w * 60_000 + j * 100
            imps.append(imp(f"i{n}", ts))
            if j < rate * 200:
                clicks.append(clk(f"k{n}", f"i{n}", ts + 10))
        task.feed("impressions", imps, now_ms=0)
        task.feed("clicks", clicks, now_ms=0)
        task.tick(now_ms=0)
        alerts += task.collect().alerts
    task.feed("impressions", [imp("end", T0 + 100 * 60_000)], now_ms=0)
    task.feed("clicks", [clk("end", "end", T0 + 100 * 60_000)], now_ms=0)
    task.tick(now_ms=0)
    alerts += task.collect().alerts
    assert [(a.status, a.window_start) for a in alerts] == [
        ("firing", T0 + 6 * 60_000),
        ("resolved", T0 + 8 * 60_000),
    ]
    assert alerts[0].severity == "critical" and abs(alerts[0].value - 0.8) < 1e-9
    assert alerts[0].details["baseline_ctr"] == 0.1


# -- out-of-order input within the lateness gives the sorted result -----------


def _random_stream(rng: random.Random, n: int) -> list[tuple[str, object]]:
    events: list[tuple[str, object]] = []
    for k in range(n):
        ts = T0 + rng.randrange(0, 900_000)
        campaign = rng.choice(["c1", "c2", "c3"])
        events.append(("impressions", imp(f"i{k}", ts, campaign, rng.choice([None, "A"]))))
        for c in range(rng.choice([0, 0, 0, 1, 2])):
            delay = rng.choice([10, 5_000, 300_000, 600_000, 600_001, -5])
            target = f"i{k}" if rng.random() < 0.9 else f"missing{k}"
            events.append(("clicks", clk(f"k{k}.{c}", target, ts + delay, campaign)))
    events.sort(key=lambda se: se[1].ts)  # type: ignore[attr-defined]
    return events


def _run(events, split_at: int | None, lateness_ms: int = 0, batch: int = 7) -> list:
    flush = [
        ("impressions", imp("flush", T0 + 10**8)),
        ("clicks", clk("flush", "flush", T0 + 10**8)),
    ]
    rows = replay(
        CtrOperator, events, ("impressions", "clicks"), flush, split_at, lateness_ms, batch
    )
    final = sorted(
        (
            r["window_start"],
            r["campaign_id"],
            r["variant"],
            r["impressions"],
            r["clicks"],
            r["orphan_clicks"],
            r["duplicate_clicks"],
        )
        for r in rows
        if r["final"] and r["window_start"] < T0 + 10**7
    )
    return final


def test_p_values_are_scipys_window_by_window_when_many_windows_close_at_once() -> None:
    """Windows judged together in one watermark step (vectorised p-values) get what a
    scalar scipy call per window gives, each against the baseline of the windows
    before it, including windows of one campaign closing in the same step."""
    cfg = CtrConfig(baseline_min_windows=2, baseline_min_impressions=10)
    rng = random.Random(3)
    op = CtrOperator(cfg)
    imps, clicks = [], []
    for w in range(8):
        for campaign in ("c1", "c2", "c3"):
            rate = 0.02 if (campaign, w) == ("c2", 6) else 0.2
            for j in range(rng.randint(5, 60)):
                i = f"{campaign}-{w}-{j}"
                ts = T0 + w * 60_000 + j * 900
                imps.append(imp(i, ts, campaign))
                if rng.random() < rate:
                    clicks.append(clk(f"k{i}", i, ts + 1_000, campaign))
    op.feed("impressions", imps)
    op.feed("clicks", clicks)
    op.advance(T0 + 8 * 60_000 + 600_000)  # all 24 windows final in one step
    out = op.collect()
    rows = [r for r in as_dicts(out.rows["ctr_windows"]) if r["final"]]
    assert len(rows) == 24
    # Changed on purpose (issue 13): the baseline is now the windows the CUSUM cleared
    # (tested in tests/test_ctr_evidence.py), so each drop p-value is checked against
    # scipy's scalar Fisher test of the baseline counts that observation reports.
    want = []
    before: dict[tuple[str, int], int] = {}  # impressions of the entity's earlier windows
    total: dict[str, int] = {}
    for r in rows:
        before[(r["campaign_id"], r["window_start"])] = total.get(r["campaign_id"], 0)
        total[r["campaign_id"]] = total.get(r["campaign_id"], 0) + r["impressions"]
    for r in rows:  # by window start, then campaign: the order of judging
        k, n, key = r["clicks"], r["impressions"], r["campaign_id"]
        want.append(("ctr", key, r["window_start"], float(binom.cdf(k, n, cfg.floor_ctr))))
    got = [(o.metric, o.entity, o.window_start, o.p_value) for o in out.observations]
    assert [g for g in got if g[0] == "ctr"] == want
    drops = [o for o in out.observations if o.metric == "ctr_drop"]
    for o in drops:
        k, n = o.details["clicks"], o.details["impressions"]
        bn = o.details["baseline_impressions"]
        bk = round(o.details["baseline_ctr"] * bn)
        assert bn <= before[(o.entity, o.window_start)]  # only windows judged before it
        p = float(fisher_exact([[k, n - k], [bk, bn - bk]], alternative="less").pvalue)
        assert abs(o.p_value - p) <= 1e-9 * max(p, 1e-300), (o, p)
    assert len(drops) > 10
    assert min(o.p_value for o in drops) < 0.01  # c2's drop in window 6


def test_matches_brute_force_reference() -> None:
    events = _random_stream(random.Random(1), 600)
    assert _run(events, None) == ctr_reference(events)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), lateness_s=st.integers(1, 120))
def test_shuffled_within_lateness_equals_sorted(seed: int, lateness_s: int) -> None:
    """Displace every event by less than the lateness: results must not change."""
    rng = random.Random(seed)
    events = _random_stream(rng, 150)
    lateness = lateness_s * 1000
    shuffled = within_lateness(events, rng, lateness)
    assert _run(shuffled, None, lateness_ms=lateness) == _run(events, None)
