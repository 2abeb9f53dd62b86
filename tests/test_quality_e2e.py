"""The quality monitor through the real worker, broker (Tansu) and chDB.

Simulated inference logs and delayed labels of two classifiers and a regressor,
with a concept drift on model-0, go to a worker running only the quality
monitor. The worker is killed (SIGKILL) while thousands of predictions wait for
their labels, restarted, and fed the rest: the final `quality_windows` rows
must equal an uninterrupted run's (the operator in-process over the same
events: final rows do not depend on batching or arrival order, see
tests/test_quality_operator.py), the concept drift raises a `quality` alert in
its window, and the stable models stay quiet.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from operators.quality import QualityConfig, QualityOperator
from schemas.decode import Decoder
from streams.cli.simulate import MODEL_VERSION, REGRESSOR, Incident, Simulator
from tests.harness import (
    Deployment,
    WorkerProcess,
    committed,
    consume_all,
    inference_only,
    produce,
    simulated,
    tail,
)
from tests.row_dicts import as_dicts

pytestmark = pytest.mark.integration

START_MS = int(datetime(2026, 6, 2, tzinfo=UTC).timestamp() * 1000)  # a 5-min boundary
DURATION_S = 1500
DELAY_MS = 600_000  # the simulator caps label delays at 540 s
DRIFT = Incident("concept_drift", "model-0", 900, 300, 0.4)
MONITORS = ("ctr", "sensor", "cluster", "drift", "service", "srm")

ROWS = (
    "SELECT toUnixTimestamp64Milli(window_start) AS ws, model_id, model_version, task,"
    " predictions, labelled, orphan_labels, duplicate_labels, accuracy, f1_macro, log_loss,"
    " roc_auc, ece, mae, rmse, estimated_accuracy, estimated, final"
    " FROM streamwatch.quality_windows FINAL WHERE model_id NOT LIKE 'zz-%'"
    " ORDER BY model_id, model_version, ws"
)
COLUMNS = (
    "task", "predictions", "labelled", "orphan_labels", "duplicate_labels", "accuracy",
    "f1_macro", "log_loss", "roc_auc", "ece", "mae", "rmse", "estimated_accuracy",
)  # fmt: skip


def traffic(d: Deployment) -> tuple[list[tuple], list[tuple], list[Any]]:
    """(the simulation's messages, the tail's, the decoded events in time order)."""
    scenario = inference_only(START_MS, DURATION_S, seed=5, incidents=[DRIFT])
    logical = ("inference-logs", "labels")
    decoders = {t: Decoder(t) for t in logical}
    events = [
        (t, decoders[t].decode(v, k.encode()))
        for t, k, v in Simulator(scenario).messages()
        if t in decoders
    ]
    tail_ts = START_MS + DURATION_S * 1000 + DELAY_MS + 300_000 + 60_000
    return simulated(d, scenario, logical), tail(d, tail_ts, 2, logical), events


def reference_rows(events: list[Any]) -> dict[tuple, dict[str, Any]]:
    op = QualityOperator(QualityConfig(label_delay_ms=DELAY_MS))
    for source, event in events:
        op.feed(source, [event])
    op.advance(START_MS + 10**9)
    rows = as_dicts(op.collect().rows["quality_windows"])
    return {(r["window_start"], r["model_id"], r["model_version"]): r for r in rows}


def ends(d: Deployment) -> dict[tuple[str, int], int]:
    out: dict[tuple[str, int], int] = {}
    for name in ("inference_logs", "labels"):
        for m in consume_all(d.bootstrap, d.topics[name], idle_s=0.5):
            tp = (m.topic(), m.partition())
            out[tp] = max(out.get(tp, 0), m.offset() + 1)
    return out


def test_kill_9_with_pending_labels_gives_the_uninterrupted_rows(tmp_path, broker) -> None:
    overrides = {f"monitors.{m}": {"enabled": False} for m in MONITORS}
    overrides["monitors.quality"] = {"options": {"label_delay_ms": DELAY_MS}}
    d = Deployment(
        tmp_path,
        broker.bootstrap,
        "quality-e2e",
        partitions=2,
        checkpoint_interval_s=1.0,
        flush_interval_s=0.2,
        **overrides,
    )
    body, tail, events = traffic(d)
    half = len(body) // 2
    worker = WorkerProcess(d)
    try:
        produce(broker.bootstrap, body[:half])
        worker.start()
        worker.wait_until(
            lambda: worker.metric("streamwatch_events_consumed_total") >= half,
            120,
            "the first half",
        )
        worker.wait_until(
            lambda: worker.metric("streamwatch_checkpoints_total") >= 1, 30, "a checkpoint"
        )
        time.sleep(0.3)  # between two checkpoints: some state is lost and replayed
        worker.kill()  # thousands of predictions are waiting for their labels here

        produce(broker.bootstrap, body[half:] + tail)
        wanted = ends(d)
        worker.start()
        worker.wait_until(lambda: committed(d, list(wanted)) == wanted, 180, "every offset")
        worker.wait_until(
            lambda: (
                worker.query(
                    "SELECT count() AS n FROM streamwatch.quality_windows FINAL "
                    "WHERE final = 1 AND model_id = 'model-0'"
                )[0]["n"]
                >= DURATION_S // 300
            ),
            60,
            "model-0's final rows",
        )
        rows = worker.query(ROWS)
        alerts = worker.query(
            "SELECT rule, entity, status, toUnixTimestamp64Milli(window_start) AS ws "
            "FROM streamwatch.alerts FINAL WHERE kind = 'quality' ORDER BY ws"
        )
        late = worker.query("SELECT count() AS n FROM streamwatch.late_events FINAL")[0]["n"]
        # estimated rows, where the watermark's steps left room for any (whether a window
        # gets a provisional row before its final one depends on batching), are replaced
        estimates = worker.query(
            "SELECT count() AS n FROM streamwatch.quality_windows WHERE estimated = 1"
        )[0]["n"]
        last_run = worker.metric("streamwatch_events_consumed_total")
    finally:
        code = worker.stop()
    assert code == 0
    assert late == 0
    assert not any(r["estimated"] for r in rows), "an estimate was not replaced"
    print(f"estimated rows written and replaced: {estimates}")
    # the restart resumed from a checkpoint (pending predictions restored), not from 0
    assert last_run < len(body) + len(tail), (last_run, len(body))

    want = reference_rows(events)
    finals = {(r["ws"], r["model_id"], r["model_version"]): r for r in rows if r["final"]}
    assert all(r["final"] == 1 for r in rows), "a window left provisional"
    assert set(finals) == set(want)
    for key, row in finals.items():
        for column in COLUMNS:
            expected = want[key][column]
            if isinstance(expected, float):
                assert row[column] == pytest.approx(expected, rel=1e-12), (key, column)
            else:
                assert row[column] == expected, (key, column)
    assert {r["task"] for r in finals.values() if r["model_id"] == REGRESSOR} == {"regression"}

    drift_ws = START_MS + int(DRIFT.start_s) * 1000
    firing = [a for a in alerts if a["status"] == "firing"]
    print("quality alerts:", alerts)
    assert [(a["rule"], a["entity"], a["ws"]) for a in firing] == [
        ("quality_accuracy_drop", f"model-0/{MODEL_VERSION}", drift_ws)
    ]
