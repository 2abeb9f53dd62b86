"""Change detection on residuals against an expected value, with thresholds from a
false-alarm budget (operators/change.py, "Residuals and a false-alarm budget")."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest

from operators.base import Observation
from operators.change import (
    ChangeConfig,
    ChangeDetectors,
    adwin_delta,
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
    assert adwin_delta(1.0, 1440.0) == pytest.approx(1 / 1.44e6)
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
    assert det._new_detector("adwin", residual=True).delta == pytest.approx(1 / 1.44e6)
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
    state = first.snapshot()
    state["series"] = [
        [*row[:6], [[ts, v] for ts, v, _ in row[6]], row[7]] for row in state["series"]
    ]
    second = ChangeDetectors()
    second.restore(state)
    assert not second.series[("ctr", "ctr", "c1")].residual
    assert head + second.observe(obs[100:]) == whole
