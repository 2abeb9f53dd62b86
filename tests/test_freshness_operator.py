"""The freshness operator: silent entities and topics, in event time."""

from __future__ import annotations

import random

import msgspec
import pytest

from operators.freshness import FreshnessConfig, FreshnessOperator, Track
from operators.rules import RuleEngine
from schemas.events import Click, Impression, InferenceLog
from streams.config import load_settings

T0 = 1_800_000_000_000  # a minute boundary
MIN = 60_000


def imp(i: int, ts: int, campaign: str) -> Impression:
    return Impression(impression_id=f"i{i}", campaign_id=campaign, user_id="u", ts=ts)


def traffic(campaigns: dict[str, tuple[int, int]], every_ms: int = 5_000) -> list[Impression]:
    """Impressions every `every_ms` for each campaign over [from, to) ms after T0."""
    out = []
    for c, (a, b) in campaigns.items():
        out += [imp(k, T0 + t, c) for k, t in enumerate(range(a, b, every_ms))]
    return out


def run(op: FreshnessOperator, events: list, watermarks: list[int]) -> list:
    op.feed("impressions", events)
    obs = []
    for wm in watermarks:
        op.advance(wm)
        obs += op.collect().observations
    return obs


def test_silent_campaign_fires_once_and_resolves_when_data_returns() -> None:
    op = FreshnessOperator(FreshnessConfig(min_silence_ms=5 * MIN))
    # c1 and c2 every 5 s for an hour; c1 silent from minute 20 to minute 40
    events = traffic({"c1": (0, 20 * MIN), "c2": (0, 60 * MIN)})
    events += traffic({"c1": (40 * MIN, 60 * MIN)})
    obs = run(op, events, [T0 + m * MIN + 1 for m in range(0, 61)])
    c1 = [(o.value > 1, o.ts - T0) for o in obs if o.entity == "c1"]
    # allowed = max(20 x 5 s, 5 min) = 5 min after the last event (19:55): first
    # boundary after 24:55 is 25:00; data back in the step [40, 41) -> resolved at 41:00
    assert c1 == [(True, 25 * MIN), (False, 41 * MIN)]
    assert not [o for o in obs if o.entity in ("c2", "impressions")]
    fired = next(o for o in obs if o.entity == "c1")
    assert fired.metric == "entity_silence" and fired.kind == "freshness"
    assert fired.details["usual_gap_s"] == pytest.approx(5.0)
    assert fired.window_start == T0 + 20 * MIN - 5_000


def test_alert_time_does_not_depend_on_how_often_the_watermark_moves() -> None:
    events = traffic({"c1": (0, 20 * MIN), "c2": (0, 60 * MIN)})
    events += traffic({"c1": (40 * MIN, 60 * MIN)})
    fine = run(FreshnessOperator(), events, [T0 + m * 7_000 for m in range(0, 520)])
    coarse = run(FreshnessOperator(), events, [T0 + 61 * MIN])
    assert [(o.entity, o.value, o.ts) for o in fine] == [(o.entity, o.value, o.ts) for o in coarse]
    assert [o.value > 1 for o in coarse if o.entity == "c1"] == [True, False]


def test_arrival_order_within_lateness_gives_the_same_result() -> None:
    events = traffic({"c1": (0, 20 * MIN), "c2": (0, 60 * MIN)}, every_ms=3_000)
    shuffled = events[:]
    random.Random(4).shuffle(shuffled)
    a = run(FreshnessOperator(), events, [T0 + 70 * MIN])
    b = run(FreshnessOperator(), shuffled, [T0 + 70 * MIN])
    assert [(o.entity, o.value, o.ts) for o in a] == [(o.entity, o.value, o.ts) for o in b]
    assert a  # c1 went silent


def test_usual_gap_is_learned_per_entity() -> None:
    # a slow campaign (one impression a minute) is not silent after 5 minutes
    op = FreshnessOperator(FreshnessConfig(min_silence_ms=MIN))
    slow = traffic({"slow": (0, 120 * MIN)}, every_ms=MIN)
    fast = traffic({"fast": (0, 100 * MIN)}, every_ms=1_000)
    obs = run(op, slow + fast, [T0 + m * MIN for m in range(0, 121)])
    assert [o.entity for o in obs] == ["fast"]  # fast stopped at 100 min; slow never did
    track = op.tracks[("impressions", "slow")]
    assert track.gap == pytest.approx(MIN)


def test_ewma_fold_matches_per_arrival_updates() -> None:
    # folding a step of c equal gaps equals c single-arrival EWMA updates
    t = Track(last=0, gap=1000.0, n=10)
    t.fold(4, 500, 2000, 0.1)  # gaps 500 each, from 0 to 2000
    g = 1000.0
    for _ in range(4):
        g = 0.9 * g + 0.1 * 500
    assert t.gap == pytest.approx(g) and t.last == 2000 and t.n == 14


def test_topic_silent_while_others_advance() -> None:
    op = FreshnessOperator()
    logs = [
        InferenceLog(
            request_id=f"r{k}",
            model_id="m",
            model_version="1",
            features={},
            prediction=0.0,
            latency_ms=1.0,
            status="ok",
            ts=T0 + k * 2_000,
        )
        for k in range(600)  # 20 minutes of logs
    ]
    clicks = [
        Click(click_id=f"c{k}", impression_id="i", campaign_id="c", user_id="u", ts=T0 + k * 2_000)
        for k in range(1800)  # an hour of clicks
    ]
    op.feed("inference-logs", logs)
    op.feed("clicks", clicks)
    op.advance(T0 + 60 * MIN)
    obs = op.collect().observations
    assert {(o.entity, o.metric) for o in obs} == {
        ("inference-logs", "topic_silence"),
        ("m/1", "entity_silence"),
    }


def test_snapshot_restore_mid_stream_equals_uninterrupted_run() -> None:
    events = traffic({"c1": (0, 20 * MIN), "c2": (0, 60 * MIN)})
    events += traffic({"c1": (40 * MIN, 60 * MIN)})
    events.sort(key=lambda e: e.ts)
    marks = [T0 + m * MIN for m in range(0, 62)]
    whole = FreshnessOperator()
    expected = []
    for wm in marks:
        whole.feed("impressions", [e for e in events if wm - MIN <= e.ts < wm])
        whole.advance(wm)
        expected += whole.collect().observations
    op = FreshnessOperator()
    got = []
    for i, wm in enumerate(marks):
        op.feed("impressions", [e for e in events if wm - MIN <= e.ts < wm])
        op.advance(wm)
        got += op.collect().observations
        if i in (10, 30, 45):
            state = msgspec.msgpack.decode(msgspec.msgpack.encode(op.snapshot()))
            op = FreshnessOperator()
            op.restore(state)
    assert got == expected and len(expected) == 2


def test_forgotten_after_forget_ms_and_state_bounded() -> None:
    op = FreshnessOperator(FreshnessConfig(forget_ms=30 * MIN))
    run(op, traffic({"c1": (0, 10 * MIN), "c2": (0, 100 * MIN)}), [T0 + 100 * MIN])
    assert ("impressions", "c1") not in op.tracks and ("impressions", "c2") in op.tracks
    assert not op.steps


def test_default_rules_turn_silence_into_freshness_alerts() -> None:
    rules = RuleEngine(r.rule() for r in load_settings(env={}).rules)
    events = traffic({"c1": (0, 20 * MIN), "c2": (0, 60 * MIN)})
    events += traffic({"c1": (40 * MIN, 60 * MIN)})
    obs = run(FreshnessOperator(), events, [T0 + 61 * MIN])
    alerts = rules.evaluate(obs)
    assert [(a.kind, a.rule, a.entity, a.status) for a in alerts] == [
        ("freshness", "freshness_entity", "c1", "firing"),
        ("freshness", "freshness_entity", "c1", "resolved"),
    ]
    assert "c1 has sent nothing on impressions" in alerts[0].message


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError):
        FreshnessConfig(multiple=1)
    with pytest.raises(ValueError):
        FreshnessConfig(min_silence_ms=10, max_silence_ms=5)


def test_a_jump_of_event_time_is_dead_time_not_silence() -> None:
    """Every campaign stops at minute 30 and one far-ahead event (a replay skipping
    ahead, a test's tail) comes 16 minutes later: only 5 minutes (jump_ms) of that gap
    are live, below the 10-minute allowed silence, so nothing fires; with the guard off
    (jump_ms = 0) every campaign and the topic would."""
    events = traffic({"c1": (0, 30 * MIN), "c2": (0, 30 * MIN)})
    tail = [imp(10**6, T0 + 46 * MIN, "c3")]
    for jump, expected in ((300_000, []), (0, ["c1", "c2", "impressions"])):
        op = FreshnessOperator(FreshnessConfig(jump_ms=jump))
        obs = run(op, events + tail, [T0 + 46 * MIN - 10_000])
        assert sorted(o.entity for o in obs if o.value > 1) == expected


def test_silence_counts_live_time_only_across_a_jump() -> None:
    """c1 stops at minute 10 (last event 9:55) while c2 goes on to minute 30; then the
    input jumps to minute 60. Allowed silence: 10 minutes. c1 fires at 20:00 as without
    the guard (all live). c2's last event is 29:55; live time runs to 34:55 (jump_ms),
    is dead until the next event at 60:00 and live again after it: 5 minutes + 5
    minutes after 60:00 reach the allowed at 65:00, the first boundary after it 66:00."""
    events = traffic({"c1": (0, 10 * MIN), "c2": (0, 30 * MIN), "c3": (60 * MIN, 70 * MIN)})
    op = FreshnessOperator(FreshnessConfig())
    obs = run(op, events, [T0 + 70 * MIN])
    fired = {o.entity: (o.ts - T0, round(o.value, 3)) for o in obs if o.value > 1}
    # c1: silent 9:55 -> 20:00 all live: 605 s of 600 allowed
    assert fired["c1"] == (20 * MIN, round(605 / 600, 3))
    # c2: live silence at 66:00 = (34:55 - 29:55) + (66:00 - 60:00) = 660 s
    assert fired["c2"] == (66 * MIN, round(660 / 600, 3))
    assert op._live(T0 + 29 * MIN + 55_000, T0 + 66 * MIN) == 660_000
    assert op.dead == [[T0 + 34 * MIN + 55_000, T0 + 60 * MIN]]


def test_dead_time_survives_a_snapshot() -> None:
    events = traffic({"c1": (0, 30 * MIN), "c2": (30 * MIN + 20 * MIN, 60 * MIN)})
    straight = FreshnessOperator(FreshnessConfig())
    expected = run(straight, events, [T0 + 40 * MIN, T0 + 70 * MIN])
    first = FreshnessOperator(FreshnessConfig())
    got = run(first, events, [T0 + 40 * MIN])
    state = msgspec.json.decode(msgspec.json.encode(first.snapshot()))
    second = FreshnessOperator(FreshnessConfig())
    second.restore(state)
    got += run(second, [], [T0 + 70 * MIN])
    assert got == expected
