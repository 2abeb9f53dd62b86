"""The observation of an experiment guardrail, shared by the experiment monitors.

operators/experiment.py (error rate, latency) and operators/funnel.py (CTR,
CVR, revenue per impression) judge a treatment arm against the control arm
the same way: beyond the red line *and* an always-valid mSPRT p-value
(operators/msprt.py) below alpha. Both report it as one Observation
(kind="experiment", entity="experiment/variant", metric="guardrail_<metric>",
value 1.0 when breached else 0.0) that the default rules `experiment_guardrail*`
turn into a critical alert; this module builds it, so the two monitors' alerts
carry the same fields in the same order.

>>> o = guardrail_observation(
...     "exp", "treatment", "control", "cvr", True, 0, 300_000,
...     value=0.08, control_value=0.10, p_value=1e-4, alpha=1e-3,
...     gap=("shortfall", 0.2), red_line=0.1, n=500, n_control=480,
...     count_names=("n", "control_n"),
... )
>>> o.entity, o.metric, o.value, o.n, o.ts
('exp/treatment', 'guardrail_cvr', 1.0, 500, 300000)
>>> list(o.details)[5:10]
['control_value', 'shortfall', 'red_line', 'always_valid_p', 'alpha']
"""

from __future__ import annotations

from operators.base import Observation

TEST = "mSPRT, normal mixture (Johari et al. 2017)"


def guardrail_observation(
    experiment: str,
    variant: str,
    control: str | None,
    metric: str,
    breached: bool,
    start: int,
    end: int,
    *,
    value: float,
    control_value: float,
    p_value: float,
    alpha: float,
    gap: tuple[str, float],
    red_line: float,
    n: int,
    n_control: int,
    count_names: tuple[str, str],
) -> Observation:
    """The guardrail Observation of one arm and window [start, end).

    `gap` is (name, value) of how far the treatment is from the control (the
    experiment monitor's `excess`, the funnel's `shortfall`); `n` and
    `n_control` are the samples behind the two arms, named in the details by
    `count_names` (requests for the experiment monitor, n for the funnel).
    """
    return Observation(
        "experiment",
        f"{experiment}/{variant}",
        f"guardrail_{metric}",
        1.0 if breached else 0.0,
        ts=end,
        n=n,
        window_start=start,
        window_end=end,
        p_value=p_value,
        details={
            "experiment": experiment,
            "variant": variant,
            "control": control,
            "guardrail": metric,
            "treatment_value": value,
            "control_value": control_value,
            gap[0]: gap[1],
            "red_line": red_line,
            "always_valid_p": p_value,
            "alpha": alpha,
            count_names[0]: n,
            count_names[1]: n_control,
            "test": TEST,
        },
    )
