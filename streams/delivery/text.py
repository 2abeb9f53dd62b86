"""The human-readable parts of an alert, shared by every chat and e-mail format."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

Alert = dict[str, Any]  # an alert event as decoded JSON (schemas.events.Alert fields)

MARK = {"critical": "🔴", "warning": "🟠", "info": "🔵"}


def when(ms: int | None) -> str:
    """Epoch milliseconds as UTC text.

    >>> when(1764403200000)
    '2025-11-29 08:00:00 UTC'
    """
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def title(alert: Alert) -> str:
    """One line: status, severity, rule and entity.

    >>> title({"status": "firing", "severity": "critical", "rule": "ctr_drop", "entity": "c1"})
    '[FIRING critical] ctr_drop on c1'
    """
    status = "RESOLVED" if alert["status"] == "resolved" else "FIRING"
    return f"[{status} {alert['severity']}] {alert['rule']} on {alert['entity']}"


def causes(alert: Alert) -> list[str]:
    """`details.possible_causes` (contract v2) as one line each, where present."""
    out = []
    for cause in (alert.get("details") or {}).get("possible_causes") or []:
        if isinstance(cause, dict):
            kind, entity = cause.get("kind", "?"), cause.get("entity", "?")
            out.append(f"{kind} on {entity}: {cause.get('message', '')}".strip())
        else:
            out.append(str(cause))
    return out


def facts(alert: Alert) -> list[tuple[str, str]]:
    """(name, value) pairs shown under the message."""
    window = "-"
    if alert.get("window_start") is not None:
        window = f"{when(alert['window_start'])} - {when(alert.get('window_end'))}"
    return [
        ("kind", str(alert["kind"])),
        ("metric", str(alert.get("metric", ""))),
        ("value", f"{alert.get('value', float('nan')):.6g}"),
        ("threshold", f"{alert.get('threshold', float('nan')):.6g}"),
        ("window", window),
        ("time", when(alert.get("ts"))),
        ("alert_id", str(alert["alert_id"])),
    ]


def markdown(alert: Alert, link: str | None, bold: str = "**") -> str:
    """A Markdown body (DingTalk, WeCom and Slack's mrkdwn differ only in bold)."""
    lines = [f"{bold}{title(alert)}{bold}", "", str(alert.get("message", ""))]
    lines.append("")
    lines += [f"- {name}: {value}" for name, value in facts(alert)]
    found = causes(alert)
    if found:
        lines += ["", f"{bold}possible causes{bold}"] + [f"- {c}" for c in found]
    if link:
        lines += ["", f"[dashboard]({link})"]
    return "\n".join(lines)


def plain(alert: Alert, link: str | None) -> str:
    """Plain text (e-mail, Feishu text, logs)."""
    lines = [title(alert), "", str(alert.get("message", "")), ""]
    lines += [f"{name}: {value}" for name, value in facts(alert)]
    found = causes(alert)
    if found:
        lines += ["", "possible causes:"] + [f"  - {c}" for c in found]
    if link:
        lines += ["", f"dashboard: {link}"]
    return "\n".join(lines)
