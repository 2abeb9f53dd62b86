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

A checkpoint is not bounded by the largest record a broker takes: one over
`PART_BYTES` encoded is written as parts, then a head naming them
(`CheckpointStore`), so a partition holding many sensors' windows checkpoints
as one holding a few (docs/operations.md, "Checkpoint size").
"""

from __future__ import annotations

import logging
import re
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from streams.connectors.partitioning import partition_for


@dataclass(slots=True)
class Checkpoint:
    positions: dict[str, int]  # input topic -> next offset
    state: dict[str, Any]
    # input topic -> Kafka topic id: offsets mean nothing in a recreated topic
    topic_ids: dict[str, str] = field(default_factory=dict)

    def progress(self) -> int:
        return sum(self.positions.values())


log = logging.getLogger(__name__)

_MARKER = b"__streamwatch_marker__"

#: a checkpoint larger than this is written as parts of at most this size and a head
#: record naming them: a task's state is bounded by memory, not by the largest record a
#: broker takes (Kafka's socket.request.max.bytes is 100 MiB by default)
PART_BYTES = 8 * 1024 * 1024
#: the largest record of the checkpoints topic (its max.message.bytes, streams/connectors/
#: kafka.py): a part, or a whole checkpoint written by a version before parts
MAX_RECORD_BYTES = 100 * 1024 * 1024

# a part's key: the head's key, "#", the write's id (32 hex digits), "/", its index
_PART = re.compile(rb"#([0-9a-f]{32})/([0-9]+)$")


def part_key(head: bytes, write_id: str, index: int) -> bytes:
    """The record key of part `index` of a chunked write of the checkpoint keyed `head`.

    >>> part_key(b"g:sensor/3", "0" * 32, 2)
    b'g:sensor/3#00000000000000000000000000000000/2'
    """
    return head + f"#{write_id}/{index}".encode()


class Head(msgspec.Struct):
    """What a chunked checkpoint's head record names: its write, the number of parts,
    the whole encoded checkpoint's length and CRC-32 (checked when it is put together)."""

    id: str
    count: int
    size: int
    crc32: int


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


def encode_head(checkpoint: Checkpoint, head: Head) -> bytes:
    """A chunked checkpoint's head: its positions and topic ids (what `load` compares)
    and the parts that hold the whole encoded checkpoint."""
    return msgspec.msgpack.encode(
        {"positions": checkpoint.positions, "topic_ids": checkpoint.topic_ids, "parts": head}
    )


def split(blob: bytes, part_bytes: int) -> Iterator[bytes]:
    """An encoded checkpoint in parts of at most `part_bytes`, in order, one at a time
    (a large checkpoint's parts are not all copied at once).

    >>> list(split(b"abcdefg", 3))
    [b'abc', b'def', b'g']
    """
    for start in range(0, len(blob), part_bytes):
        yield blob[start : start + part_bytes]


def joined(head: Head, parts: dict[int, bytes]) -> bytes | None:
    """The encoded checkpoint a head names, from the parts read under its write id; None
    when one is missing or the whole is not the one written (length or CRC-32).

    >>> blob = b"0123456789"
    >>> head = Head("0" * 32, 4, len(blob), zlib.crc32(blob))
    >>> joined(head, dict(enumerate(split(blob, 3)))) == blob
    True
    >>> joined(head, {0: b"012", 1: b"345", 3: b"9"}) is None
    True
    """
    if sorted(parts) != list(range(head.count)):
        return None
    blob = b"".join(parts[i] for i in range(head.count))
    if len(blob) != head.size or zlib.crc32(blob) != head.crc32:
        return None
    return blob


def key_of(monitor: str, partition: int) -> str:
    return f"{monitor}/{partition}"


class CheckpointStore:
    """Checkpoints of one consumer group on the checkpoints topic.

    A checkpoint up to `part_bytes` encoded is one record, keyed `GROUP:MONITOR/PARTITION`.
    A larger one is written in two steps: its parts (keys `part_key`), all acknowledged
    by the broker, then a head record under the checkpoint's key naming them (`Head`), so
    a head is never read before its parts and a write cut short leaves the previous head
    and its parts as they were. The parts of the write a new head replaces are then
    deleted (tombstones, which a compacted topic drops). Every record of a key goes to
    one partition of the checkpoints topic (`partition_of`), where order holds.
    """

    def __init__(
        self,
        client_config: dict[str, Any],
        topic: str,
        group_id: str,
        part_bytes: int = PART_BYTES,
    ) -> None:
        from confluent_kafka import Producer

        if not 0 < part_bytes <= MAX_RECORD_BYTES - 1024 * 1024:
            raise ValueError(f"part_bytes {part_bytes} is not in (0, 99 MiB]")
        self.client_config = client_config
        self.topic = topic
        self.group_id = group_id
        self.part_bytes = part_bytes
        self.producer = Producer(
            {
                **client_config,
                "compression.type": "lz4",
                # a part and its record overhead; a head or a tombstone is small
                "message.max.bytes": part_bytes + 1024 * 1024,
                "linger.ms": 0,
            }
        )
        # checkpoint key -> (write id, parts) of its last chunked write, whose parts the
        # next write of that key deletes
        self.parts_of: dict[str, tuple[str, int]] = {}
        self._partitions: int | None = None

    def partition_of(self, key: bytes) -> int:
        """The checkpoints topic's partition of every record of one checkpoint key:
        `partition_for` the head's key, librdkafka's default partitioner's choice, so a
        key stays where earlier versions wrote it (tests/test_checkpoint_parts.py checks
        it against the producer's own choice)."""
        if self._partitions is None:
            metadata = self.producer.list_topics(self.topic, timeout=10)
            self._partitions = len(metadata.topics[self.topic].partitions)
        return partition_for(key, max(1, self._partitions))

    def write(self, items: dict[str, Checkpoint], timeout: float = 30.0) -> None:
        """Write checkpoints and wait until the broker has every one (a large one's parts
        first, then its head: `CheckpointStore`); RuntimeError when one cannot be."""
        deadline = time.monotonic() + timeout
        errors: list[str] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(str(err))

        records: list[tuple[bytes, bytes]] = []  # (key, value) sent after every part
        chunked: dict[str, tuple[str, int]] = {}
        for name, checkpoint in items.items():
            key = self._key(name)
            blob = encode(checkpoint)
            if len(blob) <= self.part_bytes:
                records.append((key, blob))
                continue
            write_id = uuid.uuid4().hex
            count = -(-len(blob) // self.part_bytes)
            head = Head(write_id, count, len(blob), zlib.crc32(blob))
            for index, part in enumerate(split(blob, self.part_bytes)):
                self._produce(part_key(key, write_id, index), part, key, delivered, deadline)
            del blob, part
            records.append((key, encode_head(checkpoint, head)))
            chunked[name] = (write_id, head.count)
        if chunked:
            self._flush(errors, deadline)  # every part is the broker's before any head
        for key, value in records:
            self._produce(key, value, key, delivered, deadline)
        self._flush(errors, deadline)
        self._delete_replaced_parts(items, chunked, deadline)

    def _delete_replaced_parts(
        self, items: dict[str, Checkpoint], chunked: dict[str, tuple[str, int]], deadline: float
    ) -> None:
        """Tombstones for the parts of the writes just replaced: on a compacted topic the
        broker then drops them. Best effort: a part left behind is never read again (no
        head names it), only kept until the topic is cleaned."""
        for name in items:
            old = self.parts_of.pop(name, None)
            if name in chunked:
                self.parts_of[name] = chunked[name]
            if old is None or old == chunked.get(name):
                continue
            key = self._key(name)
            for index in range(old[1]):
                self._produce(part_key(key, old[0], index), None, key, None, deadline)
        self.producer.flush(max(0.0, deadline - time.monotonic()))

    def _produce(
        self, key: bytes, value: bytes | None, head: bytes, on_delivery: Any, deadline: float
    ) -> None:
        """One record into the producer's queue, waiting for room while the queue is full
        (a large checkpoint's parts may be more than librdkafka buffers at once)."""
        partition = self.partition_of(head)
        while True:
            try:
                self.producer.produce(
                    self.topic, value, key=key, partition=partition, on_delivery=on_delivery
                )
                return
            except BufferError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        "checkpoint write failed: the producer's queue stayed full"
                    ) from None
                self.producer.poll(0.1)

    def _flush(self, errors: list[str], deadline: float) -> None:
        remaining = self.producer.flush(max(0.0, deadline - time.monotonic()))
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
        reader = _Reader(f"{self.group_id}:".encode())
        waiting = set(partitions)
        try:
            consumer.assign([TopicPartition(self.topic, p, 0) for p in partitions])
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
                    reader.read(key, msg.value())
        finally:
            consumer.close()
        self.parts_of = reader.parts_of()
        return reader.found()


@dataclass(slots=True)
class _Best:
    """The checkpoint of a key further along its input than any read before it: decoded
    (one record), or its encoded whole put together from parts `parts` (write id,
    count), decoded only if it stays the best, at the end."""

    progress: int
    checkpoint: Checkpoint | bytes
    parts: tuple[str, int] | None = None


class _Reader:
    """The checkpoints topic read in order, one record at a time (`CheckpointStore.load`).

    Every record of a key is in one partition, in the order written, so a head comes
    after its parts: the parts read under a key are kept until its next head, which takes
    those of its write and drops the rest (a write cut short, or one a new head
    replaced). Of two heads or records of a key the one further along its input wins
    (a worker that lost its partition may have written late); a head whose parts are not
    all there (a worker that lost its partition mid-write) is passed over with a warning.
    """

    def __init__(self, prefix: bytes) -> None:
        self.prefix = prefix
        self.best: dict[str, _Best] = {}
        self.pending: dict[str, dict[str, dict[int, bytes]]] = {}  # key -> write id -> parts

    def read(self, key: bytes, value: bytes | None) -> None:
        if value is None or not key.startswith(self.prefix):
            return  # a tombstone, or another group's
        part = _PART.search(key)
        if part is not None:
            name = key[len(self.prefix) : part.start()].decode()
            write_id = part.group(1).decode()
            self.pending.setdefault(name, {}).setdefault(write_id, {})[int(part.group(2))] = value
            return
        name = key[len(self.prefix) :].decode()
        data = msgspec.msgpack.decode(value)
        written = self.pending.pop(name, {})
        progress = sum(data["positions"].values())
        old = self.best.get(name)
        if old is not None and progress < old.progress:
            return
        if "parts" not in data:
            checkpoint = Checkpoint(data["positions"], data["state"], data.get("topic_ids", {}))
            self.best[name] = _Best(progress, checkpoint)
            return
        head = msgspec.convert(data["parts"], Head)
        blob = joined(head, written.get(head.id, {}))
        if blob is None:
            log.warning(
                "checkpoint %s: a head whose parts are not all on the topic (write %s, "
                "%d parts), passed over",
                name,
                head.id,
                head.count,
            )
            return
        self.best[name] = _Best(progress, blob, (head.id, head.count))

    def found(self) -> dict[str, Checkpoint]:
        return {
            name: c if isinstance(c := best.checkpoint, Checkpoint) else decode(c)
            for name, best in self.best.items()
        }

    def parts_of(self) -> dict[str, tuple[str, int]]:
        return {name: best.parts for name, best in self.best.items() if best.parts is not None}
