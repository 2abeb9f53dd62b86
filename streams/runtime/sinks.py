"""Where results go: ClickHouse rows (buffered, retried) and the output topics.

Rows wait in memory until `flush` writes them; a failed insert keeps them
(nothing is dropped) and the worker retries with backoff. Alerts, dead
letters and late events are produced to Kafka at once and also become rows
(`alerts`, `dead_letters`, `late_events` tables). `flush` returns only when
both the broker has acknowledged every message and ClickHouse has every row;
only then may the worker checkpoint and commit offsets.

No single output message can stall the worker (a poison pill: refused, retried,
refused, with the offsets never committed):

- dead letters are built to fit the producer's `message.max.bytes` (see
  `streams.connectors.dead_letters`): past the bound `raw` keeps the first bytes;
- late-event copies are the original bytes of an event the decoder accepted,
  so at most its `max_bytes` plus a key of <= 512 characters; `Sinks` checks at
  start that this fits the producer's limit;
- alerts are small by construction (a few hundred bytes of fields and details);
- should the producer or the broker (whose limit may be lower than the
  producer's) still refuse one message for its size, it is not retried as it
  is: a dead letter is cut to `SMALL_MESSAGE_BYTES`, any other message is
  replaced on the dead-letter topic by a dead letter of reason
  `output_too_large` holding its first bytes, size and SHA-256; both logged at
  error level.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from functools import partial
from typing import Any

import msgspec
import orjson

from schemas.decode import MAX_MESSAGE_BYTES, Rejection
from schemas.events import Alert
from schemas.rows import AlertRow, LateEventRow, Row
from streams.connectors import dead_letters, kafka
from streams.connectors.clickhouse import ClickHouseError, Writer
from streams.runtime import metrics, repartition
from streams.runtime.pipeline import RawMessage

log = logging.getLogger("streamwatch.sinks")

# A message refused for its size is replaced by one of at most this many bytes:
# far under any broker's limit (Apache Kafka's default is 1 MiB).
SMALL_MESSAGE_BYTES = 64 * 1024
# The largest key of an event the decoder accepts: 512 characters of UTF-8.
EVENT_KEY_MAX_BYTES = 512 * 4
LATE_HEADERS_MAX_BYTES = 1024  # "monitor" and "source_topic" names


class SinkError(RuntimeError):
    pass


class Sinks:
    def __init__(
        self,
        writer: Writer,
        producer: Any,
        topics: Any,
        max_message_bytes: int = kafka.MESSAGE_MAX_BYTES,
        max_event_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        """`max_message_bytes`: the producer's `message.max.bytes` (what
        `streams.connectors.kafka.producer` configures); `max_event_bytes`: the decoders'
        size limit, which bounds the late-event copies."""
        late_max = max_event_bytes + EVENT_KEY_MAX_BYTES + LATE_HEADERS_MAX_BYTES
        if late_max + dead_letters.RECORD_HEADROOM > max_message_bytes:
            raise ValueError(
                f"the producer's message.max.bytes ({max_message_bytes}) is too small for a "
                f"late-event copy of an accepted event (up to {late_max} bytes)"
            )
        self.writer = writer
        self.producer = producer
        self.topics = topics
        self.max_message_bytes = max_message_bytes
        self.buffer: dict[str, list[Row]] = {}
        self.buffered = 0
        self.produce_errors: list[str] = []
        # messages the broker refused: sent again before every flush, so a
        # checkpoint never covers an alert or dead letter that did not arrive
        self.undelivered: list[tuple[str, bytes | None, bytes | None, Any]] = []
        self.alert_listeners: list[Any] = []
        # called on each alert before it is published (streams.runtime.correlate: possible
        # causes); one may return None to hold the alert back and pass it here later
        self.alert_enrichers: list[Any] = []
        # re-keyed events (streams/runtime/repartition.py) leave through their own producer,
        # which keeps their order per partition; set by the worker when it re-keys
        self.forward_producer: Any = None
        self.forward_failed: str | None = None
        self.forwarded = 0  # re-keyed events produced (progress records aside)
        # Delay from a result's creation (the tick whose watermark closed its
        # window) to its delivery; the latest ones, for benchmarks and /metrics.
        self.created: dict[str, list[tuple[float, int]]] = {}  # table -> (when, rows)
        self.delays: dict[str, deque[float]] = {
            "row": deque(maxlen=100_000),
            "alert": deque(maxlen=100_000),
        }

    # -- Outputs protocol (called by the pipeline) ----------------------------

    def rows(self, table: str, rows: list[Row]) -> None:
        self.buffer.setdefault(table, []).extend(rows)
        self.buffered += len(rows)
        self.created.setdefault(table, []).append((time.monotonic(), len(rows)))
        metrics.WINDOWS_CLOSED.labels(table).inc(len(rows))

    def alerts(self, alerts: list[Alert]) -> None:
        rows: list[Row] = []
        created = time.monotonic()
        for given in alerts:
            alert: Alert | None = given
            for enrich in self.alert_enrichers:
                alert = enrich(alert) if alert is not None else None
            if alert is None:
                continue
            self._produce(
                self.topics.alerts,
                msgspec.json.encode(alert),
                alert.entity,
                on_delivery=partial(self._alert_delivered, created),
            )
            metrics.ALERTS.labels(alert.kind, alert.severity, alert.status).inc()
            rows.append(alert_row(alert))
            for listener in self.alert_listeners:
                listener(alert)
        self.rows(AlertRow.__table__.name, rows)

    def rejected(self, message: RawMessage, rejection: Rejection) -> None:
        raw_key, value = message.key(), message.value()
        letter, data = dead_letters.build(
            source_topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
            key=raw_key,
            value=value,
            error=rejection.error,
            reason=rejection.reason,
            ts=int(time.time() * 1000),
            max_json_bytes=dead_letters.value_budget(self.max_message_bytes, raw_key),
        )
        self._produce(self.topics.dead_letter, data, dead_letters.kafka_key(raw_key))
        metrics.REJECTED.labels(message.topic(), rejection.reason).inc()
        row = dead_letters.row(letter, value)
        self.rows(row.__table__.name, [row])

    def late(
        self, monitor: str, message: RawMessage, event_ts: int, watermark: int, window_start: int
    ) -> None:
        # the original bytes, so a consumer of late-events can reprocess them
        topic, raw_key = message.topic(), message.key()
        self._produce(
            self.topics.late_events,
            message.value(),
            raw_key,
            headers={"monitor": monitor, "source_topic": topic},
        )
        metrics.LATE.labels(monitor, topic).inc()
        key = raw_key.decode(errors="replace") if raw_key else ""
        row = LateEventRow(
            monitor=monitor,
            source_topic=topic,
            partition=message.partition(),
            offset=message.offset(),
            event_ts=event_ts,
            watermark=watermark,
            window_start=window_start,
            key=key,
        )
        self.rows(row.__table__.name, [row])

    def forward(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        source: bytes,
        progress: bytes | None = None,
    ) -> None:
        """Re-key one event onto an internal topic, or send a progress record (see
        streams.runtime.repartition)."""
        producer = self.forward_producer or self.producer
        headers = {repartition.SOURCE_HEADER: source}
        if progress is not None:
            headers[repartition.PROGRESS_HEADER] = progress
        while True:
            try:
                producer.produce(
                    topic,
                    value,
                    key=key,
                    partition=partition,
                    headers=headers,
                    on_delivery=self._forward_delivered,
                )
                break
            except BufferError:  # librdkafka's local queue is full: let it drain
                producer.poll(0.1)
        metrics.FORWARDED.labels(topic).inc()
        if progress is None:
            self.forwarded += 1

    def _forward_delivered(self, err: Any, msg: Any) -> None:
        """A re-keyed record the producer gave up on (retries are unbounded, so a
        permanent error): sending it again now would put it after later records of
        its source and the de-duplication would drop it. No checkpoint may cover it,
        ever: every flush fails from now on, and a restart replays from the last
        checkpoint."""
        if err is not None and self.forward_failed is None:
            self.forward_failed = f"re-keyed record to {msg.topic()} failed: {err}"
            log.error("%s; restart the worker (it replays from its checkpoint)", err)

    # -- delivery -------------------------------------------------------------

    def produce(self, topic: str, value: bytes, key: str | bytes | None) -> None:
        """Send one output message with the sinks' delivery discipline (as alerts):
        one the broker refuses is kept and produced again before the next flush,
        which raises SinkError (no checkpoint) until the broker has taken it."""
        self._produce(topic, value, key)

    def _produce(
        self,
        topic: str,
        value: bytes | None,
        key: str | bytes | None,
        headers: dict[str, str] | None = None,
        on_delivery: Any = None,
    ) -> None:
        from confluent_kafka import KafkaException

        if isinstance(key, str):
            key = key.encode()
        while True:
            try:
                self.producer.produce(
                    topic,
                    value,
                    key=key or None,
                    headers=headers,
                    on_delivery=on_delivery or self._delivered,
                )
                return
            except BufferError:  # librdkafka's local queue is full: let it drain
                self.producer.poll(0.1)
            except KafkaException as exc:  # refused at once, e.g. MSG_SIZE_TOO_LARGE
                if not _too_large(exc.args[0]):
                    raise
                self._replace_too_large(topic, value, key, str(exc.args[0]))
                return

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            if _too_large(err):  # the broker's limit: retrying the same bytes cannot help
                self._replace_too_large(msg.topic(), msg.value(), msg.key(), str(err))
                return
            self.produce_errors.append(str(err))
            self.undelivered.append((msg.topic(), msg.value(), msg.key(), msg.headers()))

    def _replace_too_large(
        self, topic: str, value: bytes | None, key: bytes | None, error: str
    ) -> None:
        """Send a small stand-in for an output message refused for its size (not the
        same bytes again: that would be refused forever, a poison pill)."""
        metrics.SINK_FAILURES.labels("kafka_too_large").inc()
        size = len(value or b"") + len(key or b"")
        if size <= SMALL_MESSAGE_BYTES:
            # already small: the broker's limit is absurdly low; nothing smaller to send
            log.error(
                "dropping a %d-byte message to %s refused for its size: %s", size, topic, error
            )
            return
        budget = dead_letters.value_budget(SMALL_MESSAGE_BYTES, key)
        if topic == self.topics.dead_letter and value is not None:
            data = dead_letters.shrink(value, budget)
        else:
            _, data = dead_letters.build(
                source_topic=topic,
                partition=-1,
                offset=-1,
                key=key,
                value=value,
                error=f"this {topic} message ({size} bytes) was refused for its size: {error}",
                reason="output_too_large",
                ts=int(time.time() * 1000),
                max_json_bytes=budget,
            )
            topic = self.topics.dead_letter
        log.error(
            "a %d-byte output message was refused for its size (%s); sent a %d-byte "
            "stand-in to %s instead",
            size,
            error,
            len(data),
            topic,
        )
        self._produce(topic, data, dead_letters.kafka_key(key))

    def _alert_delivered(self, created: float, err: Any, msg: Any) -> None:
        self._delivered(err, msg)
        if err is None:
            delay = time.monotonic() - created
            self.delays["alert"].append(delay)
            metrics.RESULT_DELAY.labels("alert").observe(delay)

    def poll(self) -> None:
        """Serve delivery reports of messages the broker has acknowledged."""
        self.producer.poll(0)

    def flush(self, timeout: float = 30.0) -> None:
        """Deliver everything pending; raise SinkError (keeping rows and refused
        messages for the next attempt) on failure."""
        if self.forward_producer is not None and self.forward_producer.flush(timeout):
            metrics.SINK_FAILURES.labels("kafka").inc()
            raise SinkError("broker did not take every re-keyed record yet")
        if self.forward_failed:
            raise SinkError(self.forward_failed)
        retry, self.undelivered = self.undelivered, []
        for topic, value, key, headers in retry:
            self._produce(topic, value, key, headers=dict(headers) if headers else None)
        remaining = self.producer.flush(timeout)
        if remaining or self.produce_errors:
            errors, self.produce_errors = self.produce_errors, []
            metrics.SINK_FAILURES.labels("kafka").inc()
            raise SinkError(f"broker did not take every output message: {errors[:3]}")
        for table in list(self.buffer):
            rows = self.buffer[table]
            try:
                seconds = self.writer.insert(table, rows)
            except ClickHouseError as exc:
                metrics.SINK_FAILURES.labels("clickhouse").inc()
                raise SinkError(str(exc)) from exc
            metrics.SINK_BATCH.labels(table).observe(len(rows))
            metrics.WRITE_SECONDS.labels(table).observe(seconds)
            del self.buffer[table]
            self.buffered -= len(rows)
            written = time.monotonic()
            for created, n in self.created.pop(table, ()):
                delay = written - created
                self.delays["row"].extend([delay] * n)
                metrics.RESULT_DELAY.labels("row").observe(delay)
        metrics.BUFFERED.set(self.buffered)


def alert_row(alert: Alert) -> AlertRow:
    """The `alerts` row of an alert event: its fields, `details` as JSON with sorted keys."""
    fields = msgspec.structs.asdict(alert)
    fields["details"] = orjson.dumps(alert.details, option=orjson.OPT_SORT_KEYS).decode()
    return AlertRow(**fields)


def _too_large(err: Any) -> bool:
    """Whether a KafkaError says the message is too large (never cured by a retry)."""
    from confluent_kafka import KafkaError

    return err.code() in (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE)
