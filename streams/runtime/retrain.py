"""Retraining requests out of the worker: the `retrain-requests` topic and a webhook.

The planner (`operators.retrain`) decides; this module delivers. Each request
is produced to the `retrain-requests` topic keyed by `model_id` through the
worker's sinks (`streams.runtime.sinks.Sinks`) when it has them: a request the broker
refuses is kept and produced again before the next flush, and the flush fails
(no checkpoint) until it is delivered, as for alerts. And, when
the environment variable named by `retrain.webhook_env` holds a URL, POSTed
to it as JSON (a training pipeline's trigger) from a thread of its own, with
retries and exponential backoff (1 s doubling, `webhook_retries` attempts):
a receiver that is down delays nothing else. The URL may carry a secret and
is never logged (only its scheme and host).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import msgspec
from prometheus_client import Counter

from schemas.events import RetrainRequest
from streams.config import Settings

log = logging.getLogger("streamwatch.retrain")

REQUESTS = Counter("streamwatch_retrain_requests_total", "Retraining requests published")
WEBHOOK = Counter(
    "streamwatch_retrain_webhook_total",
    "Retraining requests POSTed to the webhook, by outcome",
    ["outcome"],
)


def _where(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}"


class WebhookPoster:
    """POSTs JSON bodies to one URL from a daemon thread, retrying with backoff."""

    def __init__(self, url: str, timeout_s: float = 5, retries: int = 5) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.retries = retries
        self.queue: queue.Queue[bytes | None] = queue.Queue()
        self.delivered = 0
        self.failed = 0
        self.thread = threading.Thread(target=self._run, name="retrain-webhook", daemon=True)
        self.thread.start()

    def post(self, body: bytes) -> None:
        self.queue.put(body)

    def stop(self, timeout: float = 5) -> None:
        self.queue.put(None)
        self.thread.join(timeout)

    def _run(self) -> None:
        while True:
            body = self.queue.get()
            if body is None:
                return
            self._deliver(body)

    def _deliver(self, body: bytes) -> None:
        delay = 1.0
        for attempt in range(1, self.retries + 1):
            request = urllib.request.Request(
                self.url, body, {"Content-Type": "application/json"}, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    response.read()
                self.delivered += 1
                WEBHOOK.labels("delivered").inc()
                return
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "code", None) or type(exc).__name__
                log.warning(
                    "retrain webhook %s: attempt %d/%d failed (%s)",
                    _where(self.url),
                    attempt,
                    self.retries,
                    reason,
                )
                WEBHOOK.labels("retried").inc()
                if attempt < self.retries:
                    time.sleep(delay)
                    delay = min(delay * 2, 30.0)
        self.failed += 1
        WEBHOOK.labels("failed").inc()
        log.error("retrain webhook %s: gave up on a request", _where(self.url))


class RetrainPublisher:
    """Produces requests to the topic and hands them to the webhook, if any."""

    def __init__(self, settings: Settings, producer: Any, env: dict[str, str] | None = None):
        self.topic = settings.topics.retrain_requests
        self.producer = producer
        # the worker's sinks (set by streams.runtime.correlate.install): their delivery
        # discipline for alerts, so a checkpoint never covers an undelivered request
        self.sinks: Any = None
        self.published: list[RetrainRequest] = []  # the latest ones, for the dashboard
        self.listeners: list[Any] = []
        r = settings.retrain
        url = (env if env is not None else os.environ).get(r.webhook_env)
        self.webhook = WebhookPoster(url, r.webhook_timeout_s, r.webhook_retries) if url else None

    def publish(self, request: RetrainRequest) -> None:
        body = msgspec.json.encode(request)
        if self.sinks is not None:
            # refused: kept in sinks.undelivered, produced again at the next flush,
            # which raises (no checkpoint) until the broker has taken it
            self.sinks.produce(self.topic, body, request.model_id)
        else:  # no sinks (a publisher on its own): the failure is only logged
            self.producer.produce(
                self.topic, body, key=request.model_id.encode(), on_delivery=self._delivered
            )
            self.producer.poll(0)
        REQUESTS.inc()
        log.info("retraining requested for %s (%s)", request.model_id, request.request_id)
        self.published = [*self.published[-49:], request]
        if self.webhook is not None:
            self.webhook.post(body)
        for listener in self.listeners:
            listener(request)

    @staticmethod
    def _delivered(err: Any, msg: Any) -> None:
        if err is not None:
            log.error("a retraining request was not delivered to %s: %s", msg.topic(), err)

    def stop(self) -> None:
        if self.webhook is not None:
            self.webhook.stop()
