"""Funnel guardrails per experiment arm: CTR, CVR and revenue per impression.

Reads impressions, clicks and conversions that carry an `experiment`, re-keyed
by it (`keyed_by = "experiment"`, streams/runtime/repartition.py), so one task sees
each experiment whole. Impressions carry their arm (`variant`); clicks and
conversions carry only the experiment (a project extension of the contract's
events, which lets extra fields in) and get their arm from the join, which is
the CTR monitor's own (operators/ctr.py, subclassed here): a click counts for
its impression within `attribution_ms`, once per impression; a conversion for
its click within `conversion_ms`, once per click; the revenue of a converted
impression is the value of its first conversion. Windows are keyed by
(experiment, arm) instead of (campaign, variant), and judged when their
conversions are final (window end + attribution_ms + conversion_ms), in
window order: any arrival order within the lateness gives the same results.

Per arm and window, with I impressions, K clicked impressions, C converted
clicks and revenue values r_i (0 for an impression without conversion):

- `ctr` = K / I, `cvr` = C / K, `revenue_per_impression` = sum(r) / I.

Each treatment arm is compared with the control (`control`, default
"control", else the first arm by name) with the always-valid mixture SPRT of
operators/msprt.py (Johari, Pekelis & Walsh 2015, eq. 11; Johari et al.
2017), on the moments accumulated since the experiment's start:

- CTR: Bernoulli indicators per impression (n = I, sum = sum of squares = K),
  the binomial case of the normal-mixture test, mixing scale `ctr_tau`;
- CVR: Bernoulli indicators per click (n = K, sum = sum of squares = C),
  `cvr_tau`;
- revenue per impression: per impression the revenue r_i (n = I, sum(r),
  sum(r^2)), the normal case, `revenue_tau` (in the currency's units).

Only a treatment worse than the control (Delta < 0) lowers its p-value. A
guardrail is breached when, in a window, the treatment is below the control by
more than its red line (relative: 1 - treatment / control > `ctr_red_line`,
`cvr_red_line`, `revenue_red_line`) *and* the always-valid p-value is below
`alpha`. Observation(kind="experiment", entity="experiment/variant",
metric="guardrail_<metric>", value 1.0 when breached else 0.0); the default
rules `experiment_guardrail_ctr`, `..._cvr`, `..._revenue_per_impression`
make it a critical alert saying to stop or roll back the arm.

Rows to `experiment_windows`: ctr, cvr, revenue_per_impression per arm and
window (n = impressions, clicks, impressions; control_value; p_value).

>>> from operators.msprt import Moments, difference, mixture_lr
>>> t, c = Moments(5000, 400, 400), Moments(5000, 500, 500)  # CVR 8 % against 10 %
>>> delta, var = difference(t, c)  # V = .08 * .92 / 4999 + .1 * .9 / 4999
>>> round(delta, 3), round(1 / mixture_lr(delta, var, 0.05**2), 5)
(-0.02, 0.02111)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from operators.ctr import (
    CtrConfig,
    CtrOperator,
    CtrState,
    CtrWindow,
    WindowKey,
    ctr_state_from_format_1,
)
from operators.guardrail import GuardrailCheck, guardrail_rule
from operators.msprt import Moments, always_valid_p, difference
from operators.state import StateCodec
from schemas.events import Impression
from schemas.rows import ExperimentWindowRow

EXPERIMENT_TABLE = ExperimentWindowRow.__table__.name
METRICS = ("ctr", "cvr", "revenue_per_impression")


@dataclass(frozen=True)
class FunnelConfig:
    window_ms: int = 300_000
    attribution_ms: int = 600_000  # click after impression, as the CTR monitor
    conversion_ms: int = 3_600_000  # conversion after click, as the CTR monitor
    control: str = "control"  # the control arm; absent: the first arm by name
    alpha: float = 0.001  # always-valid p-value a breach needs
    ctr_red_line: float = 0.20  # 1 - treatment / control
    cvr_red_line: float = 0.20
    revenue_red_line: float = 0.20
    ctr_tau: float = 0.01  # mSPRT mixing scale of the CTR difference
    cvr_tau: float = 0.05  # ... of the CVR difference
    revenue_tau: float = 0.1  # ... of the revenue-per-impression difference (currency)
    min_impressions: int = 200  # per arm and window, to judge CTR and revenue
    min_clicks: int = 30  # per arm and window, to judge CVR

    def __post_init__(self) -> None:
        if self.window_ms <= 0 or not 0 < self.alpha < 1:
            raise ValueError("funnel window_ms must be > 0 and alpha in (0, 1)")
        if min(self.ctr_tau, self.cvr_tau, self.revenue_tau) <= 0:
            raise ValueError("funnel ctr_tau, cvr_tau and revenue_tau must be > 0")
        if min(self.ctr_red_line, self.cvr_red_line, self.revenue_red_line) < 0:
            raise ValueError("funnel red lines must be >= 0")

    def ctr_config(self) -> CtrConfig:
        return CtrConfig(
            window_ms=self.window_ms,
            attribution_ms=self.attribution_ms,
            conversions=True,
            conversion_ms=self.conversion_ms,
        )


class ArmFunnel(msgspec.Struct):
    """Since the experiment's start: one arm's moments per metric and p-values."""

    moments: dict[str, Moments] = msgspec.field(
        default_factory=lambda: {m: Moments() for m in METRICS}
    )
    p: dict[str, float] = msgspec.field(default_factory=lambda: dict.fromkeys(METRICS, 1.0))


class FunnelState(CtrState):
    """The funnel operator's checkpoint: the CTR join's state (its windows keyed by
    (experiment, arm)) and, per experiment and arm, the evidence since the start."""

    arms: dict[str, dict[str, ArmFunnel]] = msgspec.field(default_factory=dict)


def funnel_state_from_format_1(old: dict[str, Any]) -> dict[str, Any]:
    """The funnel's state format 1 (the CTR join's, and per arm [[n, s1, s2] per
    metric], [p per metric] in METRICS order) as the plain data of `FunnelState`."""
    state = ctr_state_from_format_1(old)
    state["arms"] = {
        experiment: {
            variant: {
                "moments": {
                    m: {"n": mom[0], "s1": mom[1], "s2": mom[2]}
                    for m, mom in zip(METRICS, moments, strict=True)
                },
                "p": dict(zip(METRICS, ps, strict=True)),
            }
            for variant, (moments, ps) in arms.items()
        }
        for experiment, arms in old.get("arms", {}).items()
    }
    return state


FUNNEL_STATE = StateCodec("funnel", FunnelState, format=2, upgrades={1: funnel_state_from_format_1})


def _counts(window: CtrWindow) -> tuple[int, int, int, float, float]:
    """(impressions, clicks, conversions, revenue, sum of squared revenues)."""
    values = [c.value for c in window.converted.values()]
    return (
        window.imps,
        window.clicks,
        len(values),
        window.revenue(),
        sum(v * v for v in sorted(values)),  # sorted: the same sum in any arrival order
    )


# v2 funnel guardrails: a treatment arm below the control. The default alert rules of
# the funnel monitor's observations, collected by operators.registry into
# streams.config.DEFAULT_RULES.
DEFAULT_RULES: list[dict[str, Any]] = [
    *(
        guardrail_rule(metric, label, fmt, "-{red_line:.0%}")
        for metric, label, fmt in (
            ("ctr", "CTR", ".2%"),
            ("cvr", "CVR", ".1%"),
            ("revenue_per_impression", "revenue per impression", ".4g"),
        )
    ),
]


class FunnelOperator(CtrOperator):
    sources = ("impressions", "clicks", "conversions")
    keyed_by = "experiment"
    # not the CTR monitor's metrics: this one judges arms against their control
    observes = tuple(("experiment", f"guardrail_{metric}") for metric in METRICS)
    keep_all_windows = True  # judge every window, with or without clicks
    state_codec = FUNNEL_STATE

    @classmethod
    def default_rules(cls, config: Any = None) -> list[dict[str, Any]]:
        return list(DEFAULT_RULES)  # not the CTR rules of its base class

    def __init__(self, config: FunnelConfig | None = None) -> None:
        self.funnel = config or FunnelConfig()
        super().__init__(self.funnel.ctr_config())
        self.sources = FunnelOperator.sources
        self.arms: dict[str, dict[str, ArmFunnel]] = {}

    @classmethod
    def sources_for(cls, config: Any) -> tuple[str, ...]:
        return cls.sources

    def feed(self, source: str, events: Sequence[Any]) -> None:
        if source == "impressions":
            events = [e for e in events if e.experiment and e.variant]
        super().feed(source, events)

    def _window_key(self, imp: Impression) -> WindowKey:
        return imp.experiment or "", imp.variant or ""

    # the join's rows and CTR judgements are the CTR monitor's; this one writes arms
    def _emit_row(
        self, start: int, key: WindowKey, window: CtrWindow, final: bool, version: int | None = None
    ) -> None:
        pass

    def _judge(self, closed: list[tuple[int, WindowKey, CtrWindow]]) -> None:
        pass

    def _conversions_final(self, done: list[tuple[int, WindowKey, CtrWindow]]) -> None:
        by_window: dict[tuple[int, str], dict[str, CtrWindow]] = {}
        for start, key, window in done:
            experiment, variant = key
            if variant and window.imps:  # variant "": orphans' holders
                by_window.setdefault((start, experiment), {})[variant] = window
        for (start, experiment), arms in sorted(by_window.items()):
            self._judge_arms(start, experiment, arms)

    def control_of(self, arms: Sequence[str]) -> str | None:
        if self.funnel.control in arms:
            return self.funnel.control
        return min(arms) if arms else None

    def _judge_arms(self, start: int, experiment: str, arms: dict[str, CtrWindow]) -> None:
        cfg = self.funnel
        end = start + cfg.window_ms
        evidence = self.arms.setdefault(experiment, {})
        values: dict[str, dict[str, float]] = {}
        sizes: dict[str, dict[str, int]] = {}
        for variant, window in arms.items():
            imps, clicks, convs, revenue, revenue2 = _counts(window)
            e = evidence.setdefault(variant, ArmFunnel())
            for metric, (n, s1, s2) in {
                "ctr": (imps, clicks, clicks),  # indicators: x^2 = x
                "cvr": (clicks, convs, convs),
                "revenue_per_impression": (imps, revenue, revenue2),
            }.items():
                m = e.moments[metric]
                m.n += n
                m.s1 += s1
                m.s2 += s2
            values[variant] = {
                "ctr": clicks / imps,
                "cvr": convs / clicks if clicks else 0.0,
                "revenue_per_impression": revenue / imps,
            }
            sizes[variant] = {"ctr": imps, "cvr": clicks, "revenue_per_impression": imps}
        control = self.control_of(sorted(set(arms) | set(evidence)))
        base = values.get(control) if control else None
        ctrl = evidence.get(control) if control else None
        for variant in sorted(values):
            judged = variant != control and base is not None and ctrl is not None
            e = evidence[variant]
            if judged and ctrl is not None:
                self._update_p(e, ctrl)
            for metric in METRICS:
                p_value = e.p[metric] if judged else None
                self._out.add_row(
                    ExperimentWindowRow(
                        window_start=start,
                        window_end=end,
                        experiment=experiment,
                        variant=variant,
                        metric=metric,
                        value=values[variant][metric],
                        n=sizes[variant][metric],
                        control_value=base[metric] if base is not None else None,
                        p_value=p_value,
                    ),
                )
                if judged and base is not None and p_value is not None and control is not None:
                    self._breach(
                        GuardrailCheck(
                            experiment,
                            variant,
                            control,
                            metric,
                            start,
                            end,
                            values[variant][metric],
                            base[metric],
                            p_value,
                            sizes[variant][metric],
                            sizes[control][metric],
                        )
                    )

    def _update_p(self, e: ArmFunnel, control: ArmFunnel) -> None:
        """Fold the evidence so far into the arm's always-valid p-values (one look
        per window: p_n = min(p_{n-1}, 1/Lambda_n) stays valid at every look)."""
        cfg = self.funnel
        taus = {"ctr": cfg.ctr_tau, "cvr": cfg.cvr_tau, "revenue_per_impression": cfg.revenue_tau}
        for metric, tau in taus.items():
            d = difference(e.moments[metric], control.moments[metric])
            if d is not None and d[0] < 0:  # only a worse (lower) treatment counts against it
                e.p[metric] = always_valid_p(e.p[metric], d[0], d[1], tau**2)

    def _breach(self, c: GuardrailCheck) -> None:
        cfg = self.funnel
        least = cfg.min_clicks if c.metric == "cvr" else cfg.min_impressions
        if c.n < least or c.n_control < least or c.control_value <= 0:
            return
        red_line = {
            "ctr": cfg.ctr_red_line,
            "cvr": cfg.cvr_red_line,
            "revenue_per_impression": cfg.revenue_red_line,
        }[c.metric]
        shortfall = 1.0 - c.value / c.control_value
        breached = shortfall > red_line and c.p_value < cfg.alpha
        gap = ("shortfall", shortfall)
        self._out.observations.append(
            c.observation(breached, cfg.alpha, gap, red_line, ("n", "control_n"))
        )

    # -- checkpoints ---------------------------------------------------------

    def _state(self) -> FunnelState:
        state = super()._state()
        assert isinstance(state, FunnelState)
        state.arms = self.arms
        return state

    def _load(self, state: CtrState) -> None:
        super()._load(state)
        assert isinstance(state, FunnelState)
        self.arms = state.arms


__all__ = ["DEFAULT_RULES", "EXPERIMENT_TABLE", "FunnelConfig", "FunnelOperator"]
