"""The sensor monitor's `sensor_windows` aggregates closed from the releases' arrays
(issue 18) against filing every reading into its window's list first, the path before.

`SensorOperator._close_windows` aggregates the windows the watermark closed straight
from the releases' arrays, all in one compiled call, and keeps the open windows'
readings as arrays, in the order filing them at each close would have filed them.
`FiledAtClose` files every unfiled reading into its window's list at each close and
reads each closed window's list back (`np.asarray`, `aggregate`), as before. Hypothesis
draws interleaved sensors joining mid-run, long gaps (expired series, reused slots),
deliveries in order and jittered within the lateness, batches spanning several
windows or a part of one, snapshots taken now and then (which file the open windows'
readings into their lists, so closes meet windows that are partly lists) and one
restored mid-run, and signed zeros (numpy's own statistics): the rows and observations
must be the lists' in the same order, and every snapshot the same bytes.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
from hypothesis import event, given, settings
from hypothesis import strategies as st

from operators.sensor import SensorOperator
from operators.sensor_run import aggregate
from schemas.events import SensorReading
from schemas.rows import SensorWindowRow
from tests.test_sensor_arrival_order import BATCH_DRAWS, drawn_batches, run_batches
from tests.test_sensor_batch_kernel import T0
from tests.test_sensor_run import small_config

SRC = "sensor-readings"


class FiledAtClose(SensorOperator):
    """Each close files every unfiled reading into its window's list, then aggregates
    each closed window's list (the path before the arrays)."""

    def _close_windows(self, watermark: int) -> None:
        size = self.config.aggregate_window_ms
        if self._unfiled_start is not None and self._unfiled_start + size <= watermark:
            self._flush_aggregates()
        for start, key, values in self.aggregates.pop_ending_until(watermark):
            arr = np.asarray(values, dtype=float)
            finite, lo, hi, mean, p95 = aggregate(arr)
            if not finite:
                lo, hi, mean = float(arr.min()), float(arr.max()), float(arr.mean())
                p95 = float(np.percentile(arr, 95))
            self._out.add_row(
                SensorWindowRow(
                    window_start=start,
                    window_end=start + size,
                    sensor_id=key[0],
                    metric=key[1],
                    n=int(arr.size),
                    min=lo,
                    max=hi,
                    mean=mean,
                    p95=p95,
                )
            )


class Counting(SensorOperator):
    """The operator under test, counting the closed windows met partly as lists."""

    merged = 0

    def _closed_runs(self, slot: Any, win: Any, x: Any, filed: Any, closed: Any) -> None:
        before = sum(map(len, filed.values()))
        super()._closed_runs(slot, win, x, filed, closed)
        self.merged += before - sum(map(len, filed.values()))


def _signed_zeros(rng: random.Random, r: SensorReading) -> SensorReading:
    """r, or one in twenty with a metric read as -0.0 (numpy's statistics then)."""
    if rng.random() >= 0.05:
        return r
    values = dict(r.values)
    values[rng.choice(list(values))] = -0.0
    return SensorReading(sensor_id=r.sensor_id, ts=r.ts, values=values)


@settings(max_examples=60, deadline=None)
@given(**BATCH_DRAWS, snapshot_every=st.sampled_from([0, 1, 3, 7]), zeros=st.integers(0, 10_000))
def test_windows_closed_from_the_arrays_are_the_filed_lists(
    seed: int,
    sensors: int,
    batch: int,
    jitter: bool,
    restore: bool,
    snapshot_every: int,
    zeros: int,
) -> None:
    config = small_config(min_points=3)
    batches, lateness, restore_at = drawn_batches(seed, sensors, batch, jitter, restore)
    rng = random.Random(zeros)
    batches = [[_signed_zeros(rng, r) for r in b] for b in batches]
    snapshots = set(range(0, len(batches), snapshot_every)) if snapshot_every else set()
    op = Counting(config)
    got = run_batches(op, batches, lateness, restore_at, snapshots)
    want = run_batches(FiledAtClose(config), batches, lateness, restore_at, snapshots)
    assert got == want
    event(f"windows met partly as lists: {'some' if op.merged else 'none'}")


def test_without_snapshots_no_reading_is_filed() -> None:
    """Sensors read steadily in time order, never snapshotted, none silent long enough
    to expire: every window closes from the arrays, none is filed into a list on the
    way (what the change saves), and the rows are the lists'."""
    config = small_config(min_points=3)
    rng = random.Random(3)
    readings = [
        SensorReading(sensor_id=f"s{i % 5}", ts=T0 + 50 * i, values={"a": rng.gauss(0.0, 1.0)})
        for i in range(400)
    ]
    batches = [readings[i : i + 40] for i in range(0, len(readings), 40)]
    op = Counting(config)
    filed = 0
    original = op._file

    def counting_file(*args: Any) -> None:
        nonlocal filed
        filed += 1
        original(*args)

    op._file = counting_file  # type: ignore[method-assign]
    reference = FiledAtClose(config)
    closed = 0
    for chunk in batches:
        for each in (op, reference):
            each.feed(SRC, chunk)
            each.advance(chunk[0].ts - 200)
        got, want = op.collect(), reference.collect()
        assert (got.rows, got.observations) == (want.rows, want.observations)
        closed += len(got.rows.get("sensor_windows", []))
    assert closed >= 15
    assert (filed, op.merged) == (0, 0)
