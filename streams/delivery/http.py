"""POST a JSON body; a receiver's own success test on the answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import orjson


class DeliveryError(Exception):
    """A delivery attempt failed; the job stays pending and is retried."""


def check_status(status: int, payload: bytes) -> None:
    """Any 2xx is success (generic JSON, Slack, Alertmanager)."""
    if not 200 <= status < 300:
        raise DeliveryError(f"HTTP {status}: {payload[:200].decode(errors='replace')}")


def check_errcode(field: str) -> Callable[[int, bytes], None]:
    """Robots that answer HTTP 200 with an error code in the body (DingTalk, WeCom:
    `errcode`; Feishu: `code`): anything but 0 is a failure."""

    def check(status: int, payload: bytes) -> None:
        check_status(status, payload)
        try:
            code = orjson.loads(payload).get(field, 0)
        except (orjson.JSONDecodeError, AttributeError):
            raise DeliveryError(f"not a JSON answer: {payload[:200]!r}") from None
        if code not in (0, None):
            raise DeliveryError(f"{field} {code}: {payload[:200].decode(errors='replace')}")

    return check


async def post_json(
    session: aiohttp.ClientSession,
    url: str,
    body: Any,
    timeout_s: float,
    check: Callable[[int, bytes], None] = check_status,
    headers: dict[str, str] | None = None,
) -> None:
    try:
        async with session.post(
            url,
            data=orjson.dumps(body),
            headers={"Content-Type": "application/json; charset=utf-8", **(headers or {})},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            payload = await response.read()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        # the URL holds the token of most webhooks: never in the message
        raise DeliveryError(f"{type(exc).__name__}: {_without_url(exc)}") from None
    check(response.status, payload)


def _without_url(exc: BaseException) -> str:
    text = str(exc)
    return "connection failed" if "://" in text or "?" in text else text or "no answer"
