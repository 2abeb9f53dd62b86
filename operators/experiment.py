"""Experiment guardrails and ramp, per experiment and arm, on the experiment-keyed stream.

Reads impressions and inference logs that carry an `experiment` and a
`variant`, re-keyed by experiment (`keyed_by = "experiment"`,
streams/runtime/repartition.py), so one task sees each experiment whole.

Guardrails (inference logs of v2 carry the arm that served the request), per
tumbling window [start, start + window_ms) and arm:

- `error_rate` = errors / requests;
- `latency_p95`, `latency_p99` = exact percentiles of latency_ms (numpy's
  linear interpolation, as the service monitor).

Each treatment arm is compared with the control arm (`control`, default
"control", else the first arm by name) with an always-valid test
(operators/msprt.py: the normal-mixture SPRT of Johari, Pekelis & Walsh 2015
and Johari et al. 2017), accumulated since the experiment's start so that
looking after every window does not inflate false alarms:

- error rate: the difference of the two arms' error proportions (Bernoulli
  means), mixing scale `error_tau`;
- latency: the difference of the arms' mean log latency (a shift of the whole
  distribution; the percentiles are what the red line is about, the location
  shift is the evidence that the arm is slower, not the noise of one window's
  tail), mixing scale `latency_tau`.

A guardrail is breached when, in a window, the treatment's value is beyond
the red line against the control's (error rate: treatment - control >
`error_rate_red_line`, absolute; latency: treatment / control - 1 >
`latency_red_line`, relative) *and* the always-valid p-value of the same
direction is below `alpha`. Observation(kind="experiment",
entity="experiment/variant", metric="guardrail_<metric>", value = 1.0 when
breached else 0.0); the default rule `experiment_guardrail` makes it a
critical alert saying to stop or roll back the arm, with both values and the
evidence in its details.

Ramp (the controlled ramp of seed 000): per window, each arm's share of the
experiment's impressions (windows with at least `ramp_min_total`); when an
arm's share differs by more than `ramp_max_change` (default 0.20, twenty
percentage points) from its share in any window of the last `ramp_period_ms`
of event time (default 24 h), Observation(metric="ramp_change", value = the
largest change) crosses the default rule `experiment_ramp` (warning).

Rows to `experiment_windows`: error_rate, latency_p95, latency_p99 per arm
and window (control_value = the control arm's value in that window, p_value
= the always-valid p-value, n = requests), and `impression_share` per arm.

State: the open windows (latencies of a window, as the service monitor), per
experiment and arm the moments of the tests (three numbers each) and the
always-valid p-values, and per experiment the shares of the windows of the
last ramp period: bounded by the window, the period and the arms.

>>> from operators.msprt import mixture_lr
>>> round(1 / mixture_lr(0.05, 0.0002, 0.0004), 6)  # sqrt(1/3) e^(1e-6 / 2.4e-7): 1/37.24
0.026853
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from operators.base import Observation, Operator
from operators.guardrail import GuardrailCheck, guardrail_rule
from operators.msprt import Moments, always_valid_p, difference
from operators.rules import rule_spec as _rule
from operators.state import StateCodec, StateFormatError
from operators.windows import TumblingWindows, window_start
from schemas.rows import ExperimentWindowRow

EXPERIMENT_TABLE = ExperimentWindowRow.__table__.name


@dataclass(frozen=True)
class ExperimentConfig:
    window_ms: int = 300_000
    control: str = "control"  # the control arm; absent: the first arm by name
    alpha: float = 0.001  # always-valid p-value a breach needs
    error_rate_red_line: float = 0.02  # treatment - control error rate
    latency_red_line: float = 0.20  # treatment / control - 1, p95 and p99
    error_tau: float = 0.02  # mSPRT mixing scale of the error-rate difference
    latency_tau: float = 0.1  # ... of the mean log-latency difference
    min_requests: int = 30  # per arm and window, to judge a window's percentiles
    ramp_max_change: float = 0.20
    ramp_period_ms: int = 86_400_000
    ramp_min_total: int = 200

    def __post_init__(self) -> None:
        if self.window_ms <= 0 or not 0 < self.alpha < 1:
            raise ValueError("experiment window_ms must be > 0 and alpha in (0, 1)")
        if self.error_tau <= 0 or self.latency_tau <= 0:
            raise ValueError("experiment error_tau and latency_tau must be > 0")


class ArmWindow(msgspec.Struct):
    """One arm's window: requests, errors, latencies, impressions."""

    requests: int = 0
    errors: int = 0
    latencies: list[float] = []
    impressions: int = 0

    def fold_into(self, e: ArmEvidence) -> None:
        """Add this window's requests to the arm's evidence since the start (at the
        window's close, in window order: any arrival order gives the same evidence)."""
        e.errors.n += self.requests
        e.errors.s1 += self.errors  # indicators: x^2 = x
        e.errors.s2 += self.errors
        # log(1 + ms): a location shift of the latency distribution, 0 ms allowed
        logs = np.log1p(np.array(self.latencies, dtype=np.float64))
        e.log_latency.n += len(logs)
        e.log_latency.s1 += math.fsum(logs.tolist())
        e.log_latency.s2 += math.fsum((logs * logs).tolist())


class ExperimentWindow(msgspec.Struct):
    arms: dict[str, ArmWindow] = {}

    def arm(self, variant: str) -> ArmWindow:
        arm = self.arms.get(variant)
        if arm is None:
            arm = self.arms[variant] = ArmWindow()
        return arm


class ArmEvidence(msgspec.Struct):
    """Since the experiment's start: error indicators and log latencies of one arm,
    and the always-valid p-values of its comparison with the control."""

    errors: Moments = msgspec.field(default_factory=Moments)
    log_latency: Moments = msgspec.field(default_factory=Moments)
    p_error: float = 1.0
    p_latency: float = 1.0


class ShareWindow(msgspec.Struct):
    """Each arm's share of an experiment's impressions in the window from `start`."""

    start: int
    shares: dict[str, float]


class ExperimentState(msgspec.Struct):
    """The experiment operator's checkpoint (state format 2, `operators.state`)."""

    #: open windows by start, then experiment
    windows: dict[int, dict[str, ExperimentWindow]] = {}
    #: experiment -> arm -> its evidence since the start
    evidence: dict[str, dict[str, ArmEvidence]] = {}
    #: experiment -> its arms' shares of the windows of the last ramp period, by start
    shares: dict[str, list[ShareWindow]] = {}


def _moments_from_format_1(m: list[Any]) -> dict[str, Any]:
    return {"n": m[0], "s1": m[1], "s2": m[2]}


def experiment_state_from_format_1(old: dict[str, Any]) -> dict[str, Any]:
    """State format 1 (`"v": 1`: windows as [start, experiment, {arm: [requests,
    errors, latencies, impressions]}], evidence per arm as [[n, s1, s2] of errors, of
    log latency, p_error, p_latency], shares as [start, {arm: share}]) as the plain
    data of `ExperimentState`."""
    if old.get("v") != 1:
        raise StateFormatError(
            f"experiment: a format-1 checkpoint of version {old.get('v')!r}, not 1"
        )
    windows: dict[int, dict[str, Any]] = {}
    for start, experiment, arms in old["windows"]:
        windows.setdefault(start, {})[experiment] = {
            "arms": {
                v: {"requests": r, "errors": e, "latencies": lat, "impressions": i}
                for v, (r, e, lat, i) in arms.items()
            }
        }
    evidence = {
        experiment: {
            v: {
                "errors": _moments_from_format_1(errors),
                "log_latency": _moments_from_format_1(log_latency),
                "p_error": p_error,
                "p_latency": p_latency,
            }
            for v, (errors, log_latency, p_error, p_latency) in arms.items()
        }
        for experiment, arms in old["evidence"].items()
    }
    shares = {
        experiment: [{"start": start, "shares": sh} for start, sh in history]
        for experiment, history in old["shares"].items()
    }
    return {"windows": windows, "evidence": evidence, "shares": shares}


EXPERIMENT_STATE = StateCodec(
    "experiment", ExperimentState, format=2, upgrades={1: experiment_state_from_format_1}
)


# The default alert rules of the experiment monitor's observations (guardrails, ramp),
# collected by operators.registry into streams.config.DEFAULT_RULES.
DEFAULT_RULES: list[dict[str, Any]] = [
    *(
        guardrail_rule(metric, label, fmt, line, unit)
        for metric, label, fmt, unit, line in (
            ("error_rate", "error rate", ".2%", "", "+{red_line:.2%}"),
            ("latency_p95", "p95 latency", ".0f", " ms", "+{red_line:.0%}"),
            ("latency_p99", "p99 latency", ".0f", " ms", "+{red_line:.0%}"),
        )
    ),
    _rule(
        "experiment_ramp",
        "experiment",
        "ramp_change",
        ">",
        {"warning": 0.2},
        "the share of arm {variant} of {entity} moved {change:+.0%} (from {share_before:.0%} "
        "to {share:.0%}) within the ramp period: ramp by at most 20 points a day",
        label="ramp change of an arm's share",
        value_format="{:.0%}",
        cooldown_s=3600,
    ),
]


class ExperimentOperator(Operator):
    sources = ("impressions", "inference-logs")
    keyed_by = "experiment"
    observes = (
        ("experiment", "guardrail_error_rate"),
        ("experiment", "guardrail_latency_p95"),
        ("experiment", "guardrail_latency_p99"),
        ("experiment", "ramp_change"),
    )

    @classmethod
    def default_rules(cls, config: Any = None) -> list[dict[str, Any]]:
        return list(DEFAULT_RULES)

    def __init__(self, config: ExperimentConfig | None = None) -> None:
        super().__init__()
        self.config = config or ExperimentConfig()
        self.windows: TumblingWindows[ExperimentWindow] = TumblingWindows(
            self.config.window_ms, ExperimentWindow
        )
        self.evidence: dict[str, dict[str, ArmEvidence]] = {}
        # experiment -> the arms' shares of the windows of the last ramp period, by start
        self.shares: dict[str, list[ShareWindow]] = {}

    # -- input ---------------------------------------------------------------

    def feed(self, source: str, events: Sequence[Any]) -> None:
        if source == "impressions":
            for imp in events:
                if imp.experiment and imp.variant:
                    self.windows.at(imp.experiment, imp.ts).arm(imp.variant).impressions += 1
            return
        for log in events:
            if not log.experiment or not log.variant:
                continue
            arm = self.windows.at(log.experiment, log.ts).arm(log.variant)
            arm.requests += 1
            arm.errors += log.status == "error"
            arm.latencies.append(log.latency_ms)

    # -- event time ----------------------------------------------------------

    def advance(self, watermark: int) -> None:
        for start, experiment, window in self.windows.pop_ending_until(watermark):
            self._guardrails(start, experiment, window)
            self._ramp(start, experiment, window)

    def control_of(self, arms: Sequence[str]) -> str | None:
        if self.config.control in arms:
            return self.config.control
        return min(arms) if arms else None

    def _guardrails(self, start: int, experiment: str, window: ExperimentWindow) -> None:
        cfg = self.config
        end = start + cfg.window_ms
        served = {v: a for v, a in window.arms.items() if a.requests}
        if not served:
            return
        evidence = self.evidence.setdefault(experiment, {})
        for variant, arm in served.items():
            arm.fold_into(evidence.setdefault(variant, ArmEvidence()))
        control = self.control_of(sorted(set(served) | set(evidence)))
        values: dict[str, dict[str, float]] = {}
        for variant, arm in served.items():
            lat = np.array(arm.latencies, dtype=np.float64)
            p95, p99 = (float(v) for v in np.percentile(lat, [95, 99]))
            values[variant] = {
                "error_rate": arm.errors / arm.requests,
                "latency_p95": p95,
                "latency_p99": p99,
            }
        base = values.get(control) if control else None
        ctrl_evidence = evidence.get(control) if control else None
        for variant, metrics in sorted(values.items()):
            arm = served[variant]
            e = evidence.get(variant)
            judged = variant != control and base is not None and e is not None
            if judged and ctrl_evidence is not None:
                self._update_p(e, ctrl_evidence)
            for metric, value in metrics.items():
                p_value = None
                if judged and e is not None:
                    p_value = e.p_error if metric == "error_rate" else e.p_latency
                self._out.add_row(
                    ExperimentWindowRow(
                        window_start=start,
                        window_end=end,
                        experiment=experiment,
                        variant=variant,
                        metric=metric,
                        value=value,
                        n=arm.requests,
                        control_value=base[metric] if base is not None else None,
                        p_value=p_value,
                    ),
                )
                if judged and base is not None and p_value is not None:
                    self._judge(
                        GuardrailCheck(
                            experiment,
                            variant,
                            control,
                            metric,
                            start,
                            end,
                            value,
                            base[metric],
                            p_value,
                            arm.requests,
                            served[control].requests,
                        )
                    )

    def _update_p(self, e: ArmEvidence, control: ArmEvidence) -> None:
        """Fold the evidence so far into the arm's always-valid p-values (one look
        per window: p_n = min(p_{n-1}, 1/Lambda_n) is valid at every look)."""
        cfg = self.config
        err = difference(e.errors, control.errors)
        if err is not None and err[0] > 0:  # only a worse treatment counts against it
            e.p_error = always_valid_p(e.p_error, err[0], err[1], cfg.error_tau**2)
        lat = difference(e.log_latency, control.log_latency)
        if lat is not None and lat[0] > 0:
            e.p_latency = always_valid_p(e.p_latency, lat[0], lat[1], cfg.latency_tau**2)

    def _judge(self, c: GuardrailCheck) -> None:
        cfg = self.config
        if c.metric == "error_rate":
            excess = c.value - c.control_value
            beyond = excess > cfg.error_rate_red_line
            red_line = cfg.error_rate_red_line
        else:
            if c.n < cfg.min_requests or c.n_control < cfg.min_requests or c.control_value <= 0:
                return
            excess = c.value / c.control_value - 1.0
            beyond = excess > cfg.latency_red_line
            red_line = cfg.latency_red_line
        breached = beyond and c.p_value < cfg.alpha
        counts = ("requests", "control_requests")
        self._out.observations.append(
            c.observation(breached, cfg.alpha, ("excess", excess), red_line, counts)
        )

    def _ramp(self, start: int, experiment: str, window: ExperimentWindow) -> None:
        cfg = self.config
        counts = {v: a.impressions for v, a in window.arms.items() if a.impressions}
        total = sum(counts.values())
        if total < cfg.ramp_min_total or len(counts) < 2:
            return
        end = start + cfg.window_ms
        shares = {v: c / total for v, c in sorted(counts.items())}
        for variant, share in shares.items():
            self._out.add_row(
                ExperimentWindowRow(
                    window_start=start,
                    window_end=end,
                    experiment=experiment,
                    variant=variant,
                    metric="impression_share",
                    value=share,
                    n=counts[variant],
                    control_value=None,
                    p_value=None,
                ),
            )
        history = self.shares.setdefault(experiment, [])
        history[:] = [h for h in history if start - cfg.ramp_period_ms < h.start < start]
        change, worst = 0.0, None
        # arms in a fixed order, treatment arms before the control: with two arms both
        # move by the same amount, and the alert names the same arm (the one ramped)
        # in every process (a set's order depends on the hash seed)
        control = self.control_of(sorted(shares))
        for h in history:
            then, old = h.start, h.shares
            for variant in sorted(set(old) | set(shares), key=lambda v: (v == control, v)):
                delta = shares.get(variant, 0.0) - old.get(variant, 0.0)
                if abs(delta) > abs(change):
                    change, worst = delta, (variant, then, old.get(variant, 0.0))
        history.append(ShareWindow(start, shares))
        history.sort(key=lambda h: h.start)
        if worst is None:
            return
        variant, then, before = worst
        self._out.observations.append(
            Observation(
                "experiment",
                experiment,
                "ramp_change",
                abs(change),
                ts=end,
                n=total,
                window_start=start,
                window_end=end,
                details={
                    "variant": variant,
                    "share": shares.get(variant, 0.0),
                    "share_before": before,
                    "before_window_start": then,
                    "change": change,
                    "period_ms": cfg.ramp_period_ms,
                    "max_change": cfg.ramp_max_change,
                },
            )
        )

    def late_window(self, source: str, event: Any) -> int:
        return window_start(event.ts, self.config.window_ms)

    # -- checkpoints ---------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return EXPERIMENT_STATE.dump(
            ExperimentState(self.windows.state(), self.evidence, self.shares)
        )

    def restore(self, snapshot: dict[str, Any]) -> None:
        state = EXPERIMENT_STATE.load(snapshot)
        self.windows.load(state.windows)
        self.evidence, self.shares = state.evidence, state.shares


__all__ = ["DEFAULT_RULES", "EXPERIMENT_TABLE", "ExperimentConfig", "ExperimentOperator"]
