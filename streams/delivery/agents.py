"""The faust wiring: an agent over the alerts topic routes each alert into the
delivery log; a task per receiver delivers; a task keeps partitions and
Alertmanager's firing set up to date.

The agent runs in the faust app's consumer group (`<group_id>-app`), not the
pipeline's, so delivery has offsets of its own. faust acknowledges an event
when the agent asks for the next one, and commits only acknowledged offsets:
`handle` returns once every job of the alert is on the broker (the delivery
log), so an alert is acknowledged only when it is durably queued, and a kill
-9 at any point loses nothing (the worst case is a replayed alert, which the
log's `job`/`done` records turn into a no-op).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import time
from typing import Any

import aiohttp
import msgspec
import orjson

from streams.config import ReceiverSettings, Settings, expand_env
from streams.delivery import (
    alertmanager,
    dingtalk,
    email,
    feishu,
    generic,
    router,
    slack,
    wecom,
)
from streams.delivery import log as log_receiver
from streams.delivery import metrics as delivery_metrics
from streams.delivery.http import DeliveryError, check_status, post_json
from streams.delivery.journal import Journal, PartitionState, firing_key, job_key
from streams.delivery.queue import Job, ReceiverQueue, backoff
from streams.delivery.text import Alert

log = logging.getLogger("streamwatch.delivery")
ALERTMANAGER = "alertmanager"


class Routable(msgspec.Struct):
    """What delivery needs of an alert event; other fields pass through untouched, and
    kinds are not restricted here (a kind added to the contract is delivered too)."""

    alert_id: str
    ts: int
    kind: str
    rule: str
    severity: str
    status: str
    entity: str
    message: str = ""
    value: float = float("nan")
    threshold: float = float("nan")
    details: dict[str, Any] = {}


CHAT = {"slack": slack, "dingtalk": dingtalk, "wecom": wecom, "feishu": feishu}


def resolved_receiver(receiver: ReceiverSettings) -> ReceiverSettings:
    """The receiver with `${ENV}` references replaced (an unset variable: ConfigError)."""
    data = msgspec.to_builtins(receiver)
    for name, value in data.items():
        if isinstance(value, str):
            data[name] = expand_env(value)
        elif isinstance(value, list):
            data[name] = [expand_env(v) if isinstance(v, str) else v for v in value]
        elif isinstance(value, dict):
            data[name] = {k: expand_env(v) for k, v in value.items()}
    return msgspec.convert(data, ReceiverSettings)


def now_ms() -> int:
    return int(time.time() * 1000)


class Delivery:
    def __init__(self, settings: Settings) -> None:
        d = settings.delivery
        self.settings = settings
        self.receivers = {r.name: resolved_receiver(r) for r in d.receivers}
        self.alertmanager_url = expand_env(d.alertmanager_url) if d.alertmanager_url else None
        self.link = d.dashboard_url or self._default_link()
        self.journal = Journal(settings)
        self.queues: dict[str, ReceiverQueue] = {}
        for name in [*([ALERTMANAGER] if self.alertmanager_url else []), *self.receivers]:
            self.queues[name] = ReceiverQueue(
                name,
                send=lambda job, name=name: self.send(name, job),
                finished=self.delivered,
                retry_initial_s=d.retry_initial_s,
                retry_max_s=d.retry_max_s,
            )
        self.states: dict[int, PartitionState] = {}
        self.loading: dict[int, asyncio.Lock] = {}
        self.session: aiohttp.ClientSession | None = None
        self.last_repost = time.monotonic()
        self.repost_error: str | None = None
        self.rng = random.Random()

    def _default_link(self) -> str:
        host = self.settings.web_bind
        if host in ("0.0.0.0", "::"):
            host = socket.gethostname()
        return f"http://{host}:{self.settings.web_port}/"

    # -- faust ----------------------------------------------------------------

    def install(self, app: Any) -> None:
        self.journal.ensure_topic()
        topic = app.topic(
            self.settings.topics.alerts,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )

        @app.agent(topic, name="streamwatch-delivery-route")
        async def route(stream: Any) -> None:
            async for event in stream.events():
                message = event.message
                try:
                    await self.handle(message.partition, event.value, message.timestamp)
                except Exception:
                    # only a bug gets here (broker failures are retried inside): one
                    # alert's delivery is lost, logged, rather than all delivery stopped
                    delivery_metrics.DROPPED.labels("*").inc()
                    log.exception("delivery: routing the alert at offset %d failed", message.offset)

        @app.task
        async def deliver() -> None:
            await self.run(app)

    async def run(self, app: Any) -> None:
        self.session = aiohttp.ClientSession()
        tasks = [asyncio.create_task(q.run(), name=f"delivery-{n}") for n, q in self.queues.items()]
        try:
            while True:
                await self.sync_partitions(app)
                await self.maybe_repost()
                await asyncio.sleep(1.0)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.session.close()

    async def sync_partitions(self, app: Any) -> None:
        """Follow the faust consumer's assignment of the alerts topic."""
        try:
            assigned = {
                tp.partition
                for tp in app.consumer.assignment()
                if tp.topic == self.settings.topics.alerts
            }
        except Exception:  # the consumer is not up yet
            return
        for partition in set(self.states) - assigned:
            del self.states[partition]
            for queue in self.queues.values():
                queue.drop_partition(partition)
            log.info("delivery: partition %d went to another worker", partition)
        for partition in sorted(assigned - set(self.states)):
            await self.load(partition)

    async def load(self, partition: int) -> PartitionState:
        """The partition's state, replayed from the delivery log on first use."""
        lock = self.loading.setdefault(partition, asyncio.Lock())
        async with lock:
            state = self.states.get(partition)
            if state is None:
                state = await self._retry(lambda: self.journal.replay(partition), "replay")
                for key, job in state.pending.items():
                    queue = self.queues.get(job["receiver"])
                    if queue is None:  # a receiver removed from the configuration
                        log.warning("delivery: no receiver %s any more", job["receiver"])
                        continue
                    queue.add(key, {**job, "partition": partition})
                self.states[partition] = state
            return state

    async def _retry(self, action: Any, what: str) -> Any:
        """Retry a delivery-log operation until it succeeds: the broker is the only
        place the alert can be kept, and acknowledging it before would lose it."""
        failures = 0
        while True:
            try:
                return await action()
            except Exception as exc:
                failures += 1
                delay = backoff(failures, 0.5, 30, self.rng)
                log.warning("delivery log %s failed, retry in %.1f s: %s", what, delay, exc)
                await asyncio.sleep(delay)

    # -- routing --------------------------------------------------------------

    def targets(self, alert: Alert) -> list[str]:
        names = router.receivers(self.settings.delivery.routes, alert)
        return [ALERTMANAGER, *names] if self.alertmanager_url else names

    async def handle(
        self, partition: int, raw: bytes | None, published_s: float | None = None
    ) -> None:
        """Route one alert: its new jobs durably in the log, then queued."""
        try:
            alert = orjson.loads(raw or b"")
            msgspec.convert(alert, Routable)
            alert_id = alert["alert_id"]
        except (orjson.JSONDecodeError, msgspec.ValidationError) as exc:
            delivery_metrics.DROPPED.labels("*").inc()
            log.warning("delivery: skipping a message of the alerts topic: not an alert (%s)", exc)
            return
        max_age = self.settings.delivery.max_age_s
        if max_age and published_s and time.time() - published_s > max_age:
            delivery_metrics.SKIPPED_OLD.inc()
            log.info("delivery: %s was published over %.0f s ago, not delivered", alert_id, max_age)
            return
        state = await self.load(partition)
        records: list[tuple[bytes, dict[str, Any]]] = []
        queued_at = now_ms()
        for name in self.targets(alert):
            key = job_key(name, alert_id)
            if key in state.done or key in state.pending:
                continue  # a replayed alert: queued or delivered already
            job: Job = {"t": "job", "receiver": name, "alert": alert, "queued_at": queued_at}
            if name == ALERTMANAGER:
                records += self._firing_set_updates(state, alert, job)
            records.append((key, job))
        if not records:
            return
        await self._retry(lambda: self.journal.append(partition, records), "write")
        for key, value in records:
            state.apply(key, value)
            if value["t"] == "job":
                self.queues[value["receiver"]].add(key, {**value, "partition": partition})

    def _firing_set_updates(
        self, state: PartitionState, alert: Alert, job: Job
    ) -> list[tuple[bytes, dict[str, Any]]]:
        """What Alertmanager is told is firing (re-posted until resolved)."""
        if alert["status"] == "firing":
            fp = alertmanager.fingerprint(alertmanager.labels(alert))
            return [(firing_key(fp), {"t": "firing", "alert": alert})]
        ended = {
            fp: fired
            for fp, fired in state.firing.items()
            if alertmanager.same_condition(fired, alert)
        }
        job["resolves"] = list(ended.values())
        return [(firing_key(fp), {"t": "cleared"}) for fp in ended]

    # -- sending --------------------------------------------------------------

    async def send(self, name: str, job: Job) -> None:
        alert = job["alert"]
        if self.session is None:
            raise DeliveryError("delivery is not started yet")
        timeout = self.settings.delivery.timeout_s
        if name == ALERTMANAGER:
            now = now_ms()
            if alert["status"] == "firing":
                ttl = self.settings.delivery.alertmanager_ttl_s
                body = [alertmanager.firing(alert, now, ttl, self.link)]
            else:
                fired = job.get("resolves") or [alert]
                body = [alertmanager.resolved(f, alert, now, self.link) for f in fired]
            await post_json(self.session, self._am_endpoint(), body, timeout)
            return
        receiver = self.receivers[name]
        if receiver.type == "log":
            log_receiver.send(alert)
        elif receiver.type == "email":
            message = email.message(alert, self.link, receiver.sender or "", receiver.to)
            server = email.SmtpServer(
                host=receiver.smtp_host or "",
                port=receiver.smtp_port,
                starttls=receiver.starttls,
                tls=receiver.tls,
                username=receiver.username,
                password=receiver.password,
                timeout_s=timeout,
            )
            await email.send(message, server)
        elif receiver.type == "generic":
            body = generic.body(alert, self.link)
            await post_json(
                self.session, receiver.url or "", body, timeout, headers=receiver.headers
            )
        else:
            module = CHAT[receiver.type]
            check = getattr(module, "check", check_status)
            await post_json(
                self.session, receiver.url or "", module.body(alert, self.link), timeout, check
            )

    def _am_endpoint(self) -> str:
        return f"{(self.alertmanager_url or '').rstrip('/')}/api/v2/alerts"

    async def delivered(self, job: Job) -> None:
        """Mark the job done in the log (so no later replay sends it again)."""
        partition = job["partition"]
        key = job_key(job["receiver"], job["alert"]["alert_id"])
        state = self.states.get(partition)
        if state is not None:
            state.apply(key, {"t": "done"})
        await self._retry(
            lambda: self.journal.append(partition, [(key, {"t": "done", "at": now_ms()})]),
            "done mark",
        )

    async def maybe_repost(self) -> None:
        """Re-post every firing alert to Alertmanager, so it keeps them firing."""
        queue = self.queues.get(ALERTMANAGER)
        every = self.settings.delivery.alertmanager_repost_s
        if queue is None or time.monotonic() - self.last_repost < every:
            return
        self.last_repost = time.monotonic()
        firing = [a for s in self.states.values() for a in s.firing.values()]
        if not firing or self.session is None:
            return
        now, ttl = now_ms(), self.settings.delivery.alertmanager_ttl_s
        body = [alertmanager.firing(a, now, ttl, self.link) for a in firing]
        try:
            async with queue.lock:
                await post_json(
                    self.session, self._am_endpoint(), body, self.settings.delivery.timeout_s
                )
        except DeliveryError as exc:
            self.repost_error = str(exc)
            delivery_metrics.FAILURES.labels(ALERTMANAGER).inc()
            log.warning("re-posting %d firing alerts to Alertmanager failed: %s", len(body), exc)
            return
        self.repost_error = None
        delivery_metrics.REPOSTS.inc()

    # -- health ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        receivers = {name: q.status() for name, q in self.queues.items()}
        failing = sorted(n for n, r in receivers.items() if r["state"] != "ok")
        return {
            "status": "degraded" if failing or self.repost_error else "ok",
            "failing": failing,
            "receivers": receivers,
            "partitions": sorted(self.states),
            "alertmanager_firing": sum(len(s.firing) for s in self.states.values()),
        }


def install(app: Any, settings: Settings) -> Delivery | None:
    """Add delivery to the worker's faust app when anything is configured."""
    if not settings.delivery.enabled:
        return None
    delivery = Delivery(settings)
    delivery.install(app)
    return delivery
