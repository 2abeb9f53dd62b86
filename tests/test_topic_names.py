"""Logical topic names are defined once (`schemas.events.INPUT_TOPICS`) and mapped to
Kafka topics by the configuration (`TopicNames.inputs`), which the worker, the CLI, the
topic set-up and the demo all use (issue 12: the demo published to the default names
even when the configuration renamed them)."""

from __future__ import annotations

import time

import pytest

from schemas.events import INPUT_EVENTS, INPUT_TOPICS, KEY_FIELD
from streams.cli.demo import publish_traffic
from streams.cli.simulate import Scenario
from streams.config import TopicNames, load_settings
from streams.connectors import kafka
from streams.connectors.embedded import EmbeddedBroker
from streams.runtime.monitors import OPERATORS, build_monitors
from tests.harness import consume_all


def test_one_list_of_logical_input_topics() -> None:
    assert set(INPUT_TOPICS) == set(INPUT_EVENTS) == set(KEY_FIELD)
    sources = {s for operator_type, _ in OPERATORS.values() for s in operator_type.sources}
    assert sources <= set(INPUT_TOPICS)
    assert TopicNames().inputs() == {t: t for t in INPUT_TOPICS}
    with pytest.raises(KeyError, match="no topic 'impresions'"):
        TopicNames().of("impresions")


def renamed(prefix: str) -> dict[str, str]:
    return {f"topics.{t.replace('-', '_')}": f"{prefix}.{t}" for t in INPUT_TOPICS}


def test_worker_and_topic_setup_read_the_renamed_topics() -> None:
    settings = load_settings(env={}, overrides=renamed("x"))
    assert kafka.input_topics(settings) == [f"x.{t}" for t in INPUT_TOPICS]
    specs = build_monitors(settings)
    (plan,) = [s.plan for s in specs if s.plan]  # the experiment monitors' re-keying
    for spec in specs:
        for src, topic in spec.topics.items():
            # a monitor keyed by experiment reads an internal topic, fed from the input
            source = plan.partition_source.get(topic, topic)
            assert source == f"x.{src}", spec.topics
    assert set(plan.sources) <= {f"x.{t}" for t in INPUT_TOPICS}


def test_demo_publishes_to_the_configured_topic_names(broker: EmbeddedBroker) -> None:
    prefix = f"demo{time.time_ns()}"
    overrides = {**renamed(prefix), "kafka.bootstrap": broker.bootstrap, "kafka.partitions": 1}
    settings = load_settings(env={}, overrides=overrides)
    kafka.ensure_topics(settings)
    # conversions (v2) on, soon after their clicks, so every input topic gets messages
    scenario = Scenario(
        1_795_000_000_000,
        duration_s=20,
        campaigns=2,
        sensors=2,
        seed=3,
        cvr=0.9,
        conversion_delay_median_s=2.0,
        conversion_delay_min_s=1.0,
    )
    counts = publish_traffic(settings, scenario, None)
    assert set(counts) == set(INPUT_TOPICS) and all(counts.values()), counts
    for logical, n in counts.items():
        got = consume_all(broker.bootstrap, f"{prefix}.{logical}", idle_s=1.5)
        assert len(got) == n, logical
