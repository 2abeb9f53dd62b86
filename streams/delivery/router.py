"""Which receivers an alert goes to: every route whose conditions all hold adds its
receivers (a union, so critical can go to the model owner and operations at once)."""

from __future__ import annotations

from fnmatch import fnmatchcase

from streams.config import RouteSettings
from streams.delivery.text import Alert


def matches(route: RouteSettings, alert: Alert) -> bool:
    """>>> r = RouteSettings(receivers=["x"], severity=["critical"], entity="model-*")
    >>> matches(r, {"severity": "critical", "kind": "drift", "entity": "model-a/f1",
    ...   "rule": "drift_psi", "status": "firing"})
    True
    >>> matches(r, {"severity": "warning", "kind": "drift", "entity": "model-a",
    ...   "rule": "drift_psi", "status": "firing"})
    False
    """
    return (
        (not route.severity or alert["severity"] in route.severity)
        and (not route.kind or alert["kind"] in route.kind)
        and (not route.status or alert["status"] in route.status)
        and fnmatchcase(str(alert["entity"]), route.entity)
        and fnmatchcase(str(alert["rule"]), route.rule)
    )


def receivers(routes: list[RouteSettings], alert: Alert) -> list[str]:
    """Receiver names for an alert, in configuration order, each once."""
    out: dict[str, None] = {}
    for route in routes:
        if matches(route, alert):
            out.update(dict.fromkeys(route.receivers))
    return list(out)
