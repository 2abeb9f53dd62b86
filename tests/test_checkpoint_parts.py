"""A checkpoint larger than one record is written as parts and a head naming them
(streams/connectors/checkpoints.py, docs/operations.md "Checkpoint size"), on the real
broker: it reads back as written, a write cut short leaves the previous checkpoint, the
parts a new write replaces are deleted, and every record of a key lands where the
producer's own partitioner puts the key."""

from __future__ import annotations

import uuid
import zlib
from typing import Any

import msgspec
import numpy as np
import pytest

from streams.config import load_settings
from streams.connectors.checkpoints import (
    MAX_RECORD_BYTES,
    PART_BYTES,
    Checkpoint,
    CheckpointStore,
    Head,
    encode,
    encode_head,
    part_key,
    split,
)
from streams.connectors.kafka import ensure_topics

# a store that never connects (a port nothing listens on; librdkafka's log of the refused
# connection silenced), for what is judged without a broker
CLIENT = {"bootstrap.servers": "127.0.0.1:9", "log_level": 0}


def _topics(broker: Any, partitions: int = 1) -> Any:
    """Settings with topics of their own on the suite's broker, created."""
    prefix = f"cpparts-{uuid.uuid4().hex[:8]}"
    names = {f: f"{prefix}.{f}" for f in load_settings(env={}).topics.__struct_fields__}
    overrides = {"kafka.bootstrap": broker.bootstrap, "topics": names}
    settings = load_settings(env={}, overrides=overrides)
    ensure_topics(settings, partitions=partitions)
    return settings


def _store(broker: Any, part_bytes: int = 4096, group: str = "g") -> CheckpointStore:
    settings = _topics(broker)
    client = {"bootstrap.servers": broker.bootstrap}
    return CheckpointStore(client, settings.topics.checkpoints, group, part_bytes=part_bytes)


def _records(store: CheckpointStore) -> list[tuple[bytes, bytes | None]]:
    """Every (key, value) of the store's topic, in order (read up to a marker written
    last: Tansu's high watermark is not to be trusted)."""
    from confluent_kafka import Consumer, TopicPartition

    marker = uuid.uuid4().hex.encode()
    store.producer.produce(store.topic, b"end", key=marker, partition=0)
    store.producer.flush(10)
    consumer = Consumer(
        {
            **store.client_config,
            "group.id": f"reader-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
        }
    )
    out: list[tuple[bytes, bytes | None]] = []
    try:
        consumer.assign([TopicPartition(store.topic, 0, 0)])
        for _ in range(200):
            for msg in consumer.consume(1000, 0.2):
                if msg.error():
                    continue
                if msg.key() == marker:
                    return out
                out.append((msg.key(), msg.value()))
    finally:
        consumer.close()
    raise AssertionError("the marker never came back")


def _big(seed: int, values: int = 5000) -> Checkpoint:
    """A checkpoint whose state encodes to ~45 KB of incompressible floats."""
    rng = np.random.default_rng(seed)
    return Checkpoint({"in": 100 + seed}, {"series": rng.normal(size=values).tolist()}, {"in": "t"})


def test_a_checkpoint_over_a_part_reads_back_as_written_next_to_a_small_one(
    broker: Any,
) -> None:
    store = _store(broker)
    small = Checkpoint({"in": 3}, {"state": b"x" * 100})
    big = _big(1)
    assert len(encode(small)) <= 4096 < len(encode(big)) // 10
    store.write({"ctr/0": small, "sensor/3": big}, timeout=10)
    assert store.load() == {"ctr/0": small, "sensor/3": big}
    keys = [key for key, _ in _records(store)]
    parts = [k for k in keys if k.startswith(b"g:sensor/3#")]
    assert len(parts) == len(list(split(encode(big), 4096))) >= 11
    # the head after its parts, and the small checkpoint one record as before
    assert keys.index(b"g:sensor/3") > max(keys.index(k) for k in parts)
    assert keys.count(b"g:ctr/0") == 1


def test_a_checkpoint_over_the_largest_record_is_written_with_the_default_parts(
    broker: Any,
) -> None:
    """The point of parts: a state larger than a record may be (the topic's 100 MiB
    max.message.bytes), here ~110 MB of incompressible floats, written and read back."""
    store = _store(broker, part_bytes=PART_BYTES)
    values = np.random.default_rng(7).normal(size=MAX_RECORD_BYTES // 9 + 2_000_000)
    big = Checkpoint({"in": 5}, {"series": values.tolist()}, {})
    size = len(encode(big))
    assert size > MAX_RECORD_BYTES
    store.write({"sensor/0": big}, timeout=120)
    del big
    loaded = store.load(timeout=120)["sensor/0"]
    assert loaded.positions == {"in": 5}
    assert np.array_equal(np.asarray(loaded.state["series"]), values)
    assert store.parts_of["sensor/0"][1] == -(-size // PART_BYTES)


def test_a_write_cut_short_leaves_the_previous_checkpoint(broker: Any) -> None:
    """Parts of a newer write whose head never came (the worker died between them), and a
    head whose parts are not all there: `load` restores the last whole checkpoint."""
    store = _store(broker)
    first = _big(1)
    store.write({"sensor/3": first}, timeout=10)
    newer = _big(2)
    blob = encode(newer)
    key = b"g:sensor/3"
    # the parts of a write, all but the last, and no head
    cut = uuid.uuid4().hex
    for index, part in enumerate(list(split(blob, 4096))[:-1]):
        store.producer.produce(store.topic, part, key=part_key(key, cut, index), partition=0)
    store.producer.flush(10)
    assert store.load() == {"sensor/3": first}
    # a head over parts of which one is missing (as a worker that lost its partition
    # mid-write would leave): passed over
    head = Head(cut, len(list(split(blob, 4096))), len(blob), zlib.crc32(blob))
    store.producer.produce(store.topic, encode_head(newer, head), key=key, partition=0)
    store.producer.flush(10)
    assert store.load() == {"sensor/3": first}
    # and one whose parts are all there but not the bytes it names (CRC-32): passed over
    whole = uuid.uuid4().hex
    for index, part in enumerate(split(blob, 4096)):
        value = part if index else b"!" + part[1:]
        store.producer.produce(store.topic, value, key=part_key(key, whole, index), partition=0)
    bad = Head(whole, head.count, head.size, head.crc32)
    store.producer.produce(store.topic, encode_head(newer, bad), key=key, partition=0)
    store.producer.flush(10)
    assert store.load() == {"sensor/3": first}
    # the next whole write is read
    store.write({"sensor/3": newer}, timeout=10)
    assert store.load() == {"sensor/3": newer}


def test_the_replaced_writes_parts_are_deleted_also_after_a_restart(broker: Any) -> None:
    store = _store(broker)
    store.write({"sensor/3": _big(1)}, timeout=10)
    first_id, first_count = store.parts_of["sensor/3"]
    store.write({"sensor/3": _big(2)}, timeout=10)
    second = store.parts_of["sensor/3"]
    assert second[0] != first_id
    records = _records(store)
    tombstones = {key for key, value in records if value is None}
    assert tombstones == {part_key(b"g:sensor/3", first_id, i) for i in range(first_count)}
    # a restarted worker's store learns the last write from the topic, and deletes its
    # parts when it writes a small checkpoint for the key
    restarted = CheckpointStore(store.client_config, store.topic, "g", part_bytes=4096)
    assert restarted.load() == {"sensor/3": _big(2)}
    assert restarted.parts_of == {"sensor/3": second}
    small = Checkpoint({"in": 500}, {"state": b"y"})
    restarted.write({"sensor/3": small}, timeout=10)
    tombstones = {key for key, value in _records(store) if value is None}
    assert {part_key(b"g:sensor/3", second[0], i) for i in range(second[1])} <= tombstones
    assert restarted.parts_of == {}
    assert restarted.load() == {"sensor/3": small}


def test_the_further_checkpoint_wins_whatever_its_form(broker: Any) -> None:
    """A late write of a worker that lost its partition (less far along its input) does
    not replace a further one, chunked or not."""
    store = _store(broker)
    late = CheckpointStore(store.client_config, store.topic, "g", part_bytes=4096)
    further = _big(5)  # positions {"in": 105}
    store.write({"sensor/3": further}, timeout=10)
    late.write({"sensor/3": _big(1)}, timeout=10)  # {"in": 101}, chunked
    late.write({"ctr/0": Checkpoint({"in": 1}, {"s": 1})}, timeout=10)
    store.write({"ctr/0": _big(3)}, timeout=10)  # further, chunked, after a small one
    assert store.load() == {"sensor/3": further, "ctr/0": _big(3)}


def test_records_of_a_key_go_where_the_producers_partitioner_puts_it(broker: Any) -> None:
    """Parts and head of a key share the partition librdkafka's default partitioner gives
    the key, so a key's records stay in order, in the partition earlier versions used."""
    from confluent_kafka import Producer

    settings = _topics(broker, partitions=1)
    topic = f"{settings.topics.checkpoints}-4"
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic, 4, 1)])[topic].result(15)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    chosen: dict[bytes, int] = {}
    keys = [f"g:sensor/{p}".encode() for p in range(40)]
    for key in keys:
        producer.produce(
            topic, b"v", key=key, on_delivery=lambda e, m: chosen.update({m.key(): m.partition()})
        )
    assert producer.flush(15) == 0
    store = CheckpointStore({"bootstrap.servers": broker.bootstrap}, topic, "g", part_bytes=4096)
    assert {k: store.partition_of(k) for k in keys} == chosen
    assert len(set(chosen.values())) == 4
    store = CheckpointStore({"bootstrap.servers": broker.bootstrap}, topic, "h", part_bytes=4096)
    store.write({"sensor/7": _big(1)}, timeout=10)
    assert store.load() == {"sensor/7": _big(1)}


def test_the_topics_record_limit_takes_a_part(broker: Any) -> None:
    """The checkpoints topic as `ensure_topics` creates it on the real broker (read back
    with DescribeConfigs) takes a part, and a store refuses parts it could not write."""
    from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

    settings = _topics(broker)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    topic = ConfigResource(ResourceType.TOPIC, settings.topics.checkpoints)
    config = admin.describe_configs([topic])[topic].result(timeout=15)
    assert int(config["max.message.bytes"].value) == MAX_RECORD_BYTES > PART_BYTES
    with pytest.raises(ValueError, match="part_bytes"):
        CheckpointStore(CLIENT, "checkpoints", "g", part_bytes=MAX_RECORD_BYTES)
    assert msgspec.msgpack.decode(encode_head(_big(1), Head("a" * 32, 2, 3, 4)))["parts"] == {
        "id": "a" * 32,
        "count": 2,
        "size": 3,
        "crc32": 4,
    }
