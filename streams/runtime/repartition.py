"""Re-keying through internal topics, the Kafka way (Kafka Streams' `selectKey` +
repartition topic, Quix Streams' `group_by`, Flink's `keyBy`).

Two uses, one mechanism:

- **Experiments.** Monitors whose operator declares `keyed_by = "experiment"`
  (SRM, ...) read the events that carry an `experiment` from an internal topic
  keyed by it, `{group_id}-experiments-{logical}-repartition`: one worker then
  owns each experiment whole, whatever campaigns and partitions its traffic
  comes from.
- **Keying per input topic** (`[keying]` in the configuration): `strict` (v1:
  a message whose key is missing or differs from its key field is dead-lettered,
  `empty_key` / `key_mismatch`) or `repartition`: the key is not checked and
  every event of the topic is re-keyed by its key field through
  `{group_id}-{logical}-repartition`, which the topic's monitors read instead.
  Every event goes through it, not only mis-keyed ones, so all events of one key
  meet in one partition whatever the producer's partitioner did.

How it stays exactly-once in effect under at-least-once delivery and kill -9:

1. A *forwarder* task per input partition (a task of the pseudo-monitor
   `repartition`, with its own checkpointed input positions like every task)
   produces each decoded event's original bytes to the internal topic, keyed
   and partitioned by `crc32(key) % partitions` (deterministic across processes
   and clients: `streams.connectors.partitioning.partition_for`), with a header
   naming its source `topic:partition:offset`.
2. Forwarded records leave through a dedicated producer with one request in
   flight and unbounded retries, so the records of one source partition reach an
   internal partition in source-offset order (`streams.runtime.sinks.Sinks.forward`).
3. The runtime flushes that producer (with every other output) before it writes
   a checkpoint, and commits input offsets only after the checkpoint: an input
   offset is committed only when what it forwarded is on the broker.
4. Event time: a reader's watermark on an internal topic is that of its
   slowest upstream partition (Flink merges its input channels' watermarks
   likewise), and each forwarder sends, after its records, a progress record
   (header `streamwatch-progress`, no key or value) to every internal
   partition whenever its source's event time moves by a second: a re-keyed
   stream advances, and its windows close, even when its upstream partitions
   send no more events of its keys. An upstream partition silent for
   `repartition_idle_s` (its forwarder crashed or is moving) stops holding it.
5. After a crash the forwarder replays from its checkpoint and forwards some
   records again. Each task reading an internal topic keeps, per source
   partition, the next source offset it has not applied (in its checkpoint,
   next to its state) and skips records below it: a replayed duplicate is
   never counted twice, whichever worker forwarded it.

The internal topics are created with the input topic's partition count, and
joined to the same consumer group's subscription: the range assignor gives
partition p of every topic to one member, so the forwarder of input partition
p and the readers of internal partition p live in one worker, and internal
partition p moves with its checkpointed state on a rebalance like any other.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from operators.base import Operator
from schemas.events import INPUT_EVENTS, KEY_FIELD

if TYPE_CHECKING:
    from streams.config import Settings

log = logging.getLogger("streamwatch.repartition")

Keying = Literal["strict", "repartition"]
FORWARDER = "repartition"  # the pseudo-monitor's name (checkpoint keys "repartition/<p>")
SOURCE_HEADER = "streamwatch-source"  # "topic:partition:offset" of the forwarded event
# on a progress record (no key, no value): how far its source has got in event time
PROGRESS_HEADER = "streamwatch-progress"
EXPERIMENT = "experiment"


def experiment_topic(group_id: str, logical: str) -> str:
    """The internal topic carrying `logical` events that have an experiment, keyed by it."""
    return f"{group_id}-experiments-{logical}-repartition"


def keyed_topic(group_id: str, logical: str) -> str:
    """The internal topic carrying every `logical` event re-keyed by its key field."""
    return f"{group_id}-{logical}-repartition"


def source_header(topic: str, partition: int, offset: int) -> bytes:
    return f"{topic}:{partition}:{offset}".encode()


def parse_source(value: bytes) -> tuple[str, int]:
    """("topic:partition", offset) of a forwarded record's source header.

    >>> parse_source(b"imp:3:1234")
    ('imp:3', 1234)
    """
    text = value.decode()
    source, _, offset = text.rpartition(":")
    return source, int(offset)


@dataclass(frozen=True, slots=True)
class Route:
    """Forward events of a source topic to `topic`, keyed by the event's `key_field`
    (events whose field is empty are not forwarded on this route)."""

    topic: str
    key_field: str


@dataclass(slots=True)
class Plan:
    """What the re-keying adds to a worker."""

    # source Kafka topic -> its routes
    routes: dict[str, list[Route]] = field(default_factory=dict)
    # source Kafka topic -> its logical name (forwarder's sources)
    sources: dict[str, str] = field(default_factory=dict)
    # internal topic -> (logical event type, field its key must equal)
    internal: dict[str, tuple[str, str]] = field(default_factory=dict)
    # internal topic -> the input topic whose partition count it takes
    partition_source: dict[str, str] = field(default_factory=dict)
    # internal topic -> its partition count (known once the topics exist)
    partitions: dict[str, int] = field(default_factory=dict)
    # input topics read without the key check (keying = "repartition")
    unchecked: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.routes)

    def targets(self, topic: str, event: Any) -> list[tuple[str, bytes]]:
        """(internal topic, key) pairs an event of `topic` is forwarded to."""
        out = []
        for route in self.routes.get(topic, ()):
            key = getattr(event, route.key_field, None)
            if key:
                out.append((route.topic, key.encode()))
        return out


def keying_of(settings: Settings, logical: str) -> Keying:
    return settings.keying.get(logical, "strict")  # type: ignore[return-value]


def plan(settings: Settings, readers: Sequence[tuple[str, tuple[str, ...], str | None]]) -> Plan:
    """The routes for these monitors: (name, logical sources, keyed_by) each.

    Returns the plan; `reader_topic` then says which topic a monitor reads."""
    group = settings.kafka.group_id
    p = Plan()
    for _, sources, keyed_by in readers:
        for logical in sources:
            source = settings.topics.of(logical)
            if keyed_by == EXPERIMENT:
                if "experiment" not in INPUT_EVENTS[logical].__struct_fields__:
                    raise ValueError(f"{logical} events carry no experiment to key by")
                target = experiment_topic(group, logical)
                route = Route(target, "experiment")
                p.internal[target] = (logical, "experiment")
            elif keying_of(settings, logical) == "repartition":
                target = keyed_topic(group, logical)
                route = Route(target, KEY_FIELD[logical])
                p.internal[target] = (logical, KEY_FIELD[logical])
                p.unchecked[source] = logical
            else:
                continue
            p.sources[source] = logical
            p.partition_source[target] = source
            routes = p.routes.setdefault(source, [])
            if route not in routes:
                routes.append(route)
            p.partitions.setdefault(target, settings.kafka.partitions)
    return p


def reader_topic(settings: Settings, logical: str, keyed_by: str | None) -> str:
    """The Kafka topic a monitor reads for its logical source."""
    if keyed_by == EXPERIMENT:
        return experiment_topic(settings.kafka.group_id, logical)
    if keying_of(settings, logical) == "repartition":
        return keyed_topic(settings.kafka.group_id, logical)
    return settings.topics.of(logical)


class Passthrough(Operator):
    """The forwarder's operator: it keeps no state and emits nothing (the pipeline
    forwards its events); its task exists for its checkpointed input positions."""

    def __init__(self, sources: tuple[str, ...]) -> None:
        super().__init__()
        self.sources = sources

    def feed(self, source: str, events: Sequence[Any]) -> None:
        pass

    def advance(self, watermark: int) -> None:
        pass

    def snapshot(self) -> dict[str, Any]:
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        pass


def ensure_internal_topics(settings: Settings, p: Plan) -> None:
    """Create the internal topics where missing, each with its input topic's
    partition count, and record the counts in the plan. An existing internal topic
    with another count is an error (keys would land elsewhere than their peers)."""
    if not p.internal:
        return
    from confluent_kafka.admin import AdminClient, NewTopic

    from streams.connectors.kafka import create_topics

    admin = AdminClient(settings.kafka_client_config())
    topics = admin.list_topics(timeout=15).topics
    missing = []
    for target, source in sorted(p.partition_source.items()):
        wanted = len(topics[source].partitions) if source in topics else settings.kafka.partitions
        if target in topics:
            have = len(topics[target].partitions)
            if have != wanted:
                raise RuntimeError(
                    f"internal topic {target} has {have} partitions, its input {source} "
                    f"{wanted}: delete it (it holds only re-keyed copies) and restart"
                )
        else:
            missing.append(NewTopic(target, wanted, 1))
        p.partitions[target] = wanted
    for name in create_topics(admin, missing):
        log.info("created internal topic %s", name)


def forward_producer_config() -> dict[str, Any]:
    """The forwarding producer's settings: order per partition kept through retries
    (one request in flight; idempotence would allow 5 but Tansu refuses it), and
    retries until delivered (a record given up on would leave a gap that a later
    record's source offset hides from the de-duplication)."""
    return {
        "max.in.flight.requests.per.connection": 1,
        "message.send.max.retries": 2_147_483_647,
        "delivery.timeout.ms": 2_147_483_647,
        "linger.ms": 5,
    }
