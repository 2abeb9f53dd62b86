"""The `log` receiver: one line in the worker's log (seed 004's "info: log only")."""

from __future__ import annotations

import logging

from streams.delivery.text import Alert, title

log = logging.getLogger("streamwatch.delivery.log")


def line(alert: Alert) -> str:
    """Example:

    >>> line({"status": "firing", "severity": "info", "rule": "r", "entity": "e",
    ...   "alert_id": "a", "message": "m"})
    'alert [FIRING info] r on e: m (a)'
    """
    return f"alert {title(alert)}: {alert.get('message', '')} ({alert['alert_id']})"


def send(alert: Alert) -> None:
    log.warning(line(alert))
