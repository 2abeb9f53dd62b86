"""`Decoder.decode_batch` (issue 18: per-event overhead outside the operators) gives
every message the verdict `Decoder.decode` gives it alone: the same events in the
same order with their messages, the same rejections (reason and text) in the same
order, whatever mix of valid and hostile messages a poll brings."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.decode import Decoder, Rejection
from schemas.events import INPUT_EVENTS
from streams.runtime.pipeline import RawMessage
from tests.poison import nasty

TS = 1_790_000_000_000


def _one_by_one(decoder: Decoder, messages: list[RawMessage]) -> list[tuple[int, object]]:
    return [(m.offset(), decoder.decode(m.value(), m.key())) for m in messages]


def _batch(decoder: Decoder, messages: list[RawMessage]) -> list[tuple[int, object]]:
    verdicts: list[tuple[int, object]] = []
    events, kept = decoder.decode_batch(
        messages, lambda m, rejection: verdicts.append((m.offset(), rejection))
    )
    assert len(events) == len(kept)
    verdicts += [(m.offset(), e) for e, m in zip(events, kept, strict=True)]
    return sorted(verdicts, key=lambda v: v[0])


def _messages(topic: str, pairs: list[tuple[bytes | None, bytes | None]]) -> list[RawMessage]:
    return [RawMessage(topic, 0, i, key, value) for i, (key, value) in enumerate(pairs)]


@settings(max_examples=200, deadline=None)
@given(
    rng=st.randoms(use_true_random=False),
    topic=st.sampled_from(sorted(INPUT_EVENTS)),
    size=st.integers(1, 12),
    check_key=st.booleans(),
)
def test_a_batch_gets_the_verdicts_of_one_by_one(
    rng: random.Random, topic: str, size: int, check_key: bool
) -> None:
    messages = _messages(topic, [nasty(rng, topic, TS) for _ in range(size)])
    decoder = Decoder(topic, check_key=check_key)
    assert _batch(decoder, messages) == _one_by_one(decoder, messages)


def test_each_kind_of_rejection_and_the_valid_around_it() -> None:
    good = b'{"ts": %d, "sensor_id": "s1", "values": {"t": 1.5}}' % TS
    pairs: list[tuple[bytes | None, bytes | None]] = [
        (b"s1", good),
        (b"s1", None),  # tombstone
        (b"s1", b"{" * 10),  # malformed
        (None, good),  # no key
        (b"", good),  # empty key
        (b"s2", good),  # key mismatch
        (b"s1", good.replace(b'"t": 1.5', b'"t": 1e999')),  # not finite
        (b"s1", b" " * 300 + good),  # over max_bytes below
        (b"s1", good),
    ]
    messages = _messages("sensor-readings", pairs)
    decoder = Decoder("sensor-readings", max_bytes=256)
    verdicts = _batch(decoder, messages)
    assert verdicts == _one_by_one(decoder, messages)
    reasons = [v.reason if isinstance(v, Rejection) else "ok" for _, v in verdicts]
    assert reasons == [
        "ok",
        "empty_value",
        "invalid_json",
        "empty_key",
        "empty_key",
        "key_mismatch",
        "invalid_value",
        "too_large",
        "ok",
    ]
