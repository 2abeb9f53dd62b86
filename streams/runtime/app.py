"""The faust app that hosts a worker: its lifecycle, timers and web server.

The input is read by `streams.runtime.source.KafkaSource` (see there why), which the
worker runs beside the app so it can stop it first; a timer lets idle
partitions advance their watermark and keeps flushes and checkpoints on
time when no input arrives.
"""

from __future__ import annotations

import ssl
from typing import Any

import faust
from faust.tables import TableManager

from streams.config import Settings
from streams.delivery.agents import install as install_delivery
from streams.runtime.cycle import Runtime


def _credentials(settings: Settings) -> Any:
    k = settings.kafka
    if k.security_protocol == "PLAINTEXT":
        return None
    context = None
    if k.security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=k.ssl_ca_location)
    if k.security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=k.sasl_username,
            password=k.sasl_password,
            mechanism=k.sasl_mechanism or "PLAIN",
            ssl_context=context,
        )
    return faust.SSLCredentials(context)


class QuickTableManager(TableManager):
    """faust's table manager without the second it sleeps at its start (for agents to
    register their tables before the consumer subscribes): this app has no tables, so
    it only delayed each worker's start by 1 s."""

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


def build_app(settings: Settings, runtime: Runtime) -> faust.App:
    datadir = settings.data_path() / "faust"
    datadir.mkdir(parents=True, exist_ok=True)
    # kafka.session_timeout_s, else 10 s (faust's heartbeat then stays at its 3 s)
    session_s = settings.kafka.session_timeout_s or 10.0
    app = faust.App(
        f"{settings.kafka.group_id}-app",
        broker=[f"kafka://{b.strip()}" for b in (settings.kafka.bootstrap or "").split(",")],
        broker_credentials=_credentials(settings),
        topic_allow_declare=False,
        # Tansu holds a group join for half the session timeout (see notes)
        broker_session_timeout=session_s,
        broker_rebalance_timeout=session_s,
        broker_heartbeat_interval=min(3.0, session_s / 6) if session_s < 10 else 3.0,
        web_enabled=settings.web_enabled,
        web_port=settings.web_port,
        web_bind=settings.web_bind,
        web_router_enabled=False,
        web_tables_enabled=False,
        stream_wait_empty=False,
        datadir=str(datadir),
        TableManager=QuickTableManager,
    )

    @app.timer(interval=0.25)
    async def tick() -> None:
        # never raises: a failure is recorded on the runtime, and the worker
        # exits on it (faust would only log a crashed timer and stop ticking)
        await runtime.tick()

    # alert delivery (Alertmanager, webhooks, e-mail) as agents of this app, when
    # configured; /health reads its state from here (streams/delivery/agents.py)
    app.streamwatch_delivery = install_delivery(app, settings)  # type: ignore[attr-defined]
    return app
