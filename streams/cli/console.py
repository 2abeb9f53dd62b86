"""Alerts printed on a terminal, one line each (the CLI's `alerts` and the demo)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich.console import Console

console = Console(highlight=False)

SEVERITY_STYLE = {"info": "cyan", "warning": "yellow", "critical": "bold red"}


def print_alert(alert: Any, out: Console = console) -> None:
    from streams.delivery.text import causes

    when = datetime.fromtimestamp(alert.ts / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
    style = SEVERITY_STYLE.get(alert.severity, "white")
    mark = "FIRING  " if alert.status == "firing" else "RESOLVED"
    if alert.status == "resolved":
        style = "green"
    out.print(
        f"[{style}]{mark} {alert.severity:<8}[/{style}] {when}  [bold]{alert.kind}"
        f"[/bold]/{alert.rule}  {alert.entity}: {alert.message}"
    )
    for cause in causes({"details": alert.details}):
        out.print(f"    possible cause: {cause}", markup=False)
