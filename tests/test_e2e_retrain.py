"""Retraining on the quality monitor's accuracy drop, end to end: real broker, worker, chDB.

The simulator publishes the inference logs and labels (short delays, so the
test is quick) of two classifiers and a regressor, with its `concept_drift`
incident on model-0 (600-900 s): the truth changes, the inputs do not, so no
drift or service alert can stand in for the quality monitor. The worker runs
the quality monitor only, with a retraining policy on `accuracy_drop` held
300 s. model-0 must get exactly one request on `retrain-requests`, naming the
quality alert, with the accuracy evidence; the stable models none.

The feature-drift half of issue 17 point 4 (a PSI condition on the simulator's
`feature_drift` incident) is covered by tests/test_e2e_causes.py.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from operators.retrain import request_id
from schemas.events import Alert, RetrainRequest
from streams.cli.simulate import MODEL_VERSION, Incident
from tests.harness import (
    Deployment,
    WorkerProcess,
    consume_all,
    inference_only,
    produce,
    simulated,
    tail,
)

pytestmark = pytest.mark.integration

START_MS = int(datetime(2026, 6, 3, tzinfo=UTC).timestamp() * 1000)  # a 5-min boundary
DURATION_S = 1200
DELAY_MS = 120_000  # the quality monitor's label delay; the simulator's are capped at 60 s
DRIFT = Incident("concept_drift", "model-0", 600, 300, 0.4)
OTHERS = ("ctr", "sensor", "cluster", "drift", "service", "srm")
HOLD_S = 300
POLICY = f"""
[[retrain.policies]]
models = "model-*"
interval_s = 86400
conditions = [{{ metric = "accuracy_drop", op = ">", threshold = 0.1, for_s = {HOLD_S} }}]
"""


def traffic(d: Deployment) -> tuple[list[tuple], int]:
    scenario = inference_only(
        START_MS,
        DURATION_S,
        seed=11,
        label_delay_median_s=10.0,
        label_delay_max_s=60.0,
        incidents=[DRIFT],
    )
    logical = ("inference-logs", "labels")
    # a tail on every partition far enough ahead that every window is final
    tail_ts = START_MS + DURATION_S * 1000 + DELAY_MS + 300_000 + 60_000
    return simulated(d, scenario, logical) + tail(d, tail_ts, 2, logical), tail_ts


def test_concept_drift_requests_retraining_once(tmp_path, broker) -> None:
    overrides = {f"monitors.{m}": {"enabled": False} for m in OTHERS}
    overrides["monitors.quality"] = {"options": {"label_delay_ms": DELAY_MS}}
    d = Deployment(
        tmp_path,
        broker.bootstrap,
        "retrain-e2e",
        partitions=2,
        flush_interval_s=0.2,
        **{"topics.retrain_requests": "retrain-e2e.retrain-requests"},
        **overrides,
    )
    d.path.write_text(d.path.read_text() + POLICY)
    sent, tail_ts = traffic(d)
    worker = WorkerProcess(d).start()
    try:
        produce(broker.bootstrap, sent)

        def consumed() -> bool:
            marks = worker.wait_http("/health", 30, accept_503=True)["watermarks"]
            return "quality" in marks and marks["quality"] >= tail_ts - 60_000

        worker.wait_until(consumed, 120, "the worker to consume every message")

        def requested() -> bool:
            return bool(consume_all(broker.bootstrap, "retrain-e2e.retrain-requests", idle_s=1))

        worker.wait_until(requested, 30, "a retraining request")
    finally:
        assert worker.stop() == 0

    alerts = [
        msgspec.json.decode(m.value(), type=Alert)
        for m in consume_all(broker.bootstrap, d.topics["alerts"], idle_s=1)
    ]
    quality = [a for a in alerts if a.kind == "quality" and a.status == "firing"]
    drift_ws = START_MS + int(DRIFT.start_s) * 1000
    assert [(a.rule, a.entity, a.window_start) for a in quality] == [
        ("quality_accuracy_drop", f"model-0/{MODEL_VERSION}", drift_ws)
    ], [a.message for a in alerts]
    (alert,) = quality

    requests = [
        msgspec.json.decode(m.value(), type=RetrainRequest)
        for m in consume_all(broker.bootstrap, "retrain-e2e.retrain-requests", idle_s=1)
    ]
    assert [r.model_id for r in requests] == ["model-0"], requests  # none for the stable models
    (r,) = requests
    # held from the alert's window start for HOLD_S (not before the alert was known)
    assert r.ts == max(drift_ws + HOLD_S * 1000, alert.ts)
    assert r.request_id == request_id("model-0", r.ts)  # deterministic: model and time
    assert r.model_version == MODEL_VERSION
    assert r.reasons == [{"alert_id": alert.alert_id, "message": alert.message}]
    assert r.evidence == [
        {
            "metric": "accuracy_drop",
            "entity": alert.entity,
            "value": alert.value,
            "op": ">",
            "threshold": 0.1,
            "for_s": float(HOLD_S),
            "held_s": (r.ts - drift_ws) / 1000,
            "alert_id": alert.alert_id,
        }
    ]
    assert alert.value > 0.1
