"""Resolved alerts read as resolved: every default rule's resolved sentence, from one place.

The rule engine (operators/rules.py `resolved_sentence`) composes the resolved
sentence of every rule from the rule's label, number format and comparison; no
resolved alert reuses its firing sentence ("RESOLVED ... above 1%", "pause readouts").
Each default rule is driven through the engine: an observation that fires, then
one that resolves, and the resolved message is checked word for word.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from operators.base import Observation
from operators.rules import Rule, RuleEngine, resolved_sentence
from streams.config import DEFAULT_RULES, load_settings

WINDOW = {"window_start": 1_800_000_000_000, "window_end": 1_800_000_060_000}
WHEN = " in window 08:00:00-08:01:00 UTC."

# rule -> (entity, firing value, resolving value, details, exact resolved message)
CASES: dict[str, tuple[str, float, float, dict[str, Any], str]] = {
    "ctr_floor": ("cmp-002", 0.0004, 0.012, {}, "CTR of cmp-002 back to 1.20%, over 0.5%"),
    "ctr_drop": (
        "cmp-002",
        0.6,
        -0.05,
        {"ctr": 0.021, "baseline_ctr": 0.02},
        "CTR drop of cmp-002 back to -5%, under 30% (CTR 2.10% against a baseline of 2.00%)",
    ),
    "ctr_sustained_drop": (
        "cmp-002/B",
        1.4,
        0.2,
        {"ctr": 0.019, "baseline_ctr": 0.02, "level": "variant", "llr": 3.0, "llr_threshold": 16.7},
        "CTR of cmp-002/B (variant) back to 1.90%, near its baseline of 2.00%",
    ),
    "freshness_entity": (
        "cmp-002",
        2.5,
        0.0,
        {"topic": "impressions", "silence_s": 1500.0, "allowed_s": 600.0},
        "cmp-002 is sending on impressions again",
    ),
    "freshness_topic": (
        "clicks",
        3.0,
        0.0,
        {"silence_s": 1800.0},
        "topic clicks has events again",
    ),
    "sensor_autoencoder": (
        "sensor-01",
        7.0,
        1.0,
        {"error": 0.9, "p": 1e-7, "features": "temperature, vibration"},
        "sensor-01 reconstructs normally again",
    ),
    "drift_psi": (
        "model-0/amount",
        0.31,
        0.04,
        {},
        "PSI of model-0/amount back to 0.040, under 0.1",
    ),
    "confidence_shift": (
        "model-1",
        0.2,
        0.01,
        {},
        "fall in mean confidence of model-1 back to 0.010, under 0.1",
    ),
    "latency_p99": (
        "model-0/1.0.0",
        2600.0,
        180.0,
        {},
        "p99 latency of model-0/1.0.0 back to 180 ms, under 500 ms",
    ),
    "error_rate": ("m/v", 0.2, 0.0048, {}, "error rate of m/v back to 0.48%, under 1%"),
    "low_confidence": (
        "model-0",
        0.8,
        0.2,
        {},
        "share of low-confidence predictions of model-0 back to 20%, under 60%",
    ),
    "sensor_zscore": (
        "sensor-01/vibration",
        7.0,
        1.2,
        {"reading": 9.5},
        "z-score of sensor-01/vibration back to 1.2, under 4.5",
    ),
    "sensor_iqr": (
        "sensor-01/vibration",
        3.5,
        0.0,
        {"reading": 9.5},
        "distance beyond Tukey's fence (IQRs) of sensor-01/vibration back to 0.0, under 1.5",
    ),
    "sensor_rise": (
        "sensor-02/temperature",
        4.0,
        0.0,
        {},
        "steady rise of sensor-02/temperature back to 0, no longer above 0",
    ),
    "cluster_distance": (
        "sensor-03",
        7.5,
        1.2,
        {},
        "distance from the known operating regimes of sensor-03 back to 1.2x the usual, "
        "under 3x the usual",
    ),
    "srm": (
        "exp-cmp-000",
        1e-9,
        0.43,
        {},
        "sample ratio mismatch p-value of exp-cmp-000 back to 0.43, over 3.5e-06 (the "
        "variants' shares match the configured split again)",
    ),
    "srm_cumulative": (
        "exp-cmp-000",
        1e-9,
        0.43,
        {},
        "cumulative sample ratio mismatch p-value of exp-cmp-000 back to 0.43, over 0.01 (the "
        "cumulative shares match the configured split again)",
    ),
    **{
        f"experiment_guardrail_{metric}": (
            "exp-1/treatment",
            1.0,
            0.0,
            {
                "experiment": "exp-1",
                "variant": "treatment",
                "control": "control",
                "treatment_value": values[0],
                "control_value": values[1],
                "red_line": 0.2,
                "always_valid_p": 1e-6,
            },
            f"exp-1/treatment: {label} back within its red line against control ({shown})",
        )
        for metric, label, values, shown in (
            ("error_rate", "error rate", (0.012, 0.01), "1.20% against 1.00%"),
            ("latency_p95", "p95 latency", (210.0, 200.0), "210 ms against 200 ms"),
            ("latency_p99", "p99 latency", (210.0, 200.0), "210 ms against 200 ms"),
            # v2 funnel guardrails (operators/funnel.py): the treatment below the control
            ("ctr", "CTR", (0.049, 0.05), "4.90% against 5.00%"),
            ("cvr", "CVR", (0.095, 0.1), "9.5% against 10.0%"),
            ("revenue_per_impression", "revenue per impression", (0.19, 0.2), "0.19 against 0.2"),
        )
    },
    "experiment_ramp": (
        "exp-1",
        0.4,
        0.05,
        {"variant": "treatment", "change": 0.05, "share_before": 0.5, "share": 0.55},
        "ramp change of an arm's share of exp-1 back to 5%, under 20%",
    ),
    "experiment_crossover": (
        "exp-1",
        0.2,
        0.001,
        {"crossed_users": 40, "tracked_users": 200},
        "share of users seen in more than one arm of exp-1 back to 0.1%, under 1%",
    ),
    "quality_accuracy_drop": (
        "model-0/1.0.0",
        0.16,
        0.01,
        {"accuracy": 0.733, "reference_accuracy": 0.74, "labelled": 2700},
        "relative accuracy drop of model-0/1.0.0 back to 1%, under 5% (accuracy 73.3% "
        "against a reference of 74.0%)",
    ),
    "quality_mae_increase": (
        "model-reg/1.0.0",
        0.3,
        0.02,
        {"mae": 2.45, "reference_mae": 2.4, "labelled": 540},
        "relative MAE increase of model-reg/1.0.0 back to 2%, under 5% (MAE 2.45 against a "
        "reference of 2.4)",
    ),
}
for _metric in ("ctr", "error_rate", "latency_p99", "psi", "accuracy", "mae"):
    for _method in ("page_hinkley", "adwin"):
        CASES[f"{_metric}_change_{_method}"] = (
            "cmp-002" if _metric == "ctr" else "model-0",
            1.0,
            0.0,
            {"latest": 0.0123, "level_before": 0.02, "level_after": 0.012, "direction": "down"},
            f"{'cmp-002' if _metric == 'ctr' else 'model-0'}: the level of {_metric} is steady "
            f"again at 0.0123 ({_method.replace('_', '-')})",
        )

RULES = {r.name: r.rule() for r in DEFAULT_RULES}


def test_every_default_rule_has_a_case() -> None:
    assert set(CASES) == set(RULES)


def _fire_then_resolve(rule: Rule, entity: str, high: float, low: float, details: dict) -> list:
    engine = RuleEngine([rule])
    n = max(rule.min_samples, 1) * 10
    common = {"kind": rule.kind, "entity": entity, "metric": rule.metric, "n": n, **WINDOW}
    fire = Observation(value=high, ts=1, details=details, p_value=1e-12, **common)
    alerts = engine.evaluate([fire])
    # hysteresis: an episode resolves after `clear_windows` clear observations
    for ts in range(2, 2 + rule.clear_windows):
        calm = Observation(value=low, ts=ts, details=details, p_value=0.5, **common)
        alerts += engine.evaluate([calm])
    return alerts


@pytest.mark.parametrize("name", sorted(CASES))
def test_resolved_sentence(name: str) -> None:
    entity, high, low, details, expected = CASES[name]
    rule = RULES[name]
    firing, resolved = _fire_then_resolve(rule, entity, high, low, details)
    assert (firing.status, resolved.status) == ("firing", "resolved")
    assert resolved.message == expected + WHEN
    assert resolved.severity == firing.severity  # kept for routing
    # never the firing sentence again, nor its advice
    assert firing.message.removesuffix(WHEN) not in resolved.message
    for word in ("Resolved:", "pause readouts", "above", "dropped", "fell by"):
        if word == "above" and "no longer above" in resolved.message:
            continue
        assert word not in resolved.message, word


def test_still_past_the_line_but_no_longer_significant() -> None:
    """With `clear_by_value = false`, a crossing without evidence resolves, and says so
    instead of 'back to'; by default (clear by value) it does not end the episode."""
    common = {"kind": "service", "entity": "m/v", "metric": "error_rate", "n": 1000, **WINDOW}
    by_value = RuleEngine([RULES["error_rate"]])
    by_value.evaluate([Observation(value=0.2, ts=1, p_value=1e-9, **common)])
    for ts in range(2, 8):
        assert not by_value.evaluate([Observation(value=0.013, ts=ts, p_value=0.2, **common)])

    rule = dataclasses.replace(RULES["error_rate"], clear_by_value=False, clear_windows=1)
    engine = RuleEngine([rule])
    engine.evaluate([Observation(value=0.2, ts=1, p_value=1e-9, **common)])
    (resolved,) = engine.evaluate([Observation(value=0.013, ts=2, p_value=0.2, **common)])
    assert resolved.status == "resolved"
    assert resolved.message == (
        "error rate of m/v is 1.30%, over 1% but no longer significant "
        f"(p = 0.2; needs < {rule.max_p_value:g})" + WHEN
    )


def test_the_line_is_the_least_severe_threshold() -> None:
    """Fired at critical (> 2 s), resolved below every line: 'under 500 ms', not 2000."""
    rule = RULES["latency_p99"]
    (_, resolved) = _fire_then_resolve(rule, "m/v", 2600.0, 300.0, {})
    assert resolved.severity == "critical" and resolved.threshold == 2000.0
    assert "under 500 ms" in resolved.message


def test_sides_follow_the_comparison() -> None:
    def sentence(op: str, value: float) -> str:
        rule = Rule("r", "k", "m", op, {"warning": 1.0}, label="m", value_format="{:g}")
        return resolved_sentence(rule, {"entity": "e", "value": value, "line": 1.0}, None)

    assert sentence(">", 0.5) == "m of e back to 0.5, under 1"
    assert sentence(">", 1.0) == "m of e back to 1, no longer above 1"
    assert sentence("<", 2.0) == "m of e back to 2, over 1"
    assert sentence("<", 1.0) == "m of e back to 1, no longer below 1"
    assert sentence(">=", 0.5) == "m of e back to 0.5, under 1"


def test_a_resolved_template_lacking_a_detail_falls_back_to_the_composed_sentence() -> None:
    rule = Rule("r", "k", "m", ">", {"warning": 1.0}, resolved_message="{entity} fine at {missing}")
    text = resolved_sentence(rule, {"entity": "e", "value": 0.5, "line": 1.0}, None)
    assert text == "m of e back to 0.5, under 1"


def test_rule_wording_from_configuration(tmp_path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(
        '[[rules]]\nname = "q"\nkind = "service"\nmetric = "error_rate"\nop = ">"\n'
        'thresholds = { critical = 0.05 }\nlabel = "failure share"\nvalue_format = "{:.1%}"\n'
    )
    (rule,) = [r.rule() for r in load_settings(path, env={}).rules]
    text = resolved_sentence(rule, {"entity": "m/v", "value": 0.01, "line": 0.05}, None)
    assert text == "failure share of m/v back to 1.0%, under 5%"


def test_a_value_format_that_cannot_write_a_number_is_refused(tmp_path) -> None:
    from streams.config import ConfigError

    path = tmp_path / "rules.toml"
    path.write_text(
        '[[rules]]\nname = "q"\nkind = "service"\nmetric = "error_rate"\nop = ">"\n'
        'thresholds = { critical = 0.05 }\nvalue_format = "{:.1q}"\n'
    )
    with pytest.raises(ConfigError, match="value_format"):
        load_settings(path, env={})
