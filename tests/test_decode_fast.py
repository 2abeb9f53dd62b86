"""The fast paths of issue 18 give the old verdicts and results exactly.

- `Decoder.decode_batch` decodes into each event's strict twin
  (`schemas.events.STRICT_TWINS`, checked in msgspec's C decoder) and relabels it
  as the event; `Decoder.decode` is the old path (the event's decoder and its
  `__post_init__`). On generated messages of every input topic, valid and
  malformed in every field (bounds of each check, wrong types, ISO timestamps,
  missing and unknown fields, numbers out of range, invalid JSON), both give the
  same verdict: the same rejection (reason and text) or an equal event of the
  event's own type. And whatever the twin accepts, the event's decoder accepts
  as an equal event (the twin is never more lenient).
- `DriftOperator.feed` takes a poll's events per window and feature at once; an
  event-ordered reference (the one-by-one loop it replaces, below) fed the same
  events one at a time gives the same state and the same rows and observations,
  with or without a reference profile, for irregular events (missing, extra and
  non-numeric features, a feature named `__prediction__`, no confidence), in any
  batching.
"""

from __future__ import annotations

import json
import math
from array import array
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from operators.drift import DriftConfig, DriftOperator, DriftWindow
from operators.reference import PREDICTION, build_profile
from schemas.decode import Decoder, Rejection
from schemas.events import (
    INPUT_EVENTS,
    KEY_FIELD,
    MAX_SENSOR_MAGNITUDE,
    STRICT_TWINS,
    TS_MAX_MS,
    TS_MIN_MS,
    Event,
    InferenceLog,
    SensorReading,
)
from streams.runtime.pipeline import RawMessage

TS = 1_790_000_000_000

# raw JSON number texts that json.dumps cannot write: placed as "<raw:...>" strings
RAW = ["1e999", "-1e400", "9" * 400, "1e308", "-0.0", "1E2", "1.0e100", "1.0000001e100"]


def _raw(text: str) -> str:
    return f"<raw:{text}>"


STRINGS = st.sampled_from(["", "a", "model-1", "x" * 512, "x" * 513, "é", "\x00"])
NUMBERS = st.one_of(
    st.sampled_from([0, 1, -1, 0.5, -0.0, 1.5, 1e100, -1e100, 1e101, 1e308, 2**63, -(2**64)]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(10**20), 10**20),
    st.sampled_from([_raw(r) for r in RAW]),
)
ODD = st.sampled_from([None, True, False, [], {}, [1], {"a": 1}, "1", "nan"])
TIMES = st.one_of(
    st.sampled_from(
        [
            TS,
            TS_MIN_MS,
            TS_MIN_MS - 1,
            TS_MAX_MS - 1,
            TS_MAX_MS,
            0,
            -1,
            float(TS),
            str(TS),
            "2026-11-22T10:00:00.123Z",
            "2026-11-22T10:00:00+02:00",
            "2026-11-22T10:00:00",
            "1999-12-31T23:59:59Z",
            "2100-01-01T00:00:00Z",
            "not a time",
        ]
    ),
    st.integers(TS_MIN_MS - 10, TS_MAX_MS + 10),
)
VERSIONS = st.sampled_from([1, 0, 2, 1.0, True, "1", None])
FEATURES = st.dictionaries(
    st.sampled_from(["a", "b", "", "x" * 600, PREDICTION]),
    st.one_of(NUMBERS, STRINGS, ODD),
    max_size=4,
)


def valid(topic: str) -> dict[str, Any]:
    """A valid event of `topic` (every field present that the topic knows)."""
    common = {"ts": TS, "v": 1}
    return {
        "impressions": {
            "impression_id": "i",
            "campaign_id": "c",
            "user_id": "u",
            "ad_id": "a",
            "experiment": "e",
            "variant": "B",
            "model_id": "m",
        },
        "clicks": {
            "click_id": "k",
            "impression_id": "i",
            "campaign_id": "c",
            "user_id": "u",
            "experiment": "e",
        },
        "conversions": {
            "conversion_id": "v",
            "click_id": "k",
            "campaign_id": "c",
            "user_id": "u",
            "value": 12.5,
            "experiment": "e",
        },
        "inference-logs": {
            "request_id": "r",
            "model_id": "c",
            "model_version": "1.0",
            "features": {"amount": 1.5, "device": "ios", "n": 3},
            "prediction": 0.25,
            "latency_ms": 12.0,
            "status": "ok",
            "confidence": 0.9,
            "experiment": "e",
            "variant": "A",
        },
        "sensor-readings": {"sensor_id": "c", "values": {"t": 20.5, "h": -3}, "site": "s"},
        "labels": {"request_id": "r", "model_id": "c", "label": 1.0, "weight": 2.0},
    }[topic] | common


# values to try in each field, by field name (any other field: STRINGS)
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "ts": TIMES,
    "v": VERSIONS,
    "features": FEATURES,
    "values": st.one_of(
        st.dictionaries(
            st.sampled_from(["t", "h", ""]),
            st.one_of(
                NUMBERS,
                st.sampled_from(
                    [MAX_SENSOR_MAGNITUDE, -MAX_SENSOR_MAGNITUDE, math.nextafter(1e100, 2e100)]
                ),
                STRINGS,
                ODD,
            ),
            max_size=3,
        ),
        ODD,
    ),
    "prediction": st.one_of(NUMBERS, STRINGS, ODD),
    "label": st.one_of(NUMBERS, STRINGS, ODD),
    "latency_ms": st.one_of(NUMBERS, ODD),
    "confidence": st.one_of(st.sampled_from([0, 1, 0.5, -0.01, 1.01]), NUMBERS, ODD),
    "value": st.one_of(NUMBERS, ODD),
    "weight": st.one_of(NUMBERS, ODD),
    "status": st.sampled_from(["ok", "error", "OK", "", None, 1]),
}


@st.composite
def messages(draw: st.DrawFn, topic: str) -> tuple[bytes | None, bytes]:
    """(key, value): a valid event of `topic` with some fields changed, dropped or added."""
    body = valid(topic)
    for name in draw(st.lists(st.sampled_from(sorted(body)), max_size=3, unique=True)):
        action = draw(st.sampled_from(["change", "change", "drop"]))
        if action == "drop":
            del body[name]
        else:
            body[name] = draw(FIELD_VALUES.get(name, st.one_of(STRINGS, NUMBERS, ODD)))
    if draw(st.booleans()):
        body[draw(st.sampled_from(["extra", "V", "tS"]))] = draw(st.one_of(STRINGS, NUMBERS, ODD))
    text = json.dumps(body, ensure_ascii=draw(st.booleans()))
    for raw in RAW:
        text = text.replace(json.dumps(_raw(raw)), raw)
    value = text.encode()
    form = draw(st.sampled_from(["as is", "as is", "as is", "truncated", "garbage"]))
    if form == "truncated":
        value = value[: draw(st.integers(0, max(0, len(value) - 1)))]
    elif form == "garbage":
        value = value.replace(b":", b";", 1)
    key_field = KEY_FIELD[topic]
    entity = body.get(key_field)
    key = draw(
        st.sampled_from(
            [
                entity.encode() if isinstance(entity, str) else b"c",
                b"c",
                b"other",
                b"",
                None,
            ]
        )
    )
    return key, value


def _same(fast: object, old: object, event_type: type) -> None:
    if isinstance(old, Rejection):
        assert fast == old  # reason and text
        return
    assert type(fast) is event_type and type(old) is event_type
    assert fast == old
    assert repr(fast) == repr(old)
    assert msgspec.json.encode(fast) == msgspec.json.encode(old)
    assert msgspec.structs.asdict(fast) == msgspec.structs.asdict(old)


@pytest.mark.parametrize("topic", sorted(INPUT_EVENTS))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fast_decode_gives_the_old_verdict(topic: str, data: st.DataObject) -> None:
    batch = data.draw(st.lists(messages(topic), min_size=1, max_size=6))
    check_key = data.draw(st.booleans())
    decoder = Decoder(topic, check_key=check_key)
    raws = [RawMessage(topic, 0, i, key, value) for i, (key, value) in enumerate(batch)]
    verdicts: dict[int, object] = {}
    events, kept = decoder.decode_batch(
        raws, lambda m, rejection: verdicts.__setitem__(m.offset(), rejection)
    )
    verdicts.update({m.offset(): e for e, m in zip(events, kept, strict=True)})
    assert [m.offset() for m in kept] == sorted(m.offset() for m in kept)
    assert sorted(verdicts) == list(range(len(raws)))
    for m in raws:
        _same(verdicts[m.offset()], decoder.decode(m.value(), m.key()), decoder.event_type)


@pytest.mark.parametrize("topic", sorted(INPUT_EVENTS))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_strict_twin_is_never_more_lenient(topic: str, data: st.DataObject) -> None:
    """What the twin accepts, the event's own decoder (and __post_init__) accepts, equal."""
    _, value = data.draw(messages(topic))
    event_type = INPUT_EVENTS[topic]
    if event_type not in STRICT_TWINS:
        return  # decoded by its own decoder (the test above covers it)
    try:
        twin = msgspec.json.decode(value, type=STRICT_TWINS[event_type])
    except (msgspec.DecodeError, UnicodeError, RecursionError):
        return
    old = msgspec.json.decode(value, type=event_type)  # raises if the twin was too lenient
    twin.__class__ = event_type
    _same(twin, old, event_type)


def test_the_valid_messages_take_the_fast_path() -> None:
    """The common message is decoded by the twin, not by decode() (else no speed-up):
    valid messages with every optional field, and without them."""
    for topic in sorted(t for t, e in INPUT_EVENTS.items() if e in STRICT_TWINS):
        for body in (valid(topic), {k: v for k, v in valid(topic).items() if k != "v"}):
            twin = msgspec.json.decode(json.dumps(body), type=STRICT_TWINS[INPUT_EVENTS[topic]])
            twin.__class__ = INPUT_EVENTS[topic]
            assert twin == Decoder(topic).decode(json.dumps(body).encode(), b"c")


def test_an_iso_timestamp_still_decodes_through_the_old_path() -> None:
    body = valid("inference-logs") | {"ts": "2026-11-22T10:00:00.123+01:00"}
    raw = RawMessage("inference-logs", 0, 0, b"c", json.dumps(body).encode())
    events, _ = Decoder("inference-logs").decode_batch([raw], lambda m, r: None)
    assert type(events[0]) is InferenceLog
    utc = datetime(2026, 11, 22, 9, 0, 0, 123_000, tzinfo=UTC)
    assert events[0].ts == round(utc.timestamp() * 1000)


def _config(struct: type) -> dict[str, Any]:
    config = struct.__struct_config__  # type: ignore[attr-defined]
    return {k: getattr(config, k) for k in dir(config) if not k.startswith("_")}


def test_the_twins_are_the_events_layout() -> None:
    for event_type, twin in STRICT_TWINS.items():
        assert twin.__bases__ == (event_type,)
        assert twin.__struct_fields__ == event_type.__struct_fields__
        assert twin.__slots__ == ()
        assert _config(twin) == _config(event_type)  # unknown fields, tags, gc: as the event
    # an event without a twin checks nothing beyond Event's own two comparisons
    for event_type in set(INPUT_EVENTS.values()) - set(STRICT_TWINS):
        assert event_type.__post_init__ is Event.__post_init__  # type: ignore[attr-defined]
    assert {InferenceLog, SensorReading} <= set(STRICT_TWINS)


# -- drift: per window and feature at once == event by event ------------------------


def _old_feed(op: DriftOperator, events: Sequence[InferenceLog]) -> None:
    """The event-ordered reference: the per-event loop `DriftOperator.feed` had before
    issue 18's columns (main 2c5f537), one event at a time."""
    size = op.config.window_ms
    for e in events:
        w = op.windows.at(e.model_id, e.ts)
        if not w.ready:
            op._prepare(w, e.model_id)
        w.n += 1
        w.versions[e.model_version] = w.versions.get(e.model_version, 0) + 1
        values = w.values
        for name, x in e.features.items():
            acc = values.get(name)
            if acc is None:
                if not w.open:
                    continue
                acc = values[name] = []
            try:
                acc.append(x)
            except TypeError:
                w.mismatch[name] = w.mismatch.get(name, 0) + 1
        acc = values.get(PREDICTION)
        if acc is None and w.open:
            acc = values[PREDICTION] = []
        if acc is not None:
            try:
                acc.append(e.prediction)
            except TypeError:
                w.mismatch[PREDICTION] = w.mismatch.get(PREDICTION, 0) + 1
        if e.confidence is not None:
            w.conf.append(e.confidence)
    assert size  # the window size comes from the operator's windows


def _window(w: DriftWindow) -> tuple[Any, ...]:
    """A window's content; a feature's values as a multiset where a features mapping
    named `__prediction__` (see operators.drift._take), else in order."""
    values = {
        name: (type(acc).__name__, sorted(map(repr, acc)) if name == PREDICTION else list(acc))
        for name, acc in w.values.items()
    }
    return (w.n, w.versions, values, w.mismatch, list(w.conf), w.open, w.ready)


def _state(op: DriftOperator) -> Any:
    return {
        (start, model): _window(w) for start, model, w in op.windows.items()
    }, op.dropped_windows


def _outputs(op: DriftOperator) -> Any:
    out = op.collect()
    # as text: a p-value may be NaN (a one-value window), and NaN != NaN
    rows = {t: [repr(msgspec.structs.asdict(r)) for r in rs] for t, rs in out.rows.items()}
    return rows, [repr(o) for o in out.observations]


FEATURE_VALUE = st.one_of(
    st.floats(-5, 5, allow_nan=False),
    st.sampled_from(["A", "B", "C", "zz"]),
    st.integers(-3, 3),
)


@st.composite
def inference_logs(draw: st.DrawFn, n: int) -> list[InferenceLog]:
    out = []
    t = 1_795_000_200_000
    for i in range(n):
        t += draw(st.integers(0, 40_000))
        regular = draw(st.integers(0, 9)) > 1
        if regular:
            features: dict[str, Any] = {
                "x1": draw(st.floats(-3, 3, allow_nan=False)),
                "x2": draw(st.floats(0, 20, allow_nan=False)),
                "cat": draw(st.sampled_from(["A", "B", "C"])),
            }
        else:
            features = draw(
                st.dictionaries(
                    st.sampled_from(["x1", "x2", "cat", "new", PREDICTION]), FEATURE_VALUE
                )
            )
        out.append(
            InferenceLog(
                request_id=f"r{i}",
                ts=t - draw(st.integers(0, 20_000)),  # a little out of order
                model_id=draw(st.sampled_from(["m1", "m2"])),
                model_version=draw(st.sampled_from(["v1", "v1", "v2"])),
                features=features,
                prediction=draw(st.one_of(st.floats(0, 1), st.sampled_from(["yes", "no"]))),
                latency_ms=1.0,
                status="ok",
                confidence=draw(st.one_of(st.none(), st.floats(0, 1))),
            )
        )
    return out


def _reference() -> dict[str, Any]:
    rng = np.random.default_rng(3)
    rows = [
        {
            "features": {
                "x1": float(rng.normal()),
                "x2": float(rng.uniform(0, 20)),
                "cat": str(rng.choice(["A", "B", "C"])),
            },
            "prediction": float(rng.uniform()),
            "confidence": float(rng.uniform()),
        }
        for _ in range(2000)
    ]
    return {m: build_profile(rows, m, "ref") for m in ("m1",)}


REFERENCES = _reference()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    n=st.integers(1, 80),
    with_reference=st.booleans(),
    warmup=st.sampled_from([5, 40, None]),
)
def test_drift_feed_in_columns_equals_event_by_event(
    data: st.DataObject, n: int, with_reference: bool, warmup: int | None
) -> None:
    events = data.draw(inference_logs(n))
    cfg = DriftConfig(window_ms=60_000, min_count=3, warmup_events=warmup, pool_windows=3)
    refs = REFERENCES if with_reference else None
    fast, slow = DriftOperator(cfg, refs), DriftOperator(cfg, refs)
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=6)))
    lateness = 30_000
    for lo, hi in zip([0, *cuts], [*cuts, n], strict=True):
        batch = events[lo:hi]
        if not batch:
            continue
        fast.feed("inference-logs", batch)
        _old_feed(slow, batch)
        assert _state(fast) == _state(slow)
        watermark = max(e.ts for e in events[:hi]) - lateness
        fast.advance(watermark)
        slow.advance(watermark)
        assert _outputs(fast) == _outputs(slow)
    end = max(e.ts for e in events) + 10 * cfg.window_ms
    fast.advance(end)
    slow.advance(end)
    assert _outputs(fast) == _outputs(slow)
    assert fast.references == slow.references


def test_drift_columns_keep_numbers_compact_and_count_strings() -> None:
    """A numeric feature of the reference stays an array('d'); strings offered to it
    are left out and counted, as one by one."""
    cfg = DriftConfig(window_ms=60_000)
    op = DriftOperator(cfg, REFERENCES)
    base = dict(model_id="m1", model_version="v1", latency_ms=1.0, status="ok")
    events = [
        InferenceLog(
            request_id=f"r{i}",
            ts=1_795_000_200_000 + i,
            features={"x1": "oops" if i % 3 == 0 else float(i), "x2": 1.0, "cat": "A"},
            prediction=0.5,
            **base,  # type: ignore[arg-type]
        )
        for i in range(9)
    ]
    op.feed("inference-logs", events)
    (w,) = [w for _, _, w in op.windows.items()]
    assert isinstance(w.values["x1"], array)
    assert list(w.values["x1"]) == [1.0, 2.0, 4.0, 5.0, 7.0, 8.0]
    assert w.mismatch == {"x1": 3}
    assert w.n == 9 and w.versions == {"v1": 9}
