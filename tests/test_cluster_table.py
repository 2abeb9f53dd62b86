"""The cluster operator's entity table (`operators.cluster.EntitySlots.table`,
`operators.cluster_kernel.run_table`; issue 18 point 3: a table row per entity instead
of four numba typed lists, whose appends were ~20 µs of a new entity's set-up), kept
across releases, against a table made afresh from models fed the same readings, bit for
bit: the same output rows and state arrays, across releases between which rings grow
(`EntitySlots.grow`) and sites index new sensors (`EntitySlots.sensor_index`), the two
places a model replaces an array its row names; and the named views of a model's arrays
(`EntityModel.r_times`, ... now made when read) after a ring grows."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from operators import cluster_kernel as ck
from operators.cluster import ClusterConfig, EntityModel, EntitySlots
from operators.detectors.kmeans import HALF
from schemas.events import MAX_SENSOR_MAGNITUDE
from tests.test_cluster_batch_kernel import _cfg_array, entity_table, values_of

T0 = 1_795_000_020_000


def _models(n: int, nfs: list[int], rates: list[float], cfg: ClusterConfig) -> list[EntityModel]:
    return [
        EntityModel(tuple("abc"[: nfs[e]]), ClusterConfig(**{**cfg.__dict__, "halflife": rates[e]}))
        for e in range(n)
    ]


@settings(max_examples=80, deadline=None)
@given(
    n_entities=st.integers(1, 4),
    nfs=st.lists(st.integers(1, 3), min_size=4, max_size=4),
    rates=st.lists(st.sampled_from([0.05, 0.2, 0.5]), min_size=4, max_size=4),
    warmup=st.integers(1, 10),
    history=st.integers(2, 200),
    quantile=st.sampled_from([0.5, 0.9]),
    releases=st.lists(
        st.lists(
            st.tuples(
                st.integers(0, 3),  # entity
                st.integers(0, 9),  # sensor (a site's: new ones grow its flags)
                st.integers(0, 2500),  # gap to the previous reading, ms
                st.lists(st.floats(-5, 5, allow_nan=False), min_size=3, max_size=3),
                st.sampled_from(["normal", "far", "out"]),
            ),
            max_size=120,
        ),
        max_size=4,
    ),
)
def test_the_kept_table_is_a_table_made_afresh(
    n_entities, nfs, rates, warmup, history, quantile, releases
) -> None:
    cfg = ClusterConfig(n_clusters=3, warmup=warmup, history=history, quantile=quantile)
    cfg_arr = _cfg_array(cfg)
    slots = EntitySlots()
    for e, m in enumerate(_models(n_entities, nfs, rates, cfg)):
        slots.add(("site", f"e{e}"), m)
    listed = _models(n_entities, nfs, rates, cfg)
    t = T0
    for release in releases:
        readings = []
        for e, s, gap, vals, kind in release:
            if e >= n_entities:
                continue
            t += gap
            x = values_of(vals, nfs[e], kind)
            i = slots.sensor_index(e, f"s{s}")
            assert listed[e].sensor_index(f"s{s}") == i
            readings.append((t, e, i, x))
        n = len(readings)
        rows = np.array([r[:3] for r in readings], dtype=np.int64).reshape(n, 3)
        xs = np.array([v for *_, x in readings for v in x], dtype=np.float64)
        # rings grown as the operator grows them, in both
        short = np.empty((n, 2), dtype=np.int64)
        k = ck.short_rings(rows, slots.table, slots.tally, history, short)
        for slot, need in short[:k].tolist():
            slots.grow(slot, need, history)
            listed[slot].grow(need, history)
        got_out, want_out = np.zeros((max(n, 1), ck.N_OUT)), np.zeros((max(n, 1), ck.N_OUT))
        args = (cfg_arr, quantile, HALF, MAX_SENSOR_MAGNITUDE)
        got = ck.run_table(rows, xs, slots.table, slots.rates, *args, got_out)
        rate_arr = np.array(rates[:n_entities])
        want = ck.run_table(rows, xs, entity_table(listed), rate_arr, *args, want_out)
        assert got == want
        assert got_out[:got].tobytes() == want_out[:want].tobytes()
        for a, b in zip(slots.models, listed, strict=True):
            assert a.detector.det.tobytes() == b.detector.det.tobytes()
            assert a.mi.tobytes() == b.mi.tobytes()
            assert a.mf.tobytes() == b.mf.tobytes()
            assert a.active_flags.tobytes() == b.active_flags.tobytes()
            assert a.recent_state() == b.recent_state()
            assert a.held == b.held


def test_named_views_follow_a_grown_ring() -> None:
    """The named parts of `mi`, `mf` are read from the arrays as they are now: after a
    ring grows, the new capacity's (the views were attributes made at layout before)."""
    m = EntityModel(("a",), ClusterConfig(history=300))
    n = 64
    m.r_times[:n] = np.arange(n)
    m.r_values[:n] = np.arange(n) / 2
    m.r_sorted[:n] = np.arange(n) / 2
    m.iv[ck.COUNT] = n
    m.h_d[:] = 7.0
    m.grow(n + 1, 300)
    assert len(m.r_times) == len(m.r_values) == len(m.r_sorted) == 128 == m.iv[ck.CAP]
    assert m.r_times[:n].tolist() == list(range(n))
    assert m.r_sorted[:n].tolist() == (np.arange(n) / 2).tolist()
    assert len(m.h_ts) == len(m.h_d) == len(m.h_tau) == m.iv[ck.HCAP]
    assert m.h_d.tolist() == [7.0] * int(m.iv[ck.HCAP])
    assert m.recent_state().times == list(range(n))


def test_a_flag_set_after_the_flags_grew_is_in_the_kept_table() -> None:
    """A deterministic case of the property above that surely replaces both kinds of
    array between runs: a site learns from four sensors over two releases, the second
    growing its recent distances' ring (past its first 64 places: `EntitySlots.grow`),
    then a fifth sensor (its flags grow from 4 to 8: `EntitySlots.sensor_index`) reads
    far off, so the kernel flags it active. The kept table's model ends as the fresh
    table's (a row left naming a replaced array would lose the kernel's writes)."""
    cfg = ClusterConfig(n_clusters=3, warmup=5, history=300, quantile=0.9)
    args = (_cfg_array(cfg), cfg.quantile, HALF, MAX_SENSOR_MAGNITUDE)
    slots, listed = EntitySlots(), _models(1, [1], [0.2], cfg)
    slots.add(("site", "e0"), _models(1, [1], [0.2], cfg)[0])
    rng = np.random.default_rng(7)
    t = T0
    normal = [[(f"s{k % 4}", float(rng.normal())) for k in range(60)] for _ in range(2)]
    releases = [*normal, [("s4", 1e4)]]
    for release in releases:
        rows, xs = [], []
        for sid, x in release:
            t += 1_000
            i = slots.sensor_index(0, sid)
            assert listed[0].sensor_index(sid) == i
            rows.append((t, 0, i))
            xs.append(x)
        r, x = np.array(rows, dtype=np.int64), np.array(xs)
        short = np.empty((len(r), 2), dtype=np.int64)
        for slot, need in short[: ck.short_rings(r, slots.table, slots.tally, 300, short)].tolist():
            slots.grow(slot, need, 300)
            listed[slot].grow(need, 300)
        got_out, want_out = np.zeros((len(r), ck.N_OUT)), np.zeros((len(r), ck.N_OUT))
        got = ck.run_table(r, x, slots.table, slots.rates, *args, got_out)
        want = ck.run_table(r, x, entity_table(listed), np.array([0.2]), *args, want_out)
        assert got_out[:got].tobytes() == want_out[:want].tobytes()
    fresh, kept = listed[0], slots.models[0]
    assert len(fresh.active_flags) == 8 and fresh.active_flags[4] != 0  # the flag: set
    assert len(fresh.r_times) > 64  # the ring: grown
    assert kept.active_flags.tobytes() == fresh.active_flags.tobytes()
    assert kept.mi.tobytes() == fresh.mi.tobytes()
    assert kept.mf.tobytes() == fresh.mf.tobytes()
