"""The registry of monitors: every monitor's operator and config type, in one place.

A monitor is its operator class (`operators.base.Operator`): the inputs it reads
(`sources`, `sources_for`), the (kind, metric) of its observations (`observes`), their
default alert rules (`default_rules`, written next to the code that emits them), where a
late event would have counted (`late_window`) and how it is built (`build`). The worker's
wiring (streams/runtime/monitors.py), the configuration's default rules (streams/config.py) and
the conformance suite (tests/test_conformance.py) all read this registry, so adding a
monitor is adding its entry here.

This module imports operators only (never `streams`), so the configuration can read it.
"""

from __future__ import annotations

from typing import Any

from operators.autoencoder import AutoencoderConfig, AutoencoderOperator
from operators.base import Operator
from operators.change import DEFAULT_WATCH, change_rules
from operators.cluster import ClusterConfig, ClusterOperator
from operators.ctr import CtrConfig, CtrOperator
from operators.drift import DriftConfig, DriftOperator
from operators.experiment import ExperimentConfig, ExperimentOperator
from operators.freshness import FreshnessConfig, FreshnessOperator
from operators.funnel import FunnelConfig, FunnelOperator
from operators.quality import QualityConfig, QualityOperator
from operators.sensor import SensorConfig, SensorOperator
from operators.service import ServiceConfig, ServiceOperator
from operators.srm import SrmConfig, SrmOperator

# name -> (operator class, its config dataclass)
OPERATORS: dict[str, tuple[type[Operator], type[Any]]] = {
    "ctr": (CtrOperator, CtrConfig),
    "sensor": (SensorOperator, SensorConfig),
    "cluster": (ClusterOperator, ClusterConfig),
    "autoencoder": (AutoencoderOperator, AutoencoderConfig),
    "drift": (DriftOperator, DriftConfig),
    "service": (ServiceOperator, ServiceConfig),
    "srm": (SrmOperator, SrmConfig),
    "freshness": (FreshnessOperator, FreshnessConfig),
    "quality": (QualityOperator, QualityConfig),
    "experiment": (ExperimentOperator, ExperimentConfig),
    "funnel": (FunnelOperator, FunnelConfig),  # v2: CTR/CVR/revenue guardrails per arm
}


def default_rules() -> list[dict[str, Any]]:
    """The default alert rules of every monitor (`Operator.default_rules` of its default
    config), in the registry's order, then change detection's for the metrics it watches
    (`operators.change.DEFAULT_WATCH`): the rules as data (`operators.rules.rule_spec`),
    which `streams.config.DEFAULT_RULES` checks and holds.

    >>> names = [rule["name"] for rule in default_rules()]
    >>> names[:3], names[-1]
    (['ctr_floor', 'ctr_drop', 'ctr_sustained_drop'], 'mae_change_adwin')
    >>> len(names) == len(set(names))
    True
    """
    rules = [
        rule for operator_type, _ in OPERATORS.values() for rule in operator_type.default_rules()
    ]
    return [*rules, *change_rules(DEFAULT_WATCH)]


__all__ = ["OPERATORS", "default_rules"]
