"""Extreme sensor values (found by fuzzing): no sensor operator raises, none keeps a
non-finite statistic, and the schema sends readings beyond the bound to the dead letter.

Readings near 1e154 overflowed the cluster monitor's squared distances: `nearest`
found no centre (-1) and `learn` raised KeyError in `tick`."""

from __future__ import annotations

import math
import random

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.autoencoder import AutoencoderConfig, AutoencoderOperator
from operators.cluster import Z_MAX, ClusterConfig, ClusterOperator
from operators.sensor import SensorOperator
from schemas.decode import Decoder, Rejection
from schemas.events import MAX_SENSOR_MAGNITUDE, SensorReading
from tests.row_dicts import as_dicts

T0 = 1_795_000_020_000
SRC = "sensor-readings"


def readings(values: list[float], sensor: str = "s1") -> list[SensorReading]:
    # two features: one follows the fuzzed value, one is quiet, so the scaled
    # coordinate of an extreme value is huge against a small spread
    # (made valid, then given the value: the schema's bound is not the operators' test)
    out = []
    for i, v in enumerate(values):
        r = SensorReading(sensor_id=sensor, ts=T0 + i * 1000, values={"a": 0.0, "b": 1.0 + i % 3})
        r.values["a"] = v
        out.append(r)
    return out


def run(op, events: list[SensorReading]):
    op.feed(SRC, events)
    op.advance(events[-1].ts + 1)
    return op.collect()


def finite_outputs(out) -> bool:
    cells = [v for rows in out.rows.values() for r in as_dicts(rows) for v in r.values()]
    cells += [o.value for o in out.observations]
    return all(math.isfinite(v) for v in cells if isinstance(v, float))


def test_cluster_scores_an_extreme_reading_instead_of_raising() -> None:
    """The fuzzing case, within the schema's bound: a feature with a tiny spread
    (1e-150) then a reading of 1e100, whose scaled coordinate (~1e250) squared
    overflows. It is scored as the anomaly it is (the clamp), the model stays
    finite and goes on. Without the clamp: KeyError -1 in `learn`."""
    rng = random.Random(1)
    quiet = [1e-150 * rng.gauss(0, 1) for _ in range(300)]
    op = ClusterOperator(ClusterConfig(warmup=100))
    out = run(op, readings([*quiet, 1e100, -1e100, *quiet[:50]]))
    flagged = {(r["ts"] - T0) // 1000 for r in as_dicts(out.rows["sensor_anomalies"])}
    assert {300, 301} <= flagged
    assert finite_outputs(out)
    model = op.models[("sensor", "s1")].detector
    assert all(math.isfinite(v) for c in model.model.centers.values() for v in c.values())
    # and it still judges: a reading of the quiet regime after the spikes is found
    # a centre (no KeyError), every coordinate bounded by the clamp
    z = model.scaler.transform_one({"a": 0.0, "b": 2.0})
    assert model.nearest(z)[1] >= 0
    assert all(abs(v) <= Z_MAX for c in model.model.centers.values() for v in c.values())


def test_cluster_counts_a_reading_beyond_the_bound_and_skips_it(caplog) -> None:
    op = ClusterOperator(ClusterConfig(warmup=10))
    with caplog.at_level("WARNING", logger="operators.cluster"):
        out = run(op, readings([1.0, 2.0, 1.7e308, 3.0, -1.9e154]))
    assert op.out_of_range == 2 and op.models[("sensor", "s1")].seen == 3
    assert caplog.text.count("beyond 1e+100") == 1  # once per entity
    assert finite_outputs(out)
    restored = ClusterOperator(ClusterConfig(warmup=10))
    restored.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(op.snapshot())))
    assert restored.out_of_range == 2


@pytest.mark.parametrize("value", [1.0000001e100, -1.9e154, 1.7976931348623157e308])
def test_schema_rejects_values_beyond_the_bound(value: float) -> None:
    body = msgspec.json.encode({"sensor_id": "a", "ts": T0, "values": {"t": 1.0, "u": value}})
    result = Decoder("sensor-readings").decode(body, b"a")
    assert isinstance(result, Rejection) and result.reason == "out_of_range"
    assert "values.u" in result.error
    ok = msgspec.json.encode({"sensor_id": "a", "ts": T0, "values": {"t": -MAX_SENSOR_MAGNITUDE}})
    assert isinstance(Decoder("sensor-readings").decode(ok, b"a"), SensorReading)


def operators():
    return [
        ClusterOperator(ClusterConfig(warmup=20)),
        SensorOperator(),
        AutoencoderOperator(AutoencoderConfig(warmup=20, epochs=2)),
    ]


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=60),
    quiet=st.integers(0, 80),
)
def test_arbitrary_finite_floats_never_raise(values: list[float], quiet: int) -> None:
    """Any finite float, straight into the operators (no schema in between)."""
    events = readings([20.0 + (i % 5) * 0.01 for i in range(quiet)] + values)
    for op in operators():
        run(op, events)


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(
        st.floats(-MAX_SENSOR_MAGNITUDE, MAX_SENSOR_MAGNITUDE, allow_nan=False),
        min_size=1,
        max_size=60,
    ),
    quiet=st.integers(0, 80),
)
def test_values_the_schema_accepts_give_finite_results(values: list[float], quiet: int) -> None:
    """Within the schema's bound every row and observation the operators emit is finite."""
    events = readings([20.0 + (i % 5) * 0.01 for i in range(quiet)] + values)
    for op in operators():
        assert finite_outputs(run(op, events)), type(op).__name__
