"""Drift operator and reference profiles on synthetic inference logs."""

from __future__ import annotations

import random

import msgspec
import numpy as np
import pytest

from operators.drift import DriftConfig, DriftOperator
from operators.reference import (
    PREDICTION,
    ReferenceProfile,
    WarmupProfileBuilder,
    build_profile,
)
from operators.stats import binned_counts, psi
from schemas.events import InferenceLog
from schemas.tables import DRIFT_SCORES
from tests.row_dicts import as_dicts

T0 = 1_795_000_200_000  # a 5-minute window boundary
W = 300_000
assert T0 % W == 0
CATS = ["A", "B", "C"]


def sample_rows(rng: np.random.Generator, n: int, shift: float = 0.0) -> list[dict]:
    x1 = rng.normal(shift, 1.0, n)
    x2 = rng.normal(10.0, 2.0, n)
    x3 = rng.exponential(1.0, n)
    cat = rng.choice(CATS, n, p=[0.5, 0.3, 0.2])
    pred = rng.uniform(0, 1, n)
    conf = rng.beta(5, 1, n)
    return [
        {
            "features": {
                "x1": float(x1[i]),
                "x2": float(x2[i]),
                "x3": float(x3[i]),
                "cat": str(cat[i]),
            },
            "prediction": float(pred[i]),
            "confidence": float(conf[i]),
        }
        for i in range(n)
    ]


def logs(rows: list[dict], t: int, model: str = "m1", version: str = "v1") -> list[InferenceLog]:
    step = max(1, (W - 1) // max(1, len(rows)))
    return [
        InferenceLog(
            request_id=f"r{t}-{i}",
            ts=t + (i * step) % W,
            model_id=model,
            model_version=version,
            features=r["features"],
            prediction=r["prediction"],
            latency_ms=10.0,
            status="ok",
            confidence=r.get("confidence"),
        )
        for i, r in enumerate(rows)
    ]


@pytest.fixture(scope="module")
def reference() -> ReferenceProfile:
    return build_profile(sample_rows(np.random.default_rng(0), 20_000), "m1", "ref-1")


def run(op: DriftOperator, events: list[InferenceLog], until: int) -> tuple[list, list]:
    op.feed("inference-logs", events)
    op.advance(until)
    out = op.collect()
    return as_dicts(out.rows.get("drift_scores", [])), out.observations


def test_reference_profile_shape_and_json_roundtrip(reference: ReferenceProfile) -> None:
    assert set(reference.features) == {"x1", "x2", "x3", "cat", PREDICTION}
    x1 = reference.features["x1"]
    assert x1.kind == "numeric" and len(x1.edges) == 9 and len(x1.counts) == 10
    assert len(x1.sample) == 5000 and x1.sample == sorted(x1.sample)
    cat = reference.features["cat"]
    assert cat.kind == "categorical" and cat.categories == ["A", "B", "C"]
    assert cat.counts[-1] == 0  # "other"
    assert reference.confidence_count == 20_000
    again = ReferenceProfile.from_json(reference.to_json())
    assert again == reference
    assert ReferenceProfile.from_builtins(reference.to_builtins()) == reference


def test_build_profile_flat_rows_and_order_independence() -> None:
    rows = [
        {"request_id": str(i), "age": float(i % 50), "city": "abcd"[i % 4], "prediction": i % 2}
        for i in range(400)
    ]
    p = build_profile(rows, "m", "1")
    assert set(p.features) == {"age", "city", PREDICTION}
    assert p.features["city"].categories == ["a", "b", "c", "d"]
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    assert build_profile(shuffled, "m", "1") == p


def test_window_from_reference_has_no_drift(reference: ReferenceProfile) -> None:
    op = DriftOperator(references={"m1": reference})
    rows, obs = run(op, logs(sample_rows(np.random.default_rng(1), 3000), T0), T0 + W)
    assert {r["feature"] for r in rows} == {"x1", "x2", "x3", "cat", PREDICTION}
    for r in rows:
        assert set(r) == set(DRIFT_SCORES.column_names) - {"inserted_at"}
        assert r["psi"] < 0.1, r
        assert r["n"] == 3000
        assert (r["window_start"], r["window_end"]) == (T0, T0 + W)
        assert r["reference_version"] == "ref-1" and r["model_version"] == "v1"
        if r["feature"] == "cat":
            assert r["ks"] is None and r["chi2_pvalue"] > 1e-4
        else:
            assert r["chi2"] is None and r["ks_pvalue"] > 1e-4
    psi_obs = [o for o in obs if o.metric == "psi"]
    assert {o.entity for o in psi_obs} == {f"m1/{f}" for f in reference.features}
    assert all(o.kind == "drift" and o.n == 3000 and o.p_value is not None for o in psi_obs)
    (conf,) = [o for o in obs if o.metric == "confidence_shift"]
    assert conf.entity == "m1" and abs(conf.value) < 0.02 and conf.p_value > 1e-4
    assert not op.windows.by_start  # dropped at close


def test_mean_shift_of_one_sd_is_critical(reference: ReferenceProfile) -> None:
    op = DriftOperator(references={"m1": reference})
    rows, obs = run(op, logs(sample_rows(np.random.default_rng(2), 3000, shift=1.0), T0), T0 + W)
    by = {r["feature"]: r for r in rows}
    assert by["x1"]["psi"] >= 0.2
    assert by["x1"]["ks"] > 0.3 and by["x1"]["ks_pvalue"] < 1e-10
    assert by["x1"]["js"] > 0.03
    assert all(by[f]["psi"] < 0.1 for f in ("x2", "x3", "cat", PREDICTION))
    (x1,) = [o for o in obs if o.entity == "m1/x1"]
    assert x1.value == by["x1"]["psi"] and x1.details["ks_pvalue"] == by["x1"]["ks_pvalue"]
    # the observation's p-value is the PSI's own (homogeneity chi-square), not the KS one
    assert x1.p_value == x1.details["psi_pvalue"] and x1.p_value < 1e-10


def test_psi_equals_hand_binning(reference: ReferenceProfile) -> None:
    rows = sample_rows(np.random.default_rng(5), 1000, shift=0.3)
    op = DriftOperator(references={"m1": reference})
    out, _ = run(op, logs(rows, T0), T0 + W)
    x = np.array([r["features"]["x1"] for r in rows])
    ref = reference.features["x1"]
    expected = psi(ref.counts, binned_counts(x, ref.edges))
    assert {r["feature"]: r["psi"] for r in out}["x1"] == pytest.approx(expected, rel=1e-12)


def test_new_category_goes_to_other(reference: ReferenceProfile) -> None:
    rows = sample_rows(np.random.default_rng(3), 1000)
    for r in rows[:300]:
        r["features"]["cat"] = "Z"  # never seen in the reference
    rows[300]["features"]["cat"] = 7.0  # a number in a categorical feature: category "7"
    op = DriftOperator(references={"m1": reference})
    out, _ = run(op, logs(rows, T0), T0 + W)
    cat = {r["feature"]: r for r in out}["cat"]
    assert cat["n"] == 1000
    assert cat["psi"] >= 0.2 and cat["chi2_pvalue"] < 1e-10
    # "other" holds 301 of 1000 against a reference share of 0 (clipped at eps)
    ref = reference.features["cat"]
    known = [sum(1 for r in rows if r["features"]["cat"] == c) for c in ref.categories]
    assert cat["psi"] == pytest.approx(psi(ref.counts, [*known, 301]), rel=1e-12)


def test_warmup_profile_from_first_events() -> None:
    cfg = DriftConfig(warmup_events=1000)
    op = DriftOperator(cfg)
    first = sample_rows(np.random.default_rng(10), 1000)
    normal = sample_rows(np.random.default_rng(11), 1000)
    shifted = sample_rows(np.random.default_rng(12), 1000, shift=1.0)
    events = logs(first, T0) + logs(normal, T0 + W) + logs(shifted, T0 + 2 * W)
    rows, _ = run(op, events, T0 + 3 * W)
    learned = op.references["m1"]
    assert learned.source == "warmup" and learned.version == "warmup:v1"
    assert learned.rows == 1000
    # the frozen profile is the one a reference file of those events gives
    built = build_profile(first, "m1", "warmup:v1")
    assert learned.features == built.features
    assert {r["window_start"] for r in rows} == {T0 + W, T0 + 2 * W}  # warm-up not scored
    by = {(r["window_start"], r["feature"]): r for r in rows}
    assert by[(T0 + W, "x1")]["psi"] < 0.1
    assert by[(T0 + 2 * W, "x1")]["psi"] >= 0.2
    assert by[(T0 + W, "x1")]["reference_version"] == "warmup:v1"


def test_warmup_builder_per_event_stops_when_full() -> None:
    b = WarmupProfileBuilder("m", target=3)
    for i in range(5):
        b.add({"x": float(i)}, "yes" if i % 2 else "no", 0.9, model_version="v2")
    assert b.full and b.count == 3
    p = b.build()
    assert p.version == "warmup:v2" and p.features["x"].count == 3
    assert p.features[PREDICTION].categories == ["no", "yes"]


def test_small_windows_are_merged_then_dropped(reference: ReferenceProfile) -> None:
    cfg = DriftConfig(min_count=200, max_merge_windows=3)
    op = DriftOperator(cfg, references={"m1": reference})
    rng = np.random.default_rng(4)
    events = logs(sample_rows(rng, 120), T0) + logs(sample_rows(rng, 100), T0 + W)
    rows, _ = run(op, events, T0 + 2 * W)
    assert {(r["window_start"], r["window_end"], r["n"]) for r in rows} == {(T0, T0 + 2 * W, 220)}
    # 50 + 50 + 50 events over three windows never reach 200: dropped
    events = [e for k in (2, 3, 4) for e in logs(sample_rows(rng, 50), T0 + k * W)]
    rows, _ = run(op, events, T0 + 10 * W)
    assert rows == [] and not op.carry and op.dropped_windows == 1


def test_confidence_shift(reference: ReferenceProfile) -> None:
    rows = sample_rows(np.random.default_rng(6), 1000)
    low = np.random.default_rng(7).beta(2, 3, 1000)
    for r, c in zip(rows, low, strict=True):
        r["confidence"] = float(c)
    op = DriftOperator(references={"m1": reference})
    _, obs = run(op, logs(rows, T0), T0 + W)
    (o,) = [o for o in obs if o.metric == "confidence_shift"]
    expected = reference.confidence_mean - float(np.mean(low))
    assert o.value == pytest.approx(expected, abs=1e-12)
    assert o.value > 0.3 and o.p_value < 1e-10 and o.n == 1000
    assert o.details["low_confidence_ratio"] == pytest.approx(float(np.mean(low < 0.5)))


def test_string_in_numeric_feature_is_left_out(reference: ReferenceProfile) -> None:
    rows = sample_rows(np.random.default_rng(8), 500)
    rows[0]["features"]["x1"] = "n/a"
    op = DriftOperator(references={"m1": reference})
    out, obs = run(op, logs(rows, T0), T0 + W)
    assert {r["feature"]: r["n"] for r in out}["x1"] == 499
    (o,) = [o for o in obs if o.entity == "m1/x1"]
    assert o.details["non_numeric"] == 1


def _scenario() -> list[InferenceLog]:
    rng = np.random.default_rng(20)
    events = logs(sample_rows(rng, 600), T0)
    events += logs(sample_rows(rng, 600), T0 + W)
    events += logs(sample_rows(rng, 600, shift=1.0), T0 + 2 * W)
    # m2 has no reference: warm-up over windows 0 and 1 (550 >= 500 events), then
    # two small windows (60 < min_count) merged into one row
    events += logs(sample_rows(rng, 400), T0, model="m2", version="b")
    events += logs(sample_rows(rng, 150), T0 + W, model="m2", version="b")
    events += logs(sample_rows(rng, 60), T0 + 2 * W, model="m2", version="b")
    events += logs(sample_rows(rng, 60), T0 + 3 * W, model="m2", version="c")
    events.sort(key=lambda e: e.ts)
    return events


@pytest.mark.parametrize("cut", [300, 700, 1500, 1950, 2440])
def test_snapshot_restore_mid_window_equals_uninterrupted(
    reference: ReferenceProfile, cut: int
) -> None:
    cfg = DriftConfig(warmup_events=500, min_count=100)
    refs = {"m1": reference}
    events = _scenario()

    def drive(op: DriftOperator, evs: list[InferenceLog], wm: int) -> None:
        for i in range(0, len(evs), 97):
            batch = evs[i : i + 97]
            op.feed("inference-logs", batch)
            op.advance(min(wm, batch[-1].ts - 1))

    whole = DriftOperator(cfg, refs)
    drive(whole, events, T0 + 4 * W)
    whole.advance(T0 + 4 * W)
    expected = whole.collect()

    first = DriftOperator(cfg, refs)
    drive(first, events[:cut], T0 + 4 * W)
    out = first.collect()
    state = msgspec.msgpack.decode(msgspec.msgpack.encode(first.snapshot()))
    second = DriftOperator(cfg, refs)
    second.restore(state)
    drive(second, events[cut:], T0 + 4 * W)
    second.advance(T0 + 4 * W)
    out.extend(second.collect())
    assert out.rows == expected.rows
    assert out.observations == expected.observations
    m2 = {
        (r["window_start"], r["window_end"], r["model_version"], r["n"], r["reference_version"])
        for r in as_dicts(expected.rows["drift_scores"])
        if r["model_id"] == "m2" and r["feature"] == "x1"
    }
    assert m2 == {(T0 + 2 * W, T0 + 4 * W, "b,c", 120, "warmup:b")}


def test_arrival_order_does_not_matter(reference: ReferenceProfile) -> None:
    events = _scenario()
    cfg = DriftConfig(warmup_events=500, min_count=100)
    a = DriftOperator(cfg, {"m1": reference})
    a.feed("inference-logs", events)
    a.advance(T0 + 4 * W)
    shuffled = events[:]
    random.Random(5).shuffle(shuffled)
    b = DriftOperator(cfg, {"m1": reference})
    b.feed("inference-logs", shuffled)
    b.advance(T0 + 4 * W)
    assert a.collect() == b.collect()


def test_reference_for_wrong_model_is_rejected(reference: ReferenceProfile) -> None:
    with pytest.raises(ValueError):
        DriftOperator(references={"other": reference})
