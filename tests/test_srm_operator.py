"""Sample ratio mismatch: chi-square goodness of fit per experiment window."""

from __future__ import annotations

import dataclasses
import math
import random

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chi2 as chi2_dist
from scipy.stats import chisquare

from operators.rules import Rule, RuleEngine
from operators.srm import DAY_MS, SRM_TABLE, SrmConfig, SrmOperator, spending, srm_test
from operators.stats import alpha_for_budget
from operators.task import MonitorTask
from schemas.events import Impression
from streams.config import DEFAULT_RULES
from tests.row_dicts import as_dicts

T0 = 1_795_000_200_000  # a 5-minute boundary
W = 300_000
assert T0 % W == 0

SRM_RULE = Rule(
    "srm",
    "srm",
    "srm_chi2_p",
    "<",
    {"critical": 0.001},
    cooldown_s=3600,
    min_samples=200,
    message="SRM in {entity}: {counts} vs expected {expected}, chi2 {chi2:.1f}, p {value:.2g}",
)

ROW_COLUMNS = {
    "window_start",
    "window_end",
    "experiment",
    "unit",
    "variants",
    "counts",
    "expected",
    "unexpected",
    "chi2",
    "p_value",
    "total",
    "srm",
}


def imp(
    i: int,
    ts: int,
    variant: str | None = "A",
    experiment: str | None = "exp1",
    user: str | None = None,
) -> Impression:
    return Impression(
        impression_id=f"i{i}",
        ts=ts,
        campaign_id="c1",
        user_id=user or f"u{i}",
        experiment=experiment,
        variant=variant,
    )


def split_events(n_a: int, n_b: int, start: int = T0, experiment: str = "exp1"):
    """n_a impressions of A and n_b of B spread over one window, interleaved."""
    labels = ["A"] * n_a + ["B"] * n_b
    random.Random(n_a * 7 + n_b).shuffle(labels)
    step = W // (len(labels) + 1)
    return [imp(k, start + k * step, v, experiment) for k, v in enumerate(labels)]


def close(op: SrmOperator, until: int = T0 + W):
    op.advance(until)
    return op.collect()


def window_tests(out):
    """The per-window SRM observations (the cumulative and crossover ones aside)."""
    return [o for o in out.observations if o.metric == "srm_chi2_p"]


# -- the test itself ------------------------------------------------------------


def test_chi_square_by_hand_and_against_scipy() -> None:
    # 45 / 55 against 50 / 50: chi2 = (5^2 + 5^2) / 50 = 1, df 1
    tested, expected, unexpected, chi2, p = srm_test({"A": 45, "B": 55}, None)
    assert tested == {"A": 45, "B": 55} and expected == {"A": 0.5, "B": 0.5}
    assert unexpected == {}
    assert chi2 == pytest.approx(1.0)
    assert p == pytest.approx(chi2_dist.sf(1.0, 1)) and p == pytest.approx(0.3173105, abs=1e-7)

    # 90/10 plan, 3 variants with weights 2:1:1 -> normalised to 0.5/0.25/0.25
    counts = {"control": 520, "t1": 230, "t2": 250}
    tested, expected, _, chi2, p = srm_test(counts, {"control": 2, "t1": 1, "t2": 1})
    assert expected == {"control": 0.5, "t1": 0.25, "t2": 0.25}
    by_hand = (520 - 500) ** 2 / 500 + (230 - 250) ** 2 / 250 + (250 - 250) ** 2 / 250
    assert chi2 == pytest.approx(by_hand) == pytest.approx(2.4)
    ref = chisquare([520, 230, 250], f_exp=[500, 250, 250])
    assert (chi2, p) == pytest.approx((ref.statistic, ref.pvalue))
    assert p == pytest.approx(chi2_dist.sf(2.4, 2))

    # a planned variant without traffic counts 0; an unplanned one is left out
    tested, expected, unexpected, chi2, p = srm_test({"A": 300, "X": 7}, {"A": 0.5, "B": 0.5})
    assert tested == {"A": 300, "B": 0} and unexpected == {"X": 7}
    assert chi2 == pytest.approx(300.0) and p < 1e-60

    # nothing to test with one variant
    assert srm_test({"A": 1000}, None) is None
    assert srm_test({}, None) is None


def test_45_55_split_at_10k_is_critical() -> None:
    op = SrmOperator()
    op.feed("impressions", split_events(4500, 5500))
    out = close(op)
    [row] = as_dicts(out.rows[SRM_TABLE])
    assert set(row) == ROW_COLUMNS
    assert row["counts"] == {"A": 4500, "B": 5500} and row["total"] == 10_000
    assert row["variants"] == "A,B" and row["expected"] == {"A": 0.5, "B": 0.5}
    assert row["chi2"] == pytest.approx(100.0)  # (500^2 + 500^2) / 5000
    assert row["p_value"] < 1e-20 and row["srm"] == 1
    assert (row["window_start"], row["window_end"]) == (T0, T0 + W)
    [obs] = window_tests(out)
    assert (obs.kind, obs.entity, obs.metric, obs.n) == ("srm", "exp1", "srm_chi2_p", 10_000)
    # the window's chi-square p and the accumulated evidence, Bonferroni over 2k + 1 tests
    assert obs.details["chi2_p"] == row["p_value"]
    assert obs.value == obs.p_value == pytest.approx(5 * row["p_value"])
    assert obs.details["counts"] == {"A": 4500, "B": 5500}
    assert obs.details["observed"] == {"A": 0.45, "B": 0.55}
    assert not {"metric", "entity", "value", "threshold", "op"} & set(obs.details)
    # msgpack/JSON-able
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(row)) == row
    [alert] = RuleEngine([SRM_RULE]).evaluate(window_tests(out))
    assert (alert.severity, alert.status, alert.kind) == ("critical", "firing", "srm")
    assert "chi2 100.0" in alert.message and alert.details["counts"]["B"] == 5500


def test_balanced_experiment_is_not_an_srm() -> None:
    rng = random.Random(3)
    events = [imp(k, T0 + k * 30, rng.choice("AB")) for k in range(10_000)]
    op = SrmOperator()
    op.feed("impressions", events)
    out = close(op)
    [obs] = window_tests(out)
    assert obs.value > 0.001
    assert RuleEngine([SRM_RULE]).evaluate(out.observations) == []
    # an exact 50/50 split has chi2 0, p 1
    op.feed("impressions", split_events(5000, 5000, start=T0 + W))
    [obs] = window_tests(close(op, T0 + 2 * W))
    assert obs.details["chi2"] == 0.0 and obs.value == pytest.approx(1.0)


def test_configured_split_and_resolution() -> None:
    cfg = SrmConfig(splits={"exp1": {"A": 0.9, "B": 0.1}})
    op = SrmOperator(cfg)
    engine = RuleEngine([dataclasses.replace(SRM_RULE, cooldown_s=0)])
    # window 1: 50/50 against a 90/10 plan -> SRM; windows 2 and 3: 900/100. The
    # evidence accumulated in window 1 (the CUSUMs, capped at 20 nats) still holds
    # in window 2 (S = 9.1, p = 5 exp(-9.1) < 0.001) and is spent by window 3
    op.feed("impressions", split_events(500, 500))
    op.feed("impressions", split_events(900, 100, start=T0 + W))
    op.feed("impressions", split_events(900, 100, start=T0 + 2 * W))
    alerts = engine.evaluate(window_tests(close(op, T0 + 3 * W)))
    assert [(a.status, a.window_start) for a in alerts] == [
        ("firing", T0),
        ("resolved", T0 + 2 * W),
    ]


def test_ignored_and_small_windows() -> None:
    op = SrmOperator()
    op.feed(
        "impressions",
        [imp(0, T0, None), imp(1, T0, "A", None), imp(2, T0, "", "exp1"), imp(3, T0, "A", "")],
    )
    assert len(op.windows) == 0
    op.feed("impressions", split_events(10, 19))  # total 29 < min_total (30)
    out = close(op)
    assert SRM_TABLE not in out.rows and not window_tests(out)
    op.feed("impressions", [imp(k, T0 + k, "A", "only-a") for k in range(300)])
    out = close(op)  # one variant (all A): nothing to test
    assert SRM_TABLE not in out.rows and not window_tests(out)


def test_unplanned_variant_is_reported_not_tested() -> None:
    op = SrmOperator(SrmConfig(splits={"exp1": {"A": 1, "B": 1}}))
    events = split_events(500, 500) + [imp(10**6 + k, T0 + k, "C") for k in range(40)]
    op.feed("impressions", events)
    out = close(op)
    [row] = as_dicts(out.rows[SRM_TABLE])
    assert row["counts"] == {"A": 500, "B": 500} and row["unexpected"] == {"C": 40}
    assert row["total"] == 1000 and row["p_value"] == pytest.approx(1.0)


def test_users_unit_counts_distinct_users() -> None:
    cfg = SrmConfig(unit="users", min_total=3)
    op = SrmOperator(cfg)
    events = [
        imp(0, T0 + 1, "A", user="u1"),
        imp(1, T0 + 2, "A", user="u1"),
        imp(2, T0 + 3, "A", user="u1"),
        imp(3, T0 + 4, "A", user="u2"),
        imp(4, T0 + 5, "B", user="u3"),
        imp(5, T0 + 6, "B", user="u2"),  # u2 in both variants
        imp(6, T0 + W, "B", user="u9"),  # next window
    ]
    op.feed("impressions", events)
    out = close(op)
    [row] = as_dicts(out.rows[SRM_TABLE])
    assert row["counts"] == {"A": 2, "B": 2} and row["total"] == 4 and row["unit"] == "users"
    assert window_tests(out)[0].details["crossover"] == 1
    # the same impressions by impression count
    op = SrmOperator(SrmConfig(min_total=3))
    op.feed("impressions", events)
    assert as_dicts(close(op).rows[SRM_TABLE])[0]["counts"] == {"A": 4, "B": 2}


# -- order, checkpoints -----------------------------------------------------------


def _stream(rng: random.Random, n: int):
    events = []
    for k in range(n):
        ts = T0 + rng.randrange(0, 4 * W)
        experiment = rng.choice(["e1", "e2", None])
        variant = rng.choice(["A", "A", "B", "C"]) if experiment else None
        events.append(imp(k, ts, variant, experiment, user=f"u{rng.randrange(60)}"))
    events.sort(key=lambda e: e.ts)
    return events


def _run(events, cfg: SrmConfig, lateness_ms: int = 0, batch: int = 9, split_at=None):
    def new_task() -> MonitorTask:
        return MonitorTask(SrmOperator(cfg), RuleEngine([SRM_RULE]), lateness_ms, 10**12)

    task = new_task()
    rows, alerts = [], []
    for i in range(0, len(events), batch):
        if split_at is not None and i >= split_at:
            state = msgspec.msgpack.decode(msgspec.msgpack.encode(task.snapshot()))
            task = new_task()
            task.restore(state)
            split_at = None
        assert task.feed("impressions", events[i : i + batch], now_ms=0) == []
        task.tick(now_ms=0)
        out = task.collect()
        # experiment_windows too: its p-values carry the CUSUMs' and the cumulative
        # mSPRT's state (window: combined p; share_cumulative: the always-valid p)
        rows += as_dicts(out.rows.get(SRM_TABLE, [])) + as_dicts(
            out.rows.get("experiment_windows", [])
        )
        alerts += out.alerts
    task.feed("impressions", [imp(-1, T0 + 100 * W, None)], now_ms=0)
    task.tick(now_ms=0)
    out = task.collect()
    rows += as_dicts(out.rows.get(SRM_TABLE, [])) + as_dicts(out.rows.get("experiment_windows", []))
    alerts += out.alerts

    def order(r):
        return (
            r["window_start"],
            r["experiment"],
            r.get("metric", ""),
            r.get("variant", ""),
        )

    return sorted(rows, key=order), alerts


CONFIGS = [
    SrmConfig(min_total=20),
    SrmConfig(unit="users", min_total=20, splits={"e2": {"A": 0.5, "B": 0.3, "C": 0.2}}),
]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), lateness_s=st.integers(1, 400), which=st.sampled_from([0, 1]))
def test_shuffled_within_lateness_equals_sorted(seed: int, lateness_s: int, which: int) -> None:
    rng = random.Random(seed)
    events = _stream(rng, 400)
    lateness = lateness_s * 1000
    # displaced by less than the lateness: none ever falls behind the watermark
    shuffled = sorted(events, key=lambda e: e.ts + rng.uniform(0, lateness - 1))
    cfg = CONFIGS[which]
    expected = _run(events, cfg)
    assert expected[0]  # the stream does produce checks
    assert _run(shuffled, cfg, lateness_ms=lateness) == expected


@pytest.mark.parametrize("cfg", CONFIGS, ids=["impressions", "users"])
@pytest.mark.parametrize("split_at", [45, 180, 396])
def test_restore_continues_identically(cfg: SrmConfig, split_at: int) -> None:
    events = _stream(random.Random(5), 600)
    assert _run(events, cfg, split_at=split_at) == _run(events, cfg)


def test_snapshot_is_plain_sorted_data() -> None:
    op = SrmOperator(SrmConfig(unit="users"))
    op.feed("impressions", [imp(0, T0, "B", user="z"), imp(1, T0, "B", user="a")])
    state = op.snapshot()
    dims = {"campaign_id": {"c1": {"B": 2}}}
    arms = {"z": "B", "a": "B"}
    window = {
        "counts": {},
        "users": {"B": {"z": None, "a": None}},  # the users in the order they came
        "dims": dims,
        "arms": arms,
        "crossed": {},
        "untracked": 0,
    }
    assert state == {
        "format": 2,
        "state": {
            "unit": "users",
            "windows": {T0: {"exp1": window}},
            "cumulative": {},
            "cusum": {},
        },
    }
    with pytest.raises(ValueError):
        SrmOperator().restore(state)
    # a format-1 snapshot of before drill-down and crossover restores its counts
    old = SrmOperator(SrmConfig(unit="users"))
    old.restore({"unit": "users", "windows": [[T0, "exp1", {"B": ["a", "z"]}]]})
    assert [(s, e, set(w.users["B"])) for s, e, w in old.windows.items()] == [
        (T0, "exp1", {"a", "z"})
    ]
    with pytest.raises(ValueError):
        SrmConfig(unit="sessions")  # type: ignore[arg-type]


# -- tiers, minimum deviation, cumulative, drill-down, crossover (issue 16) ---------

DEFAULT = {r.name: r.rule() for r in DEFAULT_RULES}


def imp_in(i: int, ts: int, variant: str, campaign: str, user: str | None = None) -> Impression:
    return Impression(
        impression_id=f"i{i}",
        ts=ts,
        campaign_id=campaign,
        user_id=user or f"u{i}",
        experiment="exp1",
        variant=variant,
    )


def hand_always_valid_p(a: int, b: int, tau: float = 0.02) -> float:
    """One look of the normal-mixture SPRT of arm A's share against 1/2 (Johari et al.
    2015, eq. 11, null variance 1/(4n)), Bonferroni over the two arms (same |Delta|)."""
    n = a + b
    var, tau2 = 0.25 / n, tau**2
    lam = math.sqrt(var / (var + tau2)) * math.exp(
        tau2 * (a / n - 0.5) ** 2 / (2 * var * (var + tau2))
    )
    return min(1.0, 2 / lam)


def test_tiers_of_the_default_rules() -> None:
    """Statsig's tiers (warning p < 0.01, critical p < 0.001) judge the always-valid
    cumulative test, its lifetime alpha spread over 10 experiment-days (in its first
    day the value judged is 10 x the always-valid p); the per-window test is judged at
    the false-alarm budget's per-window level (1 per 1,000 experiment-days of 288
    windows: 3.5e-6)."""
    assert DEFAULT["srm"].thresholds == {"critical": alpha_for_budget(1.0, 288)}
    assert DEFAULT["srm"].max_p_value == pytest.approx(3.474e-6, rel=1e-3)
    assert DEFAULT["srm_cumulative"].thresholds == {"warning": 0.01, "critical": 0.001}
    assert SrmConfig().cumulative_spending_days == 10.0
    # 1,000 units in one window: 440/560 (always-valid p 0.038), 430/570 (0.0078),
    # 410/590 (1.5e-4), 400/600 (1.5e-5)
    cases = [(440, 560), (430, 570), (410, 590), (400, 600)]
    tiers: dict[float, list[list[str]]] = {10.0: [], 0.0: []}
    window = []
    for days, spent in tiers.items():
        for a, b in cases:
            op = SrmOperator(SrmConfig(cumulative_spending_days=days))
            op.feed("impressions", split_events(a, b))
            out = close(op)
            [obs] = window_tests(out)
            [cum] = [o for o in out.observations if o.metric == "srm_cumulative_p"]
            p_av = hand_always_valid_p(a, b)
            assert cum.details["p_always_valid"] == pytest.approx(p_av)
            share = 0.1 if days else 1.0  # the first of 10 days; no spreading
            assert cum.details["spending"] == share
            assert cum.p_value == cum.value == pytest.approx(min(1.0, p_av / share))
            assert obs.details["chi2_p"] == pytest.approx(chisquare([a, b]).pvalue)
            spent.append(
                [al.severity for al in RuleEngine([DEFAULT["srm_cumulative"]]).evaluate([cum])]
            )
            if days:
                window.append([al.severity for al in RuleEngine([DEFAULT["srm"]]).evaluate([obs])])
    assert tiers[10.0] == [[], [], ["warning"], ["critical"]]
    assert tiers[0.0] == [[], ["warning"], ["critical"], ["critical"]]
    # window: 5 x chi2 p = 7e-4, 4.8e-5 (under the budget's evidence), 5 x 1.3e-8, ...
    assert window == [[], [], ["critical"], ["critical"]]


def test_cumulative_spending_by_the_experiments_age() -> None:
    """The same counts judged on the experiment's day 1, 2, 5, 10 and 30: the value is
    the always-valid p over min(1, day / 10) (a day's share of the lifetime alpha from
    each day's start, Lan & DeMets 1983 with a uniform spending function)."""
    for day, share in [(1, 0.1), (2, 0.2), (5, 0.5), (10, 1.0), (30, 1.0)]:
        op = SrmOperator()
        # the experiment's first window, then (day - 1) days later the one judged
        op.windows.at("exp1", T0).counts = {"A": 15, "B": 15}
        later = T0 + (day - 1) * DAY_MS + (W if day == 1 else 0)
        op.windows.at("exp1", later).counts = {"A": 395, "B": 575}
        out = close(op, later + W)
        cum = [o for o in out.observations if o.metric == "srm_cumulative_p"][-1]
        p_av = hand_always_valid_p(410, 590)
        assert cum.details["p_always_valid"] == pytest.approx(p_av)
        assert cum.details["spending"] == share
        assert cum.value == pytest.approx(min(1.0, p_av / share))
    assert spending(0, 10) == 0.1 and spending(DAY_MS - 1, 10) == 0.1
    assert spending(DAY_MS, 10) == 0.2 and spending(99 * DAY_MS, 10) == 1.0
    assert spending(5 * DAY_MS, 0) == 1.0
    with pytest.raises(ValueError, match="spending"):
        SrmConfig(cumulative_spending_days=-1)


def test_cumulative_running_minimum_restarts_once_back_within_the_plan() -> None:
    """A quiet experiment whose running minimum once crossed a tier does not alert
    again and again as its deviation wanders about `min_deviation`: once the shares
    since the start are back within it, a new alert needs new evidence."""
    op = SrmOperator(SrmConfig(cumulative_spending_days=0))
    op.windows.at("exp1", T0).counts = {"A": 410, "B": 590}  # p_av 1.5e-4: critical
    op.windows.at("exp1", T0 + W).counts = {"A": 9000, "B": 8600}  # 9410/9190: 0.6 points
    op.windows.at("exp1", T0 + 2 * W).counts = {"A": 290, "B": 110}  # 9700/9300: 1.0 point
    out = close(op, T0 + 3 * W)
    cum = [o for o in out.observations if o.metric == "srm_cumulative_p"]
    assert [round(o.details["max_deviation"], 4) for o in cum] == [0.09, 0.0059, 0.0105]
    assert cum[0].value < 0.001 and cum[1].value == 1.0
    # the last look's own evidence: 1 point off at n = 19,000 (z = 2.8) is not a tier;
    # without the restart its value would still be the first window's 1.5e-4
    n, a = 19_000, 9_700
    var, tau2 = 0.25 / n, 0.02**2
    lam = math.sqrt(var / (var + tau2)) * math.exp(
        tau2 * (a / n - 0.5) ** 2 / (2 * var * (var + tau2))
    )
    assert cum[2].value == pytest.approx(min(1.0, 2 / lam)) and cum[2].value > 0.01
    alerts = RuleEngine([DEFAULT["srm_cumulative"]]).evaluate(cum)
    assert [(a.status, a.severity) for a in alerts] == [
        ("firing", "critical"),
        ("resolved", "critical"),
    ]


def test_minimum_deviation_gates_huge_samples() -> None:
    """2,000,000 units at 50.2/49.8: p ~ 1.4e-8, but 0.2 points of share: no SRM."""
    op = SrmOperator()
    window = op.windows.at("exp1", T0)
    window.counts = {"A": 1_004_000, "B": 996_000}
    [obs] = window_tests(close(op))
    assert obs.details["chi2_p"] < 1e-7 and obs.value == obs.p_value == 1.0
    assert obs.details["max_deviation"] == pytest.approx(0.002)
    assert RuleEngine([DEFAULT["srm"]]).evaluate([obs]) == []
    op = SrmOperator(SrmConfig(min_deviation=0.001))  # configurable
    op.windows.at("exp1", T0).counts = {"A": 1_004_000, "B": 996_000}
    # the CUSUMs (tuned to a 5-point shift) hold no evidence: 5 x the chi-square p
    assert window_tests(close(op))[0].value == pytest.approx(5 * obs.details["chi2_p"])


def test_cumulative_finds_a_mismatch_no_window_shows() -> None:
    """Twelve windows of 600 units at 47/53: each p ~ 0.14; since the start, the
    always-valid p-value (normal-mixture SPRT per arm, Bonferroni over the two arms)
    falls below 0.0001, computed here by hand from the closed form at every look, and
    the value judged (10 x that, in the experiment's first day) below 0.001."""
    op = SrmOperator()
    for k in range(12):
        op.feed("impressions", split_events(282, 318, start=T0 + k * W))
    out = close(op, T0 + 12 * W)
    windows = window_tests(out)
    cumulative = [o for o in out.observations if o.metric == "srm_cumulative_p"]
    assert len(windows) == 12 and all(o.details["chi2_p"] > 0.1 for o in windows)
    # the windows' CUSUMs gather ~0.6 nats a window: not the budget's evidence
    assert RuleEngine([DEFAULT["srm"]]).evaluate(windows) == []
    tau2 = 0.02**2
    running = {"A": 1.0, "B": 1.0}
    for k in range(1, 13):
        n = 600 * k
        for v, count in (("A", 282 * k), ("B", 318 * k)):
            var = 0.25 / n
            lam = math.sqrt(var / (var + tau2)) * math.exp(
                tau2 * (count / n - 0.5) ** 2 / (2 * var * (var + tau2))
            )
            running[v] = min(running[v], 1 / lam)
        # judged in its first day: the value is 10 x the always-valid p (spending)
        p_av = min(1.0, 2 * min(running.values()))
        assert cumulative[k - 1].details["p_always_valid"] == pytest.approx(p_av)
        assert cumulative[k - 1].p_value == pytest.approx(min(1.0, 10 * p_av))
    assert cumulative[-1].value < 0.001 and cumulative[-1].window_start == T0
    assert cumulative[-1].details["counts"] == {"A": 12 * 282, "B": 12 * 318}
    [alert] = RuleEngine([DEFAULT["srm_cumulative"]]).evaluate(cumulative[-1:])
    assert alert.severity == "critical" and "since its start" in alert.message
    [last_a] = [
        r
        for r in as_dicts(out.rows["experiment_windows"])
        if r["metric"] == "share_cumulative"
        and r["variant"] == "A"
        and r["window_end"] == T0 + 12 * W
    ]
    assert last_a["value"] == pytest.approx(282 / 600) and last_a["n"] == 12 * 282
    assert last_a["control_value"] == 0.5


def test_cumulative_false_alarms_stay_at_the_level_when_looked_at_every_window() -> None:
    """A/A: 300 experiments of 40 windows of 500 units at 50/50, looked at after every
    window: the share that ever reaches p < 0.05 on the cumulative test stays at 5 %."""
    rng = np.random.default_rng(11)
    alarms = 0
    for _ in range(300):
        op = SrmOperator(SrmConfig(min_total=1))
        for k in range(40):
            a = int(rng.binomial(500, 0.5))
            op.windows.at("exp1", T0 + k * W).counts = {"A": a, "B": 500 - a}
        out = close(op, T0 + 40 * W)
        ps = [o.p_value for o in out.observations if o.metric == "srm_cumulative_p"]
        alarms += min(ps) < 0.05
    assert alarms / 300 <= 0.05 + 0.03  # binomial noise of 300 runs: sd 0.013


def test_drilldown_names_the_campaign_that_carries_the_mismatch() -> None:
    """Four campaigns at 50/50, one at 80/20: the alert says which."""
    rng = random.Random(3)
    events = []
    k = 0
    for campaign, share_a in [("c1", 0.5), ("c2", 0.5), ("c3", 0.8), ("c4", 0.5)]:
        for _ in range(400):
            variant = "A" if rng.random() < share_a else "B"
            events.append(imp_in(k, T0 + rng.randrange(W), variant, campaign))
            k += 1
    events.sort(key=lambda e: e.ts)
    op = SrmOperator()
    op.feed("impressions", events)
    [obs] = window_tests(close(op))
    assert obs.value < 0.001
    assert obs.details["mismatch_in"] == "campaign_id=c3"
    top = obs.details["drilldown"][0]
    counts = top["counts"]
    assert top["p_value"] == pytest.approx(chisquare([counts["A"], counts["B"]]).pvalue)
    [alert] = RuleEngine([DEFAULT["srm"]]).evaluate([obs])
    assert "carried by campaign_id=c3" in alert.message


def test_crossover_users_raise_an_experiment_alert() -> None:
    events = [imp_in(k, T0 + k, "A" if k % 2 else "B", "c1", user=f"u{k}") for k in range(300)]
    # 6 of 300 users (2 %) also appear in the other arm
    events += [imp_in(1000 + k, T0 + 500 + k, "A", "c1", user=f"u{2 * k}") for k in range(6)]
    op = SrmOperator()
    op.feed("impressions", events)
    out = close(op)
    [obs] = [o for o in out.observations if o.metric == "crossover_rate"]
    assert obs.kind == "experiment" and obs.n == 300 and obs.value == pytest.approx(0.02)
    [alert] = RuleEngine([DEFAULT["experiment_crossover"]]).evaluate([obs])
    assert alert.kind == "experiment" and alert.severity == "warning"
    assert alert.message.startswith("6 users of exp1 were seen in more than one arm")
    [row] = [r for r in as_dicts(out.rows["experiment_windows"]) if r["metric"] == "crossover_rate"]
    assert row["value"] == pytest.approx(0.02) and row["n"] == 300
