"""Funnel guardrails per experiment arm (operators/funnel.py): the always-valid p-values
against an independent numpy computation of the mSPRT formula from the raw
indicators, the breach of a CVR drop, A/A quiet, arrival order and snapshots, and
the alert the default rule makes of it."""

from __future__ import annotations

import doctest
import math
import random

import numpy as np
import pytest

import operators.funnel
from operators.funnel import FunnelConfig, FunnelOperator
from operators.msprt import always_valid_p
from operators.rules import RuleEngine
from operators.task import MonitorTask
from schemas.events import Click, Conversion, Impression
from streams.config import DEFAULT_RULES
from tests.row_dicts import as_dicts

T0 = 1_795_000_200_000  # a 5-minute boundary
assert T0 % 300_000 == 0
W = 300_000
END = T0 + 10**9


def test_doctests() -> None:
    assert doctest.testmod(operators.funnel).failed == 0


def traffic(
    rng: random.Random,
    windows: int,
    arms: dict[str, tuple[float, float]],  # arm -> (ctr, cvr)
    per_arm: int = 1000,
    experiment: str = "exp",
) -> list[tuple[str, object]]:
    """Impressions, clicks and conversions (values 5..50) of one experiment spread
    over two campaigns, clicks and conversions tagged with the experiment only."""
    events: list[tuple[str, object]] = []
    n = 0
    for w in range(windows):
        for arm, (ctr, cvr) in arms.items():
            for _ in range(per_arm):
                n += 1
                ts = T0 + w * W + rng.randrange(W)
                campaign = rng.choice(["c1", "c2"])
                events.append(
                    (
                        "impressions",
                        Impression(
                            impression_id=f"i{n}",
                            ts=ts,
                            campaign_id=campaign,
                            user_id=f"u{n}",
                            experiment=experiment,
                            variant=arm,
                        ),
                    )
                )
                if rng.random() < ctr:
                    click_ts = ts + rng.randrange(1_000, 120_000)
                    events.append(
                        (
                            "clicks",
                            Click(
                                click_id=f"k{n}",
                                impression_id=f"i{n}",
                                ts=click_ts,
                                campaign_id=campaign,
                                user_id=f"u{n}",
                                experiment=experiment,
                            ),
                        )
                    )
                    if rng.random() < cvr:
                        events.append(
                            (
                                "conversions",
                                Conversion(
                                    conversion_id=f"v{n}",
                                    click_id=f"k{n}",
                                    ts=click_ts + rng.randrange(60_000, 1_800_000),
                                    campaign_id=campaign,
                                    user_id=f"u{n}",
                                    value=float(rng.randrange(5, 51)),
                                    experiment=experiment,
                                ),
                            )
                        )
    events.sort(key=lambda se: se[1].ts)  # type: ignore[attr-defined]
    return events


def run(events: list, cfg: FunnelConfig | None = None, split_at: int | None = None):
    """Through a MonitorTask with the default rules: (experiment_windows rows, alerts)."""
    rules = RuleEngine([r.rule() for r in DEFAULT_RULES])

    def new() -> MonitorTask:
        return MonitorTask(FunnelOperator(cfg), rules, 0, 10**12)

    task = new()
    rows, alerts = [], []
    for i in range(0, len(events), 50):
        if split_at is not None and i >= split_at:
            state = task.snapshot()
            task = new()
            task.restore(state)
            split_at = None
        for source in ("impressions", "clicks", "conversions"):
            task.feed(source, [e for s, e in events[i : i + 50] if s == source], now_ms=0)
        task.tick(now_ms=0)
        out = task.collect()
        rows += as_dicts(out.rows.get("experiment_windows", []))
        alerts += out.alerts
    imp = Impression(impression_id="end", ts=END, campaign_id="c", user_id="u")
    task.feed("impressions", [imp], now_ms=0)
    task.feed(
        "clicks",
        [Click(click_id="end", impression_id="end", ts=END, campaign_id="c", user_id="u")],
        now_ms=0,
    )
    task.feed(
        "conversions",
        [Conversion(conversion_id="e", click_id="end", ts=END, campaign_id="c", user_id="u")],
        now_ms=0,
    )
    task.tick(now_ms=0)
    out = task.collect()
    rows += as_dicts(out.rows.get("experiment_windows", []))
    alerts += out.alerts
    return rows, alerts


def reference_p(events: list, cfg: FunnelConfig, metric: str, treatment: str) -> list[float]:
    """The always-valid p-value after each window, from the raw per-unit values with
    numpy (sample variances, ddof=1), eq. 11 of Johari, Pekelis & Walsh (2015)."""
    imps = {e.impression_id: e for s, e in events if s == "impressions"}
    clicks = {e.click_id: e for s, e in events if s == "clicks"}
    clicked: dict[str, float] = {}  # impression -> 0 (clicked), value once converted
    for s, e in events:
        if s == "clicks" and e.impression_id in imps:
            clicked.setdefault(e.impression_id, 0.0)
    for s, e in events:
        if s == "conversions":
            k = clicks[e.click_id]
            clicked[k.impression_id] = e.value
    tau = {"ctr": cfg.ctr_tau, "cvr": cfg.cvr_tau, "revenue_per_impression": cfg.revenue_tau}
    units: dict[str, list[list[float]]] = {"control": [], treatment: []}
    ps, p = [], 1.0
    starts = sorted({i.ts - i.ts % W for i in imps.values()})
    for start in starts:
        for arm in units:
            for i in imps.values():
                if i.variant != arm or not start <= i.ts < start + W:
                    continue
                if metric == "ctr":
                    units[arm].append(1.0 if i.impression_id in clicked else 0.0)
                elif metric == "cvr":
                    if i.impression_id in clicked:
                        units[arm].append(1.0 if clicked[i.impression_id] else 0.0)
                else:
                    units[arm].append(clicked.get(i.impression_id, 0.0))
        t, c = np.array(units[treatment]), np.array(units["control"])
        delta = t.mean() - c.mean()
        var = np.var(t, ddof=1) / len(t) + np.var(c, ddof=1) / len(c)
        if delta < 0 and var > 0:
            t2 = tau[metric] ** 2
            lam = math.sqrt(var / (var + t2)) * math.exp(t2 * delta**2 / (2 * var * (var + t2)))
            p = min(p, 1 / lam, 1.0)
        ps.append(p)
    return ps


@pytest.mark.parametrize("metric", ["ctr", "cvr", "revenue_per_impression"])
def test_p_values_are_the_formula_on_the_raw_values(metric: str) -> None:
    cfg = FunnelConfig()
    events = traffic(random.Random(3), 6, {"control": (0.1, 0.3), "treatment": (0.08, 0.2)}, 600)
    rows, _ = run(events, cfg)
    got = [
        r["p_value"]
        for r in sorted(rows, key=lambda r: r["window_start"])
        if r["metric"] == metric and r["variant"] == "treatment"
    ]
    want = reference_p(events, cfg, metric, "treatment")
    assert got == pytest.approx(want, rel=1e-9, abs=1e-300)
    assert min(want) < 1.0  # the treatment is worse: the evidence moved


def test_cvr_drop_stops_the_arm_and_names_both_values() -> None:
    events = traffic(random.Random(1), 8, {"control": (0.1, 0.3), "treatment": (0.1, 0.1)})
    rows, alerts = run(events)
    cvr = [a for a in alerts if a.rule == "experiment_guardrail_cvr" and a.status == "firing"]
    assert len(cvr) == 1, [(a.rule, a.status) for a in alerts]
    (alert,) = cvr
    assert (alert.kind, alert.severity, alert.entity) == ("experiment", "critical", "exp/treatment")
    d = alert.details
    assert d["treatment_value"] < 0.2 < d["control_value"] and d["always_valid_p"] < 0.001
    assert alert.message.startswith("stop or roll back arm treatment of exp: CVR ")
    assert f"{d['treatment_value']:.1%} against {d['control_value']:.1%}" in alert.message
    # CTR was not touched: no CTR guardrail fires
    assert not [a for a in alerts if a.rule == "experiment_guardrail_ctr"]
    metrics = {(r["metric"], r["variant"]) for r in rows}
    assert ("cvr", "treatment") in metrics and ("revenue_per_impression", "control") in metrics
    control_rows = [r for r in rows if r["variant"] == "control"]
    assert all(r["p_value"] is None for r in control_rows)


def test_equal_arms_raise_nothing() -> None:
    events = traffic(random.Random(2), 8, {"control": (0.1, 0.3), "treatment": (0.1, 0.3)})
    _, alerts = run(events)
    assert not alerts


def test_arrival_order_and_restore_give_the_same_rows() -> None:
    rng = random.Random(4)
    events = traffic(rng, 4, {"control": (0.1, 0.3), "b": (0.1, 0.15)}, 300)
    whole, _ = run(events)
    key = lambda r: (r["window_start"], r["variant"], r["metric"])  # noqa: E731
    resumed, _ = run(events, split_at=len(events) // 2)
    assert sorted(whole, key=key) == sorted(resumed, key=key)
    assert len(whole) == 4 * 2 * 3


def test_revenue_false_alarm_rate_under_continuous_monitoring() -> None:
    """A/A on revenue per impression (mostly zeros, lognormal order values): the share of
    600 experiments whose always-valid p ever falls below alpha over 40 looks stays at
    about alpha (Ville's inequality; the normal approximation on sums of 2,000 units)."""
    rng = np.random.default_rng(11)
    sims, looks, per_window, rate, alpha, tau2 = 600, 40, 2000, 0.02, 0.05, 0.1**2
    ever = 0
    for _ in range(sims):
        p = 1.0
        stats = np.zeros((2, 3))  # per arm: n, sum, sum of squares
        for _ in range(looks):
            for arm in range(2):
                k = rng.binomial(per_window, rate)
                v = rng.lognormal(3.0, 0.5, size=k)
                stats[arm] += (per_window, v.sum(), (v * v).sum())
            (n1, s1, q1), (n0, s0, q0) = stats
            var = (q1 - s1 * s1 / n1) / (n1 - 1) / n1 + (q0 - s0 * s0 / n0) / (n0 - 1) / n0
            delta = s1 / n1 - s0 / n0
            if delta < 0:
                p = always_valid_p(p, delta, var, tau2)
        ever += p < alpha
    # one-sided use of a two-sided bound: at most alpha; binomial s.e. ~0.009
    assert ever / sims <= alpha + 0.02, ever / sims


def test_a_better_treatment_gathers_no_evidence_against_it() -> None:
    """One-sided: a treatment converting more than the control keeps p = 1."""
    events = traffic(random.Random(6), 6, {"control": (0.1, 0.1), "treatment": (0.15, 0.3)})
    rows, alerts = run(events)
    treated = [r["p_value"] for r in rows if r["variant"] == "treatment"]
    assert treated and all(p == 1.0 for p in treated)
    assert not alerts
