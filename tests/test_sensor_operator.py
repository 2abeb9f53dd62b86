"""Sensor operator against hand-computed cases and a brute-force numpy reference."""

from __future__ import annotations

import math
import random

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.rules import Rule, RuleEngine
from operators.sensor import SensorConfig, SensorOperator
from operators.task import MonitorTask
from schemas.events import SensorReading
from tests.row_dicts import as_dicts

T0 = 1_795_000_020_000  # 2026-11-18, divisible by 60 000
assert T0 % 60_000 == 0
SRC = "sensor-readings"


def reading(ts: int, sensor: str = "s1", **values: float) -> SensorReading:
    return SensorReading(sensor_id=sensor, ts=ts, values=values)


def run_all(op: SensorOperator, events: list[SensorReading], until: int | None = None):
    op.feed(SRC, events)
    op.advance(until if until is not None else max(e.ts for e in events) + 1)
    return op.collect()


def anomalies(out) -> list[dict]:
    return as_dicts(out.rows.get("sensor_anomalies", []))


# -- hand-computed cases --------------------------------------------------------


def test_spike_in_flat_series_is_flagged_by_zscore_and_iqr() -> None:
    # 40 readings alternating 10, 12 every 10 s, then 30: the spike's window
    # [t - 300 s, t) holds the 30 readings i = 10..39 (15 tens, 15 twelves).
    events = [reading(T0 + i * 10_000, temp=10.0 if i % 2 == 0 else 12.0) for i in range(40)]
    spike_ts = T0 + 400_000
    out = run_all(SensorOperator(), [*events, reading(spike_ts, temp=30.0)])
    rows = {r["method"]: r for r in anomalies(out)}
    assert sorted(rows) == ["iqr", "zscore"]  # nothing else in the whole series
    # mean 11, sample std sqrt(30 / 29) (deviations +-1), z = 19 / std
    z = rows["zscore"]
    assert z["score"] == pytest.approx(19 / math.sqrt(30 / 29), rel=1e-12)
    assert (z["value"], z["threshold"], z["ts"]) == (30.0, 3.0, spike_ts)
    assert (z["window_start"], z["window_end"]) == (spike_ts - 300_000, spike_ts)
    # Q1 = 10, Q3 = 12, IQR = 2, upper fence 12 + 1.5 * 2 = 15: (30 - 15) / 2 = 7.5
    iqr = rows["iqr"]
    assert iqr["score"] == pytest.approx(7.5, rel=1e-12)
    assert iqr["threshold"] == 15.0
    obs = {o.metric: o for o in out.observations}
    assert set(obs) == {"anomaly_zscore", "anomaly_iqr"}
    o = obs["anomaly_zscore"]
    assert (o.kind, o.entity, o.n, o.ts) == ("sensor", "s1/temp", 30, spike_ts)
    assert o.details["mean"] == pytest.approx(11.0) and o.details["reading"] == 30.0
    assert obs["anomaly_iqr"].details["q1"] == 10.0 and obs["anomaly_iqr"].details["q3"] == 12.0


def test_rising_series_is_flagged_once_per_episode() -> None:
    # the legacy run test, pinned (the default is Mann-Kendall since issue 14)
    cfg = SensorConfig(rise_test="runs")  # rise over >= 300 s with >= 5 readings
    values = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 2, 4, 6, 8, 10, 12, 11]
    events = [reading(T0 + i * 60_000, temp=float(v)) for i, v in enumerate(values)]
    out = run_all(SensorOperator(cfg), events)
    rows = anomalies(out)
    # first run starts at i = 0 and spans 300 s at i = 5 (value 6): rise 5;
    # second run starts at i = 10 (value 0) and spans 300 s at i = 15: rise 10
    assert [(r["method"], r["ts"], r["score"], r["window_start"]) for r in rows] == [
        ("rise", T0 + 5 * 60_000, 5.0, T0),
        ("rise", T0 + 15 * 60_000, 10.0, T0 + 10 * 60_000),
    ]
    # each episode: one observation when raised, one (value 0) when the run breaks
    assert [(o.metric, o.ts, o.value) for o in out.observations] == [
        ("anomaly_rise", T0 + 5 * 60_000, 5.0),
        ("anomaly_rise", T0 + 10 * 60_000, 0.0),
        ("anomaly_rise", T0 + 15 * 60_000, 10.0),
        ("anomaly_rise", T0 + 17 * 60_000, 0.0),
    ]


def test_short_or_slow_rises_are_not_flagged() -> None:
    # 5 increasing readings spanning only 240 s; then 4 spanning 400 s
    events = [reading(T0 + i * 60_000, temp=float(i)) for i in range(5)]
    events += [reading(T0 + 600_000 + i * 133_000, temp=float(i)) for i in range(4)]
    assert anomalies(run_all(SensorOperator(SensorConfig(rise_test="runs")), events)) == []


def test_constant_window_is_not_judged() -> None:
    events = [reading(T0 + i * 1_000, temp=5.0) for i in range(50)] + [reading(T0 + 50_000, temp=9)]
    assert anomalies(run_all(SensorOperator(SensorConfig(methods=("zscore", "iqr"))), events)) == []


def test_aggregates_match_numpy() -> None:
    rng = random.Random(3)
    events = [
        reading(T0 + rng.randrange(0, 300_000), sensor=rng.choice(["a", "b"]), x=rng.gauss(0, 5))
        for _ in range(500)
    ]
    out = run_all(SensorOperator(), events, until=T0 + 300_000)
    rows = as_dicts(out.rows["sensor_windows"])
    assert len(rows) == 10  # 5 minutes x 2 sensors
    for row in rows:
        vals = np.array(
            [
                e.values["x"]
                for e in events
                if e.sensor_id == row["sensor_id"]
                and row["window_start"] <= e.ts < row["window_end"]
            ]
        )
        assert row["window_end"] - row["window_start"] == 60_000
        assert row["metric"] == "x" and row["n"] == len(vals)
        assert (row["min"], row["max"]) == (vals.min(), vals.max())
        assert row["mean"] == pytest.approx(np.mean(vals), rel=1e-12)
        assert row["p95"] == pytest.approx(np.percentile(vals, 95), rel=1e-12)


# -- brute-force reference --------------------------------------------------------


def _reference(events: list[SensorReading], cfg: SensorConfig) -> list[tuple]:
    """zscore and iqr anomalies recomputed from scratch with numpy for every reading."""
    found = []
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for e in events:
        for metric, v in e.values.items():
            series.setdefault((e.sensor_id, metric), []).append((e.ts, v))
    for (sid, metric), points in sorted(series.items()):
        points.sort()
        ts = np.array([p[0] for p in points])
        xs = np.array([p[1] for p in points])
        for t, x in points:
            lo = np.searchsorted(ts, t - cfg.window_ms, side="left")
            hi = np.searchsorted(ts, t, side="left")  # strictly before t
            w = xs[lo:hi]
            if len(w) < cfg.min_points:
                continue
            std = np.std(w, ddof=1)
            if std > 0 and abs(x - np.mean(w)) / std > cfg.z_threshold:
                found.append((sid, metric, t, x, "zscore", abs(x - np.mean(w)) / std))
            q1, q3 = np.percentile(w, [25, 75])
            iqr = q3 - q1
            if iqr > 0:
                upper, lower = q3 + cfg.iqr_k * iqr, q1 - cfg.iqr_k * iqr
                if x > upper:
                    found.append((sid, metric, t, x, "iqr", (x - upper) / iqr))
                elif x < lower:
                    found.append((sid, metric, t, x, "iqr", (lower - x) / iqr))
    return sorted(found)


@pytest.mark.parametrize("offset", [0.0, 1e9])
def test_zscore_and_iqr_match_numpy_reference(offset: float) -> None:
    """Also with values near 1e9: the running sums must not lose the variance."""
    rng = random.Random(11)
    # the raw statistics against numpy: without the tail calibration (issue 14),
    # which only vetoes some of these verdicts and has its own tests
    cfg = SensorConfig(window_ms=60_000, min_points=20, methods=("zscore", "iqr"), calibrate=False)
    events = []
    for i in range(3000):
        x = rng.gauss(0, 1) if rng.random() > 0.01 else rng.gauss(0, 8)
        ts = T0 + i * 700 + rng.randrange(0, 300)  # strictly increasing per series
        events.append(reading(ts, sensor=f"s{i % 2}", temp=offset + x, hum=offset + 2 * x))
    out = run_all(SensorOperator(cfg), events)
    got = sorted(
        (r["sensor_id"], r["metric"], r["ts"], r["value"], r["method"], r["score"])
        for r in anomalies(out)
    )
    want = _reference(events, cfg)
    assert len(want) > 50
    assert [g[:5] for g in got] == [w[:5] for w in want]
    for g, w in zip(got, want, strict=True):
        assert g[5] == pytest.approx(w[5], rel=1e-6)


# -- event time, memory, checkpoints ----------------------------------------------


def _stream(rng: random.Random, n: int) -> list[SensorReading]:
    events = []
    t = T0
    level = {"s1": 0.0, "s2": 0.0, "s3": 0.0}
    for _ in range(n):
        t += rng.choice([0, 500, 1_000, 2_000, 3_000])  # equal timestamps too
        sid = rng.choice(["s1", "s2", "s3"])
        if rng.random() < 0.05:
            level[sid] = rng.choice([0.0, 1.0])  # switches rising mode
        x = rng.gauss(0, 1) if rng.random() > 0.03 else rng.gauss(0, 10)
        values = {"a": x + level[sid] * (t - T0) / 1_000, "b": rng.expovariate(1.0)}
        if rng.random() < 0.2:
            del values["b"]
        events.append(reading(t, sensor=sid, **values))
    return events


SMALL = SensorConfig(
    window_ms=30_000,
    min_points=8,
    rise_span_ms=8_000,
    rise_min_points=4,
    aggregate_window_ms=10_000,
    rise_test="runs",  # the streams' rising mode has runs; Mann-Kendall has its own tests
)


def _run(events, split_at=None, lateness_ms=0, batch=9, cfg=SMALL):
    def new_task() -> MonitorTask:
        return MonitorTask(SensorOperator(cfg), RuleEngine([]), lateness_ms, 10**12)

    task = new_task()
    rows: list = []
    obs: list = []
    for i in range(0, len(events), batch):
        if split_at is not None and i >= split_at:
            blob = msgspec.msgpack.encode(task.snapshot())  # must be plain msgpack data
            task = new_task()
            task.restore(msgspec.msgpack.decode(blob))
            split_at = None
        assert task.feed(SRC, events[i : i + batch], now_ms=0) == []
        task.tick(now_ms=0)
        out = task.operator.collect()
        rows += [(t, sorted(r.items())) for t, rs in out.rows.items() for r in as_dicts(rs)]
        obs += out.observations
    task.feed(SRC, [reading(T0 + 10**8, sensor="end", a=0.0)], now_ms=0)
    task.tick(now_ms=0)
    out = task.operator.collect()
    rows += [(t, sorted(r.items())) for t, rs in out.rows.items() for r in as_dicts(rs)]
    obs += out.observations
    return sorted(rows), sorted(obs, key=repr)


def test_stream_produces_every_method_and_forgets_silent_series() -> None:
    events = _stream(random.Random(5), 1500)
    op = SensorOperator(SMALL)
    peak = 0
    for i in range(0, len(events), 50):
        op.feed(SRC, events[i : i + 50])
        op.advance(events[i + 49].ts - 5_000 if i + 49 < len(events) else events[-1].ts)
        for s in op.series.values():
            # the window holds at most the last window_ms before its newest reading
            # (the series' own: window_ms stretched to hold min_points at its cadence)
            assert s.window_ms <= 60_000
            assert (
                s.last_ts is None
                or len(s.stats) == 0
                or s.stats.times[0] >= s.last_ts - s.window_ms
            )
        peak = max(peak, max(len(s.stats) for s in op.series.values()))
    methods = {r["method"] for r in as_dicts(op.collect().rows["sensor_anomalies"])}
    assert methods == {"zscore", "iqr", "rise"}
    assert peak < 60
    op.advance(events[-1].ts + 10**7)
    assert not op.series and not op.pending and not op.expiry and len(op.aggregates) == 0


def test_snapshot_restore_mid_stream_equals_uninterrupted() -> None:
    events = _stream(random.Random(7), 900)
    whole = _run(events)
    assert len(whole[0]) > 100
    for split in (100, 450, 801):
        assert _run(events, split_at=split) == whole


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), lateness_s=st.integers(1, 60), batch=st.integers(1, 40))
def test_shuffled_within_lateness_equals_sorted(seed: int, lateness_s: int, batch: int) -> None:
    rng = random.Random(seed)
    events = _stream(rng, 300)
    lateness = lateness_s * 1000
    shuffled = sorted(events, key=lambda e: e.ts + rng.uniform(0, lateness - 1))
    assert _run(shuffled, lateness_ms=lateness, batch=batch) == _run(events)


def test_rule_fires_per_spike_and_resolves_in_between() -> None:
    rules = RuleEngine(
        [Rule("spike", "sensor", "anomaly_zscore", ">", {"critical": 3.0}, cooldown_s=0)]
    )
    task = MonitorTask(SensorOperator(SensorConfig(methods=("zscore",))), rules, 0, 10**12)
    events = [
        reading(T0 + i * 5_000, temp=(10.0 if i % 2 else 12.0) + (40.0 if i in (50, 70) else 0))
        for i in range(90)
    ]
    task.feed(SRC, events, now_ms=0)
    task.feed(SRC, [reading(T0 + 10**6, sensor="end", temp=0.0)], now_ms=0)
    task.tick(now_ms=0)
    alerts = task.collect().alerts
    assert [(a.status, a.ts) for a in alerts] == [
        ("firing", T0 + 50 * 5_000),
        ("resolved", T0 + 51 * 5_000),
        ("firing", T0 + 70 * 5_000),
        ("resolved", T0 + 71 * 5_000),
    ]
    assert "temp" in alerts[0].entity and alerts[0].details["reading"] == 52.0


def test_a_window_that_can_never_hold_min_points_is_reported(caplog) -> None:
    """Issue 14: 5-minute readings with window_ms 300 s and min_points 30 never judge.
    With adapt_window=False that is logged and listed in `unjudgeable`, not silent."""
    import logging

    fixed = SensorConfig(adapt_window=False)
    slow, fast = SensorOperator(fixed), SensorOperator(fixed)
    with caplog.at_level(logging.WARNING, logger="operators.sensor"):
        slow.feed(SRC, [reading(T0 + i * 300_000, t=float(i)) for i in range(20)])
        slow.advance(T0 + 10**9)
        fast.feed(SRC, [reading(T0 + i * 1000, t=float(i)) for i in range(20)])
        fast.advance(T0 + 10**9)
    assert slow.unjudgeable == {"s1/t"}
    assert fast.unjudgeable == set()
    assert "never holds min_points=30" in caplog.text
    restored = SensorOperator(fixed)
    restored.restore(slow.snapshot())
    assert restored.unjudgeable == {"s1/t"}


def test_default_window_follows_the_cadence_of_a_slow_series() -> None:
    """The same defaults judge 5-minute data: the window stretches to min_points
    readings (30 x 300 s) once the cadence is measured (16 readings), so a spike
    after 60 readings is flagged."""
    rng = random.Random(2)
    events = [reading(T0 + i * 300_000, t=50.0 + rng.gauss(0, 1)) for i in range(60)]
    spike = reading(T0 + 60 * 300_000, t=70.0)
    op = SensorOperator()
    out = run_all(op, [*events, spike])
    assert op.unjudgeable == set()
    assert op.series[("s1", "t")].window_ms == 30 * 300_000
    flagged = {(r["method"], r["ts"]) for r in anomalies(out)}
    assert ("zscore", spike.ts) in flagged and ("iqr", spike.ts) in flagged


def test_noise_raises_no_rise_and_a_noisy_ramp_raises_one() -> None:
    """Mann-Kendall rise (the default): hours of 1 Hz noise (with its coin-flip runs
    of five rising readings) raise nothing; a ramp of 6 sigma over 5 min with the
    same noise raises one episode, which ends after the ramp."""
    rng = random.Random(4)
    noise = [reading(T0 + i * 1000, t=rng.gauss(20, 1)) for i in range(7200)]
    out = run_all(SensorOperator(SensorConfig(methods=("rise",))), noise)
    assert anomalies(out) == []
    ramp = [
        reading(T0 + i * 1000, t=20 + rng.gauss(0, 1) + (6 * min(max(i - 1000, 0), 300) / 300))
        for i in range(2000)
    ]
    out = run_all(SensorOperator(SensorConfig(methods=("rise",))), ramp)
    rows = anomalies(out)
    assert len(rows) == 1
    assert T0 + 1000_000 < rows[0]["ts"] <= T0 + 1300_000
    obs = [(o.ts, o.value > 0) for o in out.observations]
    assert [v for _, v in obs] == [True, False]
    assert out.observations[0].p_value is not None and out.observations[0].p_value < 1e-6


def test_five_rising_readings_of_hourly_data_are_not_a_rise() -> None:
    """The issue's CPU case: at a 5-minute cadence the legacy test fires on any five
    rising readings; Mann-Kendall does not on noise."""
    rng = random.Random(9)
    events = [reading(T0 + i * 300_000, cpu=rng.gauss(40, 5)) for i in range(2000)]
    legacy = run_all(SensorOperator(SensorConfig(methods=("rise",), rise_test="runs")), events)
    default = run_all(SensorOperator(SensorConfig(methods=("rise",))), events)
    assert len(anomalies(legacy)) > 5
    assert anomalies(default) == []


def test_snapshot_restore_equals_uninterrupted_with_the_new_defaults() -> None:
    """Mann-Kendall buckets, rise history, tail calibration, episodes and the cadence
    all survive snapshot -> msgpack -> restore mid-stream."""
    cfg = SensorConfig(window_ms=30_000, min_points=8, aggregate_window_ms=10_000)
    rng = random.Random(21)
    events = []
    for i in range(2400):
        ramp = 0.05 * max(0, i - 1500) if i < 1800 else 15.0
        x = rng.gauss(0, 1) if rng.random() > 0.01 else rng.gauss(0, 8)
        events.append(reading(T0 + i * 1000, sensor=f"s{i % 2}", a=x + ramp, b=rng.random()))
    whole = _run(events, cfg=cfg)
    methods = {dict(r)["method"] for t, r in whole[0] if t == "sensor_anomalies"}
    assert {"zscore", "iqr", "rise"} <= methods
    for split in (45, 999, 1701):
        assert _run(events, split_at=split, cfg=cfg) == whole


# -- warm-up (issue 14): a young series' window statistics are noisy ------------------

WARMUP_READINGS = 100  # min_points = 30 judged; the series' own score history is < 100


def _sensor_rules() -> RuleEngine:
    from streams.config import DEFAULT_RULES

    return RuleEngine([r.rule() for r in DEFAULT_RULES if r.kind == "sensor"])


def _fresh_sensor(seed: int, spike_at: int | None = None) -> tuple[list, list[SensorReading]]:
    """A new 3-metric sensor at 1 Hz (the default cadence), stationary normal noise,
    through the default sensor monitor and its default rules: its firing alerts."""
    rng = np.random.default_rng(seed)
    base = {"temperature": 65.0, "vibration": 3.0, "pressure": 5.0}
    sd = {"temperature": 1.5, "vibration": 0.3, "pressure": 0.2}
    events = []
    for i in range(WARMUP_READINGS):
        values = {m: float(base[m] + sd[m] * rng.standard_normal()) for m in base}
        if i == spike_at:
            values["vibration"] += 10 * sd["vibration"]  # a gross spike: 10 sigma
        events.append(reading(T0 + i * 1_000, sensor=f"fresh-{seed}", **values))
    task = MonitorTask(SensorOperator(), _sensor_rules(), 0, 10**12)
    task.feed(SRC, events, now_ms=0)
    task.tick(now_ms=0)
    task.finish()
    return [a for a in task.collect().alerts if a.status == "firing"], events


def _plain_fence_crossings(events: list[SensorReading], k: float = 3.0) -> int:
    """Readings beyond Q3 + k IQR / below Q1 - k IQR of all readings before them
    (numpy, once 30 are there): what plain Tukey fences with the sensor_iqr rule's
    line (1.5 IQR beyond the 1.5 fence) alerted on before the correction."""
    crossed = 0
    for metric in events[0].values:
        xs = np.array([e.values[metric] for e in events])
        for i in range(30, len(xs)):
            q1, q3 = np.percentile(xs[:i], [25, 75])
            crossed += bool(xs[i] > q3 + k * (q3 - q1) or xs[i] < q1 - k * (q3 - q1))
    return crossed


def test_fresh_sensors_raise_no_alert_in_their_first_readings() -> None:
    """100 fresh sensors, their first 100 readings each (the first 30 are not judged,
    the rest before the series' own calibration history of 100 scores exists): no
    alert. Plain fences on these windows are crossed far above their large-sample
    rate (231 IQR alerts per 5,000 fresh sensors in issue 14's in-process run;
    counted here with numpy), the prediction-interval p-value holds the per-sensor
    budget: 70 judged readings x 2 methods x 100 sensors at alpha 1 / 86,400 per
    sensor-reading (split over 3 metrics) expect 0.16 false flags in all."""
    alerts, crossings = [], 0
    for seed in range(100):
        fired, events = _fresh_sensor(seed)
        alerts += fired
        crossings += _plain_fence_crossings(events)
    assert crossings >= 3  # the data do hold the warm-up's false alarms
    assert alerts == []


@pytest.mark.parametrize("seed", range(5))
def test_a_gross_spike_after_min_points_still_alerts(seed: int) -> None:
    """The correction costs a young series no gross spike: 10 sigma at reading 60 (a
    60-reading window, no calibration history yet) fires zscore and iqr at once."""
    alerts, events = _fresh_sensor(seed, spike_at=60)
    spike = events[60].ts
    fired = {(a.rule, a.entity, a.ts) for a in alerts}
    entity = f"fresh-{seed}/vibration"
    assert {("sensor_zscore", entity, spike), ("sensor_iqr", entity, spike)} <= fired
    assert {a.ts for a in alerts} == {spike}


def test_a_checkpoint_of_four_field_pending_entries_restores() -> None:
    """Pending entries carry their reading's metric count since the warm-up fix; a
    checkpoint from before (ts, sensor, metric, value) restores and is judged. (Such a
    checkpoint is of state format 1, the positional one: written here by hand, readings
    fed and none judged yet, so it has no series and no aggregates.)"""
    op = SensorOperator(SensorConfig(methods=("zscore",), min_points=3))
    op.feed(SRC, [reading(T0 + i * 1_000, temp=float(i % 2)) for i in range(40)])
    snapshot = op.snapshot()
    assert snapshot["format"] == 3
    assert all(len(e) == 5 for e in snapshot["state"]["pending"])
    state = {
        "pending": [list(e[:4]) for e in snapshot["state"]["pending"]],
        "series": [],
        "aggregates": [],
    }
    restored = SensorOperator(SensorConfig(methods=("zscore",), min_points=3))
    restored.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(state)))
    restored.advance(T0 + 40_000)
    assert restored.series[("s1", "temp")].last_ts == T0 + 39_000
    # an old entry's metric count is unknown (0): the split keeps the checkpoint's own
    # per-sensor counts (none here, so one metric) rather than inventing one
    assert restored.metrics == {}
