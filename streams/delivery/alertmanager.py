"""Prometheus Alertmanager, API v2: `POST /api/v2/alerts` with a list of
postable alerts `{labels, annotations, startsAt, endsAt, generatorURL}`
(RFC 3339 times; https://prometheus.io/docs/alerting/latest/clients/).

Alertmanager identifies an alert by its label set (its fingerprint), so the
labels hold only what names the condition: `alertname` (the rule), `kind`,
`severity`, `entity` and the monitor's keys found in the details (campaign,
model, feature, sensor, ...), never a value or a window. The same condition
therefore has the same fingerprint in every run of every worker. The figures
go to annotations, which Alertmanager replaces with the latest received.

Clients must re-send firing alerts (the docs: every 30 s to 3 min); each post
carries `endsAt` = now + a TTL, so Alertmanager resolves an alert by itself
when its worker is gone, and a resolve posts `endsAt` = the resolution time.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any

from streams.delivery.text import Alert, causes

# detail keys that identify what an alert is about (the monitors' keys)
KEY_LABELS = (
    "campaign_id",
    "variant",
    "experiment",
    "model_id",
    "model_version",
    "feature",
    "sensor_id",
    "site",
)
LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def rfc3339(ms: float) -> str:
    """Example:

    >>> rfc3339(1764403200123)
    '2025-11-29T08:00:00.123Z'
    """
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def labels(alert: Alert) -> dict[str, str]:
    """The identifying label set.

    >>> labels({"rule": "drift_psi", "kind": "drift", "severity": "critical",
    ...   "entity": "m1/age", "details": {"model_id": "m1", "feature": "age", "psi": 0.3}})
    ... # doctest: +NORMALIZE_WHITESPACE
    {'alertname': 'drift_psi', 'kind': 'drift', 'severity': 'critical', 'entity': 'm1/age',
     'model_id': 'm1', 'feature': 'age', 'source': 'streamwatch'}
    """
    out = {
        "alertname": str(alert["rule"]),
        "kind": str(alert["kind"]),
        "severity": str(alert["severity"]),
        "entity": str(alert["entity"]),
    }
    details = alert.get("details") or {}
    for key in KEY_LABELS:
        value = details.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            out[key] = str(value)
    out["source"] = "streamwatch"
    return out


def fingerprint(label_set: dict[str, str]) -> str:
    """Our key for a label set (Alertmanager computes its own from the same labels).

    >>> fingerprint({"b": "2", "a": "1"}) == fingerprint({"a": "1", "b": "2"})
    True
    """
    text = "\x1f".join(f"{k}\x1e{v}" for k, v in sorted(label_set.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def annotations(alert: Alert, link: str | None) -> dict[str, str]:
    out = {
        "summary": f"{alert['rule']} on {alert['entity']}",
        "message": str(alert.get("message", "")),
        "value": f"{alert.get('value', float('nan')):.6g}",
        "threshold": f"{alert.get('threshold', float('nan')):.6g}",
        "metric": str(alert.get("metric", "")),
        "alert_id": str(alert["alert_id"]),
    }
    if alert.get("window_start") is not None:
        out["window"] = f"{rfc3339(alert['window_start'])}/{rfc3339(alert['window_end'])}"
    found = causes(alert)
    if found:
        out["possible_causes"] = "\n".join(found)
    if link:
        out["dashboard"] = link
    return out


def firing(alert: Alert, now_ms: float, ttl_s: float, link: str | None) -> dict[str, Any]:
    """A firing alert as posted (first time and every re-post): endsAt in the future.

    >>> a = {"rule": "r", "kind": "ctr", "severity": "warning", "entity": "c1",
    ...   "alert_id": "x", "ts": 1000, "message": "m", "value": 1.0, "threshold": 2.0}
    >>> p = firing(a, 61_000, 240, None)
    >>> p["startsAt"], p["endsAt"]
    ('1970-01-01T00:00:01.000Z', '1970-01-01T00:05:01.000Z')
    """
    body: dict[str, Any] = {
        "labels": labels(alert),
        "annotations": annotations(alert, link),
        # event time, but never in the future of Alertmanager's clock
        "startsAt": rfc3339(min(alert["ts"], now_ms)),
        "endsAt": rfc3339(now_ms + ttl_s * 1000),
    }
    if link:
        body["generatorURL"] = link
    return body


def resolved(fired: Alert, resolution: Alert, now_ms: float, link: str | None) -> dict[str, Any]:
    """The resolution of a firing alert: its labels, endsAt = the resolution's time.

    >>> f = {"rule": "r", "kind": "ctr", "severity": "critical", "entity": "c1",
    ...   "alert_id": "x", "ts": 1000, "message": "m", "value": 1.0, "threshold": 2.0}
    >>> r = {**f, "alert_id": "y", "ts": 5000, "status": "resolved"}
    >>> p = resolved(f, r, 9000, None)
    >>> p["labels"] == labels(f), p["endsAt"]
    (True, '1970-01-01T00:00:05.000Z')
    """
    body: dict[str, Any] = {
        "labels": labels(fired),
        "annotations": annotations(resolution, link),
        "startsAt": rfc3339(min(fired["ts"], now_ms)),
        "endsAt": rfc3339(max(min(resolution["ts"], now_ms), min(fired["ts"], now_ms))),
    }
    if link:
        body["generatorURL"] = link
    return body


def same_condition(a: Alert, b: Alert) -> bool:
    """A resolution ends the firing alerts of its rule and entity (any severity)."""
    return a["rule"] == b["rule"] and a["entity"] == b["entity"]
