"""Typed, versioned state of the task and its parts (issue 12 point 3): the watermark,
the rule engine, change detection, the relation learner and the task snapshot.

Each part's snapshot is `{"format": 2, "state": ...}` (operators/state.py), a newer
format is refused with a StateFormatError naming its owner, and a format-1 snapshot
(as the code before this change wrote it, rebuilt here from a live object the way
that code did) is upgraded and the run continues exactly as if uninterrupted.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from operators.base import Observation
from operators.causes import RelationLearner
from operators.change import ChangeDetectors
from operators.rules import SEVERITIES, Rule, RuleEngine
from operators.state import StateFormatError
from operators.task import MonitorTask
from operators.watermark import Watermark
from tests.test_change_detection import Replay, Tick, ctr_series
from tests.test_change_residuals import cycling_campaign

MIN = 60_000


def through_msgpack(snapshot: Any) -> Any:
    return msgspec.msgpack.decode(msgspec.msgpack.encode(snapshot))


def newer(snapshot: dict[str, Any]) -> dict[str, Any]:
    return {"format": snapshot["format"] + 1, "state": snapshot["state"]}


def refused(restore: Callable[[dict[str, Any]], None], snapshot: dict[str, Any]) -> str:
    with pytest.raises(StateFormatError) as caught:
        restore(newer(snapshot))
    return str(caught.value)


# -- rules --------------------------------------------------------------------------


def rule(clear: int = 2, cooldown_s: float = 0) -> Rule:
    return Rule("r", "ctr", "m", ">", {"warning": 1.0, "critical": 2.0},
                cooldown_s=cooldown_s, clear_windows=clear)  # fmt: skip


def obs(w: int, value: float, entity: str = "a") -> Observation:
    return Observation("ctr", entity, "m", value, ts=(w + 1) * MIN, n=50,
                       window_start=w * MIN, window_end=(w + 1) * MIN)  # fmt: skip


def rules_format_1(engine: RuleEngine) -> dict[str, list[Any]]:
    """The engine's snapshot as format 1 wrote it (operators/rules.py before issue 12)."""
    state = {}
    for (name, entity), episode in engine.episodes.items():
        firing = SEVERITIES[episode.level - 1] if episode.active else ""
        clear = episode.normal_run if episode.active else 0
        state[f"{name}\x1f{entity}"] = [firing, engine.last_fired.get((name, entity)), clear]
    return state


def verdicts(engine: RuleEngine, values: list[tuple[int, float, str]]) -> list[Any]:
    out = []
    for w, value, entity in values:
        out += [(a.status, a.severity, a.entity) for a in engine.evaluate([obs(w, value, entity)])]
    return out


def test_rules_snapshot_is_typed_and_versioned() -> None:
    engine = RuleEngine([rule()])
    verdicts(engine, [(0, 2.5, "a"), (1, 1.5, "b")])
    snapshot = engine.snapshot()
    assert snapshot["format"] == 2
    episode = snapshot["state"]["episodes"][("r", "a")]
    assert (episode["active"], episode["level"]) == (True, 3)
    assert snapshot["state"]["last_fired"] == {("r", "a"): MIN, ("r", "b"): 2 * MIN}
    again = RuleEngine([rule()])
    again.restore(through_msgpack(snapshot))
    assert again.snapshot() == snapshot
    assert refused(RuleEngine([rule()]).restore, snapshot).startswith("rule engine: ")


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 5])
def test_rules_format_1_is_upgraded_and_continues_exactly(cut: int) -> None:
    seq = [(0, 2.5, "a"), (1, 0.0, "a"), (2, 1.5, "b"), (3, 0.0, "a"), (4, 0.0, "b"),
           (5, 1.2, "a"), (6, 0.0, "b"), (7, 0.0, "a"), (8, 0.0, "a")]  # fmt: skip
    whole = verdicts(RuleEngine([rule()]), seq)
    assert ("resolved", "critical", "a") in whole
    first = RuleEngine([rule()])
    head = verdicts(first, seq[:cut])
    second = RuleEngine([rule()])
    second.restore(through_msgpack(rules_format_1(first)))
    assert head + verdicts(second, seq[cut:]) == whole


def test_rules_quiet_follows_the_configured_rule() -> None:
    """Hysteresis is configuration: a restored episode resolves by the rule it has now."""
    engine = RuleEngine([rule(clear=3)])
    verdicts(engine, [(0, 1.5, "a")])
    relaxed = RuleEngine([rule(clear=1)])
    relaxed.restore(engine.snapshot())
    assert verdicts(relaxed, [(1, 0.0, "a")]) == [("resolved", "warning", "a")]


# -- watermark ----------------------------------------------------------------------


def test_watermark_snapshot_format_1_and_refusal() -> None:
    wm = Watermark(("a", "b"), lateness_ms=10, idle_timeout_ms=1000)
    wm.observe("a", 500, now_ms=0)
    wm.observe("b", 300, now_ms=0)
    wm.update(now_ms=0)
    snapshot = wm.snapshot()
    assert snapshot == {"format": 2, "state": {"max_ts": {"a": 500, "b": 300}, "value": 290}}
    old = Watermark(("a", "b"), lateness_ms=10, idle_timeout_ms=1000)
    old.restore({"max_ts": {"a": 500, "b": 300}, "value": 290})  # format 1
    assert old.snapshot() == snapshot
    assert refused(old.restore, snapshot).startswith("watermark: ")


# -- relations ----------------------------------------------------------------------


def imp(campaign: str, model: str, ts: int) -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(campaign_id=campaign, model_id=model, ts=ts)


def test_relations_format_1_keeps_recency_order_and_refusal() -> None:
    learner = RelationLearner(max_keys=2)
    learner.observe("impressions", [imp("c1", "m0", 0)])
    learner.observe("impressions", [imp("c2", "m1", 1)])
    learner.observe("impressions", [imp("c1", "m2", 2)])  # c1 most recently seen
    format_1 = {h: [[k, v] for k, v in t.items()] for h, t in learner.seen.items()}
    snapshot = learner.snapshot()
    assert list(snapshot["state"]["seen"]["models"]) == ["c2", "c1"]
    for restored_from in (format_1, snapshot):
        other = RelationLearner(max_keys=2)
        other.restore(through_msgpack(restored_from))
        other.observe("impressions", [imp("c3", "m3", 3)])  # evicts the least recent: c2
        assert list(other.seen["models"]) == ["c1", "c3"]
        assert other.hints("c1", 3) == {"models": ["m0", "m2"]}
    assert refused(RelationLearner().restore, snapshot).startswith("relations: ")


# -- change detection ---------------------------------------------------------------


def changes_format_1(det: ChangeDetectors) -> dict[str, Any]:
    """The snapshot as format 1 wrote it (operators/change.py before issue 12)."""
    series = []
    for (kind, metric, entity), s in det.series.items():
        methods = {
            name: [pickle.dumps(m.detector, protocol=4), m.center, m.floor, m.last]
            for name, m in s.methods.items()
        }
        history = [[ts, v, r] for (ts, v), r in zip(s.history, s.raw, strict=True)]
        series.append(
            [kind, metric, entity, s.count, s.last_ts, s.scale, history, methods, s.residual]
        )
    return {"series": series, "max_ts": det.max_ts, "swept_at": det.swept_at}


def change_run(observations: list[Observation], det: ChangeDetectors) -> list[Any]:
    out = []
    for o in observations:
        out += [(c.metric, c.value, c.entity, c.ts) for c in det.observe([o])]
    return out


@pytest.mark.parametrize("split", [70, 128, 135, 200])
def test_change_format_1_is_upgraded_and_continues_exactly(split: int) -> None:
    obs_ = ctr_series(11, [0.02] * 60 + [0.03] * 40 + [0.02] * 40, entity="x") + ctr_series(
        12, [0.02] * 140, entity="y"
    )
    obs_.sort(key=lambda o: (o.ts, o.entity))
    whole = change_run(obs_, ChangeDetectors())
    assert [v for _, v, _, _ in whole].count(1.0) >= 2
    first = ChangeDetectors()
    head = change_run(obs_[:split], first)
    old = through_msgpack(changes_format_1(first))
    assert any(row[7] for row in old["series"])  # pickled detectors to upgrade
    for restored_from in (old, through_msgpack(first.snapshot())):
        second = ChangeDetectors()
        second.restore(restored_from)
        assert head + change_run(obs_[split:], second) == whole


def test_change_format_1_of_a_residual_series_continues_exactly() -> None:
    obs_ = cycling_campaign(5, 2200, drop=(2000, 2100, 0.5))
    whole = ChangeDetectors().observe(obs_)
    assert whole
    first = ChangeDetectors()
    head = first.observe(obs_[:2030])
    second = ChangeDetectors()
    second.restore(through_msgpack(changes_format_1(first)))
    assert second.series[("ctr", "ctr", "c1")].residual
    assert head + second.observe(obs_[2030:]) == whole


def test_change_snapshot_is_named_fields_without_pickles() -> None:
    det = ChangeDetectors()
    change_run(ctr_series(3, [0.02] * 60), det)
    snapshot = det.snapshot()
    assert snapshot["format"] == 2
    (series,) = snapshot["state"]["series"].values()
    ph, adwin = series["methods"]["page_hinkley"], series["methods"]["adwin"]
    assert ph["detector"]["type"] == "page_hinkley" and ph["detector"]["n"] > 0
    assert adwin["detector"]["type"] == "adwin"
    assert b"river" not in msgspec.msgpack.encode(snapshot)  # no pickled class names
    assert refused(ChangeDetectors().restore, snapshot).startswith("change detection: ")


# -- the task -----------------------------------------------------------------------


def task(with_changes: bool = True) -> MonitorTask:
    rules = [Rule("c", "ctr", "ctr", "<", {"warning": 0.0})]
    changes = ChangeDetectors() if with_changes else None
    return MonitorTask(Replay(ctr_series(1, [0.02] * 40)), RuleEngine(rules), 0, 10**12,
                       changes=changes, name="ctr")  # fmt: skip


def test_task_format_1_and_a_refused_part_names_the_monitor() -> None:
    t = task()
    for o in ctr_series(1, [0.02] * 40):
        t.feed("in", [Tick(o.ts)], now_ms=0)
        t.tick(now_ms=0)
        t.collect()
    snapshot = t.snapshot()
    assert snapshot["format"] == 2 and set(snapshot["state"]) == {
        "watermark", "operator", "rules", "changes", "relations"
    }  # fmt: skip
    # format 1: the parts unversioned, no change detection yet, a pipeline key beside them
    parts = {k: v["state"] for k, v in snapshot["state"].items() if k in ("watermark", "rules")}
    format_1 = {**parts, "operator": {}, "repartition_seen": {"x:0": 5}}
    format_1["rules"] = rules_format_1(t.rules)
    fresh = task()
    fresh.restore(through_msgpack(format_1))
    assert fresh.watermark.value == t.watermark.value and fresh.changes.series == {}
    # a part in a newer format: refused, the message naming the monitor and the part
    bad = {"format": 2, "state": {**snapshot["state"], "rules": newer(snapshot["state"]["rules"])}}
    with pytest.raises(StateFormatError, match=r"^monitor ctr: rule engine: .*format 3"):
        task().restore(bad)
    assert "--discard-state ctr" in refused(task().restore, snapshot)
