"""The sensor monitor's one-call-per-release run (`operators.sensor_run.run_all` over
`operators.sensor_slots.SeriesSlots`) against the reading-by-reading loop.

`Reference` judges every released reading on its own, in event-time order, through
`SensorOperator._reading` (the Python path: window step, verdicts, calibration,
episodes, cadence, rise test) and appends it to its aggregate at once. The operator
under test groups each release by series slot and runs all series in rounds of one
compiled call, with its aggregates filed later. Hypothesis draws many interleaved
series (sensors with one to three metrics), sensors that appear mid-run, ties, gaps
longer than the window (forgotten series, freed and reused slots), spikes, readings
delivered out of order within the lateness, tiny initial slot and chunk capacities
(so the shared rows double and buffer chunks are added mid-release), and a snapshot
restored into a fresh operator mid-run: the rows, observations and states must be
the reference's, batch by batch.
"""

from __future__ import annotations

import random
from typing import Any

import msgspec
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from operators.sensor import CADENCE_READINGS, SensorConfig, SensorOperator
from operators.sensor_run import ST_SIZE
from operators.sensor_slots import SeriesSlots
from schemas.events import SensorReading
from tests.test_sensor_run import small_config

T0 = 1_795_000_000_000
SRC = "sensor-readings"


class Reference(SensorOperator):
    """Every released reading through `_reading`, one by one, in event-time order."""

    def advance(self, watermark: int) -> None:
        for ts, sid, metric, value, m in self.pending.release(watermark):
            if m:
                self.metrics[sid] = m
            self._reading(ts, sid, metric, value)
            self.aggregates.at((sid, metric), ts).append(value)
        self._expire_until(watermark)
        self._close_windows(watermark)


def _state(op: SensorOperator) -> Any:
    """The operator's state as data (through msgpack; dict order is not part of it)."""
    return msgspec.msgpack.decode(msgspec.msgpack.encode(op.snapshot()))


def _readings(rng: random.Random, n: int, sensors: int, gap: int) -> list[SensorReading]:
    """Readings of `sensors` sensors in time order; sensor i joins at a random time."""
    joins = sorted(rng.randrange(0, n * gap // 2) for _ in range(sensors))
    out = []
    t = T0
    for _ in range(n):
        r = rng.random()
        t += 0 if r < 0.05 else (gap * 60 if r < 0.07 else rng.randint(1, 2 * gap))
        live = [i for i, j in enumerate(joins) if T0 + j <= t] or [0]
        sid = f"s{rng.choice(live)}"
        values = {}
        for metric in ("a", "b", "c")[: 1 + int(sid[1:]) % 3]:
            x = round(rng.gauss(10.0, 1.0), 1)  # repeated values: ties in the window
            if rng.random() < 0.04:
                x += rng.choice((-1, 1)) * rng.uniform(5, 30)  # a spike
            if rng.random() < 0.01:
                x = float(t - T0) / 1000.0  # a ramp piece
            values[metric] = x
        out.append(SensorReading(sensor_id=sid, ts=t, values=values))
    return out


def _deliver(
    rng: random.Random, readings: list[SensorReading], batch: int, lateness: int
) -> list[list[SensorReading]]:
    """Batches in arrival order: each reading moved by less than the lateness."""
    jittered = sorted(readings, key=lambda r: r.ts + rng.uniform(0, lateness / 2))
    return [jittered[i : i + batch] for i in range(0, len(jittered), batch)]


def _run(
    make: Any, batches: list[list[SensorReading]], lateness: int, restore_at: int | None
) -> list[Any]:
    op = make()
    out: list[Any] = []
    watermark = 0
    for i, batch in enumerate(batches):
        if i == restore_at:  # a checkpoint taken, restored into a fresh operator
            snapshot = msgspec.msgpack.decode(msgspec.msgpack.encode(op.snapshot()))
            op = make()
            op.restore(snapshot)
        op.feed(SRC, batch)
        # the watermark trails the batch's earliest reading by the lateness, so no
        # reading is late (each arrives less than lateness/2 out of place)
        watermark = max(watermark, min(r.ts for r in batch) - lateness)
        op.advance(watermark)
        got = op.collect()
        out.append((got.rows, got.observations, _state(op)))
    op.advance(2**62)
    got = op.collect()
    out.append((got.rows, got.observations, _state(op)))
    return out


@settings(max_examples=40, deadline=None)
@example(  # several series forgotten in one advance after a restore (their order)
    seed=0, sensors=15, batch=4, min_points=2, calibrate=False, restore=True, tiny=False
)
@given(
    seed=st.integers(0, 10_000),
    sensors=st.integers(1, 40),
    batch=st.integers(4, 120),
    min_points=st.integers(2, 12),
    calibrate=st.booleans(),
    restore=st.booleans(),
    tiny=st.booleans(),
)
def test_the_batched_run_is_the_reading_by_reading_loop(
    seed: int,
    sensors: int,
    batch: int,
    min_points: int,
    calibrate: bool,
    restore: bool,
    tiny: bool,
) -> None:
    gap = 50
    config = small_config(min_points=min_points, calibrate=calibrate)
    rng = random.Random(seed)
    readings = _readings(rng, 800, sensors, gap)
    lateness = 4 * gap
    batches = _deliver(rng, readings, batch, lateness)
    restore_at = rng.randrange(1, len(batches)) if restore and len(batches) > 1 else None

    def make() -> SensorOperator:
        op = SensorOperator(config)
        if tiny:  # the shared rows double and new chunks are added within releases
            op.slots = SeriesSlots(ST_SIZE, CADENCE_READINGS, capacity=1, chunk=16)
        return op

    got = _run(make, batches, lateness, restore_at)
    # the reference uninterrupted: a restore changes nothing, the order of the series
    # forgotten in one advance included (they are expired in (until, key) order, not in
    # the order of the expiry heap, which a restore rebuilds)
    want = _run(lambda: Reference(config), batches, lateness, None)
    assert got == want
    rows = [r for rows, *_ in got for r in rows.get("sensor_anomalies", [])]
    event(f"anomaly rows: {'some' if rows else 'none'}")
    event(f"restored: {restore_at is not None}")


def test_many_series_of_one_reading_each_per_release() -> None:
    """The case the batching is for: hundreds of series, about one reading of each per
    release (every series past its warm-up), in one compiled call per round."""
    config = SensorConfig(window_ms=60_000, min_points=10, aggregate_window_ms=10_000)
    rng = random.Random(3)
    sensors = 200  # (x 2 metrics; 50 releases: past the warm-up, within CI's time budget)
    readings = []
    for k in range(50):
        for i in range(sensors):
            x = rng.gauss(20.0, 1.0) + (15.0 if rng.random() < 0.005 else 0.0)
            readings.append(
                SensorReading(sensor_id=f"s{i}", ts=T0 + 1_000 * k + i, values={"t": x, "h": -x})
            )
    batches = [readings[i : i + sensors] for i in range(0, len(readings), sensors)]
    got = _run(lambda: SensorOperator(config), batches, 2_000, 25)
    want = _run(lambda: Reference(config), batches, 2_000, 25)
    assert got == want
    assert any(rows.get("sensor_anomalies") for rows, *_ in got)


def test_a_freed_slot_is_reused_by_a_new_key_and_its_aggregates_stay_apart() -> None:
    """A series forgotten (silent beyond its window) frees its slot and a new sensor
    takes it within the same aggregate window: the old key's readings are filed under
    the old key (before the slot is freed), the new key's under the new one."""
    config = SensorConfig(window_ms=1_000, min_points=3, aggregate_window_ms=5_000)
    old = [
        SensorReading(sensor_id="old", ts=T0 + 100 * k, values={"t": float(k % 3)})
        for k in range(5)
    ]
    other = [
        SensorReading(sensor_id="other", ts=T0 + 3_000, values={"t": 1.0})
    ]  # moves the watermark on
    new = [
        SensorReading(sensor_id="new", ts=T0 + 3_100 + 100 * k, values={"t": float(k % 4)})
        for k in range(5)
    ]
    batches = [old, other, new]
    op = SensorOperator(config)
    got = _run(lambda: op, batches, 0, None)
    want = _run(lambda: Reference(config), batches, 0, None)
    assert got == want
    rows = [r for rows, *_ in got for r in rows.get("sensor_windows", [])]
    assert sorted(r.sensor_id for r in rows) == ["new", "old", "other"]
    assert {r.window_start for r in rows} == {T0}  # one aggregate window for all three


def test_the_slot_of_a_forgotten_series_goes_to_the_next_new_key() -> None:
    config = SensorConfig(window_ms=1_000, min_points=3)
    op = SensorOperator(config)
    op.feed(SRC, [SensorReading(sensor_id="old", ts=T0, values={"t": 1.0})])
    op.advance(T0 + 1)
    slot = op.slots.slot_of[("old", "t")]
    op.feed(SRC, [SensorReading(sensor_id="other", ts=T0 + 3_000, values={"t": 1.0})])
    op.advance(T0 + 3_001)  # "old" silent beyond its window: forgotten
    assert ("old", "t") not in op.slots.slot_of and slot in op.slots.free
    op.feed(SRC, [SensorReading(sensor_id="new", ts=T0 + 3_100, values={"t": 1.0})])
    op.advance(T0 + 3_101)
    assert op.slots.slot_of[("new", "t")] == slot
