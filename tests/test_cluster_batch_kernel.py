"""The cluster monitor's one compiled call per release across entities
(`operators.cluster_kernel.run_table`, `operators.cluster.EntitySlots`; issue 18
point 3) against independent references, bit for bit:

- the kernel: `run_table` over interleaved readings of several entities (different
  feature counts, step sizes, out-of-range readings) equals `run_entity` run per
  entity over that entity's readings (the per-entity path it replaces): the same
  output rows and the same state arrays;
- the monitor: interleaved sensors, entities appearing mid-run, readings missing
  a feature, batches of any size and a snapshot -> msgpack -> restore mid-run give
  the rows, observations and state of the pure-Python reading-by-reading reference
  (`tests.test_kmeans_kernel.Reference`: river's objects, `RecentQuantile`), one
  per entity;
- `PendingReadings`, which now sorts only the readings fed since the last release:
  any interleaving of feeds and releases releases what one sort of everything would.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from operators import cluster_kernel as ck
from operators.cluster import ClusterConfig, ClusterOperator, EntityModel, PendingReadings, items_of
from operators.detectors.kmeans import HALF
from schemas.events import MAX_SENSOR_MAGNITUDE, SensorReading
from streams.connectors import checkpoints
from tests.test_kmeans_kernel import Reference

T0 = 1_795_000_020_000
SRC = "sensor-readings"


def entity_table(models: list[EntityModel]) -> np.ndarray:
    """The models' arrays named as `run_table` takes them, row i model i's (made
    afresh from the models, as `EntitySlots` keeps it)."""
    table = np.zeros((max(len(models), 1), ck.N_TABLE), dtype=np.int64)
    for slot, m in enumerate(models):
        ck.set_entity(table, slot, m.detector.det, m.mi, m.mf, m.active_flags)
    return table


def values_of(vals: list[float], nf: int, kind: str) -> list[float]:
    """A drawn reading's first `nf` values: as drawn, far (x50), or out of range."""
    x = [v * 50 if kind == "far" else v for v in vals[:nf]]
    if kind == "out":
        x[0] = 2 * MAX_SENSOR_MAGNITUDE
    return x


def _cfg_array(cfg: ClusterConfig) -> np.ndarray:
    a = np.zeros(5, dtype=np.int64)
    a[ck.WARMUP], a[ck.LEARN_BATCH_MS] = cfg.warmup, cfg.learn_batch_ms
    a[ck.MAX_LEARN] = cfg.max_learn_per_batch
    a[ck.SHORT_RUN] = max(1, int(cfg.history * (1.0 - cfg.quantile)))
    a[ck.HISTORY] = cfg.history
    return a


@settings(max_examples=80, deadline=None)
@given(
    n_entities=st.integers(1, 4),
    nfs=st.lists(st.integers(1, 3), min_size=4, max_size=4),
    rates=st.lists(st.sampled_from([0.05, 0.2, 0.5]), min_size=4, max_size=4),
    warmup=st.integers(1, 10),  # 0: a quantile of no distances (refused, as ever)
    history=st.integers(2, 20),
    quantile=st.sampled_from([0.5, 0.9]),
    budget=st.integers(1, 8),
    stream=st.lists(
        st.tuples(
            st.integers(0, 3),  # entity
            st.integers(0, 2),  # sensor index in it
            st.integers(0, 4000),  # gap to the previous reading, ms
            st.lists(st.floats(-5, 5, allow_nan=False), min_size=3, max_size=3),
            st.sampled_from(["normal", "far", "out"]),
        ),
        max_size=150,
    ),
)
def test_run_table_is_run_entity_per_entity(
    n_entities, nfs, rates, warmup, history, quantile, budget, stream
) -> None:
    cfg = ClusterConfig(
        n_clusters=3,
        warmup=warmup,
        history=history,
        quantile=quantile,
        max_learn_per_batch=budget,
        learn_batch_ms=5_000,
    )
    cfg_arr = _cfg_array(cfg)

    def models() -> list[EntityModel]:
        out = []
        for e in range(n_entities):
            feats = tuple("abc"[: nfs[e]])
            m = EntityModel(feats, ClusterConfig(**{**cfg.__dict__, "halflife": rates[e]}))
            for s in range(3):
                m.sensor_index(f"s{s}")
            out.append(m)
        return out

    readings, t = [], T0
    for e, s, gap, vals, kind in stream:
        if e >= n_entities:
            continue
        t += gap
        readings.append((t, e, s, values_of(vals, nfs[e], kind)))
    # the batched path: every entity in one call, readings in event order
    batched = models()
    table = entity_table(batched)
    n = len(readings)
    rows = np.array([(t, e, s) for t, e, s, _ in readings], dtype=np.int64).reshape(n, 3)
    xs = np.array([v for *_, x in readings for v in x], dtype=np.float64)
    out = np.zeros((max(n, 1), ck.N_OUT))
    n_out = ck.run_table(
        rows,
        xs,
        table,
        np.array(rates[:n_entities]),
        cfg_arr,
        quantile,
        HALF,
        MAX_SENSOR_MAGNITUDE,
        out,
    )
    got = [(int(o[0]), o[1:].tolist()) for o in out[:n_out]]
    # the per-entity path: run_entity over each entity's readings
    single = models()
    want = []
    for e, m in enumerate(single):
        mine = [r for r, (_, re, _, _) in enumerate(readings) if re == e]
        if not mine:
            continue
        ts_s = np.array([(readings[r][0], readings[r][2]) for r in mine], dtype=np.int64)
        xe = np.array([readings[r][3] for r in mine], dtype=np.float64).reshape(len(mine), nfs[e])
        o = np.zeros((len(mine), ck.N_OUT))
        k = ck.run_entity(
            ts_s.reshape(len(mine), 2),
            xe,
            m.detector.det,
            m.mi,
            m.mf,
            m.active_flags,
            cfg_arr,
            quantile,
            rates[e],
            HALF,
            MAX_SENSOR_MAGNITUDE,
            o,
        )
        want += [(mine[int(row[0])], row[1:].tolist()) for row in o[:k]]
    want.sort(key=lambda w: w[0])
    assert got == want
    for a, b in zip(batched, single, strict=True):
        assert a.detector.det.tobytes() == b.detector.det.tobytes()
        assert a.mi.tobytes() == b.mi.tobytes()
        assert a.mf.tobytes() == b.mf.tobytes()
        assert a.active_flags.tobytes() == b.active_flags.tobytes()


def _roundtrip(op: ClusterOperator, cfg: ClusterConfig) -> ClusterOperator:
    """A new operator restored from op's snapshot through the worker's checkpoint
    encoding (msgpack)."""
    blob = checkpoints.encode(checkpoints.Checkpoint({}, {"cluster": op.snapshot()}))
    new = ClusterOperator(cfg)
    new.restore(checkpoints.decode(blob).state["cluster"])
    return new


@settings(max_examples=60, deadline=None)
@given(
    group_by=st.sampled_from(["sensor", "site"]),
    warmup=st.integers(1, 20),
    history=st.integers(3, 30),
    quantile=st.sampled_from([0.5, 0.8, 0.95]),
    budget=st.integers(1, 20),
    stream=st.lists(
        st.tuples(
            st.integers(0, 2500),  # gap to the previous reading, ms
            st.sampled_from(["s1", "s2", "s3", "t1", "t2"]),  # t*: a third feature
            st.floats(-5, 5, allow_nan=False),
            st.floats(-5, 5, allow_nan=False),
            st.booleans(),  # a far reading
            st.booleans(),  # "b" missing (skipped, unless it makes the model)
            st.sampled_from(["", "plant", "yard"]),
        ),
        min_size=1,
        max_size=200,
    ),
    cuts=st.lists(st.integers(1, 40), min_size=1, max_size=10),
    restore_at=st.integers(0, 12),
)
def test_the_batched_monitor_is_the_reading_by_reading_reference(
    group_by, warmup, history, quantile, budget, stream, cuts, restore_at
) -> None:
    cfg = ClusterConfig(
        n_clusters=3,
        warmup=warmup,
        history=history,
        quantile=quantile,
        halflife=0.2,
        seed=11,
        max_learn_per_batch=budget,
        learn_batch_ms=5_000,
        group_by=group_by,
    )
    events, t = [], T0
    for gap, sid, a, b, far, drop_b, site in stream:
        t += gap
        v = {"a": a * 40 if far else a, "b": b + (30.0 if far else 0.0)}
        if sid.startswith("t"):
            v["c"] = a - b
        if drop_b:
            del v["b"]
        events.append(SensorReading(sensor_id=sid, ts=t, values=v, site=site or None))
    refs: dict[tuple[str, str], Reference] = {}  # one per entity, made at its first reading
    ref_out: list[tuple] = []
    skipped = 0
    op = ClusterOperator(cfg)
    got: list[tuple] = []
    i = c = 0
    while i < len(events):
        if c == restore_at:
            op = _roundtrip(op, cfg)
        chunk = events[i : i + cuts[c % len(cuts)]]
        i, c = i + len(chunk), c + 1
        released = sorted(
            chunk, key=lambda e: (e.ts, e.sensor_id, items_of(e.values), e.site or "")
        )
        for e in released:
            site = e.site or ""
            entity = ("site", site) if group_by == "site" and site else ("sensor", e.sensor_id)
            ref = refs.get(entity)
            if ref is None:
                ref = refs[entity] = Reference(cfg, tuple(sorted(e.values)))
            if any(f not in e.values for f in ref.features):
                skipped += 1
                continue
            before = len(ref.out)
            ref.reading(e.ts, e.sensor_id, {f: e.values[f] for f in ref.features})
            ref_out += [(*o, "|".join(ref.features)) for o in ref.out[before:]]
        op.feed(SRC, chunk)
        op.advance(chunk[-1].ts + 1)
        out = op.collect()
        rows = iter(out.rows.get("sensor_anomalies", []))
        for o in out.observations:
            d = o.details
            anomalous = d["distance"] > d["distance_threshold"] > 0.0
            if anomalous:
                row = next(rows)
                assert (row.ts, row.sensor_id, row.value, row.threshold, row.score) == (
                    o.ts,
                    o.entity,
                    d["distance"],
                    d["distance_threshold"],
                    o.value,
                )
                assert (row.metric, row.window_start) == (d["features"], o.window_start)
            got.append(
                (
                    o.ts,
                    o.entity,
                    anomalous,
                    d["distance"],
                    d["distance_threshold"],
                    o.value,
                    o.window_start,
                    o.n,
                    d["cluster"],
                    d["features"],
                )
            )
        assert next(rows, None) is None
    assert got == ref_out  # in event order, across entities
    assert op.skipped == skipped
    assert list(op.models) == list(refs)  # made in the order their entities appeared
    for entity, ref in refs.items():
        m = op.models[entity]
        assert m.features == ref.features
        assert (m.seen, m.learn_batch, m.learnt) == (ref.seen, ref.learn_batch, ref.learnt)
        assert (m.held, m.long_run, m.active) == (ref.held, ref.long_run, ref.active)
        assert list(m.active) == list(ref.active)
        assert m.recent_state().values == list(ref.recent.values)
        assert m.recent_state().times == list(ref.recent.times)
        assert m.detector.centers.tolist() == [
            [ref.model.centers[k][f] for f in ref.features] for k in range(cfg.n_clusters)
        ]
    # the restored operator's slots see the same state as its models
    assert _roundtrip(op, cfg).snapshot() == op.snapshot()


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.lists(
                st.tuples(
                    st.integers(0, 6),
                    st.sampled_from(["a", "b"]),
                    st.dictionaries(
                        st.sampled_from(["x", "y"]),
                        st.sampled_from([0.0, 1.0, 2, -0.5]),
                        min_size=1,
                    ),
                    st.sampled_from(["", "site"]),
                ),
                max_size=12,
            ),
            st.integers(0, 8),  # the watermark of the release after this feed
        ),
        max_size=8,
    )
)
def test_pending_readings_released_across_feeds_as_one_sort(steps) -> None:
    pending = PendingReadings()
    held: list[tuple] = []  # the reference: every reading, sorted as entries at release
    for n, (readings, watermark) in enumerate(steps):
        pending.held += readings
        # arrival number: equal entries are released in arrival order
        held += [((t, s, items_of(v), site), n, j) for j, (t, s, v, site) in enumerate(readings)]
        held.sort()
        want = [e for e, _, _ in held if e[0] < watermark]
        held = [h for h in held if h[0][0] >= watermark]
        got = [(t, s, items_of(v), site) for t, s, v, site in pending.release(watermark)]
        assert got == want
        assert sorted(pending.state()) == [e for e, _, _ in held]
    if held:  # what stays is released in order too
        got = [(t, s, items_of(v), site) for t, s, v, site in pending.release(10)]
        assert got == [e for e, _, _ in held]


def test_a_sensor_entitys_alert_state_survives_a_restore() -> None:
    """A sensor's own model (group_by="sensor"): the anomalous flag set by the batched
    call is in the state, survives a snapshot, and the next normal reading resolves it,
    as the reference does."""
    cfg = ClusterConfig(n_clusters=2, warmup=20, history=20, quantile=0.8, seed=3)
    rng = np.random.default_rng(5)
    values = [{"a": float(a), "b": float(b)} for a, b in rng.normal(size=(40, 2))]
    values += [{"a": 80.0, "b": -60.0}, {"a": 0.1, "b": -0.1}]
    events = [
        SensorReading(sensor_id=sid, ts=T0 + 1000 * i, values=v)
        for i, v in enumerate(values)
        for sid in ("s1", "s2")
    ]
    refs = {sid: Reference(cfg, ("a", "b")) for sid in ("s1", "s2")}
    for e in events:
        refs[e.sensor_id].reading(e.ts, e.sensor_id, e.values)
    op = ClusterOperator(cfg)
    op.feed(SRC, events[:-2])
    op.advance(events[-3].ts + 1)
    for sid in ("s1", "s2"):
        assert op.models[("sensor", sid)].active == {sid: True}
    op = _roundtrip(op, cfg)
    op.collect()
    op.feed(SRC, events[-2:])
    op.advance(events[-1].ts + 1)
    got = [(o.entity, o.value, o.details["distance"]) for o in op.collect().observations]
    want = [(r.out[-1][1], r.out[-1][5], r.out[-1][3]) for r in refs.values()]
    assert got == want and all(ratio <= 1.0 for _, ratio, _ in got)
    assert all(not op.models[("sensor", sid)].active for sid in ("s1", "s2"))
