"""Which monitors run, on which topics: the list the worker wires up.

Each monitor is an operator from `operators/` with its config dataclass; the
`[monitors.NAME]` table of the configuration switches it on or off, sets its
lateness and passes `options` to that dataclass (unknown options are an
error). Adding a monitor is adding an entry to `OPERATORS` (operators/registry.py);
its operator declares the (kind, metric) of its observations (`Operator.observes`),
their default rules (`Operator.default_rules`, collected into `streams.config`),
which window a late event misses (`late_window`) and,
where it needs more than its config, what it takes of the `BuildContext`
(`Operator.build`). The conformance suite (tests/test_conformance.py) runs every
entry and fails for one without an input generator in tests/conformance_inputs.py.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from operators.base import BuildContext
from operators.causes import RELATIONS, RelationLearner
from operators.change import ChangeConfig, ChangeDetectors
from operators.reference import ReferenceProfile
from operators.registry import OPERATORS
from operators.rules import RuleEngine
from operators.task import MonitorTask
from streams.config import ConfigError, Settings
from streams.runtime import repartition


@dataclass(frozen=True)
class MonitorSpec:
    name: str
    # Kafka topic for each of the operator's logical sources, in its order
    topics: dict[str, str]
    make_task: Callable[[], MonitorTask]
    # Kafka topic -> (logical event type, the field its key must equal, or None:
    # no key check) where it differs from the input topic's strict default
    decoding: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    # the forwarder's routes (only the `repartition` pseudo-monitor has them)
    plan: repartition.Plan | None = None


def topic_of(settings: Settings, logical: str) -> str:
    return settings.topics.of(logical)


def operator_config(name: str, options: dict[str, Any], config_type: Any = None) -> Any:
    """The operator's config dataclass from `options`, with a precise error."""
    config_type = config_type or OPERATORS[name][1]
    known = {f.name: f for f in dataclasses.fields(config_type)}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(
            f"monitors.{name}.options: unknown option(s) {unknown}; known: {sorted(known)}"
        )
    hints = typing.get_type_hints(config_type)
    values = {}
    for key, value in options.items():
        if isinstance(value, list):
            value = tuple(value)
        elif isinstance(value, dict) and dataclasses.is_dataclass(hints.get(key)):
            value = hints[key](**value)  # a nested options table, e.g. page_hinkley
        values[key] = value
    try:
        return config_type(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"monitors.{name}.options: {exc}") from None


def load_references(paths: list[str]) -> dict[str, ReferenceProfile]:
    profiles = {}
    for path in paths:
        try:
            profile = ReferenceProfile.from_json(Path(path).read_bytes())
        except FileNotFoundError:
            raise ConfigError(f"reference profile {path} does not exist") from None
        except Exception as exc:
            raise ConfigError(f"reference profile {path} is not valid: {exc}") from None
        profiles[profile.model_id] = profile
    return profiles


def build_monitors(settings: Settings) -> list[MonitorSpec]:
    idle_ms = round(settings.idle_timeout_s * 1000)
    rules = [r.rule() for r in settings.rules]
    # what every operator is offered beside its config (Operator.build)
    context = BuildContext(references=load_references(settings.drift_references))
    change = settings.change_detection
    change_config = (
        operator_config("change_detection", change.options, ChangeConfig)
        if change.enabled
        else None
    )
    causes = settings.causes

    def relations(name: str, sources: tuple[str, ...]) -> RelationLearner | None:
        """A learner for the monitors whose alerts have related entities (campaigns'
        models, sensors' sites: docs/causes.md), where they read those inputs."""
        if name not in ("ctr", "sensor", "cluster", "autoencoder") or not causes.enabled:
            return None
        if not {r.source for r in RELATIONS} & set(sources):
            return None
        return RelationLearner(
            round(causes.relation_ttl_s * 1000), max_keys=causes.relation_max_keys
        )

    specs = []
    readers: list[tuple[str, tuple[str, ...], str | None]] = []
    for name, monitor in settings.monitors.items():
        if name not in OPERATORS:
            raise ConfigError(f"monitors.{name}: no such monitor; known: {sorted(OPERATORS)}")
        if not monitor.enabled:
            continue
        operator_type, _ = OPERATORS[name]
        config = operator_config(name, monitor.options)
        # the inputs this configuration reads (ctr without conversions reads two)
        sources = operator_type.sources_for(config)

        def make(
            operator_type: Any = operator_type,
            config: Any = config,
            lateness_s: float = monitor.lateness_s,
            name: str = name,
            sources: tuple[str, ...] = sources,
        ) -> MonitorTask:
            changes = ChangeDetectors(change_config) if change_config else None
            return MonitorTask(
                operator_type.build(config, context),
                RuleEngine(rules),
                round(lateness_s * 1000),
                idle_ms,
                changes=changes,
                relations=relations(name, sources),
                name=name,
            )

        keyed_by = operator_type.keyed_by
        topics = {src: repartition.reader_topic(settings, src, keyed_by) for src in sources}
        readers.append((name, sources, keyed_by))
        plan = repartition.plan(settings, [(name, sources, keyed_by)])
        decoding: dict[str, tuple[str, str | None]] = {
            topic: plan.internal[topic] for topic in topics.values() if topic in plan.internal
        }
        specs.append(MonitorSpec(name=name, topics=topics, make_task=make, decoding=decoding))
    plan = repartition.plan(settings, readers)
    if plan:
        specs.append(forwarder_spec(plan, idle_ms))
    return specs


def forwarder_spec(plan: repartition.Plan, idle_ms: int) -> MonitorSpec:
    """The pseudo-monitor that re-keys input events onto the internal topics
    (`streams.runtime.repartition`): one task per input partition, for its positions."""
    sources = tuple(sorted(set(plan.sources.values())))

    def make() -> MonitorTask:
        return MonitorTask(repartition.Passthrough(sources), RuleEngine([]), 0, idle_ms)

    return MonitorSpec(
        name=repartition.FORWARDER,
        topics={logical: topic for topic, logical in plan.sources.items()},
        make_task=make,
        decoding={topic: (logical, None) for topic, logical in plan.unchecked.items()},
        plan=plan,
    )
