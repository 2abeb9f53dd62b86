"""Durable per-partition state: snapshots on a Kafka topic.

A checkpoint of (monitor, partition) holds the task's whole state and, per
input topic, the offset of the next message that state has not seen. It is
written only after every result it implies is in ClickHouse and on the output
topics, and before offsets are committed, so on restart:

    restore(state); skip input below the checkpoint's offsets

resumes exactly where the state left off: nothing lost, nothing counted twice.
A checkpoint also records the ids of its input topics: if a topic was deleted
and created again (or a memory-only broker restarted), its offsets start over
and the checkpoint no longer describes that log, so it is ignored.

The topic is compacted on Apache Kafka (one live record per key). Reading
scans it to the end, found by a marker record this reader writes itself,
because some brokers (Tansu) report wrong high watermarks. Where two records
of a key disagree (a worker that lost its partition wrote late), the one
further along its input wins: both are valid states of the same sequence.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import msgspec


@dataclass(slots=True)
class Checkpoint:
    positions: dict[str, int]  # input topic -> next offset
    state: dict[str, Any]
    # input topic -> Kafka topic id: offsets mean nothing in a recreated topic
    topic_ids: dict[str, str] = field(default_factory=dict)

    def progress(self) -> int:
        return sum(self.positions.values())


_MARKER = b"__streamwatch_marker__"

#: the largest encoded checkpoint record: the checkpoint producer's message.max.bytes
#: and the checkpoints topic's max.message.bytes (streams/connectors/kafka.py)
MAX_CHECKPOINT_BYTES = 100 * 1024 * 1024


class CheckpointTooLarge(RuntimeError):
    """A task's checkpoint is larger than one record may be: the producer would refuse
    it (MSG_SIZE_TOO_LARGE) at every try, so the worker stops, naming the task and what
    to change (docs/operations.md, "Checkpoint size")."""


def too_large(key: str, size: int, limit: int) -> str:
    """The reason a checkpoint of `size` bytes cannot be written.

    >>> too_large("sensor/3", 150 * 2**20, 100 * 2**20)[:75]
    'the checkpoint of sensor/3 is 150.0 MiB, over the 100.0 MiB one checkpoint '
    """
    return (
        f"the checkpoint of {key} is {size / 2**20:.1f} MiB, over the {limit / 2**20:.1f} "
        "MiB one checkpoint record may hold: that monitor holds too much state in one "
        "partition. Spread its entities over more partitions (kafka.partitions, with the "
        "input topics' partitions), or keep less per entity (for sensors: window_ms, "
        'score_history, rise_history); docs/operations.md, "Checkpoint size"'
    )


def encode(checkpoint: Checkpoint) -> bytes:
    return msgspec.msgpack.encode(
        {
            "positions": checkpoint.positions,
            "state": checkpoint.state,
            "topic_ids": checkpoint.topic_ids,
        }
    )


def decode(value: bytes) -> Checkpoint:
    data = msgspec.msgpack.decode(value)
    return Checkpoint(
        positions=data["positions"], state=data["state"], topic_ids=data.get("topic_ids", {})
    )


def key_of(monitor: str, partition: int) -> str:
    return f"{monitor}/{partition}"


class CheckpointStore:
    def __init__(
        self,
        client_config: dict[str, Any],
        topic: str,
        group_id: str,
        max_bytes: int = MAX_CHECKPOINT_BYTES,
    ) -> None:
        from confluent_kafka import Producer

        self.client_config = client_config
        self.topic = topic
        self.group_id = group_id
        self.max_bytes = max_bytes
        self.producer = Producer(
            {
                **client_config,
                "compression.type": "lz4",
                "message.max.bytes": max(1000, max_bytes),  # (librdkafka's least)
                "linger.ms": 0,
            }
        )

    def write(self, items: dict[str, Checkpoint], timeout: float = 30.0) -> None:
        """Write checkpoints and wait until the broker has every one; CheckpointTooLarge,
        before anything is sent, when one is larger than a record may be."""
        errors: list[str] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(str(err))

        blobs = {key: encode(checkpoint) for key, checkpoint in items.items()}
        for key, blob in blobs.items():
            if len(blob) > self.max_bytes:
                raise CheckpointTooLarge(too_large(key, len(blob), self.max_bytes))
        for key, blob in blobs.items():
            self.producer.produce(self.topic, blob, key=self._key(key), on_delivery=delivered)
        remaining = self.producer.flush(timeout)
        if remaining or errors:
            raise RuntimeError(f"checkpoint write failed: {errors or f'{remaining} undelivered'}")

    def topic_ids(self, topics: list[str], timeout: float = 15.0) -> dict[str, str]:
        """The broker's id of each topic (a recreated topic gets a new one)."""
        from confluent_kafka import TopicCollection
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(self.client_config)
        futures = admin.describe_topics(TopicCollection(topics), request_timeout=timeout)
        return {name: str(future.result().topic_id) for name, future in futures.items()}

    def _key(self, key: str) -> bytes:
        return f"{self.group_id}:{key}".encode()

    def load(self, timeout: float = 60.0) -> dict[str, Checkpoint]:
        """The latest checkpoint of every key of this consumer group."""
        from confluent_kafka import Consumer, TopicPartition

        metadata = self.producer.list_topics(self.topic, timeout=10)
        partitions = sorted(metadata.topics[self.topic].partitions)
        marker_ids = {}
        for p in partitions:
            marker = uuid.uuid4().hex.encode()
            marker_ids[p] = marker
            self.producer.produce(self.topic, marker, key=_MARKER, partition=p)
        self.producer.flush(timeout)

        consumer = Consumer(
            {
                **self.client_config,
                "group.id": f"{self.group_id}-checkpoint-reader",
                "enable.auto.commit": False,
                "fetch.max.bytes": 200 * 1024 * 1024,
                "max.partition.fetch.bytes": 200 * 1024 * 1024,
            }
        )
        prefix = f"{self.group_id}:".encode()
        found: dict[str, Checkpoint] = {}
        waiting = set(partitions)
        try:
            consumer.assign([TopicPartition(self.topic, p, 0) for p in partitions])
            import time

            deadline = time.monotonic() + timeout
            while waiting:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"reading checkpoints from {self.topic} timed out")
                for msg in consumer.consume(1000, 0.5):
                    if msg.error():
                        continue
                    key = msg.key() or b""
                    if key == _MARKER:
                        if msg.value() == marker_ids[msg.partition()]:
                            waiting.discard(msg.partition())
                        continue
                    if not key.startswith(prefix):
                        continue
                    name = key[len(prefix) :].decode()
                    checkpoint = decode(msg.value())
                    old = found.get(name)
                    if old is None or checkpoint.progress() >= old.progress():
                        found[name] = checkpoint
        finally:
            consumer.close()
        return found
