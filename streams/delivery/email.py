"""E-mail over SMTP: a plain-text message per alert (stdlib smtplib, in a thread)."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class SmtpServer:
    """Where and how to send: an e-mail receiver's SMTP settings and the time limit."""

    host: str
    port: int
    starttls: bool  # STARTTLS before login (ignored with implicit `tls`)
    tls: bool  # implicit TLS (port 465)
    username: str | None
    password: str | None
    timeout_s: float


def _send(msg: EmailMessage, server: SmtpServer) -> None:
    context = ssl.create_default_context()
    smtp_class = smtplib.SMTP_SSL if server.tls else smtplib.SMTP
    kwargs = {"context": context} if server.tls else {}
    with smtp_class(server.host, server.port, timeout=server.timeout_s, **kwargs) as smtp:
        if server.starttls and not server.tls:
            smtp.starttls(context=context)
        if server.username:
            smtp.login(server.username, server.password or "")
        smtp.send_message(msg)


async def send(msg: EmailMessage, server: SmtpServer) -> None:
    try:
        await asyncio.to_thread(_send, msg, server)
    except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
        raise DeliveryError(
            f"SMTP {server.host}:{server.port}: {type(exc).__name__}: {exc}"
        ) from None
