"""Every monitor of the registry is built one way, `Operator.build(config, context)`:
the context (reference profiles, ...) is offered to all alike, with no special case per
class in the worker's wiring (issue 12, point 1)."""

from __future__ import annotations

from pathlib import Path

import msgspec

from operators.drift import DriftOperator
from operators.reference import build_profile
from streams.config import load_settings
from streams.runtime import repartition
from streams.runtime.monitors import OPERATORS, build_monitors


def test_every_monitor_is_built_with_its_config_and_drift_gets_the_references(
    tmp_path: Path,
) -> None:
    rows = [{"features": {"x": float(i % 7)}, "prediction": 0.5} for i in range(200)]
    path = tmp_path / "m1.json"
    path.write_bytes(build_profile(rows, "m1", "ref-1").to_json())
    overrides = {f"monitors.{n}.enabled": True for n in OPERATORS}
    overrides["monitors.srm.options"] = {"min_total": 7}
    settings = load_settings(env={}, overrides={**overrides, "drift_references": [str(path)]})
    specs = build_monitors(settings)
    # the monitors keyed by experiment add the forwarder that re-keys their inputs
    assert [s.name for s in specs if s.plan] == [repartition.FORWARDER]
    tasks = {s.name: s.make_task() for s in specs if s.name != repartition.FORWARDER}
    assert set(tasks) == set(OPERATORS)
    for name, task in tasks.items():
        assert type(task.operator) is OPERATORS[name][0]
    assert tasks["srm"].operator.config.min_total == 7
    drift = tasks["drift"].operator
    assert isinstance(drift, DriftOperator)
    assert set(drift.references) == {"m1"} and drift.references["m1"].version == "ref-1"


def test_the_default_configuration_names_every_monitor_of_the_registry() -> None:
    """`streams.config` reads its monitors from the registry (operators/registry.py):
    the default configuration names every monitor of it."""
    assert set(load_settings(env={}).monitors) == set(OPERATORS)


def test_every_metric_change_detection_watches_has_default_change_rules() -> None:
    """Every watched metric (operators.change) is ruled for every method, and every
    watched metric is one some monitor declares (`Operator.observes`)."""
    from operators.change import DEFAULT_WATCH, METHODS

    ruled = {(r.kind, r.metric) for r in load_settings(env={}).rules}
    declared = {pair for operator_type, _ in OPERATORS.values() for pair in operator_type.observes}
    for kind, metric in DEFAULT_WATCH:
        assert (kind, metric) in declared, (kind, metric)
        for method in METHODS:
            assert ("change", f"{metric}_change_{method}") in ruled, (metric, method)


def test_each_monitor_rules_only_the_metrics_it_declares() -> None:
    """A monitor's default rules (`Operator.default_rules`) judge only metrics it declares,
    and every declared metric is ruled by the monitor itself or by change detection (the
    quality monitor's window accuracy): a subclass (funnel, of ctr) that forgot to replace
    its base's rules, or a rule left with the wrong monitor, fails here."""
    from operators.change import DEFAULT_WATCH

    for name, (operator_type, config_type) in OPERATORS.items():
        ruled = {(r["kind"], r["metric"]) for r in operator_type.default_rules(config_type())}
        declared = set(operator_type.observes)
        assert ruled <= declared, f"{name}: rules for undeclared metrics {ruled - declared}"
        assert declared <= ruled | set(DEFAULT_WATCH), f"{name}: {declared - ruled} unruled"


def test_the_default_rules_are_the_monitors_and_each_judges_its_own_metric() -> None:
    """`streams.config.DEFAULT_RULES` is what the registry collects (the monitors' rules,
    then change detection's, one per watched metric and method, no other), and no two
    default rules judge one (kind, metric): the engine looks rules up by (kind, metric),
    so its verdicts do not depend on the list's order."""
    from operators import registry
    from operators.change import DEFAULT_WATCH, METHODS
    from streams.config import DEFAULT_RULES, RuleSettings

    expected = [msgspec.convert(r, RuleSettings) for r in registry.default_rules()]
    assert expected == DEFAULT_RULES
    assert len({r.name for r in DEFAULT_RULES}) == len(DEFAULT_RULES)
    judged = [(r.kind, r.metric) for r in DEFAULT_RULES]
    assert len(set(judged)) == len(judged)
    changes = {metric for kind, metric in judged if kind == "change"}
    assert changes == {f"{m}_change_{method}" for _, m in DEFAULT_WATCH for method in METHODS}
