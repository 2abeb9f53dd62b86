"""Schemas: one source of truth, generated artefacts in sync, strict decoding."""

from __future__ import annotations

import json

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.decode import Decoder, Rejection
from schemas.events import INPUT_EVENTS
from schemas.generate import artefacts
from schemas.tables import TABLES, schema_sql

GOOD = {
    "impressions": {
        "impression_id": "i1",
        "ts": "2026-11-22T10:00:00.123Z",
        "campaign_id": "c",
        "user_id": "u",
        "variant": "A",
        "unknown_extra": [1, 2],
    },
    "clicks": {
        "click_id": "k",
        "impression_id": "i1",
        "ts": 1795341600123,
        "campaign_id": "c",
        "user_id": "u",
    },
    "inference-logs": {
        "request_id": "r",
        "ts": 1795341600123,
        "model_id": "m",
        "model_version": "3",
        "features": {"age": 31, "country": "fr"},
        "prediction": 0.7,
        "latency_ms": 12.5,
        "status": "ok",
        "confidence": 0.9,
    },
    "sensor-readings": {
        "sensor_id": "s",
        "ts": 1795341600123,
        "values": {"temp": 21.5},
        "site": "plant-1",
    },
    "labels": {"request_id": "r", "ts": 1795341600123, "model_id": "m", "label": 1, "weight": 2},
    "conversions": {
        "conversion_id": "v1",
        "click_id": "k",
        "ts": 1795341600123,
        "campaign_id": "c",
        "user_id": "u",
        "value": 19.9,
    },
}
KEYS = {
    "impressions": "c",
    "clicks": "c",
    "inference-logs": "m",
    "sensor-readings": "s",
    "labels": "m",
    "conversions": "c",
}


def test_generated_files_are_in_sync() -> None:
    stale = [str(p) for p, text in artefacts().items() if not p.exists() or p.read_text() != text]
    assert not stale, f"run `python -m schemas.generate`: stale {stale}"


@pytest.mark.parametrize("topic", list(INPUT_EVENTS))
def test_json_schema_and_decoder_agree_on_good_events(topic: str) -> None:
    schema = json.loads(next(t for p, t in artefacts().items() if p.name == f"{topic}.json"))
    jsonschema.validate(GOOD[topic], schema)
    event = Decoder(topic).decode(json.dumps(GOOD[topic]).encode(), KEYS[topic].encode())
    assert not isinstance(event, Rejection), event
    assert event.ts == 1795341600123


@pytest.mark.parametrize(
    ("topic", "patch", "reason"),
    [
        ("impressions", {"user_id": 5}, "wrong_type"),
        ("conversions", {"value": "12"}, "wrong_type"),
        ("conversions", {"click_id": None}, "missing_field"),
        ("impressions", {"user_id": None}, "missing_field"),
        ("clicks", {"ts": "2026-11-22T10:00:00"}, "bad_timestamp"),
        ("clicks", {"ts": 0}, "bad_timestamp"),
        ("inference-logs", {"status": "maybe"}, "invalid_value"),
        ("inference-logs", {"confidence": 1.5}, "invalid_value"),
        ("inference-logs", {"latency_ms": -1}, "invalid_value"),
        ("sensor-readings", {"values": {}}, "invalid_value"),
        ("sensor-readings", {"values": {"t": "hot"}}, "wrong_type"),
        ("sensor-readings", {"v": 9}, "unsupported_version"),
        ("labels", {"weight": -1}, "invalid_value"),
        ("labels", {"label": [1]}, "wrong_type"),
        ("labels", {"request_id": None}, "missing_field"),
    ],
)
def test_decoder_rejects_with_reason(topic: str, patch: dict, reason: str) -> None:
    body = {**GOOD[topic], **patch}
    body = {k: v for k, v in body.items() if v is not None}
    result = Decoder(topic).decode(json.dumps(body).encode(), KEYS[topic].encode())
    assert isinstance(result, Rejection) and result.reason == reason, result
    schema = json.loads(next(t for p, t in artefacts().items() if p.name == f"{topic}.json"))
    if reason in ("wrong_type",):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(body, schema)


def test_huge_and_infinite_numbers_are_rejected() -> None:
    d = Decoder("sensor-readings")
    huge = b'{"sensor_id": "s", "ts": 1795341600123, "values": {"t": 1e999}}'
    assert isinstance(d.decode(huge, b"s"), Rejection)
    nan = b'{"sensor_id": "s", "ts": 1795341600123, "values": {"t": NaN}}'
    assert d.decode(nan, b"s").reason == "invalid_json"  # type: ignore[union-attr]
    big = (
        b'{"sensor_id": "s", "ts": 1795341600123, "values": {"t": 1}, "pad": "'
        + b"x" * 300_000
        + b'"}'
    )
    assert d.decode(big, b"s").reason == "too_large"  # type: ignore[union-attr]


@settings(max_examples=3000, deadline=None)
@given(raw=st.binary(max_size=400), key=st.one_of(st.none(), st.binary(max_size=8)))
def test_fuzz_arbitrary_bytes_never_raise(raw: bytes, key: bytes | None) -> None:
    for topic in INPUT_EVENTS:
        result = Decoder(topic).decode(raw, key)
        assert isinstance(result, Rejection) or result.ts is not None


@settings(max_examples=500, deadline=None)
@given(
    doc=st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(max_size=20),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=12,
    )
)
def test_fuzz_arbitrary_json_never_raises(doc: object) -> None:
    raw = json.dumps(doc).encode()
    for topic in INPUT_EVENTS:
        Decoder(topic).decode(raw, b"c")


def test_ddl_covers_every_table_and_applies(tmp_path) -> None:
    import subprocess
    import sys

    sql = schema_sql("streamwatch")
    for table in TABLES:
        assert f"streamwatch.{table.name}" in sql
    # applied for real in chDB, in a child process (chDB allows one directory per process)
    code = (
        "import clickhouse_connect, sys\n"
        "from streams.connectors.clickhouse import ensure_schema\n"
        f"c = clickhouse_connect.get_client(dsn='chdb://{tmp_path}/ch')\n"
        "ensure_schema(c, 'streamwatch'); ensure_schema(c, 'streamwatch')\n"
        "print(sorted(r[0] for r in c.query('SHOW TABLES FROM streamwatch').result_rows))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(sorted(t.name for t in TABLES))
