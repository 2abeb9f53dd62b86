"""A checkpoint larger than one record may be stops the worker with its reason, not the
producer's MSG_SIZE_TOO_LARGE (streams/connectors/checkpoints.py, docs/operations.md
"Checkpoint size"): it names the task, the sizes and what to change, and nothing of
that write is sent."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from streams.config import load_settings
from streams.connectors.checkpoints import (
    MAX_CHECKPOINT_BYTES,
    Checkpoint,
    CheckpointStore,
    CheckpointTooLarge,
    encode,
)
from streams.connectors.kafka import ensure_topics

# a store that never connects (a port nothing listens on; librdkafka's log of the refused
# connection silenced), for what is judged without a broker
CLIENT = {"bootstrap.servers": "127.0.0.1:9", "log_level": 0}


def _topics(broker: Any) -> Any:
    """Settings with topics of their own on the suite's broker, created."""
    prefix = f"cpsize-{uuid.uuid4().hex[:8]}"
    names = {f: f"{prefix}.{f}" for f in load_settings(env={}).topics.__struct_fields__}
    overrides = {"kafka.bootstrap": broker.bootstrap, "topics": names}
    settings = load_settings(env={}, overrides=overrides)
    ensure_topics(settings, partitions=1)
    return settings


def test_an_oversized_checkpoint_is_refused_with_its_reason_before_anything_is_sent(
    broker: Any,
) -> None:
    settings = _topics(broker)
    client = {"bootstrap.servers": broker.bootstrap}
    store = CheckpointStore(client, settings.topics.checkpoints, "g", max_bytes=4000)
    small = Checkpoint({"t": 1}, {"state": b"x" * 100})
    big = Checkpoint({"t": 1}, {"state": b"x" * 5000})
    assert len(encode(small)) <= 4000 < len(encode(big))
    with pytest.raises(CheckpointTooLarge) as refused:
        store.write({"ctr/0": small, "sensor/3": big}, timeout=1)
    reason = str(refused.value)
    assert "sensor/3" in reason and "more partitions" in reason and "Checkpoint size" in reason
    assert "ctr/0" not in reason
    # not even the small one was sent: the topic holds no checkpoint of the group (read to
    # its end as a restarting worker reads it)
    assert store.producer.flush(10) == 0
    assert store.load() == {}


def test_the_limit_is_the_producers_and_the_topics(broker: Any) -> None:
    """The store's limit is the checkpoints topic's own, as `ensure_topics` creates it on
    the real broker (read back with DescribeConfigs), and the producer's."""
    from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

    store = CheckpointStore(CLIENT, "checkpoints", "g")
    assert store.max_bytes == MAX_CHECKPOINT_BYTES == 100 * 1024 * 1024
    settings = _topics(broker)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    topic = ConfigResource(ResourceType.TOPIC, settings.topics.checkpoints)
    config = admin.describe_configs([topic])[topic].result(timeout=15)
    assert config["max.message.bytes"].value == str(store.max_bytes)
