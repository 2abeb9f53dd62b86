"""Where results go: ClickHouse rows (buffered, retried) and the output topics.

Rows wait in memory until `flush` writes them; a failed insert keeps them
(nothing is dropped) and the worker retries with backoff. Alerts, dead
letters and late events are produced to Kafka at once and also become rows
(`alerts`, `dead_letters`, `late_events` tables). `flush` returns only when
both the broker has acknowledged every message and ClickHouse has every row;
only then may the worker checkpoint and commit offsets.
"""

from __future__ import annotations

import base64
import time
from collections import deque
from functools import partial
from typing import Any

import msgspec
import orjson

from schemas.decode import Rejection
from schemas.events import Alert, DeadLetter
from streams import metrics
from streams.clickhouse import ClickHouseError, Writer
from streams.pipeline import RawMessage


class SinkError(RuntimeError):
    pass


class Sinks:
    def __init__(self, writer: Writer, producer: Any, topics: Any) -> None:
        self.writer = writer
        self.producer = producer
        self.topics = topics
        self.buffer: dict[str, list[dict[str, Any]]] = {}
        self.buffered = 0
        self.produce_errors: list[str] = []
        # messages the broker refused: sent again before every flush, so a
        # checkpoint never covers an alert or dead letter that did not arrive
        self.undelivered: list[tuple[str, bytes | None, bytes | None, Any]] = []
        self.alert_listeners: list[Any] = []
        # Delay from a result's creation (the tick whose watermark closed its
        # window) to its delivery; the latest ones, for benchmarks and /metrics.
        self.created: dict[str, list[tuple[float, int]]] = {}  # table -> (when, rows)
        self.delays: dict[str, deque[float]] = {
            "row": deque(maxlen=100_000),
            "alert": deque(maxlen=100_000),
        }

    # -- Outputs protocol (called by the pipeline) ----------------------------

    def rows(self, table: str, rows: list[dict[str, Any]]) -> None:
        self.buffer.setdefault(table, []).extend(rows)
        self.buffered += len(rows)
        self.created.setdefault(table, []).append((time.monotonic(), len(rows)))
        metrics.WINDOWS_CLOSED.labels(table).inc(len(rows))

    def alerts(self, alerts: list[Alert]) -> None:
        rows = []
        created = time.monotonic()
        for alert in alerts:
            self._produce(
                self.topics.alerts,
                msgspec.json.encode(alert),
                alert.entity,
                on_delivery=partial(self._alert_delivered, created),
            )
            metrics.ALERTS.labels(alert.kind, alert.severity, alert.status).inc()
            row = msgspec.structs.asdict(alert)
            row["details"] = orjson.dumps(alert.details, option=orjson.OPT_SORT_KEYS).decode()
            rows.append(row)
            for listener in self.alert_listeners:
                listener(alert)
        self.rows("alerts", rows)

    def rejected(self, message: RawMessage, rejection: Rejection) -> None:
        now = int(time.time() * 1000)
        raw_key, value = message.key(), message.value()
        key = raw_key.decode(errors="replace") if raw_key is not None else None
        letter = DeadLetter(
            source_topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
            key=key,
            raw=base64.b64encode(value or b"").decode(),
            error=rejection.error,
            reason=rejection.reason,
            ts=now,
        )
        self._produce(self.topics.dead_letter, msgspec.json.encode(letter), key)
        metrics.REJECTED.labels(message.topic(), rejection.reason).inc()
        self.rows("dead_letters", [msgspec.structs.asdict(letter)])

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
        self.rows(
            "late_events",
            [
                {
                    "monitor": monitor,
                    "source_topic": topic,
                    "partition": message.partition(),
                    "offset": message.offset(),
                    "event_ts": event_ts,
                    "watermark": watermark,
                    "window_start": window_start,
                    "key": key,
                }
            ],
        )

    # -- delivery -------------------------------------------------------------

    def _produce(
        self,
        topic: str,
        value: bytes | None,
        key: str | bytes | None,
        headers: dict[str, str] | None = None,
        on_delivery: Any = None,
    ) -> None:
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

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.produce_errors.append(str(err))
            self.undelivered.append((msg.topic(), msg.value(), msg.key(), msg.headers()))

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
