"""Retraining requests: configured conditions per model, held for a while (pure logic).

A policy names models (a glob, `*` for all) and conditions on the metrics of
their alerts, each held for `for_s` seconds of event time:

    RetrainPolicy("*", (RetrainCondition("psi", ">=", 0.2, for_s=300),
                        RetrainCondition("error_rate", ">", 0.02, for_s=120),
                        RetrainCondition("accuracy_drop", ">", 0.1, for_s=600)),
                  interval_s=86_400)

A condition holds on a model from the start of the evidence window of a
firing alert of that model (`drift`, `quality`, `service` or `change`; the
entity's first segment is the model) whose metric is the condition's and
whose value is past the condition's threshold, until that alert resolves. A
condition is met once it has held `for_s`; its request's time is that moment
(`since + for_s`), or the end of the model's previous request's interval if
that is later: at most one request per model per `interval_s`. Any metric an
alert carries plugs in by name (the quality monitor's `accuracy` included).

`request_id` is a hash of the model and the request's time, both derived
from alert evidence only, so a replay gives the same id.

>>> p = RetrainPlanner([RetrainPolicy("*", (RetrainCondition("psi", ">=", 0.2, 60),), 3600)])
>>> from schemas.events import Alert
>>> a = Alert(alert_id="a1", ts=0, kind="drift", rule="drift_psi", severity="critical",
...           status="firing", entity="m/user_segment", metric="psi", value=0.31,
...           threshold=0.2, window_start=0, window_end=300_000, message="PSI is 0.31.")
>>> p.observe(a, local=True)
[]
>>> p.advance(30_000)
[]
>>> [(r.model_id, r.ts, r.evidence[0]["held_s"]) for r in p.advance(60_000)]
[('m', 60000, 60.0)]
>>> p.advance(120_000)  # within the interval
[]
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from operators.causes import MODEL_KINDS
from operators.rules import COMPARISONS
from schemas.events import Alert, RetrainRequest


@dataclass(frozen=True)
class RetrainCondition:
    metric: str  # an alert metric: psi, error_rate, latency_p99, accuracy, ...
    op: str
    threshold: float
    for_s: float = 0.0

    def __post_init__(self) -> None:
        if self.op not in COMPARISONS:
            raise ValueError(
                f"retrain condition on {self.metric}: op must be one of {sorted(COMPARISONS)}"
            )
        if self.for_s < 0:
            raise ValueError(f"retrain condition on {self.metric}: for_s must be >= 0")

    def holds(self, value: float) -> bool:
        return COMPARISONS[self.op](value, self.threshold)


@dataclass(frozen=True)
class RetrainPolicy:
    models: str  # glob over model ids
    conditions: tuple[RetrainCondition, ...]
    interval_s: float = 86_400.0


def request_id(model_id: str, ts: int) -> str:
    return hashlib.blake2b(f"retrain|{model_id}|{ts}".encode(), digest_size=16).hexdigest()


@dataclass(slots=True)
class _Held:
    alert_id: str
    metric: str
    value: float
    since: int
    seen: int  # the alert's time: when the evidence was known
    message: str
    entity: str
    version: str


class RetrainPlanner:
    """Tracks the firing alerts of models and emits requests when a condition has held."""

    def __init__(self, policies: Sequence[RetrainPolicy], max_models: int = 100_000) -> None:
        self.policies = list(policies)
        self.max_models = max_models
        # model -> (rule, entity) -> what holds
        self.held: dict[str, dict[tuple[str, str], _Held]] = {}
        self.local: set[str] = set()  # models whose alerts this worker raised
        self.last: dict[str, int] = {}  # model -> time of its latest request

    def policy(self, model_id: str) -> RetrainPolicy | None:
        for p in self.policies:
            if fnmatch.fnmatchcase(model_id, p.models):
                return p
        return None

    def observe(self, alert: Alert, local: bool) -> list[RetrainRequest]:
        """Take a model's alert in. Returns the requests its model had due before the
        alert's time: a resolution ends a condition, so what held until then is
        judged first (alerts come faster than any timer: event-time order decides)."""
        if alert.kind not in MODEL_KINDS or (
            alert.kind == "change" and alert.metric.startswith("ctr")
        ):
            return []
        model = alert.entity.partition("/")[0]
        if self.policy(model) is None:
            return []
        if local:
            self.local.add(model)
        due = self._due(model, alert.ts)
        key = (alert.rule, alert.entity)
        if alert.status == "resolved":
            self.held.get(model, {}).pop(key, None)
            return due
        version = str(alert.details.get("model_version") or "")
        if not version and alert.kind in ("service", "quality"):
            # their entities are model/version (drift's is model/feature)
            version = alert.entity.partition("/")[2]
        since = alert.window_start if alert.window_start is not None else alert.ts
        if model not in self.held and len(self.held) >= self.max_models:
            return due  # bounded: a model beyond the bound is not planned for
        self.held.setdefault(model, {})[key] = _Held(
            alert.alert_id,
            alert.metric,
            float(alert.value),
            since,
            alert.ts,
            alert.message,
            alert.entity,
            version,
        )
        return due

    def advance(self, now_ms: int) -> list[RetrainRequest]:
        """Requests due at event time `now_ms`, for models whose alerts were local."""
        out: list[RetrainRequest] = []
        for model in list(self.held):
            out.extend(self._due(model, now_ms))
        for model in [m for m, h in self.held.items() if not h]:
            del self.held[model]
        return out

    def _due(self, model: str, now_ms: int) -> list[RetrainRequest]:
        held = self.held.get(model)
        policy = self.policy(model)
        if policy is None or model not in self.local or not held:
            return []
        met: list[tuple[int, RetrainCondition, _Held]] = []
        for condition in policy.conditions:
            for h in held.values():
                if h.metric == condition.metric and condition.holds(h.value):
                    # not before the evidence was known (the alert's own time)
                    at = max(h.since + round(condition.for_s * 1000), h.seen)
                    if at <= now_ms:
                        met.append((at, condition, h))
        if not met:
            return []
        ts = min(at for at, _, _ in met)
        last = self.last.get(model)
        if last is not None:
            ts = max(ts, last + round(policy.interval_s * 1000))
            if ts > now_ms:
                return []
        self.last[model] = ts
        met = [m for m in met if m[0] <= ts]  # the conditions met by the request's time
        return [
            RetrainRequest(
                request_id=request_id(model, ts),
                ts=ts,
                model_id=model,
                model_version=next((h.version for _, _, h in met if h.version), ""),
                reasons=[{"alert_id": h.alert_id, "message": h.message} for _, _, h in met],
                evidence=[_evidence(c, h, ts) for _, c, h in met],
            )
        ]


def _evidence(c: RetrainCondition, h: _Held, ts: int) -> dict[str, Any]:
    return {
        "metric": c.metric,
        "entity": h.entity,
        "value": h.value,
        "op": c.op,
        "threshold": c.threshold,
        "for_s": c.for_s,
        "held_s": (ts - h.since) / 1000,
        "alert_id": h.alert_id,
    }
