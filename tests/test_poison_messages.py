"""Every message ends in a result or a dead letter, whatever its bytes and size (issue 11.1).

Unit level: `Decoder.decode` never raises (hypothesis, arbitrary bytes and the
nasty kinds of `tests.poison`); a dead letter never exceeds what the producer
may send (real confluent producer, its own size check); the pipeline rejects
one message, not the batch, when a monitor's feed fails on it.
"""

from __future__ import annotations

import base64
import hashlib
import random
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.decode import MAX_ERROR_CHARS, Decoder, Rejection
from schemas.events import INPUT_EVENTS, DeadLetter, Event
from streams.connectors import dead_letters, kafka
from streams.runtime.pipeline import RawMessage
from streams.runtime.sinks import Sinks
from tests.poison import nasty
from tests.row_dicts import as_dicts

TS = 1_795_000_020_000
REASONS = {
    "invalid_json",
    "missing_field",
    "wrong_type",
    "invalid_value",
    "out_of_range",
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


# -- dead letters that fit, against the real producer and broker ----------------


def _settings(bootstrap: str, name: str) -> Any:
    from streams.config import load_settings

    return load_settings(
        env={},
        overrides={
            "kafka.bootstrap": bootstrap,
            "topics.dead_letter": f"{name}.dead-letter",
            "topics.late_events": f"{name}.late-events",
        },
    )


def _letters(bootstrap: str, topic: str) -> list[tuple[DeadLetter, int, bytes | None]]:
    from tests.harness import consume_all

    return [
        (msgspec.json.decode(m.value(), type=DeadLetter), len(m.value()), m.key())
        for m in consume_all(bootstrap, topic, idle_s=1.0)
    ]


SIZES = [0, 100, 700_000, 760_000, 999_000, 1_000_000, 3_000_000]


def test_a_dead_letter_never_exceeds_what_the_producer_can_send(broker) -> None:
    from confluent_kafka import KafkaException

    settings = _settings(broker.bootstrap, "dl-fit")
    producer = kafka.producer(settings)
    sinks = Sinks(None, producer, settings.topics)  # type: ignore[arg-type]  # no rows written
    rng = random.Random(5)
    originals = {}
    for i, size in enumerate(SIZES):
        for j, key in enumerate([None, b"c", b"k" * 100_000]):
            offset = i * 10 + j
            value = rng.randbytes(size)
            originals[offset] = (key, value)
            sinks.rejected(RawMessage("in", 0, offset, key, value), Rejection("too_large", "e"))
    assert producer.flush(30) == 0 and not sinks.produce_errors and not sinks.undelivered
    # the envelope of v1 (the whole value in base64) is refused for 760 kB: the poison pill
    with pytest.raises(KafkaException, match="MSG_SIZE_TOO_LARGE"):
        whole = base64.b64encode(originals[30][1]).decode()
        producer.produce(settings.topics.dead_letter, msgspec.json.encode({"raw": whole}))

    letters = _letters(broker.bootstrap, settings.topics.dead_letter)
    assert sorted(letter.offset for letter, _, _ in letters) == sorted(originals)
    for letter, size, kafka_key in letters:
        key, value = originals[letter.offset]
        assert size + len(kafka_key or b"") <= kafka.MESSAGE_MAX_BYTES - 4096
        kept = base64.b64decode(letter.raw)
        assert value.startswith(kept)
        assert letter.raw_truncated == (len(kept) < len(value))
        assert letter.raw_size == len(value)
        assert letter.raw_sha256 == hashlib.sha256(value).hexdigest()
        if len(value) <= 700_000:
            assert not letter.raw_truncated  # small enough: copied whole
        assert kafka_key == (None if key is None else key[:1024])
    # the table keeps more: every message a default Kafka broker takes, whole
    rows = {r["offset"]: r for r in as_dicts(sinks.buffer["dead_letters"])}
    for offset, (_, value) in originals.items():
        kept = base64.b64decode(rows[offset]["raw"])
        assert kept == value[: 1024 * 1024]
        assert rows[offset]["raw_truncated"] == (len(value) > 1024 * 1024)
        assert rows[offset]["raw_size"] == len(value)


def test_an_output_refused_for_its_size_is_replaced_not_retried(broker) -> None:
    """A producer (or broker) with a lower limit than the sinks were built for: the
    refused dead letter is cut down, the refused late copy replaced by a dead letter;
    nothing is left to retry, so the next flush succeeds."""
    settings = _settings(broker.bootstrap, "dl-refused")
    producer = kafka.producer(settings, **{"message.max.bytes": 300_000})
    sinks = Sinks(None, producer, settings.topics)  # type: ignore[arg-type]
    big = random.Random(1).randbytes(500_000)
    sinks.rejected(RawMessage("in", 0, 7, b"c", big), Rejection("too_large", "e"))
    late_value = b'{"pad":"' + b"p" * 400_000 + b'"}'
    sinks.late("ctr", RawMessage("in", 0, 8, b"c", late_value), TS, TS + 1, TS)
    assert producer.flush(30) == 0 and not sinks.produce_errors and not sinks.undelivered
    letters = {
        letter.offset: (letter, size)
        for letter, size, _ in _letters(broker.bootstrap, settings.topics.dead_letter)
    }
    assert set(letters) == {7, -1}
    cut, size = letters[7]
    assert size <= 64 * 1024 and cut.raw_truncated and cut.raw_size == len(big)
    assert cut.raw_sha256 == hashlib.sha256(big).hexdigest()
    assert big.startswith(base64.b64decode(cut.raw))
    stand_in, size = letters[-1]
    assert size <= 64 * 1024 and stand_in.reason == "output_too_large"
    assert stand_in.source_topic == settings.topics.late_events
    assert stand_in.raw_size == len(late_value)
    assert late_value.startswith(base64.b64decode(stand_in.raw))


def test_sinks_refuse_a_producer_too_small_for_late_copies() -> None:
    with pytest.raises(ValueError, match=r"message\.max\.bytes"):
        Sinks(None, None, None, max_message_bytes=200_000)  # type: ignore[arg-type]


# -- a monitor failing on one event rejects that event, not the batch -----------


def _operator_errors(monitor: str, stage: str) -> float:
    from streams.runtime import metrics

    return metrics.OPERATOR_ERRORS.labels(monitor, stage)._value.get()


def test_a_monitor_failing_on_one_event_rejects_that_event_not_the_batch() -> None:
    """Fault injection in a real operator (CTR) that raises on one impression, as an
    operator bug would on an input the schema accepts: the other events of the batch
    are counted, the culprit is dead-lettered with reason operator_error."""
    from dataclasses import replace

    from streams.config import load_settings
    from streams.runtime.monitors import build_monitors
    from streams.runtime.pipeline import Pipeline
    from tests.test_pipeline import LOGICAL, Recorder

    def faulty_task(make: Any) -> Any:
        task = make()
        feed = task.operator.feed

        def feed_or_fail(source: str, events: Any) -> None:
            for e in events:  # an operator that dies half-way through a batch
                if getattr(e, "impression_id", "") == "boom":
                    raise OverflowError("injected")
                feed(source, [e])

        task.operator.feed = feed_or_fail
        return task

    specs = [
        replace(m, make_task=lambda m=m: faulty_task(m.make_task)) if m.name == "ctr" else m
        for m in build_monitors(load_settings(env={}))
    ]
    out = Recorder()
    pipeline = Pipeline(specs, out, LOGICAL, clock=lambda: 1000.0)
    pipeline.assign([0], {})
    ids = ["a", "b", "boom", "c"]
    batch = [
        RawMessage(
            "impressions",
            0,
            offset,
            b"c",
            msgspec.json.encode({"impression_id": i, "ts": TS, "campaign_id": "c", "user_id": "u"}),
        )
        for offset, i in enumerate(ids)
    ]
    before = _operator_errors("ctr", "feed")
    pipeline.process(batch)
    assert out.rejects == ["operator_error"]
    assert _operator_errors("ctr", "feed") == before + 1
    ctr = pipeline.tasks[("ctr", 0)].operator
    counted = sum(w.imps for _, _, w in ctr.windows.items())
    # a, b (fed before it failed, and again: CTR counts an impression id once) and c
    assert counted == 3
    assert pipeline.positions[("ctr", 0)]["impressions"] == 4
    after = {"impression_id": "d", "ts": TS, "campaign_id": "c", "user_id": "u"}
    pipeline.process([RawMessage("impressions", 0, 4, b"c", msgspec.json.encode(after))])
    assert sum(w.imps for _, _, w in ctr.windows.items()) == 4  # and it goes on
    assert out.rejects == ["operator_error"]


def test_a_huge_sensor_value_does_not_take_the_worker_down() -> None:
    """Found by fuzzing the monitors with schema-valid events: readings of 1.9e154
    overflow the cluster monitor's squared distances (its `nearest` finds no centre
    and `learn` raises KeyError when the watermark releases them, in `tick`). Whatever
    an operator does with such input, the pipeline goes on."""
    from streams.config import load_settings
    from streams.runtime.monitors import build_monitors
    from streams.runtime.pipeline import Pipeline
    from tests.test_pipeline import LOGICAL, Recorder

    out = Recorder()
    settings = load_settings(env={}, overrides={"idle_timeout_s": 1})
    clock = [1000.0]
    pipeline = Pipeline(build_monitors(settings), out, LOGICAL, clock=lambda: clock[0])
    pipeline.assign([0], {})
    huge = 1.8961503816218355e154
    readings = [(0.0, 0), (huge, 0), (huge, 0), (0.0, 10_001), (21.0, 20_000), (22.0, 90_000)]
    for offset, (v, dt) in enumerate(readings):
        body = {"sensor_id": "a", "ts": 946_684_800_000 + dt, "values": {"t": v}}
        message = RawMessage("sensor-readings", 0, offset, b"a", msgspec.json.encode(body))
        pipeline.process([message])
        clock[0] += 1
    assert pipeline.positions[("cluster", 0)]["sensor-readings"] == len(readings)
    assert pipeline.positions[("sensor", 0)]["sensor-readings"] == len(readings)
    # and the sensor monitor, fed the same readings, still closes its windows
    assert any(r["sensor_id"] == "a" for r in out.table_rows.get("sensor_windows", []))


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(0, 3_000_000),
    key=st.none() | st.binary(max_size=3000),
    error=st.text(max_size=3000),
    budget=st.integers(20_000, 1_000_000),
)
def test_build_fits_any_budget_and_describes_the_original(
    size: int, key: bytes | None, error: str, budget: int
) -> None:
    value = (b"0123456789abcdef" * (size // 16 + 1))[:size]
    letter, data = dead_letters.build(
        source_topic="t",
        partition=3,
        offset=2**62,
        key=key,
        value=value,
        error=error,
        reason="too_large",
        ts=TS,
        max_json_bytes=budget,
    )
    assert len(data) <= budget
    assert msgspec.json.decode(data, type=DeadLetter) == letter
    kept = base64.b64decode(letter.raw)
    assert value.startswith(kept) and letter.raw_truncated == (len(kept) < size)
    assert letter.raw_size == size and letter.raw_sha256 == hashlib.sha256(value).hexdigest()
    # nothing wasted: a truncated copy fills the budget to within one base64 quantum
    if letter.raw_truncated:
        assert len(data) > budget - 4 - len(b"false")


def test_dead_letter_json_schema_describes_the_v2_fields() -> None:
    import json

    import jsonschema

    from schemas.generate import artefacts

    schema = next(json.loads(t) for p, t in artefacts().items() if p.name == "dead-letter.json")
    _, data = dead_letters.build(
        source_topic="impressions",
        partition=0,
        offset=1,
        key=b"k",
        value=b"x" * 5000,
        error="e",
        reason="too_large",
        ts=TS,
        max_json_bytes=4000,
    )
    doc = json.loads(data)
    jsonschema.validate(doc, schema)
    assert doc["raw_truncated"] is True and doc["raw_size"] == 5000
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**doc, "raw_size": "5000"}, schema)
