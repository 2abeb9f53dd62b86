"""The delivery log: a compacted topic holding what is pending, what is done and
which alerts Alertmanager is told are firing, partitioned like the alerts topic.

    key  job/<receiver>/<alert_id>    value {"t": "job", "receiver", "alert", "queued_at", ...}
                                      then  {"t": "done", "at"}   once delivered
    key  firing/<fingerprint>         value {"t": "firing", "alert"} | {"t": "cleared"}
    key  marker/<nonce>               value {"t": "marker"}   (end of a replay, see below)

The last value of a key is its state, so compaction (Apache Kafka) keeps the
log small without changing what a replay finds. A replay reads a partition
from its start up to a marker it has just written there: that is the end of
the partition whatever the broker reports as its high watermark (Tansu's is
wrong, see shared notes).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.config import Settings
from streams.connectors.threads import in_thread

log = logging.getLogger("streamwatch.delivery")
SEP = "/"
MAX_DONE = 200_000  # done marks remembered per partition (older ones: compaction's job)


def job_key(receiver: str, alert_id: str) -> bytes:
    return f"job{SEP}{receiver}{SEP}{alert_id}".encode()


def firing_key(fingerprint: str) -> bytes:
    return f"firing{SEP}{fingerprint}".encode()


@dataclass
class PartitionState:
    """What the delivery log says about one partition."""

    pending: dict[bytes, dict[str, Any]] = field(default_factory=dict)  # key -> job
    done: OrderedDict[bytes, None] = field(default_factory=OrderedDict)
    firing: dict[str, dict[str, Any]] = field(default_factory=dict)  # fingerprint -> alert

    def apply(self, key: bytes, value: dict[str, Any]) -> None:
        kind = value.get("t")
        if kind == "job":
            if key not in self.done:
                self.pending[key] = value
        elif kind == "done":
            self.pending.pop(key, None)
            self.mark_done(key)
        elif kind == "firing":
            self.firing[key.decode().split(SEP, 1)[1]] = value["alert"]
        elif kind == "cleared":
            self.firing.pop(key.decode().split(SEP, 1)[1], None)

    def mark_done(self, key: bytes) -> None:
        self.done[key] = None
        self.done.move_to_end(key)
        while len(self.done) > MAX_DONE:
            self.done.popitem(last=False)


class Journal:
    """Appends to and replays the delivery log (confluent-kafka, in threads)."""

    def __init__(self, settings: Settings) -> None:
        from streams.connectors import kafka

        self.settings = settings
        self.topic = settings.delivery.topic or f"{settings.kafka.group_id}-delivery"
        self.producer = kafka.producer(settings, **{"linger.ms": 2})
        self.lock = asyncio.Lock()

    def ensure_topic(self) -> None:
        """Create the log where missing, with the alert topic's partition count."""
        from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

        admin = AdminClient(self.settings.kafka_client_config())
        topics = admin.list_topics(timeout=15).topics
        alerts = topics.get(self.settings.topics.alerts)
        parts = len(alerts.partitions) if alerts else self.settings.kafka.partitions
        if self.topic in topics:
            # the alerts topic gained partitions: the log follows (a job is written
            # to the partition number of its alert)
            have = len(topics[self.topic].partitions)
            if have < parts:
                futures = admin.create_partitions([NewPartitions(self.topic, parts)])
                for future in futures.values():
                    try:
                        future.result()
                    except Exception as exc:
                        raise RuntimeError(
                            f"the delivery log {self.topic} has {have} partitions and the "
                            f"alerts topic {parts}, and adding partitions failed ({exc}): "
                            f"add them, or set delivery.topic to a new topic"
                        ) from None
            return
        new = NewTopic(self.topic, parts, 1, config={"cleanup.policy": "compact"})
        for name, future in admin.create_topics([new], request_timeout=15).items():
            try:
                future.result()
            except Exception as exc:  # another worker may have created it meanwhile
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise RuntimeError(f"cannot create topic {name}: {exc}") from exc

    async def append(self, partition: int, records: list[tuple[bytes, dict[str, Any]]]) -> None:
        """Write records and return once the broker has every one (else raise)."""
        if not records:
            return
        errors: list[Any] = []

        def report(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(err)

        for key, value in records:
            self.producer.produce(
                self.topic,
                key=key,
                value=orjson.dumps(value),
                partition=partition,
                on_delivery=report,
            )
        async with self.lock:  # one flush at a time; each waits for every record so far
            remaining = await in_thread(self.producer.flush, 30)
        if remaining or errors:
            raise RuntimeError(f"delivery log write failed: {errors[:1] or 'timeout'}")

    async def replay(self, partition: int) -> PartitionState:
        nonce = uuid.uuid4().hex
        await self.append(partition, [(f"marker{SEP}{nonce}".encode(), {"t": "marker"})])
        return await in_thread(self._read, partition, nonce)

    def _read(self, partition: int, nonce: str) -> PartitionState:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer(
            {
                **self.settings.kafka_client_config(),
                "group.id": f"streamwatch-delivery-replay-{nonce}",  # never commits
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        state = PartitionState()
        marker = f"marker{SEP}{nonce}".encode()
        deadline = time.monotonic() + 300
        n = 0
        try:
            consumer.assign([TopicPartition(self.topic, partition, OFFSET_BEGINNING)])
            while time.monotonic() < deadline:
                for msg in consumer.consume(1000, 0.5):
                    if msg.error():
                        continue
                    key = msg.key() or b""
                    if key == marker:
                        log.info(
                            "delivery log partition %d replayed: %d records, %d pending, %d firing",
                            partition,
                            n,
                            len(state.pending),
                            len(state.firing),
                        )
                        return state
                    n += 1
                    if msg.value() is not None:
                        state.apply(key, orjson.loads(msg.value()))
            raise RuntimeError(f"delivery log partition {partition}: replay did not finish")
        finally:
            consumer.close()
