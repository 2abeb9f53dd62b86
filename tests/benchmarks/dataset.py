"""Benchmark data: simulated traffic pre-loaded into the broker before anything is timed.

Three datasets, each on its own topics, produced by `streams.cli.simulate` (the
same generator as the demo and the end-to-end tests, so the messages are the
product's real wire format):

- `ctr`: impressions and clicks (`keys` campaigns, ~4 % CTR, duplicate and
  orphan clicks), with CTR-drop incidents so alerts fire;
- `sensor`: readings of `keys` sensors (three metrics each, one per second),
  with spikes, a sustained rise and a regime change;
- `drift`: inference logs of a few models (five numeric features and a
  categorical one), with a feature drift, a prediction shift and latency and
  error spikes;
- `quality` (not loaded by default: `bench.py --set quality`): the `drift`
  traffic with its labels (ground truth) on a topic of its own, as the
  simulator publishes them: ~0.9 labels per inference log in the long run
  (failed requests get none, 10 % never come), each after a log-normal delay
  (median 45 s, at most 540 s, within the label delay the contender gives
  the quality monitor), and a concept drift on one model so a `quality`
  alert fires.

Production stops at exactly `events` messages. The end offset of every
partition comes from the delivery reports, not from the broker's high
watermark (Tansu reports a wrong one): a contender is done when it has read
up to those offsets.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: the Quix Streams contender imports `Dataset` from a
    # venv of its own without numpy or click, which the simulator's imports need
    from streams.cli.simulate import Scenario

KINDS = ("ctr", "sensor", "drift")  # what the default run loads
EXTRA_KINDS = ("quality",)  # loaded only when a contender set asks for it
# labels per message of the `quality` stream: measured on its first 200 k messages
# (116,087 inference logs, 83,913 labels; the last ones still pending), to size its scenario
LOG_SHARE_WITH_LABELS = 0.58
START_MS = 1_790_000_000_000  # 2026-09-21: inside the schema's accepted years


@dataclass
class Dataset:
    kind: str  # one of KINDS + EXTRA_KINDS
    topics: dict[str, str]  # logical topic -> Kafka topic
    partitions: int
    keys: int
    events: int
    event_seconds: int  # how much event time the data covers
    end_offsets: dict[str, dict[int, int]] = field(default_factory=dict)  # topic -> p -> end

    def messages_on(self, logical: str) -> int:
        """How many messages the dataset holds on one logical topic (e.g. "inference-logs")."""
        return sum(self.end_offsets.get(self.topics.get(logical, ""), {}).values())

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["end_offsets"] = {
            t: {str(p): o for p, o in ps.items()} for t, ps in self.end_offsets.items()
        }
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Dataset:
        data = dict(data)
        data["end_offsets"] = {
            t: {int(p): o for p, o in ps.items()} for t, ps in data["end_offsets"].items()
        }
        return cls(**data)


def scenario(
    kind: str, events: int, keys: int, seed: int = 11, duration_s: int | None = None
) -> Scenario:
    """A scenario of one traffic kind sized to a little over `events` messages.

    `duration_s` (drift and quality) sets the event time instead: `drift` with
    the duration of a `quality` scenario is the same inference logs without
    their labels (the labels draw from a random stream of their own and the
    concept drift changes only labels), the pair `bench.py --set quality` compares."""
    from streams.cli.simulate import Incident, Scenario

    # labels and the regressor (v2) stay off: the datasets are what they were before
    quiet = {
        "impressions_per_s": 0.0,
        "inference_per_s": 0.0,
        "sensors": 0,
        "models": 0,
        "labels": False,
        "regressor_per_s": 0.0,
    }
    if kind == "ctr":
        rate = 300.0  # impressions per event-second; clicks add ~4.3 %
        duration = int(events / (rate * 1.043)) + 120
        incidents = [
            Incident("ctr_drop", f"cmp-{i:03d}", duration * (0.3 + 0.1 * k), 900, 0.3)
            for k, i in enumerate(range(2, min(keys, 6)))
        ]
        params = {
            **quiet,
            "impressions_per_s": rate,
            "campaigns": keys,
            "experiment_campaigns": min(2, keys),
            "users": 100_000,
        }
    elif kind == "sensor":
        duration = events // keys + 60
        incidents = [
            Incident("sensor_spike", "sensor-01", duration * 0.3, 3, 8.0),
            Incident("sensor_rise", "sensor-02", duration * 0.4, 600, 10.0),
            Incident("sensor_regime", f"sensor-{3 % keys:02d}", duration * 0.6, 300, 6.0),
        ]
        params = {**quiet, "sensors": keys, "sensor_readings_per_s": 1.0}
    elif kind in ("drift", "quality"):
        rate = 300.0  # inference logs per event-second over all models
        per_s = rate / LOG_SHARE_WITH_LABELS if kind == "quality" else rate
        duration = duration_s or int(events / per_s) + 60
        incidents = [
            Incident("feature_drift", "model-0/distance_km", duration * 0.5, duration * 0.2, 1.5),
            Incident("prediction_shift", f"model-{1 % keys}", duration * 0.6, duration * 0.2, 1.5),
            Incident("latency_spike", "model-0", duration * 0.3, 300, 3.0),
            Incident("error_spike", f"model-{1 % keys}", duration * 0.35, 300, 0.2),
        ]
        params = {**quiet, "inference_per_s": rate, "models": keys}
        if kind == "quality":
            # the labels draw from a random stream of their own, so the inference logs
            # are those of `drift` of the same duration
            params["labels"] = True
            incidents.append(
                Incident("concept_drift", f"model-{2 % keys}", duration * 0.4, duration * 0.4, 0.4)
            )
    else:
        known = ", ".join(KINDS + EXTRA_KINDS)
        raise ValueError(f"unknown dataset kind {kind!r}; known: {known}")
    return Scenario(
        start_ms=START_MS, duration_s=duration, seed=seed, incidents=incidents, **params
    )


def load(
    bootstrap: str,
    kind: str,
    events: int,
    partitions: int,
    keys: int,
    prefix: str,
    progress: Any = None,
    duration_s: int | None = None,
) -> Dataset:
    """Create the dataset's topics and produce exactly `events` messages into them."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from streams.cli.simulate import Simulator

    sc = scenario(kind, events, keys, duration_s=duration_s)
    logical = {
        "ctr": ("impressions", "clicks"),
        "sensor": ("sensor-readings",),
        "drift": ("inference-logs",),
        "quality": ("inference-logs", "labels"),
    }[kind]
    topics = {name: f"{prefix}-{name}" for name in logical}
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics.values()]
    )
    for future in futures.values():
        future.result(30)

    ends: dict[str, dict[int, int]] = {t: {} for t in topics.values()}
    errors: list[str] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
            return
        per = ends[msg.topic()]
        if msg.offset() + 1 > per.get(msg.partition(), 0):
            per[msg.partition()] = msg.offset() + 1

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.num.messages": 10_000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    sent = 0
    last_ts_s = 0
    for topic, key, value in Simulator(sc).messages():
        if topic == "__tick__":
            last_ts_s = (int(value) - START_MS) // 1000
            continue
        while True:
            try:
                producer.produce(topics[topic], value, key=key.encode(), on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        sent += 1
        if sent % 20_000 == 0:
            producer.poll(0)
            if progress:
                progress(sent, events)
        if sent >= events:
            break
    if producer.flush(120) or errors:
        raise RuntimeError(f"pre-loading {kind} failed: {errors[:3]}")
    for name in topics.values():  # a partition that got nothing ends at 0
        for p in range(partitions):
            ends[name].setdefault(p, 0)
    if sent < events:
        raise RuntimeError(f"the {kind} scenario produced only {sent} of {events} messages")
    return Dataset(kind, topics, partitions, keys, sent, last_ts_s, ends)
