"""Possible causes and retraining requests in the worker (design: docs/causes.md).

`Causes` sits in front of the alert producer (`Sinks.alert_enrichers`): every
alert this worker raises passes through it before it is published, so
`details.possible_causes` is in the one published copy (the alert_id is not
touched, and no second version is ever published). It keeps:

- the firing set (`operators.causes.Correlator`) of this worker's alerts,
  taken in synchronously as they are raised, and of every other worker's,
  read by `AlertFeed` from all partitions of the `alerts` topic (low volume;
  no consumer group: every worker reads everything, from `feed_lookback_s`
  back at start, which also rebuilds the set after a restart);
- the retraining planner (`operators.retrain`), advanced on the worker's
  timer by the event time the pipeline has reached; it requests retraining
  only for models whose alerts this worker raised (inference logs and labels
  are keyed by model_id, so one worker owns a model's alerts).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import msgspec
from prometheus_client import Counter, Gauge

from operators.causes import Correlator, CorrelatorConfig
from operators.retrain import RetrainCondition, RetrainPlanner, RetrainPolicy
from schemas.events import Alert
from streams.config import Settings
from streams.runtime.retrain import RetrainPublisher

if TYPE_CHECKING:
    from streams.runtime.parts import WorkerParts

log = logging.getLogger("streamwatch.correlate")

CAUSED = Counter(
    "streamwatch_alerts_with_causes_total", "Alerts published with possible causes", ["kind"]
)
HELD = Gauge("streamwatch_alerts_held", "Alerts held back until their causes' monitors catch up")
FEED = Counter("streamwatch_alert_feed_total", "Alerts read back from the alerts topic")


def correlator_config(settings: Settings) -> CorrelatorConfig:
    c = settings.causes
    return CorrelatorConfig(
        lookback_ms=round(c.lookback_s * 1000),
        slack_ms=round(c.slack_s * 1000),
        ttl_ms=round(c.firing_ttl_s * 1000),
        max_keys=c.max_keys,
        max_causes=c.max_causes,
    )


def retrain_policies(settings: Settings) -> list[RetrainPolicy]:
    return [
        RetrainPolicy(
            p.models,
            tuple(RetrainCondition(c.metric, c.op, c.threshold, c.for_s) for c in p.conditions),
            p.interval_s,
        )
        for p in settings.retrain.policies
    ]


class AlertFeed:
    """Reads every partition of the alerts topic in a thread, from a while back,
    and hands each alert to `on_alert` (other workers' alerts, and after a restart
    the alerts still firing)."""

    def __init__(self, settings: Settings, on_alert: Any, lookback_s: float) -> None:
        self.settings = settings
        self.on_alert = on_alert
        self.lookback_s = lookback_s
        self.stopping = threading.Event()
        self.ready = threading.Event()  # assigned (and caught up to the start point)
        self.received = 0
        self.thread = threading.Thread(target=self._run, name="alert-feed", daemon=True)

    def start(self) -> AlertFeed:
        self.thread.start()
        return self

    def stop(self, timeout: float = 10) -> None:
        self.stopping.set()
        self.thread.join(timeout)

    def _run(self) -> None:
        from confluent_kafka import Consumer, TopicPartition

        topic = self.settings.topics.alerts
        conf = {
            **self.settings.kafka_client_config(),
            # never joins (assign, not subscribe) nor commits: a group id is only required
            "group.id": f"{self.settings.kafka.group_id}-causes-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
        decoder = msgspec.json.Decoder(Alert)
        while not self.stopping.is_set():
            try:
                consumer = Consumer(conf)
                meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
                if meta is None or meta.error is not None or not meta.partitions:
                    consumer.close()
                    self.stopping.wait(2)
                    continue
                since = int((time.time() - self.lookback_s) * 1000)
                wanted = [TopicPartition(topic, p, since) for p in sorted(meta.partitions)]
                starts = consumer.offsets_for_times(wanted, timeout=10)
                # a partition with nothing that recent: from its end (offset -1 = OFFSET_END)
                consumer.assign(starts)
                break
            except Exception as exc:  # the broker not up yet: try again
                log.warning("alert feed: cannot start yet (%s)", exc)
                self.stopping.wait(2)
        else:
            return
        self.ready.set()
        try:
            while not self.stopping.is_set():
                msg = consumer.poll(0.5)
                if msg is None or msg.error() is not None:
                    continue
                try:
                    alert = decoder.decode(msg.value())
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue  # not ours to judge: the alert topic's own consumers see it
                self.received += 1
                FEED.inc()
                self.on_alert(alert)
        finally:
            consumer.close()


# the kinds whose causes come from monitors with longer windows, and those monitors
HELD_KINDS = frozenset({"ctr", "quality"})
CAUSE_MONITORS = ("drift", "service", "quality")


class Causes:
    """Possible causes on this worker's alerts, and its retraining requests.

    A CTR or quality alert raised before the drift, service and quality monitors
    of this worker have reached its window's end plus `hold_s` of event time (a
    backlog read unevenly across partitions) is held back until they have (or
    `max_hold_s` of wall-clock time has passed), so a cause judged a little later
    still makes it into the one published copy. A held alert counts as a buffered
    row: no checkpoint is written until it is out (a crash replays it, same id).
    """

    def __init__(
        self,
        settings: Settings,
        producer: Any,
        env: dict[str, str] | None = None,
        watermarks: Any = None,
    ):
        self.settings = settings
        self.lock = threading.Lock()  # the feed's thread and the event loop share the state
        self.correlator = Correlator(correlator_config(settings))
        self.planner = RetrainPlanner(retrain_policies(settings))
        self.publisher = RetrainPublisher(settings, producer, env)
        self.due: list[Any] = []  # requests found due on the feed's thread, for the timer
        self.feed: AlertFeed | None = None
        self.enabled = settings.causes.enabled
        # monitor -> event time reached (Pipeline.watermarks); none: nothing is held
        self.watermarks = watermarks
        self.hold_ms = round(settings.causes.hold_s * 1000)
        self.held: list[tuple[Alert, int, float]] = []  # (alert, event time gate, deadline)
        self.finished: set[str] = set()  # released alerts passing through the sinks again
        self.sinks: Any = None  # set by install: where held alerts go when released

    def _gate(self, alert: Alert) -> int | None:
        """The event time the cause monitors must reach before this alert goes out."""
        if not self.enabled or self.watermarks is None or alert.kind not in HELD_KINDS:
            return None
        if alert.status != "firing":
            return None
        end = alert.window_end if alert.window_end is not None else alert.ts
        return end + self.hold_ms

    def _reached(self) -> int | None:
        marks = self.watermarks() if self.watermarks is not None else {}
        values = [marks[m] for m in CAUSE_MONITORS if m in marks]
        return min(values) if values else None

    def enrich(self, alert: Alert) -> Alert | None:
        """Called on each alert this worker raises, before it is published; None
        when it is held back (see the class docstring)."""
        if alert.alert_id in self.finished:
            self.finished.discard(alert.alert_id)
            return alert
        gate = self._gate(alert)
        # behind a held alert of its entity, an alert waits too: their order is kept
        queued = any(a.entity == alert.entity for a, _, _ in self.held)
        if queued or gate is not None:
            reached = self._reached()
            if queued or (gate is not None and reached is not None and reached < gate):
                self.held.append(
                    (alert, gate or 0, time.monotonic() + self.settings.causes.max_hold_s)
                )
                if self.sinks is not None:
                    self.sinks.buffered += 1
                HELD.set(len(self.held))
                return None
        return self._finish(alert)

    def _finish(self, alert: Alert) -> Alert:
        with self.lock:
            if self.enabled:
                alert = self.correlator.enrich(alert)
                if "possible_causes" in alert.details:
                    CAUSED.labels(alert.kind).inc()
            due = self.planner.observe(alert, local=True)
        for request in due:
            self.publisher.publish(request)
        return alert

    def release(self, force: bool = False) -> list[Alert]:
        """The held alerts whose gate has passed (all with `force`), in order per
        entity, enriched now; the caller publishes them through the sinks."""
        out: list[Alert] = []
        reached = self._reached()
        now = time.monotonic()
        waiting: list[tuple[Alert, int, float]] = []
        for item in self.held:
            alert, gate, deadline = item
            blocked = any(a.entity == alert.entity for a, _, _ in waiting)
            if blocked or not (force or reached is None or reached >= gate or now >= deadline):
                waiting.append(item)
                continue
            if self.sinks is not None:
                self.sinks.buffered -= 1
            out.append(self._finish(alert))
        self.held = waiting
        HELD.set(len(self.held))
        self.finished.update(a.alert_id for a in out)
        return out

    def remote(self, alert: Alert) -> None:
        """An alert read from the topic (another worker's, or an echo of ours)."""
        with self.lock:
            self.correlator.observe(alert)
            due = self.planner.observe(alert, local=False)
            # this is the feed's thread: the timer publishes them, under the pipeline's lock
            self.due.extend(due)

    def advance(self, now_ms: int) -> None:
        """Event time reached `now_ms`: expire, and publish retraining requests due."""
        with self.lock:
            self.correlator.advance(now_ms)
            requests = [*self.due, *self.planner.advance(now_ms)]
            self.due = []
        for request in requests:
            self.publisher.publish(request)

    def start(self) -> Causes:
        if self.settings.causes.feed and (self.enabled or self.planner.policies):
            self.feed = AlertFeed(self.settings, self.remote, self.settings.causes.feed_lookback_s)
            self.feed.start()
        return self

    def stop(self) -> None:
        if self.feed is not None:
            self.feed.stop()
        self.publisher.stop()


def install(worker: WorkerParts) -> Causes:
    """Wire causes and retraining into a worker: the enricher in front of its alert
    producer, the feed, and a timer on its faust app that advances event time."""
    causes = Causes(worker.settings, worker.producer, watermarks=worker.pipeline.watermarks).start()
    causes.sinks = worker.sinks
    causes.publisher.sinks = worker.sinks  # requests are delivered as alerts are
    worker.sinks.alert_enrichers.append(causes.enrich)

    @worker.app.timer(interval=0.5)
    async def causes_tick() -> None:
        if causes.held:
            async with worker.runtime.lock:  # the sinks are the pipeline's
                released = causes.release()
                if released:
                    worker.sinks.alerts(released)
        # the slowest monitor's event time: no alert can still come from before it
        reached = worker.pipeline.watermarks()
        if reached:
            # under the lock: requests go through the pipeline's sinks, never
            # between a flush and the checkpoint it allows
            async with worker.runtime.lock:
                causes.advance(min(reached.values()))

    return causes
