"""The traffic simulator: determinism, valid events, time order, incidents' ground truth.

No Kafka: the generator is consumed directly (publish() gets a fake producer).
Incident tests compare a run with one incident against the quiet run of the
same seed: every traffic kind has its own random stream and incidents only
transform drawn values, so the two runs are equal outside the incident's
window and differ measurably inside it.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from functools import cache
from itertools import pairwise
from typing import Any

import orjson
import pytest

from schemas.decode import Decoder, Rejection
from schemas.events import KEY_FIELD
from streams.cli.simulate import (
    FEATURES,
    KINDS,
    METRICS,
    REGIME_DIRECTION,
    REGRESSOR,
    Incident,
    Scenario,
    Simulator,
    default_incidents,
    metric_std,
    publish,
)

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
TOPICS = ("impressions", "clicks", "inference-logs", "sensor-readings", "labels")

Row = tuple[str, str, dict[str, Any], float]  # topic, key, event, seconds after start


def _scenario(duration_s: int, incidents: tuple[Incident, ...] = (), **kw: Any) -> Scenario:
    return Scenario(start_ms=START_MS, duration_s=duration_s, incidents=list(incidents), **kw)


@cache
def _run(
    duration_s: int, incidents: tuple[Incident, ...] = (), impressions: float = 60.0
) -> list[Row]:
    sim = Simulator(_scenario(duration_s, incidents, impressions_per_s=impressions))
    rows = []
    for topic, key, value in sim.messages():
        if topic != "__tick__":
            event = orjson.loads(value)
            rows.append((topic, key, event, (event["ts"] - START_MS) / 1000))
    return rows


@cache
def _default_run() -> tuple[Scenario, list[tuple[str, str, bytes]]]:
    duration = 1500
    scenario = _scenario(duration, tuple(default_incidents(duration)))
    return scenario, list(Simulator(scenario).messages())


def _split(rows: list[Row], topic: str, inc: Incident) -> tuple[list[Row], list[Row]]:
    inside = [r for r in rows if r[0] == topic and inc.active(r[3])]
    outside = [r for r in rows if r[0] == topic and not inc.active(r[3])]
    return inside, outside


# -- the stream as a whole ------------------------------------------------------


def test_deterministic_for_a_seed() -> None:
    incidents = default_incidents(1500)
    a = list(Simulator(_scenario(300, tuple(incidents))).messages())
    b = list(Simulator(_scenario(300, tuple(incidents))).messages())
    assert a == b
    c = list(Simulator(_scenario(300, tuple(incidents), seed=7)).messages())
    assert a != c


def test_two_runs_with_one_seed_share_no_event_id() -> None:
    """The README's walkthrough publishes two simulations with the same seed a few
    seconds apart: had they shared ids, the second run's clicks would join the first
    run's impressions (and labels its predictions), masking both runs' CTR drops."""
    id_fields = ("impression_id", "click_id", "conversion_id", "request_id")

    def ids(start_ms: int) -> set[str]:
        sim = Simulator(Scenario(start_ms=start_ms, duration_s=120, cvr=0.5))
        out = set()
        for topic, _, value in sim.messages():
            if topic != "__tick__":
                event = orjson.loads(value)
                out.update(f"{topic}:{f}={event[f]}" for f in id_fields if f in event)
        return out

    first, again, later = ids(START_MS), ids(START_MS), ids(START_MS + 4_000)
    assert first == again  # a run is still reproducible
    kinds = {i.split("=")[0] for i in first}
    assert {"impressions:impression_id", "clicks:click_id", "inference-logs:request_id"} <= kinds
    assert first and not first & later


def test_every_message_decodes_with_its_key() -> None:
    _, messages = _default_run()
    decoders = {t: Decoder(t) for t in TOPICS}
    seen: Counter[str] = Counter()
    for topic, key, value in messages:
        if topic == "__tick__":
            continue
        event = decoders[topic].decode(value, key.encode())
        assert not isinstance(event, Rejection), (topic, key, value, event)
        assert getattr(event, KEY_FIELD[topic]) == key
        seen[topic] += 1
    assert set(seen) == set(TOPICS)
    # the default rates: 60 impressions/s, 20 inference logs/s, 10 sensors at 1 reading/s
    # (+ the regressor's 2 requests/s; labels are counted in test_labels_*)
    assert seen["inference-logs"] == pytest.approx(22 * 1500, rel=0.05)
    assert seen["sensor-readings"] == 10 * 1500
    assert seen["impressions"] == pytest.approx(60 * 1500, rel=0.05)


def test_time_order_and_ticks() -> None:
    scenario, messages = _default_run()
    horizons = [int(v) for t, _, v in messages if t == "__tick__"]
    assert horizons == [START_MS + 1000 * (s + 1) for s in range(scenario.duration_s)]
    last, horizon = 0, START_MS + 1000
    for topic, _, value in messages:
        if topic == "__tick__":
            assert int(value) == horizon
            horizon += 1000
            continue
        ts = orjson.loads(value)["ts"]
        assert horizon - 1000 <= ts < horizon  # within the second its tick closes
        assert ts >= last  # and in time order
        last = ts


def test_inference_and_sensor_shapes() -> None:
    rows = _run(120)
    logs = [r[2] for r in rows if r[0] == "inference-logs" and r[1] != REGRESSOR]
    assert {e["model_id"] for e in logs} == {"model-0", "model-1"}
    assert {e["model_version"] for e in logs} == {"1.0.0"}
    for e in logs:
        assert set(e["features"]) == {f.name for f in FEATURES} | {"device"}
        assert all(isinstance(e["features"][f.name], int | float) for f in FEATURES)
        assert isinstance(e["features"]["device"], str)
        assert 0.0 <= e["prediction"] <= 1.0
        assert e["status"] == "error" or 0.0 <= e["confidence"] <= 1.0
    readings = [r[2] for r in rows if r[0] == "sensor-readings"]
    assert {e["sensor_id"] for e in readings} == {f"sensor-{i:02d}" for i in range(10)}
    assert {e["site"] for e in readings} == {"site-a", "site-b", "site-c"}
    assert all(set(e["values"]) == set(METRICS) for e in readings)


def test_sensor_metrics_are_correlated() -> None:
    rows = _run(600, impressions=5.0)
    values = [r[2]["values"] for r in rows if r[0] == "sensor-readings" and r[1] == "sensor-04"]
    t, v, p = ([x[m] for x in values] for m in METRICS)
    for a, b in ((t, v), (t, p), (v, p)):
        assert 0.5 < statistics.correlation(a, b) < 0.99
    for m, series in zip(METRICS, (t, v, p), strict=True):
        assert statistics.stdev(series) == pytest.approx(metric_std(m), rel=0.15)


# -- incidents --------------------------------------------------------------------


def _events_of(rows: list[Row], topic: str, key: str | None = None) -> list[Row]:
    return [r for r in rows if r[0] == topic and (key is None or r[1] == key)]


def _same_outside(topic: str, quiet: list[Row], loud: list[Row], inc: Incident) -> None:
    assert _split(loud, topic, inc)[1] == _split(quiet, topic, inc)[1]


def test_latency_spike() -> None:
    inc = Incident("latency_spike", "model-1", 100, 60, 4.0)
    quiet, loud = _run(240, impressions=5.0), _run(240, (inc,), 5.0)
    _same_outside("inference-logs", quiet, loud, inc)
    q_in, l_in = (_split(r, "inference-logs", inc)[0] for r in (quiet, loud))
    assert len(q_in) == len(l_in) > 500
    for model, ratio in (("model-1", 4.0), ("model-0", 1.0)):
        q = statistics.fmean(e["latency_ms"] for _, k, e, _ in q_in if k == model)
        lat = statistics.fmean(e["latency_ms"] for _, k, e, _ in l_in if k == model)
        assert lat / q == pytest.approx(ratio, rel=1e-3)


def test_error_spike() -> None:
    inc = Incident("error_spike", "model-0", 100, 100, 0.2)
    quiet, loud = _run(300, impressions=5.0), _run(300, (inc,), 5.0)
    _same_outside("inference-logs", quiet, loud, inc)
    inside = [e for _, k, e, _ in _split(loud, "inference-logs", inc)[0] if k == "model-0"]
    share = sum(e["status"] == "error" for e in inside) / len(inside)
    assert len(inside) > 700
    assert share == pytest.approx(0.2, abs=0.04)
    before = [e for _, k, e, _ in _events_of(quiet, "inference-logs", "model-0")]
    assert sum(e["status"] == "error" for e in before) / len(before) < 0.02


def test_feature_drift() -> None:
    feature = next(f for f in FEATURES if f.name == "amount")
    inc = Incident("feature_drift", "model-0/amount", 100, 100, 2.0)
    quiet, loud = _run(300, impressions=5.0), _run(300, (inc,), 5.0)
    _same_outside("inference-logs", quiet, loud, inc)
    q_in, l_in = (_split(r, "inference-logs", inc)[0] for r in (quiet, loud))
    for model, shift in (("model-0", 2.0 * feature.std), ("model-1", 0.0)):
        q = [e["features"]["amount"] for _, k, e, _ in q_in if k == model]
        lo = [e["features"]["amount"] for _, k, e, _ in l_in if k == model]
        assert statistics.fmean(lo) - statistics.fmean(q) == pytest.approx(shift, abs=0.01)
    # against the quiet population: the mean moved by ~2 standard deviations
    outside = [e["features"]["amount"] for _, k, e, _ in _split(loud, "inference-logs", inc)[1]]
    shifted = [e["features"]["amount"] for _, k, e, _ in l_in if k == "model-0"]
    moved = (statistics.fmean(shifted) - statistics.fmean(outside)) / statistics.stdev(outside)
    assert moved == pytest.approx(2.0, abs=0.3)


def test_categorical_feature_drift() -> None:
    inc = Incident("feature_drift", "model-1/device", 100, 100, 0.5)
    quiet, loud = _run(300, impressions=5.0), _run(300, (inc,), 5.0)
    _same_outside("inference-logs", quiet, loud, inc)
    inside = [e for _, k, e, _ in _split(loud, "inference-logs", inc)[0] if k == "model-1"]
    share = sum(e["features"]["device"] == "tv" for e in inside) / len(inside)
    assert share == pytest.approx(0.5 + 0.5 * 0.02, abs=0.06)


def test_prediction_shift() -> None:
    inc = Incident("prediction_shift", "model-0", 100, 100, 1.5)
    quiet, loud = _run(300, impressions=5.0), _run(300, (inc,), 5.0)
    _same_outside("inference-logs", quiet, loud, inc)
    q_in, l_in = (_split(r, "inference-logs", inc)[0] for r in (quiet, loud))

    def logit(p: float) -> float:
        return math.log(p / (1 - p))

    shifts = [
        logit(lo["prediction"]) - logit(q["prediction"])
        for (_, k, q, _), (_, _, lo, _) in zip(q_in, l_in, strict=True)
        if k == "model-0" and 0.01 < q["prediction"] < 0.99 and lo["prediction"] < 0.99
    ]
    assert len(shifts) > 500
    assert statistics.fmean(shifts) == pytest.approx(1.5, abs=0.01)
    q0 = statistics.fmean(e["prediction"] for _, k, e, _ in q_in if k == "model-0")
    l0 = statistics.fmean(e["prediction"] for _, k, e, _ in l_in if k == "model-0")
    assert l0 - q0 > 0.15
    for (_, k, q, _), (_, _, lo, _) in zip(q_in, l_in, strict=True):
        if k == "model-1":
            assert lo == q


def test_srm() -> None:
    inc = Incident("srm", "exp-cmp-000", 100, 200, 0.4)
    quiet, loud = _run(400), _run(400, (inc,))
    _same_outside("impressions", quiet, loud, inc)

    def share_a(rows: list[Row], experiment: str) -> float:
        variants = [e["variant"] for _, _, e, _ in rows if e.get("experiment") == experiment]
        assert len(variants) > 300
        return variants.count("A") / len(variants)

    inside, outside = _split(loud, "impressions", inc)
    assert share_a(inside, "exp-cmp-000") == pytest.approx(0.4, abs=0.04)
    assert share_a(outside, "exp-cmp-000") == pytest.approx(0.5, abs=0.04)
    assert share_a(inside, "exp-cmp-001") == pytest.approx(0.5, abs=0.05)


def test_ctr_drop() -> None:
    inc = Incident("ctr_drop", "cmp-003", 100, 300, 0.25)
    quiet, loud = _run(500), _run(500, (inc,))
    assert _events_of(loud, "impressions") == _events_of(quiet, "impressions")

    def ctr(rows: list[Row], inside: bool) -> float:
        shown = {
            e["impression_id"]
            for topic, k, e, t in rows
            if topic == "impressions" and k == "cmp-003" and inc.active(t) == inside
        }
        clicked = {
            e["impression_id"]
            for topic, _, e, _ in rows
            if topic == "clicks" and e["impression_id"] in shown
        }
        return len(clicked) / len(shown)

    assert ctr(loud, True) / ctr(quiet, True) == pytest.approx(0.25, abs=0.12)
    assert ctr(loud, False) == ctr(quiet, False)


def test_sensor_spike() -> None:
    inc = Incident("sensor_spike", "sensor-05/pressure", 100, 3, 8.0)
    quiet, loud = _run(200, impressions=5.0), _run(200, (inc,), 5.0)
    _same_outside("sensor-readings", quiet, loud, inc)
    q_in, l_in = (_split(r, "sensor-readings", inc)[0] for r in (quiet, loud))
    spiked = [
        (q, lo) for (_, k, q, _), (_, _, lo, _) in zip(q_in, l_in, strict=True) if k == "sensor-05"
    ]
    assert len(spiked) == 3  # 1 reading per second for 3 s
    for q, lo in spiked:
        jump = lo["values"]["pressure"] - q["values"]["pressure"]
        assert jump == pytest.approx(8.0 * metric_std("pressure"), abs=1e-3)
        assert lo["values"]["temperature"] == q["values"]["temperature"]
    assert [r for r in l_in if r[1] != "sensor-05"] == [r for r in q_in if r[1] != "sensor-05"]


def test_sensor_spike_default_metric_is_vibration() -> None:
    inc = Incident("sensor_spike", "sensor-01", 50, 1, 10.0)
    quiet, loud = _run(100, impressions=5.0), _run(100, (inc,), 5.0)
    (_, _, q, _), (_, _, lo, _) = (
        next(r for r in _split(x, "sensor-readings", inc)[0] if r[1] == "sensor-01")
        for x in (quiet, loud)
    )
    assert lo["values"]["vibration"] - q["values"]["vibration"] == pytest.approx(
        10.0 * metric_std("vibration"), abs=1e-3
    )


def test_sensor_rise() -> None:
    inc = Incident("sensor_rise", "sensor-02", 100, 360, 10.0)
    quiet, loud = _run(600, impressions=5.0), _run(600, (inc,), 5.0)
    _same_outside("sensor-readings", quiet, loud, inc)
    inside = [
        e["values"]["temperature"]
        for _, k, e, _ in _split(loud, "sensor-readings", inc)[0]
        if k == "sensor-02"
    ]
    assert len(inside) == 360
    assert all(b > a for a, b in pairwise(inside))  # strictly rising
    assert inside[-1] - inside[0] == pytest.approx(10.0, abs=0.1)
    # just before and after: no run of 10 strictly rising readings in the quiet data
    temps = [
        e["values"]["temperature"]
        for _, k, e, _ in _events_of(quiet, "sensor-readings", "sensor-02")
    ]
    assert _longest_rising_run(temps) < 10
    # the other metrics and sensors are untouched
    q_in = _split(quiet, "sensor-readings", inc)[0]
    l_in = _split(loud, "sensor-readings", inc)[0]
    for (_, k, q, _), (_, _, lo, _) in zip(q_in, l_in, strict=True):
        if k != "sensor-02":
            assert lo == q
        else:
            assert lo["values"]["pressure"] == q["values"]["pressure"]


def _longest_rising_run(xs: list[float]) -> int:
    best = run = 1
    for a, b in pairwise(xs):
        run = run + 1 if b > a else 1
        best = max(best, run)
    return best


def test_sensor_regime() -> None:
    inc = Incident("sensor_regime", "sensor-03", 100, 120, 6.0)
    quiet, loud = _run(300, impressions=5.0), _run(300, (inc,), 5.0)
    _same_outside("sensor-readings", quiet, loud, inc)
    q_in, l_in = (_split(r, "sensor-readings", inc)[0] for r in (quiet, loud))
    pairs = [
        (q["values"], lo["values"])
        for (_, k, q, _), (_, _, lo, _) in zip(q_in, l_in, strict=True)
        if k == "sensor-03"
    ]
    assert len(pairs) == 120
    for m in METRICS:
        shift = statistics.fmean(lo[m] - q[m] for q, lo in pairs)
        assert shift == pytest.approx(REGIME_DIRECTION[m] * 6.0 * metric_std(m), abs=1e-3)
    # far from every quiet reading, in units of each metric's std
    quiet_points = [
        e["values"] for _, k, e, _ in _split(loud, "sensor-readings", inc)[1] if k == "sensor-03"
    ]
    center = {m: statistics.fmean(p[m] for p in quiet_points) for m in METRICS}

    def dist(p: dict[str, float]) -> float:
        return math.sqrt(sum(((p[m] - center[m]) / metric_std(m)) ** 2 for m in METRICS))

    assert min(dist(lo) for _, lo in pairs) > max(dist(p) for p in quiet_points)


def test_incident_validation() -> None:
    with pytest.raises(ValueError, match="unknown incident kind"):
        Incident("meteor", "cmp-000", 0, 10)
    bad = [
        Incident("ctr_drop", "cmp-999", 0, 10),
        Incident("srm", "exp-cmp-005", 0, 10, 0.4),  # not an experiment campaign
        Incident("srm", "exp-cmp-000", 0, 10, 1.5),
        Incident("feature_drift", "model-0/colour", 0, 10),
        Incident("latency_spike", "model-9", 0, 10, 3.0),
        Incident("error_spike", "model-0", 0, 10, 2.0),
        Incident("sensor_spike", "sensor-00/humidity", 0, 10),
        Incident("sensor_rise", "sensor-00", 0, 10, -1.0),
        Incident("sensor_regime", "sensor-99", 0, 10),
    ]
    for inc in bad:
        with pytest.raises(ValueError, match="target must be"):
            Simulator(_scenario(10, (inc,)))


# -- default incidents and ground truth -----------------------------------------------


@pytest.mark.parametrize("duration", [1500, 2400, 3600])
def test_default_incidents_schedule(duration: int) -> None:
    incidents = default_incidents(duration)
    # every kind but the label incidents switched on by hand
    assert sorted(i.kind for i in incidents) == sorted(set(KINDS) - {"label_noise", "label_delay"})
    assert min(i.start_s for i in incidents) >= 0.2 * duration
    assert max(i.end_s for i in incidents) <= duration - 60
    by_target: dict[str, list[Incident]] = defaultdict(list)
    for inc in incidents:
        by_target[inc.target.split("/")[0].removeprefix("exp-")].append(inc)
    for same in by_target.values():
        same.sort(key=lambda i: i.start_s)
        for a, b in pairwise(same):
            assert b.start_s - a.end_s >= 60  # quiet stretch between incidents on a target
    Simulator(_scenario(duration, tuple(incidents)))  # every target exists
    rise = next(i for i in incidents if i.kind == "sensor_rise")
    assert rise.duration_s >= 300  # the sensor operator's sustained-rise span


def test_default_incidents_leave_a_drift_warmup() -> None:
    scenario, messages = _default_run()
    first_drift = min(
        i.start_s
        for i in scenario.ground_truth()
        if i.kind in ("feature_drift", "prediction_shift")
    )
    before: Counter[str] = Counter()
    for topic, key, value in messages:
        if (
            topic == "inference-logs"
            and key != REGRESSOR
            and orjson.loads(value)["ts"] < START_MS + first_drift * 1000
        ):
            before[key] += 1
    # the warm-up profile absorbs whole 5-min windows: 1000 events and one more window
    assert min(before.values()) >= 1000 + 10 * 300


def test_default_incidents_too_short() -> None:
    with pytest.raises(ValueError, match="too short"):
        default_incidents(600)


def test_ground_truth_is_the_incidents_by_start() -> None:
    incidents = default_incidents(2400)
    scenario = _scenario(2400, tuple(reversed(incidents)))
    truth = scenario.ground_truth()
    assert truth == sorted(incidents, key=lambda i: i.start_s)
    assert all(i.end_s == i.start_s + i.duration_s for i in truth)


# -- publish ------------------------------------------------------------------------------


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.flushed = False

    def produce(self, topic: str, value: bytes, key: bytes) -> None:
        self.sent.append((topic, value, key))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        self.flushed = True
        return 0


def test_publish_maps_topic_names() -> None:
    producer = FakeProducer()
    names = {t: f"prod.{t}" for t in TOPICS}
    progress: list[int] = []
    counts = publish(
        producer,
        Simulator(_scenario(20)),
        None,
        progress=lambda done, total: progress.append(done),
        topics=names,
    )
    assert producer.flushed
    assert progress == list(range(1, 21))
    assert Counter(t for t, _, _ in producer.sent) == {names[t]: n for t, n in counts.items()}
    assert set(counts) == set(TOPICS)
    # default: the logical names; stop() ends it early
    producer = FakeProducer()
    publish(producer, Simulator(_scenario(20)), None, stop=lambda: True)
    assert producer.sent and {t for t, _, _ in producer.sent} <= set(TOPICS)
    assert max(orjson.loads(v)["ts"] for _, v, _ in producer.sent) < START_MS + 1000


# -- labels (v2) -------------------------------------------------------------------


def test_labels_follow_their_requests_with_realistic_delays() -> None:
    rows = _run(600, impressions=5.0)
    logs = {r[2]["request_id"]: r[2] for r in rows if r[0] == "inference-logs"}
    labels = [r[2] for r in rows if r[0] == "labels"]
    delays = sorted((e["ts"] - logs[e["request_id"]]["ts"]) / 1000 for e in labels)
    assert all(0 < d <= 540 for d in delays)
    assert statistics.median(delays) == pytest.approx(45, rel=0.15)  # log-normal median
    ok = [e for e in logs.values() if e["status"] == "ok"]
    # some never come (10 %), failed requests get none; labels of the last 540 s may be
    # past the end of the run
    coverage = len(labels) / len(ok)
    assert 0.75 < coverage < 0.9
    for e in labels:
        log = logs[e["request_id"]]
        assert e["model_id"] == log["model_id"] and log["status"] == "ok"
        if log["model_id"] == REGRESSOR:
            assert isinstance(e["label"], float)
            assert "confidence" not in log
        else:
            assert e["label"] in (0, 1)
    # the classifiers are calibrated: the mean label follows the mean score
    clf = [
        (logs[e["request_id"]]["prediction"], e["label"])
        for e in labels
        if e["model_id"] != REGRESSOR
    ]
    assert statistics.mean(y for _, y in clf) == pytest.approx(
        statistics.mean(p for p, _ in clf), abs=0.03
    )


def _accuracy(rows: list[Row], model: str, inc: Incident | None, inside: bool) -> float:
    logs = {r[2]["request_id"]: r for r in rows if r[0] == "inference-logs" and r[1] == model}
    hits = [
        (logs[e["request_id"]][2]["prediction"] >= 0.5) == (e["label"] == 1)
        for _, k, e, _ in (r for r in rows if r[0] == "labels" and r[1] == model)
        if inc is None or inc.active(logs[e["request_id"]][3]) == inside
    ]
    return sum(hits) / len(hits)


def test_concept_drift_changes_only_the_labels() -> None:
    inc = Incident("concept_drift", "model-0", 200, 200, 0.4)
    quiet, loud = _run(600, impressions=5.0), _run(600, (inc,), impressions=5.0)
    for topic in ("impressions", "clicks", "inference-logs", "sensor-readings"):
        assert [r for r in quiet if r[0] == topic] == [r for r in loud if r[0] == topic]
    q_labels = [r for r in quiet if r[0] == "labels"]
    l_labels = [r for r in loud if r[0] == "labels"]
    assert [(r[1], r[2]["request_id"], r[2]["ts"]) for r in q_labels] == [
        (r[1], r[2]["request_id"], r[2]["ts"]) for r in l_labels
    ]
    assert _accuracy(loud, "model-1", None, True) == _accuracy(quiet, "model-1", None, True)
    before = _accuracy(quiet, "model-0", inc, True)
    after = _accuracy(loud, "model-0", inc, True)
    assert before - after > 0.15  # flipping 40 % of the labels
    assert _accuracy(loud, "model-0", inc, False) == _accuracy(quiet, "model-0", inc, False)


def test_label_delay_grows_and_label_noise_blurs() -> None:
    grow = Incident("label_delay", "model-1", 100, 400, 3.0)
    noise = Incident("label_noise", "model-0", 100, 400, 0.5)
    quiet, loud = _run(900, impressions=5.0), _run(900, (grow, noise), impressions=5.0)

    def delays(rows: list[Row], lo: float, hi: float) -> list[float]:
        logs = {r[2]["request_id"]: r for r in rows if r[0] == "inference-logs"}
        return [
            (e["ts"] - logs[e["request_id"]][2]["ts"]) / 1000
            for _, k, e, _ in (r for r in rows if r[0] == "labels" and r[1] == "model-1")
            if lo <= logs[e["request_id"]][3] < hi
        ]

    assert statistics.median(delays(loud, 100, 200)) < 1.5 * statistics.median(
        delays(quiet, 100, 200)
    )
    assert statistics.median(delays(loud, 400, 500)) > 2.5 * statistics.median(
        delays(quiet, 400, 500)
    )
    assert _accuracy(quiet, "model-0", noise, True) - _accuracy(loud, "model-0", noise, True) > 0.1
