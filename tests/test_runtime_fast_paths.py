"""The runtime's per-message fast paths (issue 18: overhead outside the operators)
against their references, on polls as the worker gets them:

- `by_partition` (looks a group up only where the partition changes) groups like
  the plain dict-of-lists grouping, whatever the runs and their interleaving;
- `Decoder.decode_batch` (decodes a poll in bulk, falls back message by message)
  gives every message the verdict `Decoder.decode` gives it alone, on mostly valid
  polls with hostile messages anywhere among them, of librdkafka's Message class,
  of `RawMessage`, or of both mixed.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
from confluent_kafka import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.decode import Decoder
from streams.runtime.pipeline import RawMessage, by_partition
from tests.poison import nasty, valid

TS = 1_790_000_000_000
TOPICS = ("impressions", "clicks", "inference-logs", "sensor-readings")
KEY_FIELD = {
    "impressions": "campaign_id",
    "clicks": "campaign_id",
    "inference-logs": "model_id",
    "sensor-readings": "sensor_id",
}


def _message(
    kind: str, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
) -> Any:
    if kind == "rdkafka":
        return Message(topic=topic, partition=partition, offset=offset, key=key, value=value)
    return RawMessage(topic, partition, offset, key, value)


def _reference_groups(messages: list[Any]) -> dict[tuple[str, int], list[Any]]:
    groups: dict[tuple[str, int], list[Any]] = {}
    for m in messages:
        groups.setdefault((m.topic(), m.partition()), []).append(m)
    return groups


@settings(max_examples=300, deadline=None)
@given(
    runs=st.lists(
        st.tuples(
            st.sampled_from(["impressions", "clicks", "impressions.x"]),
            st.integers(0, 3),
            st.integers(1, 8),
            st.sampled_from(["rdkafka", "raw"]),
        ),
        max_size=12,
    )
)
def test_by_partition_groups_as_the_reference(runs: list[tuple[str, int, int, str]]) -> None:
    offsets: dict[tuple[str, int], int] = {}
    messages = []
    for topic, partition, length, kind in runs:
        for _ in range(length):
            offset = offsets.get((topic, partition), 0)
            offsets[(topic, partition)] = offset + 1
            messages.append(_message(kind, topic, partition, offset, None, b"{}"))
    groups = by_partition(iter(messages))
    reference = _reference_groups(messages)
    assert list(groups) == list(reference)  # first-seen order of the partitions, too
    for tp, group in groups.items():
        assert [id(m) for m in group] == [id(m) for m in reference[tp]]


def _iso(rng: random.Random, topic: str) -> bytes:
    """A valid event whose ts is an ISO string (the strict decoder refuses it)."""
    body = valid(rng, topic, TS, "c1") | {"ts": "2026-11-22T10:00:00.123+01:00"}
    return orjson.dumps(body)


def _poll(rng: random.Random, topic: str, size: int, bad: float) -> list[tuple[Any, Any]]:
    """(key, value) pairs: valid and rightly keyed, but a share `bad` of them hostile."""
    pairs: list[tuple[Any, Any]] = []
    for _ in range(size):
        if rng.random() < bad:
            pairs.append((b"c1", _iso(rng, topic)) if rng.random() < 0.2 else nasty(rng, topic, TS))
        else:
            entity = rng.choice(["c1", "c2", "é"])
            pairs.append((entity.encode(), orjson.dumps(valid(rng, topic, TS, entity))))
    return pairs


def _verdicts(decoder: Decoder, messages: list[Any]) -> list[tuple[int, object]]:
    verdicts: list[tuple[int, object]] = []
    events, kept = decoder.decode_batch(
        messages, lambda m, rejection: verdicts.append((m.offset(), rejection))
    )
    rejected_in_order = [offset for offset, _ in verdicts]
    assert rejected_in_order == sorted(rejected_in_order)
    assert [m.offset() for m in kept] == sorted(m.offset() for m in kept)
    verdicts += [(m.offset(), e) for e, m in zip(events, kept, strict=True)]
    return sorted(verdicts, key=lambda v: v[0])


@settings(max_examples=200, deadline=None)
@given(
    rng=st.randoms(use_true_random=False),
    topic=st.sampled_from(TOPICS),
    size=st.integers(1, 60),
    bad=st.sampled_from([0.0, 0.02, 0.1, 0.5]),
    kinds=st.sampled_from([("rdkafka",), ("raw",), ("rdkafka", "raw")]),
    check_key=st.booleans(),
    optional_key=st.booleans(),
)
def test_decode_batch_gives_the_verdicts_of_decode(
    rng: random.Random,
    topic: str,
    size: int,
    bad: float,
    kinds: tuple[str, ...],
    check_key: bool,
    optional_key: bool,
) -> None:
    pairs = _poll(rng, topic, size, bad)
    messages = [
        _message(rng.choice(kinds), topic, 0, i, key, value) for i, (key, value) in enumerate(pairs)
    ]
    # keyed by an optional field (re-keying: `experiment`), absent from these events
    key_field = "experiment" if optional_key and topic != "sensor-readings" else None
    decoder = Decoder(topic, max_bytes=64 * 1024, key_field=key_field, check_key=check_key)
    reference = [(m.offset(), decoder.decode(m.value(), m.key())) for m in messages]
    assert _verdicts(decoder, messages) == reference
    for (_, got), (_, want) in zip(_verdicts(decoder, messages), reference, strict=True):
        assert type(got) is type(want)  # the event's class, not its strict twin's


def test_a_valid_poll_is_decoded_in_bulk() -> None:
    """The common poll never reaches the message-by-message loop (else no speed-up)."""
    rng = random.Random(7)
    messages = [
        _message(
            "rdkafka", "impressions", 0, i, b"c1", orjson.dumps(valid(rng, "impressions", TS, "c1"))
        )
        for i in range(50)
    ]
    decoder = Decoder("impressions")
    calls: list[int] = []
    each = decoder._decode_each
    decoder._decode_each = lambda batch, *rest: (calls.append(len(batch)), each(batch, *rest))  # type: ignore[method-assign]
    events, kept = decoder.decode_batch(messages, lambda m, r: None)
    assert len(events) == len(kept) == 50 and calls == []
    assert events == [decoder.decode(m.value(), m.key()) for m in messages]
