"""The quality operator: the join and metrics against a brute-force reference on
shuffled input, snapshots mid-stream, CBPE, degradation evidence and memory."""

from __future__ import annotations

import math
import random
import tracemalloc
from collections import defaultdict
from typing import Any

import msgspec
import numpy as np
import pytest
from sklearn import metrics as skm

from operators.quality import QualityConfig, QualityOperator
from operators.rules import RuleEngine
from operators.state import StateFormatError
from operators.task import MonitorTask
from schemas.events import InferenceLog, LabelEvent
from streams.config import quality_rules
from tests.row_dicts import as_dicts

T0 = 1_795_000_200_000  # a 5-minute boundary
assert T0 % 300_000 == 0
MIN = 60_000


def log(
    rid: str, ts: int, model: str, pred: float | str, conf: float | None = None
) -> InferenceLog:
    return InferenceLog(
        request_id=rid,
        ts=ts,
        model_id=model,
        model_version="v1",
        features={"x": 1.0},
        prediction=pred,
        latency_ms=5.0,
        status="ok",
        confidence=conf,
    )


def lab(
    rid: str, ts: int, model: str, label: float | str, weight: float | None = None
) -> LabelEvent:
    return LabelEvent(request_id=rid, ts=ts, model_id=model, label=label, weight=weight)


def scenario(seed: int, n: int = 3000, span_ms: int = 40 * MIN) -> tuple[list[Any], list[Any]]:
    """Inference logs of a classifier (scores) and a regressor, and their labels with
    realistic trouble: delays past the limit, missing, duplicate, early, unknown."""
    rng = random.Random(seed)
    logs, labels = [], []
    for i in range(n):
        ts = T0 + rng.randrange(span_ms)
        rid = f"r{i}"
        if rng.random() < 0.5:
            p = rng.random()
            y = 1.0 if rng.random() < p else 0.0
            logs.append(log(rid, ts, "clf", round(p, 4), round(abs(2 * p - 1), 4)))
        else:
            y = rng.choice([0.0, rng.gauss(50, 10)])
            logs.append(log(rid, ts, "reg", y + rng.gauss(0, 3)))
        if rng.random() < 0.02:  # a duplicate inference log of the same request
            logs.append(log(rid, ts, logs[-1].model_id, logs[-1].prediction, logs[-1].confidence))
        model = logs[-1].model_id
        u = rng.random()
        if u < 0.1:
            continue  # never labelled
        delay = rng.randrange(-2_000, 12 * MIN) if u < 0.2 else rng.randrange(0, 8 * MIN)
        labels.append(lab(rid, ts + delay, model, y, rng.choice([None, 0.5, 2.0])))
        if rng.random() < 0.05:  # a second, different label later
            other = 1.0 - y if model == "clf" else y + 1
            labels.append(lab(rid, ts + delay + rng.randrange(1, MIN), model, other))
        if rng.random() < 0.03:
            labels.append(lab(f"unknown-{i}", ts + delay, model, y))
    return logs, labels


CONFIG = QualityConfig(label_delay_ms=10 * MIN, reference_labelled=200)


def brute_force(logs: list[Any], labels: list[Any], cfg: QualityConfig) -> dict[tuple, dict]:
    """Final rows' counts and headline metrics, computed the plain way."""
    first: dict[str, Any] = {}
    dup_preds: dict[tuple, int] = defaultdict(int)
    for e in sorted(logs, key=lambda e: e.ts):
        # the operator keeps the first log it sees; in this scenario the duplicate is
        # 5 ms later and identical, so either is the same prediction
        if e.request_id in first:
            start = first[e.request_id].ts - first[e.request_id].ts % cfg.window_ms
            dup_preds[(first[e.request_id].model_id, "v1", start)] += 1
        else:
            first[e.request_id] = e
    joined: dict[str, list[Any]] = defaultdict(list)
    orphans: dict[tuple, int] = defaultdict(int)
    for label in labels:
        pred = first.get(label.request_id)
        if (
            pred
            and label.model_id == pred.model_id
            and 0 <= label.ts - pred.ts <= cfg.label_delay_ms
        ):
            joined[label.request_id].append(label)
        else:
            orphans[(label.model_id, "", label.ts - label.ts % cfg.window_ms)] += 1
    windows: dict[tuple, dict] = {}
    for rid, pred in first.items():
        key = (pred.model_id, "v1", pred.ts - pred.ts % cfg.window_ms)
        w = windows.setdefault(key, {"n": 0, "y": [], "p": [], "w": [], "dup_labels": 0})
        w["n"] += 1
        if joined.get(rid):
            best = min(joined[rid], key=lambda x: (x.ts, x.label))
            w["y"].append(best.label)
            w["p"].append(pred.prediction)
            w["w"].append(1.0 if best.weight is None else best.weight)
            w["dup_labels"] += len(joined[rid]) - 1
    out = {}
    for key, w in windows.items():
        row = {
            "predictions": w["n"],
            "labelled": len(w["y"]),
            "orphan_labels": 0,
            "duplicate_labels": w["dup_labels"],
            "duplicate_predictions": dup_preds.get(key, 0),
        }
        if w["y"] and key[0] == "clf":
            pred_cls = [1.0 if p >= 0.5 else 0.0 for p in w["p"]]
            row["accuracy"] = skm.accuracy_score(w["y"], pred_cls, sample_weight=w["w"])
            row["brier"] = skm.brier_score_loss(w["y"], w["p"], sample_weight=w["w"], pos_label=1)
        elif w["y"]:
            row["mae"] = skm.mean_absolute_error(w["y"], w["p"], sample_weight=w["w"])
        out[key] = row
    for key, n in orphans.items():
        out.setdefault(
            key,
            {
                "predictions": 0,
                "labelled": 0,
                "orphan_labels": 0,
                "duplicate_labels": 0,
                "duplicate_predictions": 0,
            },
        )["orphan_labels"] = n
    return out


def final_rows(rows: list[dict]) -> dict[tuple, dict]:
    return {(r["model_id"], r["model_version"], r["window_start"]): r for r in rows if r["final"]}


def run(logs: list[Any], labels: list[Any], seed: int | None, lateness: int = 3 * MIN) -> tuple:
    """Feed through a MonitorTask in batches; with a seed, each event's arrival is
    displaced by up to `lateness` (shuffled within the lateness)."""
    task = MonitorTask(
        QualityOperator(CONFIG), RuleEngine([r.rule() for r in quality_rules()]), lateness, 10**12
    )
    events = [("inference-logs", e) for e in logs] + [("labels", e) for e in labels]
    rng = random.Random(seed)
    shift = (lambda: rng.randrange(lateness)) if seed is not None else (lambda: 0)
    events.sort(key=lambda se: (se[1].ts + shift(), se[0]))
    rows, alerts = [], []
    for i in range(0, len(events), 97):
        batch = events[i : i + 97]
        for source in ("inference-logs", "labels"):
            mine = [e for s, e in batch if s == source]
            assert task.feed(source, mine, 0) == []  # nothing late
        task.tick(0)
        out = task.collect()
        rows += as_dicts(out.rows.get("quality_windows", []))
        alerts += out.alerts
    task.operator.advance(T0 + 10**9)
    out = task.collect()
    rows += as_dicts(out.rows.get("quality_windows", []))
    alerts += out.alerts
    return rows, alerts, task


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_join_and_metrics_match_brute_force_on_shuffled_input(seed: int) -> None:
    logs, labels = scenario(seed)
    ordered, _, _ = run(logs, labels, None)
    shuffled, _, _ = run(logs, labels, seed)
    a, b = final_rows(ordered), final_rows(shuffled)
    assert a == b  # any arrival order within the lateness: the same final rows
    want = brute_force(logs, labels, CONFIG)
    assert set(a) == set(want)
    for key, expected in want.items():
        row = a[key]
        for field, value in expected.items():
            assert row[field] == pytest.approx(value, rel=1e-9), (key, field)
        assert row["coverage"] == pytest.approx(row["labelled"] / max(1, row["predictions"]))
    # every label is accounted for: joined, duplicate or orphan
    total = sum(r["labelled"] + r["duplicate_labels"] + r["orphan_labels"] for r in a.values())
    assert total == len(labels)
    assert sum(r["orphan_labels"] for r in a.values()) > 0


def test_snapshot_midway_through_msgpack_equals_uninterrupted_run() -> None:
    logs, labels = scenario(7)
    events = sorted(
        [("inference-logs", e) for e in logs] + [("labels", e) for e in labels],
        key=lambda se: se[1].ts,
    )

    def play(cut: int | None) -> list[dict]:
        op = QualityOperator(CONFIG)
        rows = []
        for i, (source, e) in enumerate(events):
            if cut is not None and i == cut:
                state = msgspec.msgpack.decode(msgspec.msgpack.encode(op.snapshot()))
                op = QualityOperator(CONFIG)
                op.restore(state)
            op.feed(source, [e])
            if i % 50 == 0:
                op.advance(e.ts - 1000)
                rows += as_dicts(op.collect().rows.get("quality_windows", []))
        op.advance(T0 + 10**9)
        return rows + as_dicts(op.collect().rows.get("quality_windows", []))

    whole = play(None)
    assert play(len(events) // 2) == whole
    assert play(len(events) * 4 // 5) == whole


def test_hand_computed_classification_window() -> None:
    op = QualityOperator(QualityConfig(label_delay_ms=MIN))
    op.feed(
        "inference-logs",
        [
            log("a", T0 + 1, "m", "cat", 0.9),
            log("b", T0 + 2, "m", "dog", 0.6),
            log("c", T0 + 3, "m", "cat", 0.8),
        ],
    )
    op.feed(
        "labels",
        [
            lab("a", T0 + 10, "m", "cat"),
            lab("a", T0 + 20, "m", "dog"),  # duplicate: the earlier label stays
            lab("b", T0 + 2 + MIN + 1, "m", "dog"),  # 1 ms past the delay: orphan
            lab("c", T0 + 30, "m", "dog"),
            lab("zz", T0 + 40, "m", "cat"),  # no prediction: orphan
        ],
    )
    op.advance(T0 + 300_000 + MIN)
    rows = as_dicts(op.collect().rows["quality_windows"])
    (real,) = [r for r in rows if r["model_version"] == "v1"]
    (orphans,) = [r for r in rows if r["model_version"] == ""]
    assert (real["predictions"], real["labelled"], real["duplicate_labels"]) == (3, 2, 1)
    assert orphans["orphan_labels"] == 2
    assert real["accuracy"] == 0.5 and real["final"] == 1 and real["version"] == 2
    assert real["task"] == "classification"
    # two classes and confidences: binary probabilities of the positive class "dog"
    y01, p_pos = [0, 1], [1 - 0.9, 1 - 0.8]
    assert real["log_loss"] == pytest.approx(skm.log_loss(y01, p_pos))
    assert real["roc_auc"] == pytest.approx(skm.roc_auc_score(y01, p_pos))


def test_regression_mape_skips_zero_labels() -> None:
    op = QualityOperator(QualityConfig(label_delay_ms=MIN))
    op.feed(
        "inference-logs", [log("a", T0, "r", 3.0), log("b", T0, "r", 1.0), log("c", T0, "r", 2.0)]
    )
    op.feed("labels", [lab("a", T0, "r", 2.0), lab("b", T0, "r", 0.0), lab("c", T0, "r", 4.0)])
    op.advance(T0 + 300_000 + MIN)
    (row,) = as_dicts(op.collect().rows["quality_windows"])
    assert row["task"] == "regression"
    assert row["mae"] == pytest.approx(4 / 3)
    assert row["mape"] == pytest.approx(0.5) and row["mape_skipped"] == 1
    assert row["mean_error"] == pytest.approx(0.0)
    assert row["rmse"] == pytest.approx(math.sqrt(6 / 3))


def drift_stream(windows: int, drift_from: int | None, seed: int = 0) -> tuple[list, list]:
    """A calibrated binary classifier (P(y = 1) = p); from window `drift_from` on, the
    concept flips for a third of the requests (same scores, other labels)."""
    rng = random.Random(seed)
    logs, labels = [], []
    for w in range(windows):
        for i in range(400):
            ts = T0 + w * 300_000 + rng.randrange(300_000)
            p = rng.betavariate(0.6, 0.6)
            y = 1.0 if rng.random() < p else 0.0
            if drift_from is not None and w >= drift_from and rng.random() < 1 / 3:
                y = 1.0 - y
            rid = f"{w}-{i}"
            logs.append(log(rid, ts, "m", round(p, 5), round(abs(2 * p - 1), 5)))
            labels.append(lab(rid, ts + rng.randrange(1000, 120_000), "m", y))
    return logs, labels


def judge(logs: list, labels: list) -> tuple[list[dict], list]:
    cfg = QualityConfig(label_delay_ms=3 * MIN, reference_labelled=1000)
    task = MonitorTask(
        QualityOperator(cfg), RuleEngine([r.rule() for r in quality_rules(cfg)]), 0, 10**12
    )
    events = sorted(
        [("inference-logs", e) for e in logs] + [("labels", e) for e in labels],
        key=lambda x: x[1].ts,
    )
    rows, alerts = [], []
    for i in range(0, len(events), 200):
        for source in ("inference-logs", "labels"):
            task.feed(source, [e for s, e in events[i : i + 200] if s == source], 0)
        task.tick(0)
        out = task.collect()
        rows += as_dicts(out.rows.get("quality_windows", []))
        alerts += out.alerts
    return rows, alerts


def test_concept_drift_alerts_and_stable_model_stays_quiet() -> None:
    _, alerts = judge(*drift_stream(16, None))
    assert [a for a in alerts if a.kind == "quality"] == []
    _rows, alerts = judge(*drift_stream(16, 8))
    firing = [a for a in alerts if a.kind == "quality" and a.status == "firing"]
    assert firing and firing[0].rule == "quality_accuracy_drop"
    assert firing[0].window_start == T0 + 8 * 300_000  # the first drifted window
    assert firing[0].severity == "critical"
    assert firing[0].details["p_value"] < QualityConfig().window_alpha


def test_cbpe_estimate_tracks_a_calibrated_model_and_misses_concept_drift() -> None:
    rows, _ = judge(*drift_stream(16, 8))
    estimates = {r["window_start"]: r for r in rows if r["estimated"] == 1}
    finals = {r["window_start"]: r for r in rows if r["final"] == 1 and r["model_version"]}
    assert estimates, "no estimated rows after the reference"
    for start, est in estimates.items():
        assert est["version"] == 1 and est["final"] == 0
        real = finals[start]
        assert real["estimated_accuracy"] == pytest.approx(est["accuracy"])
        if start < T0 + 8 * 300_000:  # calibration holds: within a few points
            assert abs(est["accuracy"] - real["accuracy"]) < 0.05
        else:  # concept drift: the confident model is wrong, the estimate is not
            assert est["accuracy"] - real["accuracy"] > 0.15


def test_memory_per_pending_prediction() -> None:
    """Bytes held per pending (not yet final) prediction, decoded from JSON as the
    worker does and the events freed: docs/monitors/quality.md quotes this figure."""
    import gc

    import orjson

    from schemas.decode import Decoder

    n = 50_000
    raw = [
        orjson.dumps(
            {
                "request_id": f"req-42-{i}",
                "ts": T0 + i * 10,
                "model_id": "model-0",
                "model_version": "1.0.0",
                "features": {"amount": 12.5, "device": "ios"},
                "prediction": (i % 997) / 997,
                "latency_ms": 120.5,
                "status": "ok",
                "confidence": (i * 7 % 991) / 991,
            }
        )
        for i in range(n)
    ]
    decoder = Decoder("inference-logs")
    op = QualityOperator()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for k in range(0, n, 5000):
        op.feed("inference-logs", [decoder.decode(r, b"model-0") for r in raw[k : k + 5000]])
    gc.collect()
    per = (tracemalloc.get_traced_memory()[0] - before) / n
    tracemalloc.stop()
    assert 100 < per < 400, per  # measured 304 bytes (Python 3.11, 50k predictions)
    state = msgspec.msgpack.encode(op.snapshot())
    assert len(state) / n < 80  # checkpoint bytes per pending prediction (measured 51)


def test_restore_refuses_an_unknown_format() -> None:
    # neither a versioned snapshot nor one of the module's own format 1 (which said so)
    with pytest.raises(StateFormatError, match=r"quality: .*snapshot format None"):
        QualityOperator().restore({"windows": []})


def test_rows_match_the_table() -> None:
    from schemas.tables import TABLES_BY_NAME

    logs, labels = scenario(4, n=300)
    rows, _, _ = run(logs, labels, None)
    columns = set(TABLES_BY_NAME["quality_windows"].column_names) - {"inserted_at"}
    assert rows and all(set(r) == columns for r in rows)
    assert np.isfinite([r["coverage"] for r in rows]).all()


def test_label_delay_per_model_and_forced_task() -> None:
    """`label_delay_by_model` finalises each model's windows after its own delay, and
    `tasks` reads a model's [0, 1] predictions as regression when told so."""
    cfg = QualityConfig(
        label_delay_ms=MIN,
        label_delay_by_model={"slow": 10 * MIN},
        tasks={"fraction": "regression"},
    )
    op = QualityOperator(cfg)
    op.feed(
        "inference-logs",
        [log("f1", T0, "fast", 0.9), log("s1", T0, "slow", 0.9), log("r1", T0, "fraction", 0.25)],
    )
    op.feed(
        "labels",
        [
            lab("f1", T0 + 2 * MIN, "fast", 1.0),  # past fast's 1-min delay: orphan
            lab("s1", T0 + 2 * MIN, "slow", 1.0),  # within slow's 10 min: joins
            lab("r1", T0 + 30, "fraction", 0.5),
        ],
    )
    op.advance(T0 + 300_000 + MIN)
    rows = as_dicts(op.collect().rows["quality_windows"])
    final = {(r["model_id"], r["model_version"]) for r in rows if r["final"]}
    assert ("fast", "v1") in final and ("fraction", "v1") in final
    assert ("slow", "v1") not in final  # still provisional: its labels may still come
    (fraction,) = [r for r in rows if r["model_id"] == "fraction" and r["final"]]
    assert fraction["task"] == "regression" and fraction["mae"] == pytest.approx(0.25)
    op.advance(T0 + 300_000 + 10 * MIN)
    rows += as_dicts(op.collect().rows["quality_windows"])
    (slow,) = [r for r in rows if r["model_id"] == "slow" and r["final"]]
    assert slow["labelled"] == 1 and slow["accuracy"] == 1.0
    fast_orphans = sum(r["orphan_labels"] for r in rows if r["model_id"] == "fast" and r["final"])
    assert fast_orphans == 1
    assert op.by_id == {} and op.pending == {}  # nothing left once every window is final


def test_label_before_its_prediction_joins_and_unknown_request_is_an_orphan() -> None:
    op = QualityOperator(QualityConfig(label_delay_ms=MIN))
    op.feed("labels", [lab("a", T0 + 5_000, "m", "x"), lab("nobody", T0 + 6_000, "m", "x")])
    op.advance(T0 + 1_000)  # the watermark has not passed the labels: both wait
    assert len(op.pending) == 2
    op.feed("inference-logs", [log("a", T0 + 2_000, "m", "x")])  # out of order, in time
    op.advance(T0 + 300_000 + MIN)
    rows = as_dicts(op.collect().rows["quality_windows"])
    (real,) = [r for r in rows if r["model_version"] == "v1" and r["final"]]
    assert real["labelled"] == 1 and real["accuracy"] == 1.0
    assert sum(r["orphan_labels"] for r in rows if r["final"]) == 1
