"""Change detection on residuals against an expected value, with thresholds from a
false-alarm budget (operators/change.py, "Residuals and a false-alarm budget")."""

from __future__ import annotations

import math
import pickle

import msgspec
import numpy as np
import pytest
from river import drift

from operators.base import Observation
from operators.change import (
    AdwinParams,
    ChangeConfig,
    ChangeDetectors,
    adwin_cuts_per_log_width,
    adwin_delta,
    effect_exceeds,
    expected_value,
    page_hinkley_threshold,
)
from operators.ctr import CtrConfig
from operators.ctr_evidence import CtrJudge

T0 = 1_795_000_020_000
W = 60_000
DAY = 1440


def simulated_cusum_arl(k: float, h: float, paths: int, seed: int) -> float:
    """Mean run length of S_t = max(0, S_{t-1} + x_t - k) > h, x_t ~ N(0, 1) iid:
    an independent Monte-Carlo reference for Siegmund's approximation."""
    rng = np.random.default_rng(seed)
    s = np.zeros(paths)
    alive = np.ones(paths, dtype=bool)
    run_length = np.zeros(paths)
    step = 0
    while alive.any():
        step += 1
        idx = np.flatnonzero(alive)
        s[idx] = np.maximum(0.0, s[idx] + rng.standard_normal(idx.size) - k)
        crossed = idx[s[idx] > h]
        run_length[crossed] = step
        alive[crossed] = False
    return float(run_length.mean())


@pytest.mark.parametrize(("k", "arl0"), [(0.75, 2000.0), (0.5, 1000.0)])
def test_page_hinkley_threshold_gives_the_simulated_arl(k: float, arl0: float) -> None:
    h = page_hinkley_threshold(k, arl0)
    # 4,000 run lengths (about exponential): standard error of the mean ~1.6 %
    measured = simulated_cusum_arl(k, h, 4000, seed=int(arl0))
    assert abs(measured / arl0 - 1.0) < 0.08, (h, measured)


def test_thresholds_from_the_budget() -> None:
    # hand check of the formula: ARL0(h) = (e^a - a - 1) / (2 k^2), a = 2 k (h + 1.166)
    h = page_hinkley_threshold(0.75, 1440 * 1000.0)
    a = 1.5 * (h + 1.166)
    assert math.isclose((math.exp(a) - a - 1) / (2 * 0.75**2), 1.44e6, rel_tol=1e-9)
    assert page_hinkley_threshold(0.75, 2.88e6) > h  # a larger ARL0, a higher threshold
    assert adwin_delta(1.0, 1440.0) == pytest.approx(1 / 1.44e6 / adwin_cuts_per_log_width())
    with pytest.raises(ValueError):
        page_hinkley_threshold(0.75, 1.0)
    with pytest.raises(ValueError):
        ChangeConfig(false_alarms_per_1000_entity_days=0.0)
    with pytest.raises(ValueError):
        ChangeConfig(residual_direction="sideways")
    # the detectors of a residual series carry the derived thresholds
    det = ChangeDetectors()
    ph = det._new_detector("page_hinkley", residual=True)
    assert ph.mode == "down" and ph.threshold == pytest.approx(h)
    assert det._new_detector("adwin", residual=True).delta == pytest.approx(
        adwin_delta(1.0, 1440.0)
    )
    # a raw series keeps the configured parameters
    assert det._new_detector("page_hinkley").threshold == 12.0
    assert det._new_detector("adwin").delta == 0.002


def cycling_campaign(
    seed: int, minutes: int, drop: tuple[int, int, float] | None = None, with_baseline: bool = True
) -> list[Observation]:
    """A campaign whose CTR swings +-30 % and traffic +-80 % over the day; its expected
    CTR is the true one (the baseline an oracle would have). `drop` = (start, end,
    factor) multiplies the CTR in [start, end) but not the expected value."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(minutes):
        phase = 2 * math.pi * t / DAY
        p = 0.03 * (1 + 0.3 * math.sin(phase))
        n = int(1000 * (1 + 0.8 * math.sin(phase + 1.0)))
        q = p * drop[2] if drop and drop[0] <= t < drop[1] else p
        k = int(rng.binomial(n, q))
        details: dict = {"impressions": n, "clicks": k}
        if with_baseline:
            details["baseline_ctr"] = p
        start = T0 + t * W
        out.append(Observation("ctr", "c1", "ctr", k / n, start + W, n, start, start + W, details))
    return out


def fired(changes: list[Observation]) -> list[tuple[str, int, str]]:
    return [
        (c.details["method"], (c.window_start - T0) // W, c.details["direction"])
        for c in changes
        if c.value == 1.0
    ]


def test_daily_cycle_is_a_change_raw_but_not_as_a_residual() -> None:
    raw = fired(ChangeDetectors().observe(cycling_campaign(1, 3 * DAY, with_baseline=False)))
    assert len(raw) >= 6  # the raw CTR's day reads as changes (both methods, every day)
    quiet = fired(ChangeDetectors().observe(cycling_campaign(1, 3 * DAY)))
    assert quiet == []


def test_a_drop_below_the_expected_value_is_found_and_its_end_is_not_a_change() -> None:
    start, end = 2000, 2060  # the CTR falls to 60 % for an hour
    obs = cycling_campaign(2, 2400, drop=(start, end, 0.6))
    changes = ChangeDetectors().observe(obs)
    hits = fired(changes)
    assert {m for m, _, _ in hits} == {"page_hinkley", "adwin"}
    assert all(start <= i < end + 5 and d == "down" for _, i, d in hits), hits
    first = next(c for c in changes if c.value == 1.0 and c.details["method"] == "page_hinkley")
    assert (first.window_start - T0) // W - start <= 10
    # levels in the metric's units (the CTR), residuals beside them
    assert first.details["level_after"] < first.details["level_before"]
    assert first.details["residual_after"] < -2 < first.details["residual_before"]
    assert first.details["latest"] == obs[(first.window_start - T0) // W].value


def test_up_direction_when_asked_and_not_by_default() -> None:
    obs = cycling_campaign(3, 2400, drop=(2000, 2060, 1.5))  # a rise to 150 %
    assert fired(ChangeDetectors().observe(obs)) == []
    ups = fired(ChangeDetectors(ChangeConfig(residual_direction="up")).observe(obs))
    assert ups and all(d == "up" for _, _, d in ups)


def test_series_turns_residual_at_its_first_expected_value() -> None:
    det = ChangeDetectors()
    raw = cycling_campaign(4, 40, with_baseline=False)
    judged = cycling_campaign(4, 80)[40:]
    det.observe(raw)
    series = det.series[("ctr", "ctr", "c1")]
    assert not series.residual and series.count == 40
    det.observe(judged[:10])
    series = det.series[("ctr", "ctr", "c1")]
    assert series.residual and series.count == 10  # the raw points were dropped
    o = judged[0]
    mean, sd = expected_value(o)  # type: ignore[misc]
    assert series.history[0][1] == pytest.approx((o.value - mean) / sd)
    assert series.raw[0] == o.value
    det.observe(raw[:5])  # no expected value: skipped by a residual series
    assert det.series[("ctr", "ctr", "c1")].count == 10
    assert expected_value(raw[0]) is None


def test_residual_series_restore_continues_identically() -> None:
    obs = cycling_campaign(5, 2200, drop=(2000, 2100, 0.5))
    whole = ChangeDetectors().observe(obs)
    assert fired(whole)
    first = ChangeDetectors()
    head = first.observe(obs[:2030])
    state = msgspec.msgpack.decode(msgspec.msgpack.encode(first.snapshot()))
    second = ChangeDetectors()
    second.restore(state)
    assert second.series[("ctr", "ctr", "c1")].residual
    assert head + second.observe(obs[2030:]) == whole


def test_ctr_judge_observation_carries_its_baseline() -> None:
    judge = CtrJudge(CtrConfig())
    seen = []
    for w in range(40):
        seen += judge.judge([(T0 + w * W, "c1", "", 500, 10)])
    ctr = [o for o in seen if o.metric == "ctr"]
    drop = [o for o in seen if o.metric == "ctr_drop"]
    assert drop, "the baseline must be ready within 40 windows"
    with_base = [o for o in ctr if "baseline_ctr" in o.details]
    assert len(with_base) == len(drop)
    for c, d in zip(with_base, drop, strict=True):
        assert c.ts == d.ts and c.details["baseline_ctr"] == d.details["baseline_ctr"]
    assert all("baseline_ctr" not in o.details for o in ctr[: len(ctr) - len(drop)])


def test_a_snapshot_from_before_residuals_restores() -> None:
    """Snapshots written before this change have [ts, value] history points and no
    residual flag: they restore as raw series and continue as before."""
    obs = cycling_campaign(6, DAY, with_baseline=False)
    whole = ChangeDetectors().observe(obs)
    assert fired(whole)  # the raw day's changes: something to continue identically
    first = ChangeDetectors()
    head = first.observe(obs[:100])
    # as state format 1 wrote it before residuals: positional, pickled river detectors
    state = {
        "series": [
            [kind, metric, entity, s.count, s.last_ts, s.scale, [[ts, v] for ts, v in s.history],
             {name: [pickle.dumps(m.detector, protocol=4), m.center, m.floor, m.last]
              for name, m in s.methods.items()}]
            for (kind, metric, entity), s in first.series.items()
        ],
        "max_ts": first.max_ts,
        "swept_at": first.swept_at,
    }  # fmt: skip
    assert any(row[7] for row in state["series"])  # detectors to upgrade
    state = msgspec.msgpack.decode(msgspec.msgpack.encode(state))
    second = ChangeDetectors()
    second.restore(state)
    assert not second.series[("ctr", "ctr", "c1")].residual
    assert head + second.observe(obs[100:]) == whole


def exponential_histogram_cuts(widths: int, m: int = 5, min_len: int = 5) -> list[int]:
    """Cut points ADWIN2 tests at each width W = 1..widths (index W), by building its
    exponential histogram point by point (Bifet & Gavalda 2007, section 4: at most m
    buckets of each size 2^i, an (m+1)-th merges the two oldest into one of size
    2^(i+1)); a cut between two adjacent buckets counts when both sides hold >= min_len
    points, as river's detect_change requires."""
    counts = [0]
    out = [0]
    for width in range(1, widths + 1):
        counts[0] += 1
        i = 0
        while counts[i] == m + 1:
            counts[i] -= 2
            if i + 1 == len(counts):
                counts.append(0)
            counts[i + 1] += 1
            i += 1
        sizes = [2**lvl for lvl in range(len(counts) - 1, -1, -1) for _ in range(counts[lvl])]
        older, cuts = 0, 0
        for size in sizes[:-1]:  # oldest first; no cut after the newest bucket
            older += size
            cuts += older >= min_len and width - older >= min_len
        out.append(cuts)
    return out


def test_cut_points_per_log_width_bound_the_histograms_cuts() -> None:
    bound = adwin_cuts_per_log_width(5, 10)
    cuts = exponential_histogram_cuts(20_000)
    ratios = [cuts[w] / math.log(w) for w in range(11, len(cuts))]
    assert max(ratios) <= bound
    # the count grows like m log2 W: far more cut points than the ln W river divides by
    assert cuts[1440] > 4 * math.log(1440)
    assert cuts[20_000] / math.log(20_000) > 0.5 * bound  # and the bound is not loose


def adwin_false_cuts(delta: float, series: int, points: int, seed: int) -> int:
    """Cuts river's ADWIN (clock 1, as ChangeDetectors runs it) reports on independent
    N(0, 1) points, clipped like the standardised residuals (no change anywhere)."""
    rng = np.random.default_rng(seed)
    cuts = 0
    for _ in range(series):
        adwin = drift.ADWIN(delta=delta, clock=1, min_window_length=5, grace_period=10)
        for x in np.clip(rng.standard_normal(points), -5.0, 5.0):
            adwin.update(float(x))
            cuts += adwin.drift_detected
    return cuts


@pytest.mark.parametrize("budget", [2_000.0, 20_000.0])
def test_adwin_delta_holds_the_budget_on_white_noise(budget: float) -> None:
    """Monte Carlo reference: false cuts on white noise per 1,000 series-days stay
    within the budget the delta was derived from. The budgets are far above the
    default (1) so that the bound, B * days / 1000 cuts, is a measurable count."""
    per_day = 1440.0
    series, points = 20, 2880  # 40 series-days
    cuts = adwin_false_cuts(adwin_delta(budget, per_day), series, points, seed=int(budget))
    allowed = budget * series * points / per_day / 1000.0
    assert cuts <= allowed, (cuts, allowed)
    # the bound is conservative (the checks of consecutive points share their data),
    # but the count is not blind: a delta of 0.1 cuts white noise within these points
    assert adwin_false_cuts(0.1, series, points, seed=int(budget)) > 0


def wandering_residuals(seed: int, minutes: int, drop: tuple[int, int, float] | None = None):
    """Residual observations (baseline 2 %, 2,000 impressions a window) whose true CTR
    wanders 0.3 noise sds above and 0.6 below the baseline in 6-hour halves (a trailing
    baseline's lag behind a daily cycle); `drop` = (start, end, sds) moves it further."""
    rng = np.random.default_rng(seed)
    p0, n = 0.02, 2000
    sd = math.sqrt(p0 * (1 - p0) / n)
    out = []
    for t in range(minutes):
        shift = 0.3 if (t // 360) % 2 == 0 else -0.6
        if drop and drop[0] <= t < drop[1]:
            shift -= drop[2]
        k = int(rng.binomial(n, p0 + shift * sd))
        start = T0 + t * W
        details = {"impressions": n, "clicks": k, "baseline_ctr": p0}
        out.append(Observation("ctr", "c1", "ctr", k / n, start + W, n, start, start + W, details))
    return out


def test_adwin_min_effect_ignores_the_wander_but_not_a_drop() -> None:
    only = ChangeConfig(methods=("adwin",))
    no_min = ChangeConfig(methods=("adwin",), adwin=AdwinParams(min_effect=None))
    quiet = [wandering_residuals(seed, 2 * DAY) for seed in range(3)]
    # without a minimum effect the 0.9-sd steps of the wander are cut on
    assert sum(len(fired(ChangeDetectors(no_min).observe(obs))) for obs in quiet) >= 3
    assert all(fired(ChangeDetectors(only).observe(obs)) == [] for obs in quiet)
    # a 2-sd drop for an hour is still found, within it
    obs = wandering_residuals(7, 2 * DAY, drop=(1500, 1560, 2.0))
    hits = fired(ChangeDetectors(only).observe(obs))
    assert hits and all(1500 <= i < 1565 and d == "down" for _, i, d in hits), hits


@pytest.mark.parametrize(("n0", "n1", "delta_prime"), [(200, 20, 0.05), (60, 60, 0.01)])
def test_one_cut_test_errs_with_probability_at_most_delta_prime(
    n0: int, n1: int, delta_prime: float
) -> None:
    """The building block of `adwin_delta`: river's eps_cut at delta' (its
    ln(2 ln W / delta) = ln(2 / delta')) is exceeded by |mean(W0) - mean(W1)| of
    N(0, 1) points with probability <= delta' (Monte Carlo, 40,000 pairs)."""
    rng = np.random.default_rng(n0 + n1)
    draws = 40_000
    a = rng.standard_normal((draws, n0)).mean(axis=1)
    b = rng.standard_normal((draws, n1)).mean(axis=1)
    width, min_len, variance = n0 + n1, 5, 1.0
    log_term = math.log(2.0 / delta_prime)
    m_recip = 1.0 / (n0 - min_len + 1) + 1.0 / (n1 - min_len + 1)
    eps = math.sqrt(2.0 * m_recip * variance * log_term) + 2.0 / 3.0 * log_term * m_recip
    rate = float(np.mean(np.abs(a - b) > eps))
    assert rate <= delta_prime, (rate, delta_prime, width)


def test_white_noise_residuals_raise_no_adwin_change_at_the_budget() -> None:
    """End to end at the default budget (1 per 1,000 entity-days): 12 series-days of
    binomial residuals around a correct baseline may raise 0.012 false changes in
    expectation; any one fails the test."""
    only = ChangeConfig(methods=("adwin",))
    rng = np.random.default_rng(11)
    for entity in range(6):
        p0, n = 0.01 * (entity + 1), 300 * (entity + 1)
        obs = []
        for t in range(2 * DAY):
            k = int(rng.binomial(n, p0))
            start = T0 + t * W
            details = {"impressions": n, "clicks": k, "baseline_ctr": p0}
            obs.append(
                Observation(
                    "ctr", f"c{entity}", "ctr", k / n, start + W, n, start, start + W, details
                )
            )
        assert fired(ChangeDetectors(only).observe(obs)) == []


@pytest.mark.parametrize("side", ["down", "both"])
def test_effect_test_errs_at_most_delta_at_the_edge_of_its_null(side: str) -> None:
    """Monte Carlo reference for `effect_exceeds`: N(0, 1) points whose mean drops by
    exactly the tolerated effect half-way (the worst case of H0: |mu0 - mu1| <= k)
    pass the test with probability <= delta; a drop of k + 2 sds almost always passes."""
    rng = np.random.default_rng(5)
    k, delta, draws = 0.5, 0.1, 3000
    step = np.r_[np.zeros(40), np.full(40, -k)]
    edge = sum(
        effect_exceeds(step + rng.standard_normal(80), k, 1.0, delta, 5, side) for _ in range(draws)
    )
    assert edge / draws <= delta, edge / draws
    big = np.r_[np.zeros(40), np.full(40, -(k + 2.0))]
    found = sum(
        effect_exceeds(big + rng.standard_normal(80), k, 1.0, delta, 5, side) for _ in range(200)
    )
    assert found >= 190
    # a rise is not a drop
    assert not effect_exceeds(-big, k, 1.0, delta, 5, "down")


def test_effect_test_one_split_matches_the_gaussian_tail() -> None:
    """With one split (10 points, 5 a side) the test's false-pass rate at the edge of
    its null is exactly P(Z > sqrt(2 ln(2 / delta))) (scipy), within Monte Carlo error."""
    from scipy.stats import norm

    rng = np.random.default_rng(9)
    k, delta, draws = 0.5, 0.5, 20_000
    step = np.r_[np.zeros(5), np.full(5, -k)]
    noise = rng.standard_normal((draws, 10))
    rate = np.mean([effect_exceeds(step + row, k, 1.0, delta, 5, "down") for row in noise])
    exact = float(norm.sf(math.sqrt(2.0 * math.log(2.0 / delta))))
    assert abs(rate - exact) < 4 * math.sqrt(exact * (1 - exact) / draws), (rate, exact)
    assert exact <= delta
