"""WeCom (企业微信) group robot: `msgtype: markdown` with `markdown.content`
(at most 4096 bytes, so long texts are cut); answers `{"errcode": 0, ...}`."""

from __future__ import annotations

from typing import Any

from streams.delivery.http import check_errcode
from streams.delivery.text import Alert, markdown

check = check_errcode("errcode")
MAX_BYTES = 4096


def body(alert: Alert, link: str | None) -> dict[str, Any]:
    """Example:

    >>> body({"status": "firing", "severity": "critical", "rule": "r", "entity": "e",
    ...   "kind": "ctr", "alert_id": "a", "message": "x" * 9000, "value": 1.0,
    ...   "threshold": 2.0}, None)["markdown"]["content"].encode().__len__() <= 4096
    True
    """
    content = markdown(alert, link)
    raw = content.encode()
    if len(raw) > MAX_BYTES:
        content = raw[: MAX_BYTES - 3].decode(errors="ignore") + "..."
    return {"msgtype": "markdown", "markdown": {"content": content}}
