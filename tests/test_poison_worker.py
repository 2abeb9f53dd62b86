"""Issue 11.1 at the real worker: whatever its bytes and size, every message ends in
a result or a dead letter, and consumption goes on.

About 200 nasty messages (`tests.poison`, fixed seed: arbitrary bytes, invalid UTF-8
inside JSON strings, nesting 100k deep, NaN/Infinity and huge numbers, wrong types,
empty and huge keys, messages up to about the broker's 1 MB limit, and valid
events among them) go to the four input topics of a worker process running
against the real broker (Tansu) and ClickHouse (chDB). Then a valid impression.
Checked: consumed = processed + dead-lettered (the worker's metrics); every
rejected message has exactly one dead letter on the topic (never over the
producer's limit; `raw` the original or its first bytes, with its size and
SHA-256) and one row in `dead_letters` (the original, its first 1 MiB if larger); the
valid impression sent after the garbage has its `ctr_windows` row.
"""

from __future__ import annotations

import base64
import hashlib
import random
import time

import msgspec
import orjson
import pytest

from schemas.decode import Decoder, Rejection
from schemas.events import DeadLetter
from streams.connectors.dead_letters import TABLE_RAW_MAX_BYTES
from streams.connectors.kafka import MESSAGE_MAX_BYTES
from tests.harness import Deployment, Message, WorkerProcess, consume_all, ctr_tail, produce
from tests.poison import BROKER_LIMIT, nasty

pytestmark = pytest.mark.integration

MIN = 60_000
LOGICAL = ("impressions", "clicks", "inference-logs", "sensor-readings")
TOPIC_KEY = {
    "impressions": "impressions",
    "clicks": "clicks",
    "inference-logs": "inference_logs",
    "sensor-readings": "sensor_readings",
}


def nasty_traffic(
    t0: int, n: int = 200, seed: int = 11
) -> list[tuple[str, bytes | None, bytes | None]]:
    """(logical topic, key, value): the issue's own cases, then `n` drawn ones."""
    rng = random.Random(seed)
    head = b'{"impression_id":"i","ts":%d,"campaign_id":"c1","user_id":"u"' % t0
    out: list[tuple[str, bytes | None, bytes | None]] = [
        # the 80-byte impression of issue 11 that stopped consumption for good
        (
            "impressions",
            b"c1",
            b'{"impression_id":"\xff\xfe\xfd","ts":%d,' % t0 + b'"campaign_id":"c1","user_id":"u"}',
        ),
        ("impressions", b"c1", head + b',"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        # over ~750 kB: its v1 dead letter was over the producer's limit, a poison pill
        ("impressions", b"c1", head + b',"pad":"' + b"p" * 760_000 + b'"}'),
        ("clicks", b"c1", head + b',"pad":"' + b"p" * (BROKER_LIMIT - 200) + b'"}'),
        # over Apache Kafka's default limit (Tansu takes it): fetched, kept in part
        ("impressions", b"c1", head + b',"pad":"' + b"p" * 5_000_000 + b'"}'),
        ("sensor-readings", b"s", b'{"sensor_id":"s","ts":%d,"values":{"t":NaN}}' % t0),
        ("sensor-readings", b"s", b'{"sensor_id":"s","ts":%d,"values":{"t":1e999}}' % t0),
    ]
    for _ in range(n):
        topic = rng.choice(LOGICAL)
        key, value = nasty(rng, topic, t0 + rng.randrange(MIN))
        out.append((topic, key, value))
    return out


def test_every_message_is_accounted_for_and_consumption_goes_on(tmp_path, broker) -> None:
    d = Deployment(tmp_path, broker.bootstrap, "poison", partitions=1)
    now = int(time.time() * 1000)
    t0 = now - now % MIN - 30 * MIN
    traffic = nasty_traffic(t0)
    # the valid impression after the garbage, and the tail that closes its window
    after = {"impression_id": "after-1", "ts": t0 + 2 * MIN, "campaign_id": "after", "user_id": "u"}
    traffic.append(("impressions", b"after", orjson.dumps(after)))
    tail = ctr_tail(d.topics, t0 + 4 * MIN + 600_000 + 30_000, partitions=1)

    # what the decoder says of each message, by (topic, offset): partition 0 only
    expected: dict[tuple[str, int], tuple[bytes | None, bytes | None, Rejection | None]] = {}
    offsets: dict[str, int] = {}
    for logical, key, value in traffic:
        topic = d.topics[TOPIC_KEY[logical]]
        offset = offsets.get(topic, 0)
        offsets[topic] = offset + 1
        result = Decoder(logical).decode(value, key)
        expected[(topic, offset)] = (key, value, result if isinstance(result, Rejection) else None)
    rejected = {k: v for k, v in expected.items() if v[2] is not None}
    total = len(traffic) + len(tail)
    kinds = {v[2].reason for v in rejected.values()}  # type: ignore[union-attr]
    # the mix covers what the issue names
    assert {"invalid_utf8", "too_deep", "too_large", "invalid_json", "wrong_type"} <= kinds
    assert max(len(v or b"") for _, _, v in traffic) > 990_000
    assert len(rejected) < len(traffic) - 10  # valid events among them too

    messages: list[Message] = [
        (d.topics[TOPIC_KEY[logical]], key, value, 0) for logical, key, value in traffic
    ]
    worker = WorkerProcess(d).start()
    try:
        produce(broker.bootstrap, messages + tail)

        def after_row() -> bool:
            rows = worker.query(
                "SELECT impressions FROM streamwatch.ctr_windows FINAL "
                "WHERE campaign_id = 'after' AND final = 1"
            )
            return rows == [{"impressions": 1}]

        worker.wait_until(
            lambda: worker.metric("streamwatch_events_consumed_total") >= total, 60, "consumption"
        )
        worker.wait_until(after_row, 60, "the ctr_windows row of the impression after the garbage")
        worker.wait_until(
            lambda: (
                worker.query("SELECT count() AS n FROM streamwatch.dead_letters FINAL")[0]["n"]
                >= len(rejected)
            ),
            30,
            "every dead letter in ClickHouse",
        )
        consumed = worker.metric("streamwatch_events_consumed_total")
        processed = worker.metric("streamwatch_events_processed_total")
        dead = worker.metric("streamwatch_events_rejected_total")
        assert consumed == total
        assert dead == len(rejected)
        assert processed + dead == consumed
        rows = worker.query(
            "SELECT source_topic, offset, reason, raw_truncated, raw_size, raw_sha256, "
            "length(base64Decode(raw)) AS kept, lower(hex(SHA256(base64Decode(raw)))) AS digest "
            "FROM streamwatch.dead_letters FINAL"
        )
    finally:
        assert worker.stop() == 0

    # one row per rejected message, with the whole original up to 1 MiB
    assert {(r["source_topic"], r["offset"]): r["reason"] for r in rows} == {
        k: v[2].reason  # type: ignore[union-attr]
        for k, v in rejected.items()
    }
    for r in rows:
        _, value, _ = expected[(r["source_topic"], r["offset"])]
        original = value or b""
        assert r["raw_size"] == len(original)
        assert r["raw_sha256"] == hashlib.sha256(original).hexdigest()
        if len(original) <= TABLE_RAW_MAX_BYTES:
            assert r["kept"] == len(original) and r["raw_truncated"] == 0
            assert r["digest"] == r["raw_sha256"]
        else:
            assert r["kept"] == TABLE_RAW_MAX_BYTES and r["raw_truncated"] == 1

    # one dead letter per rejected message on the topic, within the producer's limit
    letters = consume_all(broker.bootstrap, d.topics["dead_letter"], idle_s=2.0)
    seen = {}
    for m in letters:
        assert len(m.value()) + len(m.key() or b"") <= MESSAGE_MAX_BYTES
        letter = msgspec.json.decode(m.value(), type=DeadLetter)
        seen[(letter.source_topic, letter.offset)] = letter
    assert len(letters) == len(seen) == len(rejected)
    assert set(seen) == set(rejected)
    truncated = 0
    for where, letter in seen.items():
        key, value, rejection = rejected[where]
        original = value or b""
        kept = base64.b64decode(letter.raw)
        assert letter.reason == rejection.reason  # type: ignore[union-attr]
        assert original.startswith(kept) and letter.raw_truncated == (kept != original)
        assert letter.raw_size == len(original)
        assert letter.raw_sha256 == hashlib.sha256(original).hexdigest()
        truncated += letter.raw_truncated
    assert truncated >= 3  # the messages over ~740 kB: cut, not refused
    assert sum(r["raw_truncated"] for r in rows) == 1  # the table keeps up to 1 MiB
