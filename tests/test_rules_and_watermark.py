"""The rule engine (severity levels, cooldown, resolve, p-value gate, ids) and watermarks."""

from __future__ import annotations

import msgspec

from operators.base import Observation
from operators.rules import Rule, RuleEngine, alert_id
from operators.watermark import NO_WATERMARK, Watermark

MIN = 60_000


def obs(
    value: float, w: int, n: int = 1000, p: float | None = None, entity: str = "c"
) -> Observation:
    return Observation(
        "ctr",
        entity,
        "ctr_drop",
        value,
        ts=(w + 1) * MIN,
        n=n,
        window_start=w * MIN,
        window_end=(w + 1) * MIN,
        p_value=p,
        details={"baseline_ctr": 0.1},
    )


def rule(**kw: object) -> Rule:
    base = {
        "name": "drop",
        "kind": "ctr",
        "metric": "ctr_drop",
        "op": ">",
        "thresholds": {"warning": 0.3, "critical": 0.5},
        "cooldown_s": 0,
    }
    return Rule(**{**base, **kw})  # type: ignore[arg-type]


def run(engine: RuleEngine, values: list[float], **kw: object) -> list[tuple[str, str, int]]:
    alerts = engine.evaluate(obs(v, w, **kw) for w, v in enumerate(values))  # type: ignore[arg-type]
    return [(a.status, a.severity, a.window_start // MIN) for a in alerts]


def test_fires_once_escalates_and_resolves() -> None:
    got = run(RuleEngine([rule()]), [0.1, 0.35, 0.4, 0.6, 0.7, 0.2, 0.1])
    assert got == [("firing", "warning", 1), ("firing", "critical", 3), ("resolved", "critical", 5)]


def test_cooldown_suppresses_refiring_in_event_time() -> None:
    values = [0.6, 0.0, 0.6, 0.0, 0.0, 0.0, 0.6]
    got = run(RuleEngine([rule(cooldown_s=5 * 60)]), values)
    # fires at 0, resolves at 1; at 2 only 2 min since firing: suppressed; at 6 allowed
    assert got == [
        ("firing", "critical", 0),
        ("resolved", "critical", 1),
        ("firing", "critical", 6),
    ]


def test_min_samples_and_p_value_gate() -> None:
    assert run(RuleEngine([rule(min_samples=2000)]), [0.9]) == []
    gated = RuleEngine([rule(max_p_value=0.01)])
    assert run(gated, [0.9], p=0.2) == []
    assert run(gated, [0.9], p=0.001) == [("firing", "critical", 0)]


def test_entities_are_independent_and_ids_deterministic() -> None:
    engine = RuleEngine([rule()])
    a = engine.evaluate([obs(0.9, 0, entity="a"), obs(0.9, 0, entity="b")])
    assert [x.entity for x in a] == ["a", "b"]
    assert a[0].alert_id != a[1].alert_id
    again = RuleEngine([rule()]).evaluate([obs(0.9, 0, entity="a")])[0]
    assert msgspec.json.encode(again) == msgspec.json.encode(a[0])
    assert a[0].alert_id == alert_id("drop", "a", 0, MIN, "firing", MIN)


def test_state_survives_snapshot() -> None:
    engine = RuleEngine([rule()])
    engine.evaluate([obs(0.9, 0)])
    restored = RuleEngine([rule()])
    restored.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(engine.snapshot())))
    assert run(restored, [0.9, 0.0])[-1][0] == "resolved"
    assert len(run(restored, [0.9, 0.9])) == 1


def test_message_template_with_missing_detail_falls_back() -> None:
    r = rule(message="CTR fell to {nonexistent:.2%}")
    (alert,) = RuleEngine([r]).evaluate([obs(0.9, 0)])
    assert "ctr_drop of c is 0.9" in alert.message


def test_watermark_is_min_over_sources_minus_lateness() -> None:
    wm = Watermark(("a", "b"), lateness_ms=10, idle_timeout_ms=1000)
    wm.observe("a", 500, now_ms=0)
    assert wm.update(now_ms=0) == NO_WATERMARK  # b not heard from yet, within the timeout
    wm.observe("b", 300, now_ms=0)
    assert wm.update(now_ms=0) == 290
    wm.observe("b", 200, now_ms=1)  # older data never moves it back
    assert wm.update(now_ms=1) == 290
    assert wm.is_late(289) and not wm.is_late(290)


def test_idle_source_stops_holding_the_watermark() -> None:
    wm = Watermark(("impressions", "clicks"), lateness_ms=0, idle_timeout_ms=1000)
    wm.observe("impressions", 100, now_ms=0)
    wm.observe("clicks", 50, now_ms=0)
    assert wm.update(now_ms=10) == 50
    wm.observe("impressions", 900, now_ms=1500)  # clicks silent since 0
    assert wm.update(now_ms=1500) == 900
    # every source idle: follow the floor the worker passes (its other partitions)
    assert wm.update(now_ms=5000, floor=2000) == 2000
    assert wm.idle(now_ms=5000)


def test_watermark_restore_treats_sources_as_fresh() -> None:
    wm = Watermark(("a",), lateness_ms=0, idle_timeout_ms=1000)
    wm.observe("a", 100, now_ms=0)
    wm.update(now_ms=0)
    other = Watermark(("a",), lateness_ms=0, idle_timeout_ms=1000)
    other.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(wm.snapshot())))
    assert other.value == 100 and not other.idle(now_ms=10**9)


def test_backpressure_pause_is_not_idleness() -> None:
    wm = Watermark(("a",), lateness_ms=0, idle_timeout_ms=1000)
    wm.observe("a", 100, now_ms=0)
    wm.pause(5000)  # the worker read nothing for 5 s on purpose
    assert not wm.idle(now_ms=5500)
    assert wm.idle(now_ms=6500)
