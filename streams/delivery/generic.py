"""Generic JSON webhook: the alert event itself, as on the `alerts` topic."""

from __future__ import annotations

from streams.delivery.text import Alert


def body(alert: Alert, link: str | None) -> Alert:
    """The alert event unchanged (plus the dashboard link under `links`, when known).

    >>> body({"alert_id": "a1"}, None)
    {'alert_id': 'a1'}
    """
    return {**alert, "links": {"dashboard": link}} if link else dict(alert)
