"""Every monitor end to end: simulated traffic with one incident of every kind.

A 2400 event-second simulation (about 270k messages of all five input topics,
fixed seed and start) with `default_incidents` is published at full speed to
the real broker (Tansu), the worker runs as its own process with the default
rules, and the alerts (topic and ClickHouse) are scored against the
simulator's ground truth:

- every contract table has rows;
- recall: an alert of the incident's kind on its entity, with `ts` in
  [incident start, incident end + DELAY_S[kind]];
- precision: of the firing alerts (kind "change" excluded: it follows real
  level changes of window metrics), the share explained by an incident on
  its entity in the same time span; a per-kind TP/FP table and every false
  positive are printed (`pytest -s`);
- the alert events on the topic and the `alerts` table carry the same ids.

The scenario has 3 campaigns (the CLI's and the demo's default, not
`Scenario`'s 10): with 10, cmp-002 gets ~220 impressions and ~6 clicks per
60-s window, and even a window with no click at all has Fisher's p ~= 0.003
against its baseline, above the ctr_drop rule's max_p_value of 0.001, so the
default CTR incident could not be detected by the default rule at all.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime

import msgspec
import pytest

from operators.reference import PREDICTION
from schemas.events import Alert
from streams.cli.simulate import (
    METRICS,
    MODEL_VERSION,
    REGRESSOR,
    Incident,
    Scenario,
    default_incidents,
)
from streams.runtime import repartition
from streams.runtime.monitors import build_monitors
from tests.harness import Deployment, WorkerProcess, consume_all, produce, simulated, tail

pytestmark = pytest.mark.integration

DURATION_S = 2400
CAMPAIGNS = 3
SEED = 42
# fixed and aligned to every window size (60 s, 300 s): the run is the same every time
START_MS = int(datetime(2026, 6, 1, tzinfo=UTC).timestamp() * 1000)
LATENESS_MS = 10_000  # the monitors' default allowed lateness
ATTRIBUTION_MS = 600_000  # CTR windows are final this long after their end
PARTITIONS = 4

# How long after an incident's end an alert of this kind may still be caused by
# it (alert ts is event time: a window's end, or the judged reading's time).
DELAY_S = {
    # 60-s windows; ts = window end, so the window holding the last affected
    # impression (request) ends at most 60 s after the incident. The 600-s
    # attribution delays when a CTR window is judged, not its ts.
    "ctr": 60,
    "service": 60,
    # 5-min windows (srm, drift), ts = window end
    "srm": 300,
    "drift": 300,
    # a reading is judged against the 300 s before it (zscore, iqr): readings
    # returning to normal are judged against the incident's for 300 s
    "sensor": 300,
    # the k-means has moved toward the incident's regime (halflife 0.05, ~20
    # readings) and tau comes from recent distances: the return to normal may
    # stand out too; allowed the sensor monitor's 300 s
    "cluster": 300,
    # 5-min windows of the prediction's time, ts = window end; judged once final (the
    # label delay after it), which delays when, not the ts
    "quality": 300,
}

# The alert kinds that count as detecting an incident (recall).
DETECTED_BY = {
    "ctr_drop": ("ctr",),
    "srm": ("srm",),
    "feature_drift": ("drift",),
    "prediction_shift": ("drift",),
    "latency_spike": ("service",),
    "error_spike": ("service",),
    "sensor_spike": ("sensor",),
    "sensor_rise": ("sensor",),
    "sensor_regime": ("cluster", "sensor"),
    "concept_drift": ("quality",),
}

# Every incident kind must be detected (the simulator's models have median
# latencies of 100-200 ms, so the x3 spike crosses the seed's 500 ms p99 line).
UNDETECTABLE: set[str] = set()
# Measured 1.00 (21 of 21 firing alerts explained by an incident) with the
# default rules; the bound leaves room for one stray Gaussian-tail warning.
MIN_PRECISION = 0.9


def entities(inc: Incident) -> dict[str, set[str]]:
    """Per alert kind, the entities (in the operators' formats) the incident affects."""
    target = inc.target
    if inc.kind == "ctr_drop":  # ctr: campaign, or campaign/variant in experiments
        return {"ctr": {target, f"{target}/A", f"{target}/B"}}
    if inc.kind == "srm":  # srm: experiment
        return {"srm": {target}}
    if inc.kind == "feature_drift":  # drift psi: model/feature
        return {"drift": {target}}
    if inc.kind == "prediction_shift":
        # drift: psi of model/__prediction__ and confidence_shift of model; the
        # shifted scores also move the service's low-confidence share (model/version)
        # the labels follow the unshifted score, so the shifted model is also less
        # accurate (quality: model/version)
        return {
            "drift": {f"{target}/{PREDICTION}", target},
            "service": {f"{target}/{MODEL_VERSION}"},
            "quality": {f"{target}/{MODEL_VERSION}"},
        }
    if inc.kind == "concept_drift":  # quality: model/version (the inputs do not move)
        return {"quality": {f"{target}/{MODEL_VERSION}"}}
    if inc.kind in ("latency_spike", "error_spike"):  # service: model/version
        return {"service": {f"{target}/{MODEL_VERSION}"}}
    sensor, _, metric = target.partition("/")
    if inc.kind == "sensor_spike":
        metrics = {metric or "vibration"}
    elif inc.kind == "sensor_rise":
        metrics = {"temperature"}
    else:  # sensor_regime moves every metric
        metrics = set(METRICS)
    # sensor: sensor/metric, and the sensor for the autoencoder (every metric together,
    # kind sensor; on by default since issue 14's follow-up); cluster: sensor
    return {"sensor": {f"{sensor}/{m}" for m in metrics} | {sensor}, "cluster": {sensor}}


def explains(inc: Incident, alert: Alert, kinds: tuple[str, ...] | None = None) -> bool:
    if kinds is not None and alert.kind not in kinds:
        return False
    if alert.entity not in entities(inc).get(alert.kind, ()):
        return False
    start = START_MS + int(inc.start_s * 1000)
    end = START_MS + int(inc.end_s * 1000) + DELAY_S[alert.kind] * 1000
    return start <= alert.ts <= end


def build_messages(d: Deployment, scenario: Scenario) -> tuple[list, int]:
    """The simulation on the deployment's topics, then a tail per partition; and
    the tail's event time."""
    # the tail: far enough ahead that every window of the run closes (CTR: final
    # after the attribution window) on every task
    tail_ts = START_MS + DURATION_S * 1000 + ATTRIBUTION_MS + 300_000 + 6 * LATENESS_MS
    return simulated(d, scenario) + tail(d, tail_ts, PARTITIONS), tail_ts


COUNTED = (
    "alerts",
    "ctr_windows",
    "drift_scores",
    "inference_windows",
    "sensor_anomalies",
    "quality_windows",
)
# the simulator's label delays are capped at 540 s: a 600-s label delay joins them all
# and makes the quality windows final within the tail's reach (as CTR's attribution)
QUALITY_DELAY_MS = 600_000


def test_every_incident_detected_end_to_end(tmp_path, broker) -> None:
    began = time.monotonic()
    d = Deployment(
        tmp_path,
        broker.bootstrap,
        "monitors-e2e",
        partitions=PARTITIONS,
        **{"monitors.quality": {"options": {"label_delay_ms": QUALITY_DELAY_MS}}},
    )
    scenario = Scenario(
        start_ms=START_MS,
        duration_s=DURATION_S,
        campaigns=CAMPAIGNS,
        seed=SEED,
        incidents=default_incidents(DURATION_S, campaigns=CAMPAIGNS),
    )
    truth = scenario.ground_truth()
    assert {i.kind for i in truth} == set(DETECTED_BY)
    messages, tail_ts = build_messages(d, scenario)
    assert len(messages) < 300_000  # with the labels and the regressor (v2)

    monitors = {s.name for s in build_monitors(d.settings()) if s.name != repartition.FORWARDER}
    worker = WorkerProcess(d).start()
    try:
        produce(broker.bootstrap, messages)
        produced = time.monotonic()

        def consumed() -> bool:
            # every task has seen its partition's tail (the last message of it)
            health = worker.wait_http("/health", 30, accept_503=True)
            marks = health["watermarks"]
            # every monitor (those keyed by experiment, issue 16, on their re-keyed
            # streams, which advance by the forwarder's progress records)
            return set(marks) == monitors and min(marks.values()) >= tail_ts - LATENESS_MS

        worker.wait_until(consumed, 300, "the worker to consume every message")
        consumed_at = time.monotonic()
        counts_sql = "SELECT " + ", ".join(
            f"(SELECT count() FROM streamwatch.{t}) AS {t}" for t in COUNTED
        )
        last: list[dict] = []
        stable_since = time.monotonic()

        def settled() -> bool:
            nonlocal last, stable_since
            now = worker.query(counts_sql)
            if now != last:
                last, stable_since = now, time.monotonic()
            health = worker.wait_http("/health", 30, accept_503=True)
            return health["buffered_rows"] == 0 and time.monotonic() - stable_since > 4

        worker.wait_until(settled, 120, "the results to stop changing")
    finally:
        assert worker.stop() == 0

    # 1. every contract table has rows
    tables = (
        "ctr_windows",
        "sensor_anomalies",
        "sensor_windows",
        "drift_scores",
        "inference_windows",
        "srm_checks",
        "quality_windows",
        "alerts",
    )
    rows = d.query(
        "SELECT "
        + ", ".join(f"(SELECT count() FROM streamwatch.{t} FINAL) AS {t}" for t in tables)
        + ", (SELECT count() FROM streamwatch.late_events FINAL) AS late_events"
        + ", (SELECT count() FROM streamwatch.dead_letters FINAL) AS dead_letters"
    )[0]
    print(f"\nrows: {rows}")
    assert all(rows[t] > 0 for t in tables), rows
    assert rows["dead_letters"] == 0, rows

    on_topic = [
        msgspec.json.decode(m.value(), type=Alert)
        for m in consume_all(broker.bootstrap, d.topics["alerts"])
    ]

    # 4. the topic and the table hold the same alerts
    stored = d.query("SELECT alert_id FROM streamwatch.alerts FINAL")
    topic_ids = [a.alert_id for a in on_topic]
    assert len(set(topic_ids)) == len(topic_ids), "an alert was published twice"
    assert set(topic_ids) == {r["alert_id"] for r in stored}

    # 2. detection: every incident raises an alert of its kind on its entity
    print(f"\n{'incident':<17} {'target':<20} {'start':>6} {'end':>6}  first detection")
    missed = []
    for inc in truth:
        hits = sorted(
            (
                a
                for a in on_topic
                if a.status == "firing" and explains(inc, a, DETECTED_BY[inc.kind])
            ),
            key=lambda a: a.ts,
        )
        first = (
            f"{hits[0].rule} on {hits[0].entity} at +{(hits[0].ts - START_MS) / 1000:.0f}s"
            if hits
            else "MISSED"
        )
        print(f"{inc.kind:<17} {inc.target:<20} {inc.start_s:>6.0f} {inc.end_s:>6.0f}  {first}")
        if not hits:
            missed.append(inc.kind)
    recall = 1 - len(missed) / len(truth)
    print(f"recall {recall:.3f} ({len(truth) - len(missed)}/{len(truth)}), missed: {missed}")
    # latency_spike cannot fire with the default rules (see UNDETECTABLE); all else must
    assert set(missed) == UNDETECTABLE, f"missed {missed}"
    assert recall == pytest.approx(1 - len(UNDETECTABLE) / len(truth))

    # 3. quiet stretches: firing alerts no incident explains
    firing = [a for a in on_topic if a.status == "firing" and a.kind != "change"]
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    false_positives = []
    for a in firing:
        if any(explains(inc, a) for inc in truth):
            tp[a.kind] += 1
        else:
            fp[a.kind] += 1
            false_positives.append(a)
    precision = sum(tp.values()) / len(firing)
    print(f"\n{'kind':<8} {'TP':>4} {'FP':>4}")
    for kind in sorted(tp.keys() | fp.keys()):
        print(f"{kind:<8} {tp[kind]:>4} {fp[kind]:>4}")
    print(f"precision {precision:.3f} ({sum(tp.values())}/{len(firing)})")
    print("false positives:")
    for a in sorted(false_positives, key=lambda a: (a.rule, a.ts)):
        at = (a.ts - START_MS) / 1000
        print(f"  +{at:>5.0f}s {a.rule:<17} {a.severity:<8} {a.entity:<22} {a.message}")
    changes = Counter((a.rule, a.entity) for a in on_topic if a.kind == "change")
    print(f"change alerts (not scored): {dict(changes)}")
    print(
        f"late events: {rows['late_events']}; produce {produced - began:.0f} s, "
        f"consumed +{consumed_at - produced:.0f} s, total {time.monotonic() - began:.0f} s"
    )
    assert precision >= MIN_PRECISION, f"precision {precision:.2f} < {MIN_PRECISION}"

    # 5. quality: the concept drift is caught (above); the regressor and model-0 outside
    # its incident stay quiet, and the final rows cover both kinds of model
    quality = [a for a in firing if a.kind == "quality"]
    print("quality alerts:", [(a.rule, a.entity, (a.ts - START_MS) // 1000) for a in quality])
    assert not [a for a in quality if a.entity.startswith(REGRESSOR)], quality
    q = d.query(
        "SELECT model_id, task, count() AS n, avg(accuracy) AS acc, avg(mae) AS mae, "
        "sum(orphan_labels) AS orphans FROM streamwatch.quality_windows FINAL "
        "WHERE final = 1 GROUP BY model_id, task ORDER BY model_id, task"
    )
    print(f"quality_windows: {q}")
    tasks = {r["model_id"]: r["task"] for r in q if r["task"]}
    assert tasks["model-0"] == "classification" and tasks[REGRESSOR] == "regression"
