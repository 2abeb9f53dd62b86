"""The sensor monitor's compiled per-series run (`operators.sensor_run`) against the
reading-by-reading Python loop it replaces: the same rows, observations and state.

`Reference` is `SensorOperator` with the loop of before issue 18's batching: every
released reading, in event-time order, through `_reading` (the window step, the
`ZScore` / `IqrFences` verdicts with their `TailProbability` calibration, episodes,
the rise test) and appended to its aggregate. Hypothesis draws readings with ties,
long gaps, repeated values and spikes, small windows and histories (so every path:
judging, vetoes, episodes, closing rise buckets, forgotten series, grown buffers
and rings), delivered in shuffled batches.
"""

from __future__ import annotations

import math
import random
from typing import Any

import msgspec
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.sensor import SensorConfig, SensorOperator
from operators.sensor_run import aggregate, pairwise_sum
from schemas.events import SensorReading

T0 = 1_795_000_000_000


class Reference(SensorOperator):
    """The reading-by-reading loop (each reading judged on its own, in event order)."""

    def advance(self, watermark: int) -> None:
        for ts, sid, metric, value, m in self.pending.release(watermark):
            if m:
                self.metrics[sid] = m
            self._reading(ts, sid, metric, value)
            self.aggregates.at((sid, metric), ts).append(value)
        self._expire_until(watermark)
        self._close_windows(watermark)


def small_config(**given: Any) -> SensorConfig:
    """A sensor configuration at a small scale (3-s window, short rise test, a score
    history that grows its ring past the first 64 slots), so that random runs of a few
    hundred readings reach every path; `given` overrides or adds fields."""
    fields: dict[str, Any] = {
        "window_ms": 3_000,
        "rise_span_ms": 2_000,
        "rise_min_readings": 5,
        "rise_max_points": 10,
        "rise_min_history": 5,
        "score_history": 150,
        "min_score_history": 10,
        "aggregate_window_ms": 1_000,
        "episode_cooldown": 3,
    }
    return SensorConfig(**{**fields, **given})


def _run(op: SensorOperator, batches: list[list[SensorReading]], lateness: int) -> list[Any]:
    out: list[Any] = []
    for batch in batches:
        op.feed("sensor-readings", batch)
        op.advance(min(r.ts for r in batch) - lateness)
        got = op.collect()
        # the state as data (through msgpack; its dicts' order is not part of it)
        state = msgspec.msgpack.decode(msgspec.msgpack.encode(op.snapshot()))
        out.append((got.rows, got.observations, state))
    op.advance(2**62)
    got = op.collect()
    out.append((got.rows, got.observations))
    return out


def _readings(seed: int, n: int, sensors: int, gap_ms: int) -> list[SensorReading]:
    rng = random.Random(seed)
    out = []
    t = T0
    for _ in range(n):
        # mostly regular, sometimes a tie, sometimes a gap longer than the window
        r = rng.random()
        t += 0 if r < 0.05 else (gap_ms * 40 if r < 0.07 else rng.randint(1, 2 * gap_ms))
        sid = f"s{rng.randrange(sensors)}"
        values = {}
        for metric in ("a", "b", "c")[: rng.randint(1, 3)]:
            x = round(rng.gauss(10.0, 1.0), 1)  # repeated values: ties in the window
            if rng.random() < 0.03:
                x += rng.choice((-1, 1)) * rng.uniform(5, 30)  # a spike
            if rng.random() < 0.01:
                x = float(t - T0) / 1000.0  # a ramp piece
            values[metric] = x
        out.append(SensorReading(sensor_id=sid, ts=t, values=values))
    return out


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    sensors=st.integers(1, 4),
    calibrate=st.booleans(),
    rise_test=st.sampled_from(["mann_kendall", "runs"]),
    batch=st.integers(1, 60),
    min_points=st.integers(2, 12),
    closes=st.sampled_from([1, 2, 64]),
)
def test_the_compiled_run_is_the_reading_by_reading_loop(
    seed: int,
    sensors: int,
    calibrate: bool,
    rise_test: str,
    batch: int,
    min_points: int,
    closes: int,
) -> None:
    gap = 100
    config = small_config(min_points=min_points, calibrate=calibrate, rise_test=rise_test)
    readings = _readings(seed, 400, sensors, gap)
    rng = random.Random(seed + 1)
    batches = []
    for i in range(0, len(readings), batch):
        chunk = readings[i : i + batch]
        rng.shuffle(chunk)  # arrival order within the lateness
        batches.append(chunk)
    lateness = 4 * gap
    op = SensorOperator(config)
    op._closes = np.zeros(1 + 4 * closes)  # room for so many closed rise buckets per run
    got = _run(op, batches, lateness)
    want = _run(Reference(config), batches, lateness)
    assert got == want


def test_a_large_window_grows_its_buffer_in_the_run() -> None:
    """A window of more than the buffer's first 64 readings, judged by the run."""
    config = SensorConfig(window_ms=200_000, min_points=30)
    readings = _readings(7, 3_000, 2, 1_000)
    batches = [readings[i : i + 200] for i in range(0, len(readings), 200)]
    got = _run(SensorOperator(config), batches, 5_000)
    want = _run(Reference(config), batches, 5_000)
    assert got == want
    assert any(rows for rows, *_ in got)


def _same(a: float, b: float) -> bool:
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(allow_nan=False, allow_infinity=False, width=64),
            st.floats(-1e3, 1e3).map(lambda x: round(x, 1)),
            st.sampled_from([0.0, -0.0, 1.0, 1e300, -1e300]),
        ),
        min_size=1,
        max_size=400,
    )
)
def test_the_window_aggregate_is_numpys(values: list[float]) -> None:
    """`sensor_windows`' n/min/max/mean/p95, compiled, against numpy's to the bit."""
    arr = np.asarray(values, dtype=float)
    with np.errstate(all="ignore"):
        want = (arr.min(), arr.max(), arr.mean(), np.percentile(arr, 95))
    finite, *got = aggregate(arr)
    if not finite:  # left to numpy (as `SensorOperator._close_windows` does)
        assert any(x == 0.0 and math.copysign(1.0, x) < 0 for x in values)
        return
    assert all(
        _same(float(g), float(w)) or (math.isnan(g) and math.isnan(w))
        for g, w in zip(got, want, strict=True)
    ), (got, want)


def test_the_window_aggregate_leaves_non_finite_values_and_signed_zeros_to_numpy() -> None:
    assert not aggregate(np.array([1.0, math.inf]))[0]
    assert not aggregate(np.array([math.nan, 1.0]))[0]
    assert not aggregate(np.array([0.0, -0.0]))[0]


def test_the_pairwise_sum_is_numpys_on_long_windows() -> None:
    rng = np.random.default_rng(3)
    for n in [*range(1, 300), 1000, 4097, 10_001]:
        a = rng.standard_normal(n) * 10.0 ** rng.integers(-3, 9, n)
        assert pairwise_sum(a, 0, n) == np.add.reduce(a)


def test_the_tail_ring_keeps_the_last_history_scores_in_order() -> None:
    """`TailProbability`'s ring (grown by doubling) against a deque of maxlen history."""
    from collections import deque

    from operators.detectors.tail import TailProbability

    rng = random.Random(5)
    for history in (0, 1, 63, 64, 65, 150, 1000):
        tail = TailProbability(history=history, min_history=10)
        reference: deque[float] = deque(maxlen=history)
        for i in range(2_500):
            x = rng.random()
            tail.learn_one(x)
            reference.append(x)
            if i % 97 == 0:
                assert tail.values == list(reference) and len(tail) == len(reference)
        assert tail.values == list(reference) and tail.since_fit == 2_500 + tail.refit
