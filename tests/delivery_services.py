"""Real receivers for the delivery tests: an HTTP webhook server, an SMTP server
(aiosmtpd) and an Alertmanager (Debian's `prometheus-alertmanager`), each on a
free loopback port, plus alert events to publish on a worker's alerts topic."""

from __future__ import annotations

import email
import shutil
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from streams.connectors.embedded import free_port
from tests.harness import Deployment


class Webhooks:
    """Records every POST (path, JSON body); answers 503 on paths marked down."""

    def __init__(self) -> None:
        self.received: list[tuple[str, Any]] = []
        self.down: set[str] = set()
        self.lock = threading.Lock()
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                path = self.path
                if any(path.startswith(p) for p in hooks.down):
                    self.send_response(503)
                    self.end_headers()
                    self.wfile.write(b"down for the test")
                    return
                with hooks.lock:
                    hooks.received.append((path, orjson.loads(body)))
                answer = b'{"errcode": 0, "errmsg": "ok", "code": 0}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def bodies(self, prefix: str) -> list[Any]:
        with self.lock:
            return [body for path, body in self.received if path.startswith(prefix)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Mailbox:
    """aiosmtpd on a free loopback port, with AUTH (the password checked)."""

    def __init__(self, username: str, password: str) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        self.messages: list[email.message.Message] = []
        self.logins: list[str] = []
        box = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                box.messages.append(email.message_from_bytes(envelope.content))
                return "250 OK"

        def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth: Any):
            ok = auth.login.decode() == username and auth.password.decode() == password
            if ok:
                box.logins.append(auth.login.decode())
            return AuthResult(success=ok)

        self.port = free_port()
        self.controller = Controller(
            Handler(),
            hostname="127.0.0.1",
            port=self.port,
            authenticator=authenticator,
            auth_require_tls=False,  # loopback test server: no certificate to present
        )
        self.controller.start()

    def alert_ids(self) -> list[str]:
        return [m["X-Streamwatch-Alert-Id"] for m in self.messages]

    def close(self) -> None:
        self.controller.stop()


class Alertmanager:
    """A real Alertmanager routing everything to a webhook, grouped by alertname."""

    def __init__(self, tmp: Path, webhook_url: str) -> None:
        binary = shutil.which("prometheus-alertmanager")  # Debian's name, system-deps.sh
        if binary is None:
            pytest.fail(
                "prometheus-alertmanager not found: install the Debian package "
                "(scripts/system-deps.sh); this test needs a real Alertmanager"
            )
        self.port = free_port()
        self.dir = tmp / f"alertmanager-{self.port}"
        self.dir.mkdir()
        config = {
            "route": {
                "receiver": "hook",
                "group_by": ["alertname"],
                "group_wait": "3s",  # the two test alerts come from two partitions
                "group_interval": "1s",
                "repeat_interval": "1h",
            },
            "receivers": [
                {"name": "hook", "webhook_configs": [{"url": webhook_url, "send_resolved": True}]}
            ],
        }
        (self.dir / "alertmanager.yml").write_text(yaml.safe_dump(config))
        self.log_path = self.dir / "alertmanager.log"
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={self.dir / 'alertmanager.yml'}",
                f"--storage.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",  # a single instance: no gossip port
            ],
            stdout=open(self.log_path, "wb"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url("/-/ready"), timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"Alertmanager did not start:\n{self.log_path.read_text()}")

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def alerts(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.url("/api/v2/alerts"), timeout=5) as r:
            return orjson.loads(r.read())

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class DeliveryDeployment(Deployment):
    """A harness deployment with a [delivery] section and extra environment."""

    def __init__(self, *args: Any, delivery_toml: str, env: dict[str, str], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.extra_env = env
        self.path.write_text(self.path.read_text() + "\n" + delivery_toml)

    def env(self) -> dict[str, str]:
        return {**super().env(), **self.extra_env}


def alert_event(
    n: int,
    entity: str,
    rule: str = "ctr_floor",
    severity: str = "critical",
    status: str = "firing",
    kind: str = "ctr",
) -> dict[str, Any]:
    now = int(time.time() * 1000)
    ws = now - now % 60_000 - 60_000
    return {
        "alert_id": f"{rule}:{entity}:{status}:{n}",
        "ts": now,
        "kind": kind,
        "rule": rule,
        "severity": severity,
        "status": status,
        "entity": entity,
        "metric": "ctr",
        "value": 0.0009,
        "threshold": 0.001,
        "window_start": ws,
        "window_end": ws + 60_000,
        "message": f"CTR of {entity} is 0.09%, below the floor of 0.10%.",
        "details": {"campaign_id": entity, "n": 5000},
    }


def publish(d: Deployment, alerts: list[dict[str, Any]], timestamp_ms: int | None = None) -> None:
    """Alerts on the deployment's alerts topic, keyed by entity (as the worker does);
    `timestamp_ms`: the messages' Kafka timestamp (default: now)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": d.bootstrap, "enable.idempotence": False})
    for a in alerts:
        extra = {"timestamp": timestamp_ms} if timestamp_ms else {}
        producer.produce(
            d.topics["alerts"], key=a["entity"].encode(), value=orjson.dumps(a), **extra
        )
    assert producer.flush(30) == 0


def publish_raw(d: Deployment, values: list[bytes]) -> None:
    """Messages that are not alert events, on the alerts topic."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": d.bootstrap, "enable.idempotence": False})
    for value in values:
        producer.produce(d.topics["alerts"], key=b"junk", value=value)
    assert producer.flush(30) == 0
