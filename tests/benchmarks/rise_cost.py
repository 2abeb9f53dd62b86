"""CPU per closed bucket of the sensor's rise test arithmetic, as the tree on PYTHONPATH does it.

    cd /work/main && PYTHONPATH=/work/main .venv/bin/python /path/to/rise_cost.py

The per-bucket work of `operators.sensor.SensorOperator`'s rise test: the Mann-Kendall
update and z of the bucket means (`RiseDetector`), its one-sided p and the likelihood
of z against the series' own history (`AnomalyLikelihood`, as `Series.rise_lk` makes
it), for 100 series x 1500 buckets of N(0, 1) means; the fastest of 3 passes. Runs on
a checkout with `RiseDetector.learn_z` (one call: issue 18) or without it (`learn_one`
then `z_score`), so that the same file measures both sides; the checksum must match.
On a checkout with `operators.sensor_rise` it measures the operator's compiled step too
(`rise_close` on each series' `RiseBuffer`, the likelihood made at its first use as the
operator makes it), whose checksum must be the detectors'.
"""

from __future__ import annotations

import random
import time

from operators.detectors.likelihood import AnomalyLikelihood, normal_sf
from operators.detectors.trend import RiseDetector

SERIES, BUCKETS, MIN_READINGS = 100, 1500, 20


def one_pass(data: list[list[float]]) -> tuple[float, float]:
    """(CPU seconds, checksum of the p-values) of one pass."""
    mks = [RiseDetector(30) for _ in data]
    lks = [AnomalyLikelihood(short=1, history=720, min_history=30, refit=10) for _ in data]
    fast = hasattr(RiseDetector, "learn_z")
    total = 0.0
    started = time.process_time()
    for i in range(BUCKETS):
        for mk, lk, xs in zip(mks, lks, data, strict=True):
            if fast:
                z = mk.learn_z(xs[i])
                if mk.n < MIN_READINGS:
                    continue
            else:
                mk.learn_one(xs[i])
                if len(mk) < MIN_READINGS:
                    continue
                z = mk.z_score()
            p = normal_sf(z) if z > 0.0 else 1.0
            total += lk.score_one(z) + p
    return time.process_time() - started, total


def compiled_pass(data: list[list[float]]) -> tuple[float, float]:
    """`one_pass` with the sensor operator's compiled step (`operators.sensor_rise`)."""
    from operators.sensor_rise import (
        MAKE,
        R_N,
        R_P,
        R_PH,
        RiseBuffer,
        rise_close,
        rise_config,
        rise_judge,
    )

    cfg = rise_config(MIN_READINGS, 30, 1e-3, 1e-6, 720)
    rises = [RiseBuffer(30) for _ in data]
    total = 0.0
    started = time.process_time()
    for i in range(BUCKETS):
        for r, xs in zip(rises, data, strict=True):
            how = rise_close(r.buf, xs[i], float(i), cfg)
            if how == MAKE:
                r.make(720)
                rise_judge(r.buf, cfg, False, 0.0, 0.0)
            buf = r.buf
            if buf[R_N] >= MIN_READINGS:
                total += buf[R_PH] + buf[R_P]
    return time.process_time() - started, total


def batched_pass(data: list[list[float]]) -> tuple[float, float]:
    """`compiled_pass` as the operator runs it: the buckets of all series that close
    together in one call (`rise_closes`), the likelihoods made as it asks."""
    import numpy as np

    from operators.sensor_rise import (
        MAKE,
        R_N,
        R_P,
        R_PH,
        RiseBuffer,
        rise_closes,
        rise_config,
        rise_judge,
    )
    from operators.sensor_slots import SeriesSlots

    cfg = rise_config(MIN_READINGS, 30, 1e-3, 1e-6, 720)
    rises = [RiseBuffer(30) for _ in data]
    slots = SeriesSlots(1, 1)
    for k, r in enumerate(rises):
        slots.set_rise(k, r.buf)
    where = np.arange(len(data), dtype=np.int64)  # bucket k's reading is series k's
    closes = np.zeros(1 + 4 * len(data))
    closes[0] = len(data)
    closes[1::4] = where
    closes[4::4] = 1.0  # one reading per bucket: its mean is its value
    columns = np.array(data).T.copy()  # per bucket index, every series' value
    hows = np.zeros(len(data), dtype=np.int64)
    marks = np.zeros(len(data), dtype=np.int64)
    total = 0.0
    started = time.process_time()
    for i in range(BUCKETS):
        closes[2::4] = float(i)
        closes[3::4] = columns[i]
        rise_closes(slots.rises, closes, where, cfg, hows, marks, i + 1)
        for k in np.flatnonzero(hows == MAKE).tolist():
            rises[k].make(720)
            slots.set_rise(k, rises[k].buf)
            rise_judge(rises[k].buf, cfg, False, 0.0, 0.0)
        for r in rises:  # (the checksum: outside the operator's per-bucket work)
            buf = r.buf
            if buf[R_N] >= MIN_READINGS:
                total += buf[R_PH] + buf[R_P]
    return time.process_time() - started, total


def main() -> None:
    rng = random.Random(7)
    data = [[rng.gauss(0.0, 1.0) for _ in range(BUCKETS)] for _ in range(SERIES)]
    runs = [one_pass(data) for _ in range(3)]
    best = min(cpu for cpu, _ in runs)
    checks = {total for _, total in runs}
    side = "learn_z" if hasattr(RiseDetector, "learn_z") else "learn_one"
    print(f"{side}: {best / (SERIES * BUCKETS) * 1e6:.3f} µs per closed bucket, checksum {checks}")
    try:
        import operators.sensor_rise  # noqa: F401
    except ImportError:
        return
    for name, one in (("rise_close", compiled_pass), ("rise_closes", batched_pass)):
        runs = [one(data) for _ in range(3)]
        best = min(cpu for cpu, _ in runs)
        checks = {float(total) for _, total in runs}
        per = best / (SERIES * BUCKETS) * 1e6
        print(f"{name}: {per:.3f} µs per closed bucket, checksum {checks}")


if __name__ == "__main__":
    main()
