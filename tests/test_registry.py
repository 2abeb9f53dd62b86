"""Every monitor of the registry is built one way, `Operator.build(config, context)`:
the context (reference profiles, ...) is offered to all alike, with no special case per
class in the worker's wiring (issue 12, point 1)."""

from __future__ import annotations

from pathlib import Path

from operators.drift import DriftOperator
from operators.reference import build_profile
from streams import repartition
from streams.config import load_settings
from streams.monitors import OPERATORS, build_monitors


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
    """`streams.config` keeps its own list of monitor names (it cannot import the
    registry, which imports it): the two must name the same monitors."""
    assert set(load_settings(env={}).monitors) == set(OPERATORS)


def test_every_metric_change_detection_watches_has_default_change_rules() -> None:
    """The watch list (operators.change) and the change rules (streams.config) are
    written in two places: every watched metric is ruled for every method, and every
    watched metric is one some monitor declares (`Operator.observes`)."""
    from operators.change import DEFAULT_WATCH, METHODS

    ruled = {(r.kind, r.metric) for r in load_settings(env={}).rules}
    declared = {pair for operator_type, _ in OPERATORS.values() for pair in operator_type.observes}
    for kind, metric in DEFAULT_WATCH:
        assert (kind, metric) in declared, (kind, metric)
        for method in METHODS:
            assert ("change", f"{metric}_change_{method}") in ruled, (metric, method)
