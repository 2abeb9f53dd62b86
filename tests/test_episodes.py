"""One episode state machine (issue 12, point 4): the rule engine decides its alert
episodes (firing, escalation, hysteresis, hold, cooldown) with `Episode`, the machine
the sensor and autoencoder monitors run on their readings, and no other module of the
pipeline makes an alert.

The reference is the engine's own state machine as it stood before (a list per rule and
entity: severity firing, last fired, clear run), written out here: on random rules and
observation sequences the engine must raise the same alerts and keep the same snapshot,
also when restored from msgpack mid-stream.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.base import Observation
from operators.detectors.episode import Episode
from operators.rules import SEVERITIES, Rule, RuleEngine

MIN = 60_000
ROOT = Path(__file__).resolve().parent.parent


class ReferenceEngine:
    """The engine's decisions before `Episode` made them (operators/rules.py up to
    issue 12): per (rule, entity) [severity firing or "", last fired ts, clear run]."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self.state: dict[str, list[Any]] = {}

    def judge(self, obs: Observation) -> list[tuple[str, str, float]]:
        out = []
        for rule in self.rules:
            if (rule.kind, rule.metric) == (obs.kind, obs.metric):
                verdict = self._judge(rule, obs)
                if verdict is not None:
                    out.append(verdict)
        return out

    def _judge(self, rule: Rule, obs: Observation) -> tuple[str, str, float] | None:
        if obs.n < rule.min_samples:
            return None
        key = f"{rule.name}\x1f{obs.entity}"
        state = self.state.get(key)
        firing, last_fired = (state[0], state[1]) if state else ("", None)
        crossed = rule.level(obs.value)
        if (
            crossed is not None
            and rule.max_p_value is not None
            and (obs.p_value is None or obs.p_value > rule.max_p_value)
        ):
            crossed = None
        if crossed is not None:
            severity, threshold = crossed
            if firing and SEVERITIES.index(severity) <= SEVERITIES.index(firing):
                if state is not None:
                    state[2] = 0
                return None
            if (
                not firing
                and last_fired is not None
                and obs.ts - last_fired < rule.cooldown_s * 1000
            ):
                return None
            self.state[key] = [severity, obs.ts, 0]
            return ("firing", severity, threshold)
        if firing:
            assert state is not None
            if rule.clear_by_value and rule.level(obs.value) is not None:
                state[2] = 0
                return None
            clear = state[2] + 1
            if clear < rule.clear_windows:
                self.state[key] = [firing, last_fired, clear]
                return None
            self.state[key] = ["", last_fired, 0]
            return ("resolved", firing, rule.thresholds[firing])
        return None


rules_strategy = st.builds(
    lambda op, thresholds, cooldown, clear, by_value, p_bound, min_samples: Rule(
        name="r",
        kind="ctr",
        metric="m",
        op=op,
        thresholds=thresholds,
        cooldown_s=cooldown * 60,
        clear_windows=clear,
        clear_by_value=by_value,
        max_p_value=p_bound,
        min_samples=min_samples,
    ),
    op=st.sampled_from([">", ">="]),
    thresholds=st.sampled_from(
        [
            {"warning": 1.0},
            {"critical": 2.0},
            {"warning": 1.0, "critical": 2.0},
            {"info": 0.5, "warning": 1.0, "critical": 2.0},
        ]
    ),
    cooldown=st.integers(0, 4),
    clear=st.integers(1, 4),
    by_value=st.booleans(),
    p_bound=st.sampled_from([None, 0.05]),
    min_samples=st.sampled_from([0, 10]),
)
points = st.lists(
    st.tuples(
        st.sampled_from(["a", "b"]),  # entity
        st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, 3.0]),  # value
        st.sampled_from([None, 0.01, 0.2]),  # p-value
        st.sampled_from([5, 50]),  # n
    ),
    max_size=40,
)


def observation(w: int, entity: str, value: float, p: float | None, n: int) -> Observation:
    return Observation(
        "ctr", entity, "m", value, ts=(w + 1) * MIN, n=n, window_start=w * MIN,
        window_end=(w + 1) * MIN, p_value=p,
    )  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(rule=rules_strategy, seq=points, cut=st.integers(0, 40))
def test_the_engine_decides_as_its_previous_state_machine(
    rule: Rule, seq: list[tuple[str, float, float | None, int]], cut: int
) -> None:
    reference, engine = ReferenceEngine([rule]), RuleEngine([rule])
    for w, point in enumerate(seq):
        if w == cut:  # a checkpoint mid-stream: snapshot -> msgpack -> restore
            restored = RuleEngine([rule])
            restored.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(engine.snapshot())))
            engine = restored
        o = observation(w, *point)
        expected = reference.judge(o)
        got = [(a.status, a.severity, a.threshold) for a in engine.evaluate([o])]
        assert got == expected, (w, point)
        assert format1_view(engine) == reference.state


def format1_view(engine: RuleEngine) -> dict[str, list[Any]]:
    """The engine's state as the reference keeps it (state format 1's layout)."""
    view = {}
    for (name, entity), episode in engine.episodes.items():
        firing = SEVERITIES[episode.level - 1] if episode.active else ""
        clear = episode.normal_run if episode.active else 0
        view[f"{name}\x1f{entity}"] = [firing, engine.last_fired.get((name, entity)), clear]
    return view


def test_a_snapshot_from_before_hysteresis_still_restores() -> None:
    """[severity, last fired] (no clear run) restores as an open episode that resolves."""
    rule = Rule("r", "ctr", "m", ">", {"warning": 1.0}, cooldown_s=0, clear_windows=2)
    engine = RuleEngine([rule])
    engine.restore({"r\x1fa": ["warning", MIN]})
    verdicts = [engine.evaluate([observation(w, "a", 0.0, None, 50)]) for w in (1, 2)]
    assert [[a.status for a in v] for v in verdicts] == [[], ["resolved"]]


def test_an_episode_escalates_and_holds() -> None:
    e = Episode(quiet=2)
    assert [e.update(1), e.update(3), e.update(2), e.update(0, hold=True), e.update(0)] == [
        "start", "escalate", None, None, None,
    ]  # fmt: skip
    assert (e.update(0), e.active, e.level) == ("end", False, 0)
    # a veto (the engine's cooldown) keeps it closed; a reading of a level starts it
    assert (e.update(2, may_start=False), e.update(2)) == (None, "start")


def test_an_episode_snapshot_from_before_levels_restores_at_level_one() -> None:
    e = Episode(quiet=1)
    e.restore([True, 0, 0, 3])  # [active, normal run, since end, length]
    assert (e.level, e.update(True), e.update(False)) == (1, None, "end")


def test_only_the_rule_engine_makes_alerts() -> None:
    """Every alert episode is decided in one place: no module of the pipeline but the
    rule engine builds an `Alert` (monitors emit observations; SQL rules, retraining
    and causes follow the engine's alerts)."""
    makers = []
    for path in sorted([*ROOT.glob("operators/**/*.py"), *ROOT.glob("streams/**/*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Alert":
                makers.append(str(path.relative_to(ROOT)))
    assert makers == ["operators/rules.py"]
