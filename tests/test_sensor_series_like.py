"""`Series.like` (a new series copied from the operator's prototype) against
`Series(config)`: the same series, attached, field by field and in its snapshot's bytes,
and the same operator output and state when every new series is made either way.

`Fresh` is `SensorOperator` making each new series with `Series(config)`, as before
`like`; Hypothesis draws configurations (calibrated or not, methods, histories) and
readings with ties, long gaps (a series forgotten and made again) and spikes,
delivered in shuffled batches.
"""

from __future__ import annotations

import random
from typing import Any

import msgspec
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.sensor import CADENCE_READINGS, ST_SIZE, SensorConfig, SensorOperator, Series
from operators.sensor_slots import SeriesSlots
from tests.test_sensor_run import _readings, _run, small_config


class Fresh(SensorOperator):
    """Every new series made by `Series(config)` (the reference of `Series.like`)."""

    def _fresh(self) -> Series:
        return Series(self.config)


def _fields(s: Series) -> dict[str, Any]:
    """Every field of s as comparable data (arrays as lists, objects by their slots)."""

    def plain(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            return (str(v.dtype), v.tolist())
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, msgspec.Struct):
            return msgspec.to_builtins(v)
        slots = getattr(type(v), "__slots__", None)
        if slots is not None and not isinstance(v, (str, tuple)):
            return (type(v).__name__, {a: plain(getattr(v, a)) for a in slots})
        return v

    return {a: plain(getattr(s, a)) for a in Series.__slots__ if a not in ("config", "bound")}


configs = st.builds(
    small_config,
    calibrate=st.booleans(),
    methods=st.sampled_from([("zscore", "iqr", "rise"), ("zscore",), ("iqr", "rise")]),
    score_history=st.integers(0, 300),
    min_score_history=st.integers(10, 40),
    rise_max_points=st.integers(5, 40),
    episode_quiet=st.integers(1, 4),
    episode_cooldown=st.integers(0, 5),
    alpha=st.sampled_from([None, 0.01]),
)


@settings(max_examples=40, deadline=None)
@given(config=configs)
def test_a_series_like_the_prototype_is_a_new_series(config: SensorConfig) -> None:
    proto = Series(config)
    before = _fields(proto)
    want = Series(config)
    SeriesSlots(ST_SIZE, CADENCE_READINGS, capacity=1).attach(("s", "m"), want)
    got = Series.like(proto)
    SeriesSlots(ST_SIZE, CADENCE_READINGS, capacity=1).attach(("s", "m"), got)
    assert _fields(got) == _fields(want)
    assert msgspec.msgpack.encode(got.state()) == msgspec.msgpack.encode(want.state())
    # its own arrays and objects, not the prototype's: written, the prototype is as it was
    for a, b in zip(got.buffers(), proto.buffers(), strict=True):
        assert a is not b and not np.shares_memory(a, b)
    assert not np.shares_memory(got.row, proto.row)
    assert not np.shares_memory(got.gap_row, proto.gap_row)
    assert got.rise.buf is not proto.rise.buf
    for a in ("staged", "bucket", "gaps", "episodes", "tails", "zscore", "iqr", "stats"):
        assert getattr(got, a) is not getattr(proto, a)
    got.row[:] = 7.0
    got.gap_row[:] = 7
    for b in got.buffers():
        b[:] = 7.0
    got.rise.buf[:] = 7.0
    got.staged.append(1.0)
    got.bucket[0] = 5
    assert got.gaps is not None
    got.gaps.append(3)
    got.episodes["zscore"].active = True
    got.tails["iqr"].u = 2.0
    assert _fields(proto) == before


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    sensors=st.integers(1, 5),
    calibrate=st.booleans(),
    batch=st.integers(1, 60),
    min_points=st.integers(2, 12),
)
def test_an_operator_making_series_like_its_prototype_is_the_same(
    seed: int, sensors: int, calibrate: bool, batch: int, min_points: int
) -> None:
    """Output and snapshots, batch by batch, of series made by `like` and by
    `Series(config)` (new sensors, and series forgotten after a long gap and made again)."""
    gap = 100
    config = small_config(min_points=min_points, calibrate=calibrate)
    readings = _readings(seed, 400, sensors, gap)
    rng = random.Random(seed + 1)
    batches = []
    for i in range(0, len(readings), batch):
        chunk = readings[i : i + batch]
        rng.shuffle(chunk)
        batches.append(chunk)
    got = _run(SensorOperator(config), batches, 4 * gap)
    want = _run(Fresh(config), batches, 4 * gap)
    assert got == want
    # the snapshot's bytes too (not only its data)
    a, b = SensorOperator(config), Fresh(config)
    for chunk in batches[:5]:
        for op in (a, b):
            op.feed("sensor-readings", chunk)
            op.advance(min(r.ts for r in chunk) - 4 * gap)
            op.collect()
        assert msgspec.msgpack.encode(a.snapshot()) == msgspec.msgpack.encode(b.snapshot())
