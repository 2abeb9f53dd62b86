"""The compiled k-means distance (`operators/detectors/kmeans.py`) and the cluster
monitor's compiled per-entity loop (`operators/cluster_kernel.py`, issue 18 point 1)
against independent references, bit for bit:

- the detector against river's own `StandardScaler` and `KMeans` (scaled points,
  scaler statistics including which features river's dicts hold, centres after each
  `learn_one`) over hypothesis-generated streams;
- `v ** 0.5` as CPython computes it (libm's `pow`, which in rare cases differs from
  `sqrt` in the last bit), on values where the two differ;
- the monitor against a pure-Python reading-by-reading reference (river's objects,
  `operators.rolling.RecentQuantile`, the held/winsorised runs, the learning budget)
  whatever the batching.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from river import cluster, preprocessing

from operators.cluster import ClusterConfig, ClusterOperator, PendingReadings, items_of
from operators.detectors.kmeans import HALF, KMeansDistance, ScalerState, clamped, transform
from operators.rolling import RecentQuantile
from schemas.events import SensorReading

T0 = 1_795_000_020_000
SRC = "sensor-readings"

# readings: a scale per feature (tiny spreads make large scaled coordinates, a
# constant feature keeps a zero variance) and values around it
values = st.one_of(
    st.floats(-1e3, 1e3, allow_nan=False),
    st.sampled_from([0.0, 1.0, -2.5]),
    st.floats(-1e-150, 1e-150, allow_nan=False),
    st.floats(-1e100, 1e100, allow_nan=False),
)


def river_pair(
    features: tuple[str, ...], k: int, halflife: float, seed: int
) -> tuple[preprocessing.StandardScaler, cluster.KMeans]:
    model = cluster.KMeans(n_clusters=k, halflife=halflife, seed=seed)
    for c in range(k):
        for f in features:
            model.centers[c][f]  # draws the coordinate, in the detector's order
    return preprocessing.StandardScaler(), model


def nearest_by_hand(z: dict[str, float], centers: list[dict[str, float]], features) -> tuple:
    """The distance as the detector defines it: squares summed in feature order."""
    best, best_c = math.inf, -1
    for c, center in enumerate(centers):
        d2 = 0.0
        for f in features:
            d2 += (center[f] - z[f]) * (center[f] - z[f])
        if d2 < best:
            best, best_c = d2, c
    return math.sqrt(best), best_c


@settings(max_examples=150, deadline=None)
@given(
    nf=st.integers(1, 4),
    k=st.integers(1, 5),
    halflife=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**16),
    stream=st.lists(
        st.tuples(st.lists(values, min_size=4, max_size=4), st.booleans()), max_size=60
    ),
)
def test_compiled_detector_is_rivers_arithmetic(nf, k, halflife, seed, stream) -> None:
    features = ("a", "b", "c", "d")[:nf]
    det = KMeansDistance(features, n_clusters=k, halflife=halflife, seed=seed)
    scaler, model = river_pair(features, k, halflife, seed)
    for raw, learn in stream:
        p = dict(zip(features, raw, strict=False))
        z = clamped(scaler.transform_one(p))
        assert det.transform_one(p) == z  # scaled and clamped, bit for bit
        centers = [dict(model.centers[c]) for c in range(k)]
        distance, c = det.nearest_one(p)
        assert (distance, c) == nearest_by_hand(z, centers, features)
        if learn:  # else scored only (the monitor's budget)
            det.learn_one(p)
            scaler.learn_one(p)
            model.learn_one(clamped(scaler.transform_one(p)))
        # the dicts' keys too: a transform alone creates river's variances (and means
        # when the variance is not zero), a learn all three
        assert det.scaler_state() == ScalerState(
            counts=dict(scaler.counts), means=dict(scaler.means), vars=dict(scaler.vars)
        )
        assert det.centers.tolist() == [[model.centers[c][f] for f in features] for c in range(k)]


def test_the_scale_divides_by_pow_not_sqrt() -> None:
    """river divides by `v ** 0.5` (C's pow); on variances where pow and sqrt differ in
    the last bit, the kernel's scaled value is CPython's."""
    rng = np.random.default_rng(3)
    v = rng.random(400_000) * 10.0 ** rng.integers(-10, 10, 400_000)
    differ = [x for x in v.tolist() if x**0.5 != math.sqrt(x)]
    # the case exists, and changes the scaled value (so this test can fail)
    assert sum(1.0 / x**0.5 != 1.0 / math.sqrt(x) for x in differ[:200]) > 10
    for var in differ[:200]:
        det = np.array([1.0, 1.0, 0.0, var, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
        transform(np.array([1.0]), det, HALF)  # one feature, mean 0, reading 1
        assert det[8] == 1.0 / var**0.5


class Reference:
    """The monitor reading by reading in pure Python (what `operators.cluster` did
    before it was compiled): river's scaler and k-means, RecentQuantile, runs held
    aside or winsorised, the learning budget."""

    def __init__(self, cfg: ClusterConfig, features: tuple[str, ...]) -> None:
        self.cfg, self.features = cfg, features
        self.scaler, self.model = river_pair(features, cfg.n_clusters, cfg.halflife, cfg.seed)
        self.recent = RecentQuantile(cfg.history)
        self.seen = self.learn_batch = self.learnt = 0
        self.active: dict[str, bool] = {}
        self.held: list[tuple[int, float, float]] = []
        self.long_run = False
        self.short_run = max(1, int(cfg.history * (1.0 - cfg.quantile)))
        self.out: list[tuple] = []

    def reading(self, ts: int, sid: str, x: dict[str, float]) -> None:
        cfg, recent = self.cfg, self.recent
        z = clamped(self.scaler.transform_one(x))
        centers = [dict(self.model.centers[c]) for c in range(cfg.n_clusters)]
        distance, center = nearest_by_hand(z, centers, self.features)
        if self.seen >= cfg.warmup:
            tau = recent.quantile(cfg.quantile)
            anomalous = distance > tau > 0.0
            start, n = recent.first_ts(), len(recent)
            if anomalous and self.long_run:
                recent.add(ts, tau)
            elif anomalous:
                self.held.append((ts, distance, tau))
                if len(self.held) > self.short_run:
                    for t, _, h in self.held:
                        recent.add(t, h)
                    self.held, self.long_run = [], True
            else:
                for t, d, _ in self.held:
                    recent.add(t, d)
                self.held, self.long_run = [], False
                recent.add(ts, distance)
            if anomalous or self.active.get(sid, False):
                if anomalous:
                    self.active[sid] = True
                else:
                    del self.active[sid]
                ratio = distance / tau if tau > 0.0 else 0.0
                self.out.append((ts, sid, anomalous, distance, tau, ratio, start, n, center))
        else:
            recent.add(ts, distance)
        self.seen += 1
        batch = ts - ts % cfg.learn_batch_ms
        if batch != self.learn_batch:
            self.learn_batch, self.learnt = batch, 0
        if self.learnt < cfg.max_learn_per_batch:
            self.learnt += 1
            self.scaler.learn_one(x)
            self.model.learn_one(clamped(self.scaler.transform_one(x)))


@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(1, 4),
    warmup=st.integers(1, 30),
    history=st.integers(3, 40),
    quantile=st.sampled_from([0.5, 0.8, 0.95]),
    budget=st.integers(1, 20),
    stream=st.lists(
        st.tuples(
            st.integers(0, 3000),  # gap to the previous reading, ms
            st.sampled_from(["s1", "s2", "s3"]),
            st.floats(-5, 5, allow_nan=False),
            st.floats(-5, 5, allow_nan=False),
            st.booleans(),  # a far reading
        ),
        min_size=1,
        max_size=200,
    ),
    cuts=st.lists(st.integers(1, 40), min_size=1, max_size=10),
)
def test_the_compiled_monitor_is_the_reading_by_reading_reference(
    k, warmup, history, quantile, budget, stream, cuts
) -> None:
    cfg = ClusterConfig(
        n_clusters=k,
        warmup=warmup,
        history=history,
        quantile=quantile,
        halflife=0.2,
        seed=11,
        max_learn_per_batch=budget,
        learn_batch_ms=5_000,
        group_by="site",  # one model, several sensors: each sensor's alert state
    )
    events, t = [], T0
    for gap, sid, a, b, far in stream:
        t += gap
        v = {"a": a * 40 if far else a, "b": b + (30.0 if far else 0.0)}
        events.append(SensorReading(sensor_id=sid, ts=t, values=v, site="plant"))
    ref = Reference(cfg, ("a", "b"))
    op = ClusterOperator(cfg)
    got, i, c = [], 0, 0
    while i < len(events):  # batches of varying size, each released at once
        chunk = events[i : i + cuts[c % len(cuts)]]
        i, c = i + len(chunk), c + 1
        # the reference: what the watermark releases, in (ts, sensor, values) order
        for e in sorted(chunk, key=lambda e: (e.ts, e.sensor_id, sorted(e.values.items()))):
            ref.reading(e.ts, e.sensor_id, e.values)
        op.feed(SRC, chunk)
        op.advance(chunk[-1].ts + 1)
        out = op.collect()
        rows = iter(out.rows.get("sensor_anomalies", []))
        for o in out.observations:
            anomalous = o.details["distance"] > o.details["distance_threshold"] > 0.0
            row = next(rows) if anomalous else None
            if row is not None:
                assert (row.ts, row.value, row.threshold, row.score) == (
                    o.ts,
                    o.details["distance"],
                    o.details["distance_threshold"],
                    o.value,
                )
            d = o.details
            distance, tau, centre = d["distance"], d["distance_threshold"], d["cluster"]
            got.append(
                (o.ts, o.entity, anomalous, distance, tau, o.value, o.window_start, o.n, centre)
            )
    assert got == ref.out
    m = op.models[("site", "plant")]
    assert (m.seen, m.learn_batch, m.learnt) == (ref.seen, ref.learn_batch, ref.learnt)
    assert (m.held, m.long_run, m.active) == (ref.held, ref.long_run, ref.active)
    assert list(m.active) == list(ref.active)  # in the same order
    assert m.recent_state().values == list(ref.recent.values)
    assert m.recent_state().times == list(ref.recent.times)
    assert m.detector.centers.tolist() == [
        [ref.model.centers[c][f] for f in ("a", "b")] for c in range(k)
    ]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 5),
            st.sampled_from(["a", "b"]),
            st.dictionaries(
                st.sampled_from(["x", "y"]), st.sampled_from([0.0, 1.0, 2, -0.5]), min_size=1
            ),
            st.sampled_from(["", "site"]),
        ),
        max_size=30,
    ),
    st.integers(0, 7),
)
def test_pending_readings_are_released_in_entry_order(readings, watermark) -> None:
    """The buffer keeps the events' dicts but releases them as the state's `Entry`
    tuples sort (time, sensor, sorted float items, site), ties with different values
    included; and its state is those tuples."""
    pending = PendingReadings()
    pending.held += readings
    entries = sorted((t, s, items_of(v), site) for t, s, v, site in readings)
    assert sorted(pending.state()) == entries  # held as they came
    got = [(t, s, items_of(v), site) for t, s, v, site in pending.release(watermark)]
    assert got == [e for e in entries if e[0] < watermark]
    assert pending.state() == [e for e in entries if e[0] >= watermark]
