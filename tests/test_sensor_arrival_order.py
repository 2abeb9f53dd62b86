"""The sensor monitor's release grouped in arrival order (issue 18, point 3) against the
same release sorted first, the path it skips.

`SensorOperator._grouped` groups a release by series slot without sorting it when that
grouping is the sorted release's (every key already has a slot and every sensor a metric
count, every series' times strictly increase, no entry of an old checkpoint), and
otherwise the release is sorted first as before. `SortedFirst` always sorts. Hypothesis
draws interleaved sensors (one to three metrics, a reading now and then without one)
that join mid-run, ties, spikes, long gaps (forgotten series, reused slots), deliveries
in order and out of order within the lateness, and a snapshot restored mid-run: the
rows and observations must be the sorted path's in the same order, and every snapshot
the same bytes (the metric counts' dict order included).
"""

from __future__ import annotations

import random
from typing import Any

import msgspec
from hypothesis import event, given, settings
from hypothesis import strategies as st

from operators.sensor import Entry, SensorOperator
from schemas.events import SensorReading
from tests.test_sensor_batch_kernel import T0, _deliver, _readings
from tests.test_sensor_run import small_config

SRC = "sensor-readings"


class SortedFirst(SensorOperator):
    """Every release sorted before it is grouped (the path before the arrival-order one)."""

    def _grouped(self, released: list[Entry], in_order: bool) -> Any:
        return super()._grouped(released, in_order) if in_order else None


class Counting(SensorOperator):
    """The operator under test, counting the releases grouped in arrival order."""

    unsorted = 0

    def _grouped(self, released: list[Entry], in_order: bool) -> Any:
        group = super()._grouped(released, in_order)
        if not in_order and group is not None:
            self.unsorted += 1
        return group


def _some_metrics(rng: random.Random, r: SensorReading) -> SensorReading:
    """r, or one in ten without its last metric (a sensor's metric count changes)."""
    if len(r.values) < 2 or rng.random() >= 0.1:
        return r
    return SensorReading(sensor_id=r.sensor_id, ts=r.ts, values=dict(list(r.values.items())[:-1]))


def run_batches(
    op: SensorOperator,
    batches: list[list[SensorReading]],
    lateness: int,
    restore_at: int | None,
    snapshots: set[int] | None = None,
) -> list[Any]:
    """Each batch's rows and observations, and the snapshot's bytes after every batch
    (or after those in `snapshots`: taking one files the open aggregate windows, so
    when it is taken matters); at `restore_at` the last checkpoint is restored into a
    fresh operator."""
    out: list[Any] = []
    watermark = 0
    for i, batch in enumerate(batches):
        if i == restore_at:  # a checkpoint taken, restored into a fresh operator
            fresh = type(op)(op.config)
            fresh.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(op.snapshot())))
            op = fresh
        op.feed(SRC, batch)
        watermark = max(watermark, min(r.ts for r in batch) - lateness)
        op.advance(watermark)
        got = op.collect()
        out.append((got.rows, got.observations))
        if snapshots is None or i in snapshots:
            out.append(msgspec.msgpack.encode(op.snapshot()))
    op.advance(2**62)
    got = op.collect()
    out.append((got.rows, got.observations, msgspec.msgpack.encode(op.snapshot())))
    return out


#: the draws of `drawn_batches`' arguments, for a property's `@given(**BATCH_DRAWS)`
BATCH_DRAWS = {
    "seed": st.integers(0, 10_000),
    "sensors": st.integers(1, 30),
    "batch": st.integers(4, 120),
    "jitter": st.booleans(),
    "restore": st.booleans(),
}


def drawn_batches(
    seed: int, sensors: int, batch: int, jitter: bool, restore: bool
) -> tuple[list[list[SensorReading]], int, int | None]:
    """(batches, lateness, the batch before which a checkpoint is restored or None):
    600 readings of `sensors` sensors with varying metrics, in batches of `batch`, in
    time order (most releases skip the sort) or moved within the lateness (`jitter`)."""
    gap = 50
    rng = random.Random(seed)
    readings = [_some_metrics(rng, r) for r in _readings(rng, 600, sensors, gap)]
    lateness = 4 * gap
    batches = (
        _deliver(rng, readings, batch, lateness)
        if jitter
        else [readings[i : i + batch] for i in range(0, len(readings), batch)]
    )
    restore_at = rng.randrange(1, len(batches)) if restore and len(batches) > 1 else None
    return batches, lateness, restore_at


@settings(max_examples=40, deadline=None)
@given(**BATCH_DRAWS)
def test_a_release_grouped_in_arrival_order_is_the_sorted_releases(
    seed: int, sensors: int, batch: int, jitter: bool, restore: bool
) -> None:
    config = small_config(min_points=3)
    batches, lateness, restore_at = drawn_batches(seed, sensors, batch, jitter, restore)
    op = Counting(config)
    got = run_batches(op, batches, lateness, restore_at)
    want = run_batches(SortedFirst(config), batches, lateness, restore_at)
    assert got == want
    event(f"releases unsorted: {'some' if op.unsorted else 'none'}")


def test_releases_in_time_order_skip_the_sort() -> None:
    """Readings in time order without ties: past the first release (new keys take slots
    in event-time order), every release is grouped in arrival order."""
    op = Counting(small_config())
    for k in range(20):
        batch = [
            SensorReading(
                sensor_id=f"s{i}", ts=T0 + 1_000 * k + i, values={"a": float(k), "b": 1.0}
            )
            for i in range(5)
        ]
        op.feed(SRC, batch)
        op.advance(T0 + 1_000 * k)  # (releases the batch before)
    assert op.unsorted == 18


def test_a_sensor_without_a_metric_count_sorts_the_release() -> None:
    """A sensor whose series are known but its metric count is not (as after a checkpoint
    from before the per-sensor budget): that release is sorted, so the counts go in at
    each sensor's first reading in event-time order (s0's), the sorted path's dict
    order, not at its latest (s1's)."""
    ops = [Counting(small_config()), SortedFirst(small_config())]
    for k in range(6):
        batch = [
            SensorReading(sensor_id=sid, ts=T0 + 1_000 * k + dt, values={"a": float(dt)})
            for sid, dt in (("s0", 0), ("s1", 100), ("s1", 200), ("s0", 500))
        ]
        for op in ops:
            if k == 4:
                op.metrics.clear()
            op.feed(SRC, batch)
            op.advance(T0 + 1_000 * k)
    assert ops[0].unsorted == 3  # (the releases of k = 2, 3 and 5)
    assert list(ops[0].metrics) == list(ops[1].metrics) == ["s0", "s1"]
