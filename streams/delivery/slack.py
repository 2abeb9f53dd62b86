"""Slack incoming webhook: `text` (the fallback shown in notifications) and `blocks`.

Slack's incoming webhooks take `{"text": ..., "blocks": [...]}` and answer
HTTP 200 `ok`; mrkdwn bolds with single asterisks.
"""

from __future__ import annotations

from typing import Any

from streams.delivery.text import MARK, Alert, markdown, title

MAX_SECTION = 3000  # Slack refuses a section text longer than this


def body(alert: Alert, link: str | None) -> dict[str, Any]:
    """Example:

    >>> b = body({"status": "firing", "severity": "info", "rule": "r", "entity": "e",
    ...   "kind": "ctr", "alert_id": "a", "message": "m", "value": 1.0, "threshold": 2.0}, None)
    >>> b["text"], b["blocks"][0]["type"]
    ('🔵 [FIRING info] r on e', 'section')
    """
    return {
        "text": f"{MARK.get(alert['severity'], '')} {title(alert)}".strip(),
        "blocks": [
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": _cut(markdown(alert, None, bold="*"))},
            },
            *([_link_block(link)] if link else []),
        ],
    }


def _link_block(link: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": f"<{link}|dashboard>"}]}


def _cut(text: str) -> str:
    return text if len(text) <= MAX_SECTION else text[: MAX_SECTION - 3] + "..."
