"""Possible causes and retraining requests: the pure logic (operators.causes, .retrain).

Hand-made alerts with known relations; every expectation is worked out by
hand from the rules in the modules' docstrings.
"""

from __future__ import annotations

import time
from types import SimpleNamespace as E
from typing import Any

import msgspec
import pytest

from operators.causes import Correlator, CorrelatorConfig, RelationLearner
from operators.retrain import RetrainCondition, RetrainPlanner, RetrainPolicy, request_id
from schemas.events import Alert

MIN = 60_000


def alert(
    kind: str,
    entity: str,
    metric: str,
    value: float,
    threshold: float,
    start: int | None,
    end: int | None = None,
    *,
    severity: str = "warning",
    status: str = "firing",
    rule: str | None = None,
    related: dict[str, Any] | None = None,
    ts: int | None = None,
) -> Alert:
    rule = rule or f"{kind}_{metric}"
    details: dict[str, Any] = {"related": related} if related else {}
    return Alert(
        alert_id=f"{rule}|{entity}|{start}|{status}",
        ts=ts if ts is not None else (end if end is not None else start or 0),
        kind=kind,  # type: ignore[arg-type]
        rule=rule,
        severity=severity,  # type: ignore[arg-type]
        status=status,  # type: ignore[arg-type]
        entity=entity,
        metric=metric,
        value=value,
        threshold=threshold,
        window_start=start,
        window_end=end,
        message=f"{metric} of {entity} is {value}.",
        details=details,
    )


def psi(entity: str, value: float, start: int, **kw: Any) -> Alert:
    return alert("drift", entity, "psi", value, 0.2, start, start + 5 * MIN, **kw)


def ctr(entity: str, start: int, models: list[str], **kw: Any) -> Alert:
    return alert(
        "ctr", entity, "ctr_drop", 0.6, 0.5, start, start + MIN, related={"models": models}, **kw
    )


# -- relations ------------------------------------------------------------------


def imp(campaign: str, model: str | None, ts: int) -> E:
    return E(campaign_id=campaign, model_id=model, ts=ts)


def test_learner_learns_models_of_a_campaign_and_site_of_a_sensor() -> None:
    learner = RelationLearner(ttl_ms=10 * MIN)
    learner.observe("impressions", [imp("c1", "m0", 0), imp("c1", "m1", 1), imp("c2", None, 2)])
    learner.observe("sensor-readings", [E(sensor_id="s1", site="a", ts=0)])
    learner.observe("sensor-readings", [E(sensor_id="s1", site="b", ts=5)])  # moved: latest wins
    learner.observe("clicks", [E(campaign_id="c1", ts=3)])  # not a relation source
    assert learner.hints("c1/variant-A", ts=MIN) == {"models": ["m0", "m1"]}
    assert learner.hints("c2", ts=MIN) == {}  # impressions without model_id teach nothing
    assert learner.hints("s1/vibration", ts=MIN) == {"site": "b"}


def test_learner_forgets_after_the_ttl_and_is_bounded() -> None:
    learner = RelationLearner(ttl_ms=10 * MIN, max_keys=2, max_values=2)
    learner.observe("impressions", [imp("c1", "m0", 0), imp("c1", "m1", 5 * MIN)])
    # m0 seen at 0, now at 11 min: older than the TTL; m1 (5 min) still known
    assert learner.hints("c1", ts=11 * MIN) == {"models": ["m1"]}
    learner.observe("impressions", [imp("c1", "m2", 6 * MIN)])  # a third model: m0 dropped
    assert sorted(learner.seen["models"]["c1"]) == ["m1", "m2"]
    learner.observe("impressions", [imp("c2", "m0", 6 * MIN), imp("c3", "m0", 6 * MIN)])
    assert list(learner.seen["models"]) == ["c2", "c3"]  # c1 least recently seen: dropped
    learner.expire(20 * MIN)
    assert not learner.seen["models"]


def test_learner_snapshot_round_trips_through_msgpack() -> None:
    learner = RelationLearner()
    learner.observe("impressions", [imp("c1", "m0", 0), imp("c1", "m1", 1)])
    learner.observe("sensor-readings", [E(sensor_id="s1", site="a", ts=0)])
    state = msgspec.msgpack.decode(msgspec.msgpack.encode(learner.snapshot()))
    other = RelationLearner()
    other.restore(state)
    assert other.hints("c1", 10) == learner.hints("c1", 10) == {"models": ["m0", "m1"]}
    assert other.hints("s1", 10) == {"site": "a"}
    other.restore({})  # a snapshot from before relations were learned: empty
    assert other.hints("c1", 10) == {}


# -- the correlator ---------------------------------------------------------------


def test_ctr_alert_lists_firing_alerts_of_its_models_strongest_first() -> None:
    c = Correlator()
    c.enrich(psi("m0/user_segment", 0.21, 0))
    c.enrich(psi("m0/device", 0.35, 0, severity="critical"))
    c.enrich(psi("m9/device", 0.9, 0, severity="critical"))  # a model the campaign lacks
    c.enrich(alert("service", "m0/1.0", "error_rate", 0.03, 0.01, 0, MIN, severity="critical"))
    c.enrich(alert("change", "c1", "ctr_change_adwin", 1, 0.5, 0, MIN))  # about the campaign
    effect = ctr("c1", 2 * MIN, ["m0"])
    before = effect.alert_id
    out = c.enrich(effect)
    causes = out.details["possible_causes"]
    # critical first; between the two critical ones, error rate 0.03/0.01 = 3x its line
    # beats PSI 0.35/0.2 = 1.75x
    assert [x["entity"] for x in causes] == ["m0/1.0", "m0/device", "m0/user_segment"]
    assert causes[0] == {
        "alert_id": "service_error_rate|m0/1.0|0|firing",
        "kind": "service",
        "rule": "service_error_rate",
        "entity": "m0/1.0",
        "severity": "critical",
        "message": "error_rate of m0/1.0 is 0.03.",
    }
    assert out.message == "ctr_drop of c1 is 0.6; possible cause: error rate of m0/1.0 = 0.03."
    assert out.alert_id == before


def test_message_names_a_drift_cause_by_its_feature() -> None:
    c = Correlator()
    c.enrich(psi("m0/user_segment", 0.21, 0))
    out = c.enrich(ctr("c1", MIN, ["m0"]))
    assert out.message.endswith("; possible cause: PSI of user_segment = 0.21.")


def test_episodes_count_on_event_time_overlap_not_on_arrival() -> None:
    c = Correlator(CorrelatorConfig(lookback_ms=30 * MIN, slack_ms=MIN))
    c.enrich(psi("m0/a", 0.3, 0))
    # resolved by the window from 10 min: the episode ran 0-10 min. Read before the
    # effect (partitions read unevenly), it still overlaps the effect's window
    c.enrich(psi("m0/a", 0.05, 10 * MIN, status="resolved"))
    c.enrich(psi("m0/a", 0.3, 0))  # an echo of the firing alert: nothing new
    c.enrich(psi("m0/b", 0.3, 0))  # never resolved
    c.enrich(psi("m0/c", 0.3, 20 * MIN))
    assert [f.entity for f in c.firing()] == ["m0/b", "m0/c"]
    assert len(c.episodes[("drift_psi", "m0/a")]) == 1

    def causes(start: int) -> set[str]:
        return {f.entity for f in c.causes(ctr("c1", start, ["m0"]))}

    assert causes(4 * MIN) == {"m0/a", "m0/b"}  # c begins 15 min after the window
    assert causes(12 * MIN) == {"m0/b"}  # a ended at 10 min (+1 min slack < 12)
    assert causes(40 * MIN) == {"m0/c"}  # a and b began more than 30 min before


def test_no_hint_no_causes_and_resolved_alerts_get_none() -> None:
    c = Correlator()
    c.enrich(psi("m0/a", 0.3, 0))
    assert c.causes(ctr("c1", MIN, [])) == []
    resolved = ctr("c1", MIN, ["m0"], status="resolved")
    assert "possible_causes" not in c.enrich(resolved).details


def test_quality_alert_lists_drift_of_its_model() -> None:
    c = Correlator()
    c.enrich(psi("m0/a", 0.3, 0))
    c.enrich(psi("m1/a", 0.3, 0))
    c.enrich(alert("service", "m0/1", "latency_p99", 900, 500, 0, MIN))
    q = alert("quality", "m0/1", "accuracy_drop", 0.2, 0.1, 0, 5 * MIN)
    assert [x.entity for x in c.causes(q)] == ["m0/a"]


def test_sensor_alert_lists_other_sensors_of_its_site() -> None:
    c = Correlator()

    def reading(sensor: str, site: str, ts: int, score: float = 5.0) -> Alert:
        return alert(
            "sensor", f"{sensor}/vibration", "anomaly_zscore", score, 4.5, None,
            related={"site": site}, ts=ts,
        )  # fmt: skip

    c.enrich(reading("s1", "a", 1_000, 7.0))
    c.enrich(reading("s2", "b", 1_000))  # another site
    c.enrich(alert("cluster", "s3", "cluster_distance", 4, 3, 0, MIN, related={"site": "a"}))
    # s4 at site a, 500 ms before s1's reading (point evidence: within the slack)
    out = c.enrich(reading("s4", "a", 500))
    assert [x["entity"] for x in out.details["possible_causes"]] == ["s1/vibration", "s3"]
    # the same sensor is not its own cause
    again = reading("s1", "a", 2_000)
    # cluster distance 4/3 = 1.33x its line beats the z-score 5/4.5 = 1.11x
    assert [x.entity for x in c.causes(again)] == ["s3", "s4/vibration"]


def test_the_episodes_are_bounded_and_expire() -> None:
    c = Correlator(CorrelatorConfig(ttl_ms=60 * MIN, max_keys=2, max_episodes=2))
    for i in range(3):
        c.observe(psi(f"m0/f{i}", 0.3, i * MIN))
    assert [f.entity for f in c.firing()] == ["m0/f1", "m0/f2"]  # f0: least recent key
    c.advance(66 * MIN + MIN // 2)  # f1 raised at 6 min (its window end), f2 at 7 min
    assert [f.entity for f in c.firing()] == ["m0/f2"]
    for i in range(3):  # three episodes of one (rule, entity): the latest two are kept
        c.observe(psi("m0/f2", 0.3, (70 + 10 * i) * MIN))
        c.observe(psi("m0/f2", 0.1, (75 + 10 * i) * MIN, status="resolved"))
    assert [(e.start, e.until) for e in c.episodes[("drift_psi", "m0/f2")]] == [
        (80 * MIN, 85 * MIN),
        (90 * MIN, 95 * MIN),
    ]
    c.observe(alert("sensor", "s1/t", "anomaly_zscore", 5, 4.5, None, related={"site": "a"}, ts=0))
    assert c.by_head == {"m0": {("drift_psi", "m0/f2")}, "s1": {("sensor_anomaly_zscore", "s1/t")}}
    assert c.by_site == {"a": {("sensor_anomaly_zscore", "s1/t")}}
    c.advance(1000 * MIN)  # everything past the TTL: the indexes empty with it
    assert not c.episodes and not c.by_head and not any(c.by_site.values())


# -- retraining requests -----------------------------------------------------------


def planner(*conditions: RetrainCondition, interval_s: float = 3600) -> RetrainPlanner:
    return RetrainPlanner([RetrainPolicy("m*", conditions, interval_s)])


def test_condition_must_hold_for_its_time_then_one_request_per_interval() -> None:
    p = planner(RetrainCondition("psi", ">=", 0.2, for_s=600))
    drift = psi("m0/a", 0.31, 0)
    p.observe(drift, local=True)
    assert p.advance(9 * MIN) == []
    (r,) = p.advance(11 * MIN)
    assert (r.model_id, r.ts, r.request_id) == ("m0", 10 * MIN, request_id("m0", 10 * MIN))
    assert r.reasons == [{"alert_id": drift.alert_id, "message": drift.message}]
    assert r.evidence == [
        {
            "metric": "psi",
            "entity": "m0/a",
            "value": 0.31,
            "op": ">=",
            "threshold": 0.2,
            "for_s": 600,
            "held_s": 600.0,
            "alert_id": drift.alert_id,
        }
    ]
    assert p.advance(30 * MIN) == []  # still held, within the hour
    (again,) = p.advance(71 * MIN)  # the interval after the first: a second request
    assert again.ts == 70 * MIN and again.request_id != r.request_id


def test_resolution_below_threshold_and_remote_alerts_request_nothing() -> None:
    p = planner(RetrainCondition("psi", ">=", 0.25, for_s=60))
    p.observe(psi("m0/a", 0.21, 0), local=True)  # fires the rule, not past the condition's line
    assert p.advance(60 * MIN) == []
    p.observe(psi("m0/b", 0.4, 0), local=True)
    p.observe(psi("m0/b", 0.1, 0, status="resolved", ts=30 * MIN), local=True)
    assert p.advance(60 * MIN) == []
    p.observe(psi("m1/b", 0.4, 0), local=False)  # another worker's model: it requests
    assert p.advance(60 * MIN) == []
    p.observe(psi("other/b", 0.4, 0), local=True)  # no policy covers the model
    assert p.advance(60 * MIN) == []


def test_accuracy_and_error_rate_plug_in_by_metric_name() -> None:
    p = planner(
        RetrainCondition("accuracy_drop", ">", 0.1, for_s=120),
        RetrainCondition("error_rate", ">", 0.05, for_s=90),
    )
    half = MIN // 2
    drop = alert("quality", "m0/2.1", "accuracy_drop", 0.2, 0.1, 0, MIN)
    assert p.observe(drop, local=True) == []
    errors = alert("service", "m0/2.1", "error_rate", 0.2, 0.01, half, 3 * half)
    assert p.observe(errors, local=True) == []  # at 1.5 min: nothing has held long enough
    (r,) = p.advance(10 * MIN)
    # accuracy held from 0 (met at 2 min), the error rate from 0.5 min (met at 2 min)
    assert r.ts == 2 * MIN
    assert r.model_version == "2.1"
    assert [e["metric"] for e in r.evidence] == ["accuracy_drop", "error_rate"]
    assert [e["held_s"] for e in r.evidence] == [120.0, 90.0]


def test_a_condition_that_held_long_enough_counts_even_if_resolved_before_a_tick() -> None:
    """Alerts arrive faster than the timer: a resolution first judges what held."""
    p = planner(RetrainCondition("error_rate", ">", 0.05, for_s=60))
    assert p.observe(alert("service", "m1/1", "error_rate", 0.2, 0.01, 0, MIN), local=True) == []
    resolved = alert("service", "m1/1", "error_rate", 0.0, 0.01, 3 * MIN, 4 * MIN,
                     status="resolved", rule="service_error_rate")  # fmt: skip
    (r,) = p.observe(resolved, local=True)
    assert (r.model_id, r.ts) == ("m1", MIN)
    assert p.advance(60 * MIN) == []
    # a condition resolved before it held long enough asks for nothing
    q = planner(RetrainCondition("error_rate", ">", 0.05, for_s=600))
    q.observe(alert("service", "m1/1", "error_rate", 0.2, 0.01, 0, MIN), local=True)
    assert q.observe(resolved, local=True) == []
    assert q.advance(60 * MIN) == []


def test_request_ids_are_deterministic_across_replays() -> None:
    def run() -> list[str]:
        p = planner(RetrainCondition("psi", ">=", 0.2, for_s=0))
        p.observe(psi("m0/a", 0.3, 7 * MIN), local=True)
        p.observe(psi("m1/a", 0.3, 3 * MIN), local=True)
        return [r.request_id for r in p.advance(60 * MIN)]

    # for_s = 0: each is due when its evidence was known, at its window's end
    assert run() == run() == [request_id("m0", 12 * MIN), request_id("m1", 8 * MIN)]


def test_bad_condition_is_refused() -> None:
    with pytest.raises(ValueError, match="op must be"):
        RetrainCondition("psi", "=>", 0.2)


# -- the hold: a CTR alert waits for the monitors its causes come from ---------------


def test_a_ctr_alert_is_held_until_the_cause_monitors_reach_its_window() -> None:
    from streams.config import Settings
    from streams.runtime.correlate import Causes

    marks = {"ctr": 30 * MIN, "drift": 2 * MIN, "service": 20 * MIN}
    settings = msgspec.convert({"causes": {"hold_s": 300, "feed": False}}, Settings)
    causes = Causes(settings, producer=None, env={}, watermarks=lambda: marks)
    causes.sinks = E(buffered=0)
    effect = ctr("c1", 10 * MIN, ["m0"])  # window 10-11 min: gate at 16 min
    assert causes.enrich(effect) is None  # drift is at 2 min: held
    assert causes.sinks.buffered == 1
    same_entity = ctr("c1", 11 * MIN, ["m0"], status="resolved")
    assert causes.enrich(same_entity) is None  # behind its entity's held alert
    other = alert("service", "m9/1", "error_rate", 0.2, 0.01, 0, MIN)
    assert causes.enrich(other) is other  # nothing of its entity waits: out at once
    assert causes.release() == []
    # the drift monitor catches up: its alert on the campaign's model comes first
    marks["drift"] = 15 * MIN
    assert causes.enrich(psi("m0/user_segment", 0.3, 5 * MIN)) is not None
    assert causes.release() == []  # 15 min < the 16-min gate
    marks["drift"] = 16 * MIN
    released = causes.release()
    assert [a.alert_id for a in released] == [effect.alert_id, same_entity.alert_id]
    assert released[0].details["possible_causes"][0]["entity"] == "m0/user_segment"
    assert causes.sinks.buffered == 0
    # released alerts pass through the sinks again: unchanged, not held twice
    assert causes.enrich(released[0]) is released[0]


def test_a_held_alert_goes_out_after_max_hold_s_whatever_the_watermarks() -> None:
    from streams.config import Settings
    from streams.runtime.correlate import Causes

    settings = msgspec.convert({"causes": {"max_hold_s": 0.05, "feed": False}}, Settings)
    causes = Causes(settings, producer=None, env={}, watermarks=lambda: {"drift": 0})
    causes.sinks = E(buffered=0)
    assert causes.enrich(ctr("c1", 10 * MIN, ["m0"])) is None
    assert causes.release() == []
    time.sleep(0.1)
    assert len(causes.release()) == 1 and causes.sinks.buffered == 0
    # with no cause monitor running (no watermark), nothing is held
    idle = Causes(settings, producer=None, env={}, watermarks=lambda: {"ctr": 0})
    assert idle.enrich(ctr("c1", 10 * MIN, ["m0"])) is not None


def test_a_quality_alert_alone_gives_the_model_version() -> None:
    """A quality alert's entity is model/version (found by tests/test_e2e_retrain.py)."""
    p = planner(RetrainCondition("accuracy_drop", ">", 0.1, for_s=60))
    p.observe(alert("quality", "m0/3.2", "accuracy_drop", 0.3, 0.1, 0, 5 * MIN), local=True)
    (r,) = p.advance(10 * MIN)
    assert (r.model_id, r.model_version, r.ts) == ("m0", "3.2", 5 * MIN)


def test_a_refused_request_is_kept_and_fails_the_flush_like_an_alert() -> None:
    """Through the sinks, a request the broker never takes (here: no broker at all)
    is kept for the next flush, and the flush raises: no checkpoint covers it."""
    from confluent_kafka import Producer

    from schemas.events import RetrainRequest
    from streams.config import Settings
    from streams.runtime.retrain import RetrainPublisher
    from streams.runtime.sinks import SinkError, Sinks

    producer = Producer({"bootstrap.servers": "127.0.0.1:9", "message.timeout.ms": 300})
    settings = msgspec.convert({}, Settings)
    sinks = Sinks(writer=None, producer=producer, topics=settings.topics)  # type: ignore[arg-type]
    publisher = RetrainPublisher(settings, producer, env={})
    publisher.sinks = sinks
    r = RetrainRequest(
        request_id=request_id("m0", MIN), ts=MIN, model_id="m0", model_version="1",
        reasons=[], evidence=[],
    )  # fmt: skip
    publisher.publish(r)
    with pytest.raises(SinkError):
        sinks.flush(timeout=5)
    ((topic, value, key, _),) = sinks.undelivered
    assert (topic, key) == (settings.topics.retrain_requests, b"m0")
    assert msgspec.json.decode(value, type=RetrainRequest) == r
    with pytest.raises(SinkError):  # produced again at the next flush, refused again
        sinks.flush(timeout=5)
    assert len(sinks.undelivered) == 1


def test_a_request_found_due_on_the_feeds_thread_waits_for_the_timer() -> None:
    """`Causes.remote` runs on the alerts feed's thread: what it finds due is published
    by the next `advance` (the timer, under the pipeline's lock), not from that thread."""
    from streams.config import Settings
    from streams.runtime.correlate import Causes

    class Recorder:  # stands in for the sinks' produce (no broker is involved here)
        def __init__(self) -> None:
            self.sent: list[tuple[str, bytes, str]] = []

        def produce(self, topic: str, value: bytes, key: str) -> None:
            self.sent.append((topic, value, key))

    policy = {"models": "m*", "conditions": [{"metric": "psi", "op": ">=", "threshold": 0.2,
                                             "for_s": 600}]}  # fmt: skip
    settings = msgspec.convert(
        {"causes": {"feed": False}, "retrain": {"policies": [policy]}}, Settings
    )
    causes = Causes(settings, producer=None, env={})
    causes.publisher.sinks = recorder = Recorder()
    causes.enrich(psi("m0/a", 0.3, 0))  # this worker's alert: the condition holds from 0
    resolved = psi("m0/a", 0.1, 20 * MIN, status="resolved")
    causes.remote(resolved)  # held 20 min > 10 min: due, found on the feed's thread
    assert recorder.sent == [] and causes.publisher.published == []
    causes.advance(25 * MIN)
    ((topic, _, key),) = recorder.sent
    assert (topic, key) == (settings.topics.retrain_requests, "m0")
    assert [r.ts for r in causes.publisher.published] == [10 * MIN]
    causes.advance(30 * MIN)
    assert len(recorder.sent) == 1
