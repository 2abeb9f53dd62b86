"""Dead letters that always fit: the envelope of a rejected message, bounded in size.

A dead letter carries the original value in base64 (4 bytes per 3), so a
message over about 750 kB would make an envelope over the producer's 1 MB
`message.max.bytes`: librdkafka refuses it (`MSG_SIZE_TOO_LARGE`), and a
worker that retries replays the same offset forever. Here the envelope is
built to fit a byte budget: past it, `raw` keeps the first bytes of the
original, with `raw_truncated` true and `raw_size` and `raw_sha256` of the
whole original (contract v2), so a message is never lost for being large.

The budget is exact, not estimated: the envelope is encoded once with an
empty `raw`, and what remains of the budget is filled with whole base64
quanta (3 original bytes -> 4 characters; base64 needs no JSON escaping).
"""

from __future__ import annotations

import base64
import hashlib

import msgspec

from schemas.events import DeadLetter
from schemas.rows import DeadLetterRow

# Per-message room for Kafka's record framing and headers on top of key and
# value: librdkafka counts about 60 bytes of v2 record overhead (plus the
# batch header) against message.max.bytes; 4 kB leaves a wide margin.
RECORD_HEADROOM = 4096
# A dead letter is keyed by the original key, of which it keeps this much (a
# key can be as large as the value; the key of a valid event is <= 512 chars).
KEY_MAX_BYTES = 1024
ERROR_MAX_CHARS = 2000
# The dead_letters table keeps more of a large message than the topic (up to
# Apache Kafka's default broker limit, 1 MiB: any message such a broker
# accepts is kept whole), but a bounded amount: a ClickHouse row is no place
# for a 100 MB blob.
TABLE_RAW_MAX_BYTES = 1024 * 1024


def kafka_key(key: bytes | None) -> bytes | None:
    """The key a dead letter is published with: the original's, its first bytes if long."""
    return None if key is None else key[:KEY_MAX_BYTES]


def value_budget(max_message_bytes: int, key: bytes | None) -> int:
    """Bytes a dead letter's JSON may take for a producer with this message.max.bytes."""
    return max_message_bytes - RECORD_HEADROOM - len(kafka_key(key) or b"")


def build(
    *,
    source_topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    error: str,
    reason: str,
    ts: int,
    max_json_bytes: int,
) -> tuple[DeadLetter, bytes]:
    """The dead letter of a message and its JSON, which is at most `max_json_bytes` long.

    >>> letter, data = build(source_topic="t", partition=0, offset=5, key=b"k",
    ...                      value=b"x" * 10_000, error="e", reason="too_large", ts=1,
    ...                      max_json_bytes=1_000)
    >>> len(data) <= 1_000, letter.raw_truncated, letter.raw_size
    (True, True, 10000)
    >>> base64.b64decode(letter.raw) == b"x" * len(base64.b64decode(letter.raw))
    True
    """
    original = value or b""
    text_key = None if key is None else key[:KEY_MAX_BYTES].decode(errors="replace")
    if len(error) > ERROR_MAX_CHARS:
        error = error[: ERROR_MAX_CHARS - 1] + "…"
    # an exception's text may hold lone surrogates, which JSON cannot carry
    error = error.encode("utf-8", "replace").decode()
    letter = DeadLetter(
        source_topic=source_topic,
        partition=partition,
        offset=offset,
        key=text_key,
        raw="",
        error=error,
        reason=reason,
        ts=ts,
        raw_truncated=False,  # "false" is longer than "true": the bound holds for both
        raw_size=len(original),
        raw_sha256=hashlib.sha256(original).hexdigest(),
    )
    room = max_json_bytes - len(msgspec.json.encode(letter))
    if room < 0:
        raise ValueError(f"a dead letter needs more than {max_json_bytes} bytes even without raw")
    keep = room // 4 * 3  # whole base64 quanta: 3 bytes -> 4 characters, no padding
    if len(original) > keep:
        letter.raw_truncated = True
        original = original[:keep]
    letter.raw = base64.b64encode(original).decode()
    return letter, msgspec.json.encode(letter)


def row(letter: DeadLetter, value: bytes | None) -> DeadLetterRow:
    """The `dead_letters` row of a dead letter: up to TABLE_RAW_MAX_BYTES of the original
    (more than the topic's copy when that one is truncated)."""
    raw, truncated = letter.raw, letter.raw_truncated
    if truncated:
        original = value or b""
        kept = original[:TABLE_RAW_MAX_BYTES]
        raw = base64.b64encode(kept).decode()
        truncated = len(kept) < len(original)
    return DeadLetterRow(
        ts=letter.ts,
        source_topic=letter.source_topic,
        partition=letter.partition,
        offset=letter.offset,
        key=letter.key,
        reason=letter.reason,
        error=letter.error,
        raw=raw,
        raw_truncated=truncated,
        # always set by `build` (None only in dead letters from elsewhere, decoded)
        raw_size=letter.raw_size if letter.raw_size is not None else len(value or b""),
        raw_sha256=letter.raw_sha256 or hashlib.sha256(value or b"").hexdigest(),
    )


def shrink(data: bytes, max_json_bytes: int) -> bytes:
    """A dead letter's JSON cut to `max_json_bytes`: fewer bytes of `raw`, the same
    `raw_size` and `raw_sha256` (those of the original message)."""
    letter = msgspec.json.decode(data, type=DeadLetter)
    raw = letter.raw
    letter.raw = ""
    room = max_json_bytes - len(msgspec.json.encode(letter)) - len(b"false")
    keep = max(0, room // 4 * 4)
    if len(raw) > keep:
        letter.raw, letter.raw_truncated = raw[:keep], True
    else:
        letter.raw = raw
    return msgspec.json.encode(letter)
