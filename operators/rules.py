"""The one alert rule engine: observations in, alert events out.

Monitors only measure (`Observation`); every alert is made here, from rules
declared in configuration:

    Rule(name="ctr_drop", kind="ctr", metric="ctr_drop", op=">",
         thresholds={"warning": 0.3, "critical": 0.5}, cooldown_s=600, min_samples=500,
         max_p_value=0.01)

Per (rule, entity) the engine keeps a state: the severity it fires at (none
when quiet) and when it last fired. An observation whose condition holds at a
higher severity than the state fires (`firing`); one where it no longer holds
resolves (`resolved`) -- with hysteresis: only after `clear_windows`
consecutive observations in which it does not hold (default 1: the first
one), so a metric hovering at the line does not fire and resolve every
window. Back within bounds means the value itself: a window over the line
whose p-value is too weak to fire does not count towards resolving either,
so a small window during an incident does not end its episode. With
`max_p_value`, a crossing only counts when the
operator's p-value says it is unlikely to be chance (small windows are noisy).
A condition that stays true raises nothing new, and a rule that resolved
does not fire again for the same entity until `cooldown_s` of event time
has passed since it last fired (no flapping).

`alert_id` is a hash of rule, entity, window and status, so a replay raises
the same id with the same content.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from operators.base import Observation
from schemas.events import Alert

SEVERITIES = ("info", "warning", "critical")
DEFAULT_MESSAGE = "{metric} of {entity} is {value:.4g} ({op} {threshold:.4g})"
COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str
    metric: str
    op: str
    thresholds: dict[str, float]  # severity -> threshold
    cooldown_s: float = 600.0
    min_samples: int = 0
    max_p_value: float | None = None  # crossed only if the observation is this significant
    # hysteresis: resolve only after this many consecutive observations back within bounds
    clear_windows: int = 1
    message: str = DEFAULT_MESSAGE  # str.format with metric, entity, value, ... and details
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.op not in COMPARISONS:
            raise ValueError(f"rule {self.name}: op must be one of {sorted(COMPARISONS)}")
        unknown = set(self.thresholds) - set(SEVERITIES)
        if unknown or not self.thresholds:
            raise ValueError(f"rule {self.name}: thresholds need severities from {SEVERITIES}")
        if self.clear_windows < 1:
            raise ValueError(f"rule {self.name}: clear_windows must be at least 1")

    def level(self, value: float) -> tuple[str, float] | None:
        """The highest severity whose threshold `value` crosses, with that threshold."""
        compare = COMPARISONS[self.op]
        crossed = None
        for severity in SEVERITIES:
            threshold = self.thresholds.get(severity)
            if threshold is not None and compare(value, threshold):
                crossed = (severity, threshold)
        return crossed


def alert_id(
    rule: str, entity: str, window_start: int | None, window_end: int | None, status: str, ts: int
) -> str:
    # Windowless evidence (a single reading) is identified by its own time.
    where = f"{window_start}-{window_end}" if window_start is not None else f"@{ts}"
    return hashlib.blake2b(f"{rule}|{entity}|{where}|{status}".encode(), digest_size=16).hexdigest()


def _fmt_time(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S")


class RuleEngine:
    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules: dict[tuple[str, str], list[Rule]] = {}
        for rule in rules:
            self.rules.setdefault((rule.kind, rule.metric), []).append(rule)
        # (rule name, entity) -> [severity firing or "", last fired ts,
        #                         consecutive clear observations while firing]
        self.state: dict[str, list[Any]] = {}

    def evaluate(self, observations: Iterable[Observation]) -> list[Alert]:
        alerts: list[Alert] = []
        for obs in observations:
            for rule in self.rules.get((obs.kind, obs.metric), ()):
                alert = self._judge(rule, obs)
                if alert is not None:
                    alerts.append(alert)
        return alerts

    def _judge(self, rule: Rule, obs: Observation) -> Alert | None:
        if obs.n < rule.min_samples:
            return None
        key = f"{rule.name}\x1f{obs.entity}"
        state = self.state.get(key)
        firing, last_fired, clear = state if state else ("", None, 0)
        crossed = out_of_bounds = rule.level(obs.value)
        if (
            crossed is not None
            and rule.max_p_value is not None
            and (obs.p_value is None or obs.p_value > rule.max_p_value)
        ):
            crossed = None  # not distinguishable from chance: counts as not crossed
        if crossed is not None:
            severity, threshold = crossed
            if firing and SEVERITIES.index(severity) <= SEVERITIES.index(firing):
                if clear:
                    self.state[key] = [firing, last_fired, 0]  # back out of bounds
                return None  # still true: already raised
            if (
                not firing
                and last_fired is not None
                and (obs.ts - last_fired < rule.cooldown_s * 1000)
            ):
                return None  # cooling down after the last alert of this rule and entity
            self.state[key] = [severity, obs.ts, 0]
            return self._alert(rule, obs, "firing", severity, threshold)
        if firing:
            if out_of_bounds is not None:
                # over the line without the evidence to fire: not back within bounds
                if clear:
                    self.state[key] = [firing, last_fired, 0]
                return None
            if clear + 1 < rule.clear_windows:
                self.state[key] = [firing, last_fired, clear + 1]
                return None  # within bounds, but not yet for long enough
            self.state[key] = ["", last_fired, 0]
            threshold = rule.thresholds[firing]
            return self._alert(rule, obs, "resolved", firing, threshold)
        return None

    def _alert(
        self, rule: Rule, obs: Observation, status: str, severity: str, threshold: float
    ) -> Alert:
        fields = {
            **obs.details,
            "metric": obs.metric,
            "entity": obs.entity,
            "value": obs.value,
            "threshold": threshold,
            "op": rule.op,
        }
        try:
            text = rule.message.format(**fields)
        except (KeyError, ValueError, IndexError, TypeError):
            # a template naming a detail this observation lacks: say it plainly
            text = DEFAULT_MESSAGE.format(**fields)

        if status == "resolved":
            text = f"Resolved: {text}"
        if obs.window_start is not None:
            text += f" in window {_fmt_time(obs.window_start)}-{_fmt_time(obs.window_end)} UTC"
        return Alert(
            alert_id=alert_id(
                rule.name, obs.entity, obs.window_start, obs.window_end, status, obs.ts
            ),
            ts=obs.ts,
            kind=obs.kind,  # type: ignore[arg-type]
            rule=rule.name,
            severity=severity,  # type: ignore[arg-type]
            status=status,  # type: ignore[arg-type]
            entity=obs.entity,
            metric=obs.metric,
            value=float(obs.value),
            threshold=float(threshold),
            window_start=obs.window_start,
            window_end=obs.window_end,
            message=text + ".",
            details={
                **rule.details,
                **obs.details,
                "n": obs.n,
                **({"p_value": obs.p_value} if obs.p_value is not None else {}),
            },
        )

    def snapshot(self) -> dict[str, Any]:
        return {key: list(value) for key, value in self.state.items()}

    def restore(self, state: dict[str, Any]) -> None:
        # a snapshot from before hysteresis has [severity, last fired]: no clear count yet
        self.state = {key: [*value, 0][:3] for key, value in state.items()}
