"""Nasty input messages: what a buggy or hostile producer can put on an input topic.

`nasty(rng, topic, ts)` draws one (key, value) of a mix of kinds: arbitrary bytes,
JSON with invalid UTF-8 inside a string, lone surrogate escapes, deep nesting
(up to 100k levels), NaN/Infinity and numbers out of every range, wrong types,
truncated JSON, empty values and keys, huge keys, large messages (up to about
the broker's 1 MB default), and valid events (some with odd but legal content).
Driven by a `random.Random`, so the unit test draws it through hypothesis
(`st.randoms()`) and the integration test from a fixed seed.
"""

from __future__ import annotations

import random
from typing import Any

import orjson

# Apache Kafka's default broker limit (message.max.bytes, 1 MiB + 12) less room
# for the record overhead; the confluent producer of the tests allows it.
BROKER_LIMIT = 1_000_000

KEY_FIELD = {
    "impressions": "campaign_id",
    "clicks": "campaign_id",
    "inference-logs": "model_id",
    "sensor-readings": "sensor_id",
}


def valid(rng: random.Random, topic: str, ts: int, entity: str) -> dict[str, Any]:
    """A valid event of `topic` at `ts` for `entity` (the key field's value)."""
    i = rng.randrange(10**9)
    if topic == "impressions":
        return {"impression_id": f"n{i}", "ts": ts, "campaign_id": entity, "user_id": "u"}
    if topic == "clicks":
        return {
            "click_id": f"k{i}",
            "impression_id": f"n{i}",
            "ts": ts,
            "campaign_id": entity,
            "user_id": "u",
        }
    if topic == "inference-logs":
        return {
            "request_id": f"r{i}",
            "ts": ts,
            "model_id": entity,
            "model_version": "1",
            "features": {"x": rng.random(), "c": "fr"},
            "prediction": rng.random(),
            "latency_ms": 10.0,
            "status": "ok",
        }
    return {"sensor_id": entity, "ts": ts, "values": {"t": 20 + rng.random()}}


def _deep(rng: random.Random) -> bytes:
    depth = rng.choice([64, 1000, 10_000, 100_000])
    if rng.random() < 0.5:
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


def _bad_number(rng: random.Random) -> bytes:
    return rng.choice(
        [
            b"NaN",
            b"Infinity",
            b"-Infinity",
            b"1e999",
            b"-1e999",
            b"9" * rng.choice([20, 400, 5000]),
            b"-" + b"9" * 30,
            b"1e-999",
            b"0.0000000000000000000000000000001",
            b"1.7976931348623157e308",
        ]
    )


def _invalid_utf8(rng: random.Random) -> bytes:
    return rng.choice(
        [b"\xff\xfe\xfd", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xc0\xaf"]
    )


def _splice(doc: dict[str, Any], field: str, raw: bytes) -> bytes:
    """`doc` as JSON with `field`'s value replaced by the raw bytes `raw`."""
    marker = "\x00MARK\x00"
    text = orjson.dumps({**doc, field: marker})
    return text.replace(orjson.dumps(marker), raw)


def nasty(rng: random.Random, topic: str, ts: int) -> tuple[bytes | None, bytes | None]:
    """One (key, value) for `topic`; valid events are at `ts`."""
    entity = rng.choice(["c1", "c2", "é", "x" * 512])
    key: bytes | None = entity.encode()
    base = valid(rng, topic, ts, entity)
    fields = list(base)
    kind = rng.randrange(16)
    if kind == 0:  # arbitrary bytes
        value: bytes | None = rng.randbytes(rng.choice([0, 1, 7, 100, 3000]))
    elif kind == 1:  # invalid UTF-8 inside a string (a known field or an extra one)
        field = rng.choice([*fields, "extra"])
        value = _splice(base, field, b'"' + b"ab" + _invalid_utf8(rng) + b'cd"')
    elif kind == 2:  # deep nesting, in an extra field or as the whole message
        value = _splice(base, "extra", _deep(rng)) if rng.random() < 0.7 else _deep(rng)
    elif kind == 3:  # NaN, Infinity, numbers out of range, where a number or anything goes
        value = _splice(base, rng.choice(["ts", "extra", *fields]), _bad_number(rng))
    elif kind == 4:  # a wrong type
        field = rng.choice(fields)
        wrong = rng.choice([b"[]", b"{}", b"null", b"true", b"12", b'"s"', b"[1,[2]]"])
        value = _splice(base, field, wrong)
    elif kind == 5:  # truncated JSON
        text = orjson.dumps(base)
        value = text[: rng.randrange(len(text))]
    elif kind == 6:  # a large message: under the decoder's limit it is valid, over it not
        size = rng.choice([200_000, 300_000, 760_000, BROKER_LIMIT - 1000])
        value = _splice(base, "pad", b'"' + b"p" * size + b'"')
    elif kind == 7:  # large and invalid UTF-8 at the very end
        value = _splice(base, "pad", b'"' + b"q" * 900_000 + _invalid_utf8(rng) + b'"')
    elif kind == 8:  # no value, empty value, whitespace, a bare scalar
        value = rng.choice([None, b"", b"   ", b"null", b"0", b'"x"', b"\xef\xbb\xbf{}"])
    elif kind == 9:  # key problems: none, empty, wrong, huge, invalid UTF-8
        key = rng.choice([None, b"", b"other", b"k" * 100_000, b"\xff\xfe"])
        value = orjson.dumps(base)
    elif kind == 10:  # lone surrogates and control characters as escapes
        esc = rng.choice([b'"\\ud800"', b'"\\udfff\\ud800"', b'"a\\u0000b"', b'"\\x41"'])
        value = _splice(base, rng.choice([*fields, "extra"]), esc)
    elif kind == 11:  # an event time out of range or not a time
        long_ts = b'"' + b"9" * 100_000 + b'"'
        bad_ts = rng.choice(
            [b"0", b"-1", b"4102444800000", b'"2026-13-01T00:00:00Z"', b'"yesterday"', long_ts]
        )
        value = _splice(base, "ts", bad_ts)
    elif kind == 12:  # an unknown version, or duplicate keys
        value = _splice(base, "v", rng.choice([b"2", b"0", b"-1", b"1.0", b'"1"']))
    else:  # valid, sometimes with odd but legal content
        if rng.random() < 0.3:
            base["extra"] = {"nested": [[[1.5e300, -0.0, "\u2028", "\U0001f600"]]]}
        value = orjson.dumps(base)
    return key, value
