"""Kafka plumbing shared by the worker, the CLI and the tests (confluent-kafka)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from streams.config import Settings
from streams.connectors.checkpoints import MAX_RECORD_BYTES

# Tansu holds a group join for half the session timeout; 6 s keeps joins quick
# there and is a sane value on Apache Kafka too (`kafka.session_timeout_s` overrides it).
SESSION_TIMEOUT_MS = 6000
# The largest message the worker's producer sends (librdkafka's default, set
# explicitly because the sinks derive their bounds from it: a dead letter is
# cut to fit, see streams.connectors.dead_letters). Below Apache Kafka's default broker
# limit (1 MiB + 12), so what the producer accepts the broker accepts too.
MESSAGE_MAX_BYTES = 1_000_000


def producer(settings: Settings, **extra: Any) -> Any:
    from confluent_kafka import Producer

    conf = {
        **settings.kafka_client_config(),
        "linger.ms": 20,
        "batch.num.messages": 10_000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 500_000,
        # Idempotence needs InitProducerId, which Tansu rejects; results are
        # idempotent downstream instead (keys, ReplacingMergeTree, alert ids).
        "enable.idempotence": False,
        "message.max.bytes": MESSAGE_MAX_BYTES,
        **extra,
    }
    return Producer(conf)


def group_timeouts(settings: Settings) -> dict[str, int]:
    """The consumer group's session timeout (`kafka.session_timeout_s`, else
    SESSION_TIMEOUT_MS) and a heartbeat interval of at most a sixth of it (1 s at
    the default: a member misses several heartbeats before it is dropped)."""
    t = settings.kafka.session_timeout_s
    session_ms = SESSION_TIMEOUT_MS if t is None else round(t * 1000)
    return {"session.timeout.ms": session_ms, "heartbeat.interval.ms": min(1000, session_ms // 6)}


def consumer(settings: Settings, group_id: str, **extra: Any) -> Any:
    """A consumer without auto-commit. Large messages: librdkafka returns a record
    batch larger than `max.partition.fetch.bytes` (1 MiB) or `fetch.max.bytes` on its
    own rather than stall on it, up to `receive.message.max.bytes` (100 MB by default,
    kept above `fetch.max.bytes` + 512, which the worker's source sets to 64 MiB). So
    any message a broker takes up to 64 MiB is fetched, then dead-lettered as
    `too_large` past the decoder's limit (tests/test_poison_worker.py sends 5 MB)."""
    from confluent_kafka import Consumer

    return Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": group_id,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **group_timeouts(settings),
            **extra,
        }
    )


def input_topics(settings: Settings) -> list[str]:
    return list(settings.topics.inputs().values())


def ensure_topics(settings: Settings, partitions: int | None = None) -> None:
    """Create the project's topics where missing (existing ones are left alone).

    Input topics get the same partition count: the impression-click join
    needs impressions and clicks of one campaign in the same partition number.
    """
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(settings.kafka_client_config())
    parts = partitions or settings.kafka.partitions
    t = settings.topics
    wanted = {name: NewTopic(name, parts, 1) for name in input_topics(settings)}
    for name in (t.alerts, t.dead_letter, t.late_events, t.retrain_requests):
        wanted[name] = NewTopic(name, parts, 1)
    wanted[t.checkpoints] = NewTopic(
        t.checkpoints,
        1,
        1,
        config={"cleanup.policy": "compact", "max.message.bytes": str(MAX_RECORD_BYTES)},
    )
    existing = admin.list_topics(timeout=15).topics
    create_topics(admin, [topic for name, topic in wanted.items() if name not in existing])
    check_copartitioned(settings)


def create_topics(admin: Any, missing: Sequence[Any]) -> list[str]:
    """Create the missing topics (confluent_kafka NewTopic: name, partitions,
    replication, config) with `admin` (an AdminClient) and return their names.

    One that another worker created meanwhile is no error (TOPIC_ALREADY_EXISTS);
    any other failure raises RuntimeError naming the topic.
    """
    if not missing:
        return []
    names = []
    for name, future in admin.create_topics(list(missing), request_timeout=15).items():
        try:
            future.result()
        except Exception as exc:  # another worker may have created it meanwhile
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RuntimeError(f"cannot create topic {name}: {exc}") from exc
        names.append(name)
    return names


def check_copartitioned(settings: Settings) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(settings.kafka_client_config())
    topics = admin.list_topics(timeout=15).topics
    t = settings.topics
    counts = {n: len(topics[n].partitions) for n in (t.impressions, t.clicks) if n in topics}
    if len(set(counts.values())) > 1:
        raise RuntimeError(
            f"impressions and clicks must have the same number of partitions for the "
            f"join, found {counts}"
        )
