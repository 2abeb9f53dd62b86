"""DingTalk custom robot: `msgtype: markdown` with `title` (the conversation list)
and `text`; the robot answers HTTP 200 with `{"errcode": 0, "errmsg": "ok"}`,
any other errcode is a failure (e.g. 310000 keyword/sign mismatch)."""

from __future__ import annotations

from typing import Any

from streams.delivery.http import check_errcode
from streams.delivery.text import Alert, markdown, title

check = check_errcode("errcode")


def body(alert: Alert, link: str | None) -> dict[str, Any]:
    """Example:

    >>> body({"status": "resolved", "severity": "warning", "rule": "r", "entity": "e",
    ...   "kind": "ctr", "alert_id": "a", "message": "m", "value": 1.0, "threshold": 2.0},
    ...   None)["markdown"]["title"]
    '[RESOLVED warning] r on e'
    """
    return {
        "msgtype": "markdown",
        "markdown": {"title": title(alert), "text": markdown(alert, link)},
    }
