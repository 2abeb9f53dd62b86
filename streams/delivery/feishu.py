"""Feishu/Lark custom bot: `{"msg_type": "text", "content": {"text": ...}}`; the bot
answers `{"code": 0, "msg": "success"}`, any other code is a failure."""

from __future__ import annotations

from typing import Any

from streams.delivery.http import check_errcode
from streams.delivery.text import Alert, plain

check = check_errcode("code")


def body(alert: Alert, link: str | None) -> dict[str, Any]:
    """Example:

    >>> body({"status": "firing", "severity": "info", "rule": "r", "entity": "e",
    ...   "kind": "ctr", "alert_id": "a", "message": "m", "value": 1.0, "threshold": 2.0},
    ...   None)["msg_type"]
    'text'
    """
    return {"msg_type": "text", "content": {"text": plain(alert, link)}}
