"""Change detection (Page-Hinkley, ADWIN) on window observations."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from operators.base import Observation, Operator
from operators.change import (
    METHODS,
    ChangeConfig,
    ChangeDetectors,
    change_point,
    robust_scale,
)
from operators.rules import Rule, RuleEngine
from operators.task import MonitorTask

T0 = 1_795_000_020_000  # a minute boundary
W = 60_000
assert T0 % W == 0
IMPS = 5_000
# the binomial noise of a window's CTR at p = 0.02: sqrt(p (1 - p) / n) = 0.00198
SIGMA = (0.02 * 0.98 / IMPS) ** 0.5


def ctr_series(seed: int, rates: list[float], imps: int = IMPS, entity: str = "c1"):
    """One CTR observation per minute window, clicks ~ Binomial(imps, rate)."""
    rng = np.random.default_rng(seed)
    out = []
    for i, rate in enumerate(rates):
        clicks = int(rng.binomial(imps, rate))
        start = T0 + i * W
        out.append(
            Observation(
                "ctr",
                entity,
                "ctr",
                clicks / imps,
                ts=start + W,
                n=imps,
                window_start=start,
                window_end=start + W,
                details={"impressions": imps, "clicks": clicks},
            )
        )
    return out


def run(observations, detectors: ChangeDetectors | None = None, batch: int = 1):
    detectors = detectors or ChangeDetectors()
    out = []
    for i in range(0, len(observations), batch):
        out += detectors.observe(observations[i : i + batch])
    return out


def index(obs: Observation) -> int:
    return (obs.window_start - T0) // W


def firsts(changes, method: str, after: int) -> int | None:
    hits = [index(c) for c in changes if c.value == 1.0 and c.details["method"] == method]
    later = [i for i in hits if i >= after]
    return later[0] if later else None


# -- the measured behaviour of the defaults ------------------------------------

SHIFT_AT = 100
SEEDS = range(20)
# measured on SEEDS with the defaults: a drop of the CTR from 0.02 to 0.015
# (2.5 sigma of the window noise) is reported by Page-Hinkley 3..11 windows
# after the shift (median 7) and by ADWIN 8..16 windows after it (median 11)
DELAY_BOUND = {"page_hinkley": 11, "adwin": 16}


def test_level_shift_detected_by_both_methods_within_bound() -> None:
    delays: dict[str, list[int]] = {m: [] for m in METHODS}
    for seed in SEEDS:
        rates = [0.02] * SHIFT_AT + [0.015] * 60
        changes = run(ctr_series(seed, rates))
        for method in METHODS:
            before = [
                c
                for c in changes
                if c.value == 1.0 and c.details["method"] == method and index(c) < SHIFT_AT
            ]
            assert before == [], (seed, method)  # no false alarm before the shift
            first = firsts(changes, method, SHIFT_AT)
            assert first is not None, (seed, method)
            delays[method].append(first - SHIFT_AT)
            hit = next(c for c in changes if c.value == 1.0 and c.details["method"] == method)
            assert hit.metric == f"ctr_change_{method}"
            assert hit.kind == "change" and hit.entity == "c1"
            assert hit.details["direction"] == "down"
            assert hit.details["source_kind"] == "ctr" and hit.details["source_metric"] == "ctr"
            assert abs(hit.details["level_before"] - 0.02) < 2 * SIGMA
            assert abs(hit.details["level_after"] - 0.015) < 2 * SIGMA
            # the estimated change point is close to the true one
            assert abs(hit.details["change_ts"] - (T0 + SHIFT_AT * W + W)) <= 5 * W
            assert hit.n == first + 1  # points the series has seen
            assert (hit.window_start, hit.window_end) == (T0 + first * W, T0 + (first + 1) * W)
    for method in METHODS:
        assert max(delays[method]) <= DELAY_BOUND[method], (method, delays[method])
    assert sorted(delays["page_hinkley"])[10] <= 7
    assert sorted(delays["adwin"])[10] <= 11


# measured: on SEEDS x 300 stationary windows (6000 points) neither method
# raises a single change (on 200 x 300: Page-Hinkley 1, ADWIN 0)
STATIONARY_MAX = {"page_hinkley": 0, "adwin": 0}


def test_stationary_noise_raises_no_change() -> None:
    counts = dict.fromkeys(METHODS, 0)
    for seed in SEEDS:
        changes = run(ctr_series(1000 + seed, [0.02] * 300))
        for c in changes:
            if c.value == 1.0:
                counts[c.details["method"]] += 1
    assert counts == STATIONARY_MAX


def test_rise_is_up_and_scale_free() -> None:
    """The series is standardised: multiplying it by 10^4 changes nothing."""
    base = ctr_series(3, [0.02] * 60 + [0.03] * 30)
    scaled = [
        Observation("service", "m1", "latency_p99", o.value * 1e4, ts=o.ts, n=o.n) for o in base
    ]
    a = run(base)
    b = run(scaled)
    assert [(c.ts, c.value, c.details["method"]) for c in a] == [
        (c.ts, c.value, c.details["method"]) for c in b
    ]
    assert {c.details["direction"] for c in a if c.value == 1.0} == {"up"}
    assert {c.metric for c in b} == {"latency_p99_change_page_hinkley", "latency_p99_change_adwin"}


def test_change_is_followed_by_zero_then_silence() -> None:
    changes = run(ctr_series(5, [0.02] * 60 + [0.04] * 40))
    for method in METHODS:
        mine = [c for c in changes if c.details["method"] == method]
        assert mine, method
        # 1.0 at a change, 0.0 at the series' next point, nothing while quiet
        at = {index(c): c.value for c in mine}
        assert len(at) == len(mine)
        for i, value in at.items():
            if value == 0.0:
                assert at.get(i - 1) == 1.0
            else:
                assert at.get(i + 1) in (0.0, 1.0) or i + 1 == 100
        on = next(c for c in mine if c.value == 1.0)
        off = next(c for c in mine if c.value == 0.0)
        assert index(off) == index(on) + 1
        assert set(off.details) == set(on.details)
        assert off.details["latest"] != on.details["latest"]


def test_skips_small_windows_unwatched_metrics_and_non_finite() -> None:
    det = ChangeDetectors(ChangeConfig(min_samples=1000))
    series = ctr_series(5, [0.02] * 60 + [0.04] * 40, imps=999)
    noise = [
        Observation("ctr", "c1", "ctr_drop", 0.9, ts=T0, n=10**6),
        Observation("sensor", "s1", "anomaly_zscore", 9.0, ts=T0, n=10**6),
        Observation("ctr", "c2", "ctr", float("nan"), ts=T0, n=10**6),
    ]
    assert det.observe(series + noise) == []
    assert det.series == {}
    # per-metric override of min_samples
    det = ChangeDetectors(ChangeConfig(min_samples=1000, min_samples_by={"ctr.ctr": 500}))
    assert any(c.value == 1.0 for c in run(series, det))


def test_constant_series_waits_for_spread() -> None:
    det = ChangeDetectors()
    zeros = [
        Observation("service", "m1", "error_rate", 0.0, ts=T0 + i * W, n=1000) for i in range(200)
    ]
    assert run(zeros, det) == []
    series = det.series[("service", "error_rate", "m1")]
    assert series.scale is None and series.count == 200


def test_separate_series_per_entity_and_batching_is_irrelevant() -> None:
    a = ctr_series(7, [0.02] * 50 + [0.012] * 30, entity="a")
    b = ctr_series(8, [0.02] * 80, entity="b")
    interleaved = [o for pair in zip(a, b, strict=True) for o in pair]
    one_by_one = run(interleaved, batch=1)
    batched = run(interleaved, batch=16)
    assert one_by_one == batched
    assert {c.entity for c in one_by_one} == {"a"}
    assert run(a) == [c for c in one_by_one if c.entity == "a"]


# x changes at window 60 (up) and 100 (down): Page-Hinkley reports them at 63
# and 103, ADWIN at 68 and 112; the splits include right after a report (its
# 0.0 still due), inside the warm-up, and between reports
@pytest.mark.parametrize("split_at", [20, 35, 64, 69, 100, 104, 113])
def test_restore_continues_identically(split_at: int) -> None:
    obs = ctr_series(11, [0.02] * 60 + [0.03] * 40 + [0.02] * 40, entity="x") + ctr_series(
        12, [0.02] * 140, entity="y"
    )
    obs.sort(key=lambda o: (o.ts, o.entity))
    whole = run(obs)
    first = ChangeDetectors()
    head = run(obs[: 2 * split_at], first)
    state = msgspec.msgpack.decode(msgspec.msgpack.encode(first.snapshot()))
    second = ChangeDetectors()
    second.restore(state)
    tail = run(obs[2 * split_at :], second)
    assert head + tail == whole
    assert [(index(c), c.value) for c in whole if c.entity == "x" and c.value == 1.0] == [
        (63, 1.0),
        (68, 1.0),
        (103, 1.0),
        (112, 1.0),
    ]


def test_restore_of_an_empty_snapshot_is_fresh() -> None:
    det = ChangeDetectors()
    run(ctr_series(1, [0.02] * 50), det)
    det.restore({})
    assert det.series == {} and det.snapshot()["state"]["series"] == {}


def test_series_silent_for_expire_ms_are_forgotten() -> None:
    det = ChangeDetectors(ChangeConfig(expire_ms=10 * W))
    run(ctr_series(1, [0.02] * 5, entity="old"), det)
    late = [Observation("ctr", "new", "ctr", 0.02, ts=T0 + (100 + i) * W, n=IMPS) for i in range(5)]
    run(late, det)
    assert set(det.series) == {("ctr", "ctr", "new")}


def test_helpers() -> None:
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 2.0, 5000)
    assert abs(robust_scale(noise) - 2.0) < 0.1
    shifted = np.concatenate([noise[:2500], noise[2500:] + 50.0])  # one jump: scale unmoved
    assert abs(robust_scale(shifted) - 2.0) < 0.1
    assert robust_scale([1.0, 1.0, 1.0]) == 0.0
    assert robust_scale([0.0, 0.0, 0.0, 1.0]) > 0  # falls back to the std
    v = np.concatenate([np.zeros(30), np.ones(10)])
    assert change_point(v) == 30
    with pytest.raises(ValueError):
        ChangeConfig(methods=("cusum",))


# -- inside a MonitorTask -------------------------------------------------------


class Replay(Operator):
    """An operator that emits given observations when the watermark passes them."""

    sources = ("in",)

    def __init__(self, observations: list[Observation]) -> None:
        super().__init__()
        self.pending = list(observations)

    def feed(self, source, events) -> None:
        pass

    def advance(self, watermark: int) -> None:
        ready = [o for o in self.pending if o.ts <= watermark]
        self.pending = [o for o in self.pending if o.ts > watermark]
        self._out.observations.extend(ready)

    def snapshot(self):
        return {"i": 0}

    def restore(self, state) -> None:
        pass


class Tick:
    def __init__(self, ts: int) -> None:
        self.ts = ts


def test_task_raises_and_resolves_change_alerts_and_checkpoints() -> None:
    obs = ctr_series(5, [0.02] * 60 + [0.04] * 40)
    rules = [
        Rule(
            f"ctr_change_{m}",
            "change",
            f"ctr_change_{m}",
            ">=",
            {"warning": 0.5},
            cooldown_s=3600,
            message="{source_metric} of {entity} changed {direction}: "
            "{level_before:.4g} -> {level_after:.4g} ({method})",
        )
        for m in METHODS
    ]

    def new_task(with_changes: bool = True) -> MonitorTask:
        changes = ChangeDetectors() if with_changes else None
        return MonitorTask(Replay(obs), RuleEngine(rules), 0, 10**12, changes=changes)

    task = new_task()
    alerts = []
    for o in obs:
        task.feed("in", [Tick(o.ts)], now_ms=0)
        task.tick(now_ms=0)
        alerts += task.collect().alerts
    assert {a.rule for a in alerts} == {f"ctr_change_{m}" for m in METHODS}
    for m in METHODS:
        mine = [a for a in alerts if a.rule == f"ctr_change_{m}"]
        assert [a.status for a in mine] == ["firing", "resolved"]
        assert mine[0].kind == "change" and "changed up" in mine[0].message
    assert task.snapshot()["state"]["changes"] is not None

    # without change detection the snapshot has none; a task with it
    # restores such a snapshot (fresh detectors), and the reverse works too
    plain = new_task(with_changes=False)
    assert plain.snapshot()["state"]["changes"] is None
    new_task().restore(plain.snapshot())
    new_task(with_changes=False).restore(task.snapshot())
    # positional construction is unchanged
    assert MonitorTask(Replay([]), RuleEngine([]), 0, 10**12).changes is None
