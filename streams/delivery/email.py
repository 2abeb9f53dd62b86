"""E-mail over SMTP: a plain-text message per alert (stdlib smtplib, in a thread)."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from streams.delivery.http import DeliveryError
from streams.delivery.text import Alert, plain, title


def message(alert: Alert, link: str | None, sender: str, to: list[str]) -> EmailMessage:
    """The e-mail for an alert; `X-Streamwatch-Alert-Id` lets a mailbox rule de-duplicate.

    >>> m = message({"status": "firing", "severity": "critical", "rule": "r", "entity": "e",
    ...   "kind": "ctr", "alert_id": "a1", "message": "m", "value": 1.0, "threshold": 2.0},
    ...   None, "sw@example.com", ["ops@example.com"])
    >>> m["Subject"], m["X-Streamwatch-Alert-Id"]
    ('[FIRING critical] r on e', 'a1')
    """
    msg = EmailMessage()
    msg["Subject"] = title(alert)
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = make_msgid(domain="streamwatch")
    msg["X-Streamwatch-Alert-Id"] = str(alert["alert_id"])
    msg.set_content(plain(alert, link))
    return msg


def _send(
    msg: EmailMessage,
    host: str,
    port: int,
    starttls: bool,
    tls: bool,
    username: str | None,
    password: str | None,
    timeout_s: float,
) -> None:
    context = ssl.create_default_context()
    smtp_class = smtplib.SMTP_SSL if tls else smtplib.SMTP
    kwargs = {"context": context} if tls else {}
    with smtp_class(host, port, timeout=timeout_s, **kwargs) as smtp:
        if starttls and not tls:
            smtp.starttls(context=context)
        if username:
            smtp.login(username, password or "")
        smtp.send_message(msg)


async def send(
    msg: EmailMessage,
    host: str,
    port: int,
    starttls: bool,
    tls: bool,
    username: str | None,
    password: str | None,
    timeout_s: float,
) -> None:
    try:
        await asyncio.to_thread(
            _send, msg, host, port, starttls, tls, username, password, timeout_s
        )
    except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
        raise DeliveryError(f"SMTP {host}:{port}: {type(exc).__name__}: {exc}") from None
