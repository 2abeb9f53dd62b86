"""The observation of an experiment guardrail, shared by the experiment monitors.

operators/experiment.py (error rate, latency) and operators/funnel.py (CTR,
CVR, revenue per impression) judge a treatment arm against the control arm
the same way: beyond the red line *and* an always-valid mSPRT p-value
(operators/msprt.py) below alpha. Both report it as one Observation
(kind="experiment", entity="experiment/variant", metric="guardrail_<metric>",
value 1.0 when breached else 0.0) that the default rules `experiment_guardrail*`
turn into a critical alert; `GuardrailCheck.observation` builds it, so the two
monitors' alerts carry the same fields in the same order.

>>> check = GuardrailCheck("exp", "B", "control", "cvr", 0, 300_000, 0.08, 0.1, 1e-4, 500, 480)
>>> o = check.observation(True, 1e-3, ("shortfall", 0.2), 0.1, ("n", "control_n"))
>>> o.entity, o.metric, o.value, o.n, o.ts
('exp/B', 'guardrail_cvr', 1.0, 500, 300000)
>>> list(o.details)[5:11], o.details["control_n"]
(['control_value', 'shortfall', 'red_line', 'always_valid_p', 'alpha', 'n'], 480)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from operators.base import Observation
from operators.rules import rule_spec

TEST = "mSPRT, normal mixture (Johari et al. 2017)"


def guardrail_rule(metric: str, label: str, fmt: str, line: str, unit: str = "") -> dict[str, Any]:
    """The critical default rule of an experiment guardrail, as data
    (`operators.rules.rule_spec`): the observation is 1.0 when the arm is beyond its
    red line (`line`, a format of the observation's `red_line`) with an always-valid p
    below alpha; values in `fmt`. The experiment and funnel monitors declare theirs
    with it (`DEFAULT_RULES` of operators/experiment.py and operators/funnel.py)."""
    treatment = "{treatment_value:" + fmt + "}" + unit
    control = "{control_value:" + fmt + "}" + unit
    return rule_spec(
        f"experiment_guardrail_{metric}",
        "experiment",
        f"guardrail_{metric}",
        ">=",
        {"critical": 1.0},
        f"stop or roll back arm {{variant}} of {{experiment}}: {label} {treatment} against "
        f"{control} in {{control}} (red line {line}, always-valid p = {{always_valid_p:.2g}}, "
        "mSPRT)",
        label=f"{label} guardrail breach",
        value_format="{:.0f}",
        resolved_message=f"{{entity}}: {label} back within its red line against {{control}} "
        f"({treatment} against {control})",
        cooldown_s=3600,
        clear_windows=3,
    )


@dataclass(frozen=True, slots=True)
class GuardrailCheck:
    """One treatment arm against the control arm on one metric in the window
    [start, end): both values, the always-valid p-value of the difference, and
    the samples behind each arm."""

    experiment: str
    variant: str
    control: str | None
    metric: str
    start: int
    end: int
    value: float
    control_value: float
    p_value: float
    n: int
    n_control: int

    def observation(
        self,
        breached: bool,
        alpha: float,
        gap: tuple[str, float],
        red_line: float,
        count_names: tuple[str, str],
    ) -> Observation:
        """The guardrail Observation. `gap` is (name, value) of how far the
        treatment is from the control (the experiment monitor's `excess`, the
        funnel's `shortfall`); `count_names` name n and n_control in the details
        (requests for the experiment monitor, n for the funnel)."""
        return Observation(
            "experiment",
            f"{self.experiment}/{self.variant}",
            f"guardrail_{self.metric}",
            1.0 if breached else 0.0,
            ts=self.end,
            n=self.n,
            window_start=self.start,
            window_end=self.end,
            p_value=self.p_value,
            details={
                "experiment": self.experiment,
                "variant": self.variant,
                "control": self.control,
                "guardrail": self.metric,
                "treatment_value": self.value,
                "control_value": self.control_value,
                gap[0]: gap[1],
                "red_line": red_line,
                "always_valid_p": self.p_value,
                "alpha": alpha,
                count_names[0]: self.n,
                count_names[1]: self.n_control,
                "test": TEST,
            },
        )
