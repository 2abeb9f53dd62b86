"""The one alert rule engine: observations in, alert events out.

Monitors only measure (`Observation`); every alert is made here, from rules
declared in configuration:

    Rule(name="ctr_drop", kind="ctr", metric="ctr_drop", op=">",
         thresholds={"warning": 0.3, "critical": 0.5}, cooldown_s=600, min_samples=500,
         max_p_value=0.01)

Per (rule, entity) the engine keeps an alert episode (`Episode`,
operators/detectors/episode.py: the one episode state machine, which the sensor
and autoencoder monitors run on their readings): the severity it fires at (none
when quiet), and when it last fired. An observation whose condition holds at a
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
has passed since it last fired (no flapping). With `clear_windows` = N > 1
(hysteresis) a firing episode resolves only at the N-th consecutive
observation on which the condition no longer holds; with `clear_by_value`,
on which the value itself is back within the threshold (significant or not).

State (`operators.state`, format 2): per (rule name, entity) its `Episode` and the
event time it last fired (`RulesState`). Format 1 (unversioned, positional: per
"rule name\x1fentity" [severity firing or "", last fired, clear run]) is upgraded.

`alert_id` is a hash of rule, entity, window and status, so a replay raises
the same id with the same content.

A firing alert's sentence is the rule's `message` template. A resolved alert
has its own sentence, composed here for every rule from the rule's `label`
(what the metric is called), `value_format` and comparison, so it never reads
as the firing one:

    error rate of m/v back to 0.48%, under 1%
    CTR of cmp-002 is 0.40%, under 0.5% but no longer significant (p = 0.02; needs < 0.001)

(the second when the value is still past the line but the evidence no longer
is). `resolved_note` adds a clause after it, `resolved_message` replaces it
(for metrics that are flags, such as change detection's).
"""

from __future__ import annotations

import contextlib
import hashlib
import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from operators.base import Observation
from operators.detectors.episode import Episode
from operators.state import StateCodec
from schemas.events import Alert

SEVERITIES = ("info", "warning", "critical")
# Default false-alarm budget of the default rules judged on evidence (service, drift,
# SRM): false alerts per 1,000 entity-days on quiet data (docs/monitors/*.md).
FALSE_ALARM_BUDGET = 1.0
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
    # hysteresis: resolve only after this many consecutive clear observations
    clear_windows: int = 1
    # True (default): a firing episode clears only on values back within the threshold
    # (the p-value gates firing, not resolving: a small window of an ongoing incident
    # that is not significant on its own does not end it). False: a crossing without
    # the evidence to fire also counts as clear.
    clear_by_value: bool = True
    message: str = DEFAULT_MESSAGE  # str.format with metric, entity, value, ... and details
    details: dict[str, Any] = field(default_factory=dict)
    # the resolved sentence (see the module docstring): the metric's name in it
    # (default: the metric with spaces), how value and threshold are written,
    # an optional clause after it, or a whole template of its own
    label: str | None = None
    value_format: str = "{:.4g}"
    resolved_note: str | None = None
    resolved_message: str | None = None

    def __post_init__(self) -> None:
        if self.op not in COMPARISONS:
            raise ValueError(f"rule {self.name}: op must be one of {sorted(COMPARISONS)}")
        unknown = set(self.thresholds) - set(SEVERITIES)
        if unknown or not self.thresholds:
            raise ValueError(f"rule {self.name}: thresholds need severities from {SEVERITIES}")
        if self.clear_windows < 1:
            raise ValueError(f"rule {self.name}: clear_windows must be >= 1")

    def level(self, value: float) -> tuple[str, float] | None:
        """The highest severity whose threshold `value` crosses, with that threshold."""
        compare = COMPARISONS[self.op]
        crossed = None
        for severity in SEVERITIES:
            threshold = self.thresholds.get(severity)
            if threshold is not None and compare(value, threshold):
                crossed = (severity, threshold)
        return crossed


def rule_spec(
    name: str,
    kind: str,
    metric: str,
    op: str,
    thresholds: dict[str, float],
    message: str,
    **kw: Any,
) -> dict[str, Any]:
    """A default rule as data: the fields of a `[[rules]]` table of the configuration
    (`streams.config.RuleSettings`, which checks them and makes the `Rule`). A monitor
    declares its defaults this way next to the code that emits the metric
    (`Operator.default_rules`); the registry collects them (`operators.registry`).

    >>> rule = rule_spec("sensor_zscore", "sensor", "anomaly_zscore", ">",
    ...                  {"warning": 4.5}, "{entity}: z-score {value:.1f}", cooldown_s=300)
    >>> rule["metric"], rule["thresholds"], rule["cooldown_s"]
    ('anomaly_zscore', {'warning': 4.5}, 300)
    """
    return {
        "name": name,
        "kind": kind,
        "metric": metric,
        "op": op,
        "thresholds": thresholds,
        "message": message,
        **kw,
    }


def alert_id(
    rule: str, entity: str, window_start: int | None, window_end: int | None, status: str, ts: int
) -> str:
    # Windowless evidence (a single reading) is identified by its own time.
    where = f"{window_start}-{window_end}" if window_start is not None else f"@{ts}"
    return hashlib.blake2b(f"{rule}|{entity}|{where}|{status}".encode(), digest_size=16).hexdigest()


SIDE = {  # where a value stands against the line, worded for each comparison
    ">": ("over", "no longer above", "under"),
    ">=": ("over", "at", "under"),
    "<": ("over", "no longer below", "under"),
    "<=": ("over", "at", "under"),
}


def _compact(text: str) -> str:
    """A threshold without trailing zeros: 1.00% -> 1%, 0.100 -> 0.1, 3.0x -> 3x."""
    return re.sub(r"\.(\d*?)0+(?!\d)", lambda m: f".{m.group(1)}" if m.group(1) else "", text)


def resolved_sentence(rule: Rule, fields: dict[str, Any], p_value: float | None) -> str:
    """The sentence of a resolved alert (without the window), from the rule alone.

    `fields` are the template fields of the observation that resolved it
    (value, entity, details); `fields["line"]` is the least severe threshold,
    the line the value is now back behind (or still past, without evidence).

    >>> rule = Rule("error_rate", "service", "error_rate", ">", {"critical": 0.01},
    ...             label="error rate", value_format="{:.2%}")
    >>> resolved_sentence(rule, {"entity": "m/v", "value": 0.0048, "line": 0.01}, None)
    'error rate of m/v back to 0.48%, under 1%'
    >>> resolved_sentence(rule, {"entity": "m/v", "value": 0.013, "line": 0.01}, 0.2)
    'error rate of m/v is 1.30%, over 1% but no longer significant (p = 0.2)'
    """
    value, line = float(fields["value"]), float(fields["line"])
    over, at, under = SIDE[rule.op]
    side = over if value > line else under if value < line else at
    if rule.resolved_message:
        try:
            return rule.resolved_message.format(**fields, side=side)
        except (KeyError, ValueError, IndexError, TypeError):
            pass  # a detail this observation lacks: the composed sentence below
    label = rule.label or rule.metric.replace("_", " ")
    shown, line_shown = rule.value_format.format(value), _compact(rule.value_format.format(line))
    if COMPARISONS[rule.op](value, line):  # past the line, but not distinguishable from chance
        needs = f"; needs < {rule.max_p_value:g}" if rule.max_p_value is not None else ""
        p = f"p = {p_value:.2g}{needs}" if p_value is not None else "no p-value"
        where = f"is {shown}, {side} {line_shown} but no longer significant ({p})"
    else:
        where = f"back to {shown}, {side} {line_shown}"
    text = f"{label} of {fields['entity']} {where}"
    if rule.resolved_note:
        with contextlib.suppress(KeyError, ValueError, IndexError, TypeError):
            text += f" ({rule.resolved_note.format(**fields)})"
    return text


def _fmt_time(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S")


class RulesState(msgspec.Struct):
    """The rule engine's checkpointed state, per (rule name, entity)."""

    # its alert episode (severity firing as `level`, the clear run as `normal_run`)
    episodes: dict[tuple[str, str], Episode] = {}
    last_fired: dict[tuple[str, str], int] = {}  # event time it last fired


def _from_format_1(plain: dict[str, Any]) -> dict[str, Any]:
    """Format 1: {"rule\x1fentity": [severity firing or "", last fired, clear run]}
    (before hysteresis without the clear run), read as its `restore` read it: an
    episode open at that severity with that clear run, its quiet set by the rule."""
    episodes: dict[tuple[str, ...], dict[str, Any]] = {}
    last_fired: dict[tuple[str, ...], int] = {}
    for joined, value in plain.items():
        key = tuple(joined.split("\x1f", 1))
        firing, fired, clear = [*value, 0][:3]
        level = SEVERITIES.index(firing) + 1 if firing else 0
        # quiet is the rule's (set at restore); since_end 1, length 0 as format 1 did
        episode = {"active": bool(firing), "level": level, "since_end": 1, "length": 0}
        episode["normal_run"] = clear if firing else 0
        episodes[key] = episode
        if fired is not None:
            last_fired[key] = fired
    return {"episodes": episodes, "last_fired": last_fired}


CODEC = StateCodec("rule engine", RulesState, format=2, upgrades={1: _from_format_1})


class RuleEngine:
    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules: dict[tuple[str, str], list[Rule]] = {}
        self.by_name: dict[str, Rule] = {}
        for rule in rules:
            self.rules.setdefault((rule.kind, rule.metric), []).append(rule)
            self.by_name[rule.name] = rule
        # (rule name, entity) -> its alert episode (the one episode state machine,
        # operators.detectors.episode: hysteresis and severity), from its first alert on
        self.episodes: dict[tuple[str, str], Episode] = {}
        self.last_fired: dict[tuple[str, str], int] = {}  # ... and the event time it last fired

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
        key = (rule.name, obs.entity)
        crossed = rule.level(obs.value)
        if (
            crossed is not None
            and rule.max_p_value is not None
            and (obs.p_value is None or obs.p_value > rule.max_p_value)
        ):
            crossed = None  # not distinguishable from chance: counts as not crossed
        episode = self.episodes.get(key)
        if crossed is not None:
            severity, threshold = crossed
            if episode is None:
                episode = self.episodes[key] = Episode(quiet=rule.clear_windows)
            last_fired = self.last_fired.get(key)
            # cooling down after the last alert of this rule and entity: no new episode
            cooling = last_fired is not None and obs.ts - last_fired < rule.cooldown_s * 1000
            # still true at the episode's severity or below: already raised (the clear
            # run restarts); a higher one escalates
            if episode.update(SEVERITIES.index(severity) + 1, may_start=not cooling) is None:
                return None
            self.last_fired[key] = obs.ts
            return self._alert(rule, obs, "firing", severity, threshold)
        if episode is None or not episode.active:
            return None
        firing = SEVERITIES[episode.level - 1]
        # with clear_by_value, a value still beyond the threshold (only not significant
        # alone) is not clear either; resolved after `clear_windows` clear observations
        hold = rule.clear_by_value and rule.level(obs.value) is not None
        if episode.update(0, hold=hold) != "end":
            return None
        return self._alert(rule, obs, "resolved", firing, rule.thresholds[firing])

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
        if status == "resolved":
            # the least severe line: resolved means back behind every threshold
            line = rule.thresholds[min(rule.thresholds, key=SEVERITIES.index)]
            text = resolved_sentence(rule, {**fields, "line": line}, obs.p_value)
        else:
            try:
                text = rule.message.format(**fields)
            except (KeyError, ValueError, IndexError, TypeError):
                # a template naming a detail this observation lacks: say it plainly
                text = DEFAULT_MESSAGE.format(**fields)
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
        return CODEC.dump(RulesState(episodes=self.episodes, last_fired=self.last_fired))

    def restore(self, snapshot: dict[str, Any]) -> None:
        state = CODEC.load(snapshot)
        for (name, _), episode in state.episodes.items():
            # hysteresis is the rule's setting, not state: the configured one applies
            rule = self.by_name.get(name)
            episode.quiet = rule.clear_windows if rule is not None else 1
        self.episodes, self.last_fired = state.episodes, state.last_fired
