"""The sensor monitor's per-series run, compiled: the readings nothing happens to.

`run` takes one series' released readings (times and values, in event-time
order) and steps through them as `operators.sensor.SensorOperator._reading`
does, with the same float64 arithmetic operation for operation: the staged
reading added and the window evicted (`operators.detectors.window`'s step), and
once the window holds `min_points` readings the z-score
(`operators.detectors.zscore.ZScore.judge_one`: z = |x - mean| / std) and
Tukey's fences (`operators.detectors.iqr.IqrFences.judge_one`) of each reading;
a reading that is normal for both (and for which no episode is open) only has
its score learnt into the series' tail history (`operators.detectors.tail`'s
ring, `ring_learn`) and counted towards the episodes' cooldown, and the open
bucket of the rise test accumulates it. That is the hot path, and it runs
here without a Python call per reading (issue 18, point 1).

A series in its cadence warm-up (its first `CADENCE_READINGS` gaps) runs here too:
each gap is recorded in `gaps` (at `st[ST_NGAPS]`, then counted there), as
`SensorOperator._cadence` would append it, and the gap that completes the warm-up
is judged here as `_cadence` judges it (the median gap g, the window and the rise
buckets into `st`, the same integer and float64 arithmetic), recorded in `cads`
([count] + (slot, g, alpha, rise test size) per series) for the operator to make
the Python parts of it (the rise test of that size, alpha, an unjudgeable window's
warning) after the call, before anything of the series is judged in Python (issue
18, point 3: ~17 µs of Python per series before); `PRE` when `cads` is full or the
reading's metric count is unknown (an old checkpoint's entry).

It stops at the first reading that needs the operator's Python:

- `PRE`, before touching it: a tie with the previous reading's time, a gap
  longer than the window (the series is forgotten), a window buffer or tail
  ring that must grow; the operator handles the whole reading.
- `POST`, after its window step (the statistics are in `st`): a z beyond the
  threshold or a reading beyond a fence (calibration, rows, episodes), or an
  open episode; the operator judges it from there.
- `RISE`, done but for the rise test: the reading closes a bucket of the
  Mann-Kendall test (`operators.detectors.trend`, once per bucket), which is
  the operator's (`_judge_rise`), and `closes` is full. Until then the closed
  buckets are recorded in `closes` ([count] + (reading, start, sum, count) per
  bucket) and the run goes on: the operator runs their rise tests after the
  call, before the reading it stopped at (the test reads and writes only the
  rise's own state, and its rows are put in event-time order anyway).

`st` holds the series' scalars the run reads and writes (`ST_*` below) and
`cfg` the configuration (`CFG_*`). `run_all` runs `run` for every series of a
release in one call, each series' state found by its slot in the shared arrays
of `operators.sensor_slots.SeriesSlots` (issue 18, point 3). Tested against the
operator's Python path reading for reading (tests/test_sensor_run.py,
tests/test_sensor_batch_kernel.py).

`run` compiles the window step (`operators.detectors.window`) and the tail ring
(`operators.detectors.tail`) into itself. numba's own cache checks only this file, so
the cache directory is named by a digest of every kernel module (`operators.numba_cache`):
a change to those kernels is compiled afresh, not served from the cache.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit, types

from operators.detectors.tail import RING_CAP, RING_COUNT, ring_learn
from operators.detectors.window import _step

DONE, PRE, POST, RISE = 0, 1, 2, 3
# st: the series' state the run reads and writes, then the statistics of a POST reading
(
    ST_LAST,  # last_ts
    ST_HAS_LAST,  # 1 when last_ts is set
    ST_STAGED,  # the staged reading's value (one: ties stop the run)
    ST_NSTAGED,  # staged readings
    ST_WINDOW,  # window_ms
    ST_BUCKET_MS,
    ST_BUCKET_START,
    ST_BUCKET_SUM,
    ST_BUCKET_COUNT,
    ST_ACTIVE_Z,  # the z-score episode is open
    ST_SINCE_Z,  # its since_end
    ST_ACTIVE_I,
    ST_SINCE_I,
    ST_N,  # POST: the window's n, mean, std, q1, q3 and start
    ST_MEAN,
    ST_STD,
    ST_Q1,
    ST_Q3,
    ST_START,
    ST_NGAPS,  # the gaps of the cadence warm-up recorded so far (-1: the cadence is known)
) = range(20)
ST_SIZE = 20
(
    CFG_MIN_POINTS,
    CFG_Z,  # z_threshold
    CFG_MIN_STD,
    CFG_K,  # iqr_k
    CFG_MIN_IQR,
    CFG_USE_Z,
    CFG_USE_I,
    CFG_CALIBRATE,
    CFG_RISE,  # the Mann-Kendall rise test's buckets
    CFG_HISTORY,  # the tails' history
    CFG_CADENCE,  # the gaps after which a series' cadence is judged (`CADENCE_READINGS`)
    # the cadence's consequences (`SensorOperator._cadence`), from `SensorConfig`
    CFG_ADAPT,  # adapt_window
    CFG_WINDOW_MS,  # window_ms (the configured one)
    CFG_WINDOW_READINGS,  # window_readings
    CFG_BUDGET,  # false_alarms_per_day
    CFG_PER_SENSOR,  # budget_per == "sensor"
    CFG_ALPHA,  # alpha (0: none, the budget's)
    CFG_RISE_SPAN,  # rise_span_ms
    CFG_RISE_MIN_READINGS,
    CFG_RISE_MAX_POINTS,
) = range(20)
CFG_SIZE = 20
DAY_MS = 86_400_000
CAD_SIZE = 4  # a cadence record: (slot, g, alpha, size of the rise test)

_SIGNATURE = (
    "UniTuple(int64, 2)(float64[::1], float64[::1], float64[::1], int64[::1], "
    "float64[::1], int64, int64, float64[::1], float64[::1], float64[::1], int64[::1], "
    "int64[::1], float64[::1], int64)"
)


@njit(_SIGNATURE, cache=True)
def run(
    buf: np.ndarray,
    tail_z: np.ndarray,
    tail_i: np.ndarray,
    ts: np.ndarray,
    xs: np.ndarray,
    i0: int,
    i1: int,
    st: np.ndarray,
    cfg: np.ndarray,
    closes: np.ndarray,
    gaps: np.ndarray,
    ms: np.ndarray,
    cads: np.ndarray,
    slot: int,
) -> tuple[int, int]:
    """(status, i): readings i0..i-1 done; DONE (i = i1), or reading i needs Python
    (PRE: untouched; POST: its window stepped, the statistics in st; RISE: all done
    but its rise test)."""
    min_points = int(cfg[CFG_MIN_POINTS])
    thr, min_std, k, min_iqr = cfg[CFG_Z], cfg[CFG_MIN_STD], cfg[CFG_K], cfg[CFG_MIN_IQR]
    use_z, use_i = cfg[CFG_USE_Z] != 0.0, cfg[CFG_USE_I] != 0.0
    calibrate, rise = cfg[CFG_CALIBRATE] != 0.0, cfg[CFG_RISE] != 0.0
    history = int(cfg[CFG_HISTORY])
    cadence = int(cfg[CFG_CADENCE])
    window_ms = int(st[ST_WINDOW])
    bucket_ms = int(st[ST_BUCKET_MS])
    for i in range(i0, i1):
        t = ts[i]
        x = xs[i]
        add = 0
        last = 0
        staged = 0.0
        if st[ST_HAS_LAST] != 0.0:
            last = int(st[ST_LAST])
            if t - last > window_ms or t <= last or st[ST_NSTAGED] != 1.0:
                return PRE, i
            add = 1
            staged = st[ST_STAGED]
        elif st[ST_NSTAGED] != 0.0:
            return PRE, i
        # in the cadence warm-up each gap is recorded in gaps; the one that completes
        # it judges the cadence (`SensorOperator._cadence`): window, buckets here,
        # alpha and the rise test's size recorded for the operator
        ngaps = int(st[ST_NGAPS])
        warm = add == 1 and ngaps >= 0
        if warm and ngaps + 1 >= cadence:
            c = 1 + CAD_SIZE * int(cads[0])
            per_sensor = cfg[CFG_PER_SENSOR] != 0.0
            if c + CAD_SIZE > len(cads) or (per_sensor and ms[i] == 0):
                return PRE, i
            ordered = np.sort(np.append(gaps[:ngaps], t - last))
            g = max(ordered[len(ordered) // 2], 1)
            if cfg[CFG_ADAPT] != 0.0:
                window_ms = max(int(cfg[CFG_WINDOW_MS]), int(cfg[CFG_WINDOW_READINGS]) * g)
                st[ST_WINDOW] = window_ms
            budget = cfg[CFG_BUDGET]
            if per_sensor:
                budget /= max(1, ms[i])
            alpha = cfg[CFG_ALPHA]
            if alpha == 0.0:
                alpha = min(0.01, budget * g / DAY_MS)
            span = max(int(cfg[CFG_RISE_SPAN]), int(cfg[CFG_RISE_MIN_READINGS]) * g)
            max_points = int(cfg[CFG_RISE_MAX_POINTS])
            bucket_ms = max(g, span // max_points)
            st[ST_BUCKET_MS] = bucket_ms
            size = min(max(span // bucket_ms, int(cfg[CFG_RISE_MIN_READINGS])), max_points)
            cads[c] = slot
            cads[c + 1] = g
            cads[c + 2] = alpha
            cads[c + 3] = size
            cads[0] += 1.0
            st[ST_NGAPS] = -1.0
            warm = False
        start = t - window_ms
        # a tail ring full below its history grows in Python first
        if calibrate and (
            (tail_z[RING_COUNT] >= tail_z[RING_CAP] and tail_z[RING_CAP] < history)
            or (tail_i[RING_COUNT] >= tail_i[RING_CAP] and tail_i[RING_CAP] < history)
        ):
            return PRE, i
        n, mean, std, q1, q3 = _step(buf, last, staged, add, start)
        if n < 0:  # the window's buffer must grow (nothing changed)
            return PRE, i
        if warm:  # the gap recorded for the cadence (before the step in Python)
            gaps[ngaps] = t - last
            st[ST_NGAPS] = ngaps + 1
        # the staged reading is in the window now; decide before changing anything else
        st[ST_NSTAGED] = 0.0
        judge_z = False
        judge_i = False
        z = 0.0
        spread = 0.0
        post = False
        if n >= min_points:
            if use_z and std > min_std:
                z = abs(x - mean) / std
                judge_z = True
                if z > thr or st[ST_ACTIVE_Z] != 0.0:
                    post = True
            if use_i:
                iqr = q3 - q1
                if iqr > min_iqr:
                    judge_i = True
                    upper, lower = q3 + k * iqr, q1 - k * iqr
                    score = 0.0
                    if x > upper:
                        score = (x - upper) / iqr
                    elif x < lower:
                        score = (lower - x) / iqr
                    if score > 0.0 or st[ST_ACTIVE_I] != 0.0:
                        post = True
                    spread = abs(x - 0.5 * (q1 + q3)) / iqr
        if post:
            st[ST_N] = n
            st[ST_MEAN] = mean
            st[ST_STD] = std
            st[ST_Q1] = q1
            st[ST_Q3] = q3
            st[ST_START] = start
            return POST, i
        if judge_z:
            if calibrate:
                ring_learn(tail_z, z, history)
            st[ST_SINCE_Z] += 1.0
        if judge_i:
            if calibrate:
                ring_learn(tail_i, spread, history)
            st[ST_SINCE_I] += 1.0
        st[ST_STAGED] = x
        st[ST_NSTAGED] = 1.0
        st[ST_LAST] = t
        st[ST_HAS_LAST] = 1.0
        if rise and bucket_ms:
            b = t - t % bucket_ms
            if not (b == int(st[ST_BUCKET_START]) or st[ST_BUCKET_COUNT] == 0.0):
                # a bucket closes: recorded (reading, start, sum, count) for the
                # operator's rise test, which runs after this call (it changes
                # nothing this run reads); RISE when the record is full
                c = 1 + 4 * int(closes[0])  # (not k: that is iqr_k)
                if c + 4 > len(closes):
                    return RISE, i
                closes[c] = i
                closes[c + 1] = st[ST_BUCKET_START]
                closes[c + 2] = st[ST_BUCKET_SUM]
                closes[c + 3] = st[ST_BUCKET_COUNT]
                closes[0] += 1.0
                st[ST_BUCKET_START] = b
                st[ST_BUCKET_SUM] = x
                st[ST_BUCKET_COUNT] = 1.0
                continue
            if st[ST_BUCKET_COUNT] == 0.0:
                st[ST_BUCKET_START] = b
            st[ST_BUCKET_SUM] += x
            st[ST_BUCKET_COUNT] += 1.0
    return DONE, i1


_CHUNKS = types.ListType(types.float64[::1])
_RUN_ALL_SIGNATURE = types.void(
    _CHUNKS,
    types.int64[:, ::1],
    types.int64[:, ::1],
    types.int64[:, ::1],
    types.int64[::1],
    types.float64[::1],
    types.int64[::1],
    types.int64[::1],
    types.int64[::1],
    types.float64[:, ::1],
    types.float64[::1],
    types.float64[::1],
    types.int64[:, ::1],
    types.int64[::1],
    types.float64[::1],
    types.int64[::1],
    types.int64[::1],
)


@njit(_RUN_ALL_SIGNATURE, cache=True)
def run_all(
    chunks: Any,
    where: np.ndarray,
    offsets: np.ndarray,
    sizes: np.ndarray,
    ts: np.ndarray,
    xs: np.ndarray,
    slots: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    states: np.ndarray,
    cfg: np.ndarray,
    closes: np.ndarray,
    gaps: np.ndarray,
    ms: np.ndarray,
    cads: np.ndarray,
    status: np.ndarray,
    stops: np.ndarray,
) -> None:
    """`run` for many series in one call (issue 18, point 3: no Python per series).

    Series k (slot `slots[k]`) runs its readings starts[k]..ends[k]-1 of ts, xs (the
    release grouped by series, each series' readings in event-time order): its window
    buffer and its two tail rings are the regions `[offsets[s, j]:offsets[s, j] +
    sizes[s, j]]` of the array `chunks[where[s, j]]` (j = 0 window, 1 z-score tail,
    2 IQR tail; `operators.sensor_slots.SeriesSlots`), its scalars the row
    `states[s]` (`ST_*`), its cadence warm-up gaps the row `gaps[s]`. Each series stops
    as `run` does, independently of the others: (status[k], stops[k]) is `run`'s
    (status, i) for it. `closes` collects every series' closed rise buckets in the
    order they closed (per series in event-time order), emptied first, and `cads` the
    cadences judged (`run`), emptied first."""
    closes[0] = 0.0
    cads[0] = 0.0
    for k in range(len(slots)):
        s = slots[k]
        o0, o1, o2 = offsets[s, 0], offsets[s, 1], offsets[s, 2]
        r, j = run(
            chunks[where[s, 0]][o0 : o0 + sizes[s, 0]],
            chunks[where[s, 1]][o1 : o1 + sizes[s, 1]],
            chunks[where[s, 2]][o2 : o2 + sizes[s, 2]],
            ts,
            xs,
            starts[k],
            ends[k],
            states[s],
            cfg,
            closes,
            gaps[s],
            ms,
            cads,
            s,
        )
        status[k] = r
        stops[k] = j


@njit("float64(float64[::1], int64, int64)", cache=True)
def pairwise_sum(a: np.ndarray, lo: int, n: int) -> float:
    """sum(a[lo:lo + n]) as numpy's float64 `add.reduce` adds (pairwise summation:
    blocks of at most 128 values in 8 accumulators, halves above; numpy's
    `pairwise_sum` in loops_utils.h), so the mean is numpy's to the last bit."""
    if n < 8:
        res = 0.0
        for i in range(lo, lo + n):
            res += a[i]
        return res
    if n <= 128:
        r = a[lo : lo + 8].copy()
        m = n - n % 8
        i = 8
        while i < m:
            for j in range(8):
                r[j] += a[lo + i + j]
            i += 8
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        while i < n:
            res += a[lo + i]
            i += 1
        return res
    n2 = n // 2
    n2 -= n2 % 8
    return pairwise_sum(a, lo, n2) + pairwise_sum(a, lo + n2, n - n2)


@njit("Tuple((boolean, float64, float64, float64, float64))(float64[::1])", cache=True)
def aggregate(values: np.ndarray) -> tuple[bool, float, float, float, float]:
    """(finite, min, max, mean, p95) of a `sensor_windows` window's readings (n >= 1),
    each as numpy computes it: `arr.min()`, `arr.max()`, `arr.mean()` (pairwise sum
    / n) and `np.percentile(arr, 95)` ("linear": h = (n - 1) * 0.95 between the order
    statistics f = floor(h) and f + 1, numpy's `_lerp` from the nearer end). finite is
    False, the rest unset, when a value is not finite or is -0.0 (numpy's signed
    zeros and NaN propagation are numpy's: the caller asks numpy then)."""
    n = len(values)
    lo = values[0]
    hi = values[0]
    for i in range(n):
        x = values[i]
        if not np.isfinite(x) or (x == 0.0 and math.copysign(1.0, x) < 0.0):
            return False, 0.0, 0.0, 0.0, 0.0
        if x < lo:
            lo = x
        if x > hi:
            hi = x
    mean = pairwise_sum(values, 0, n) / n
    h = (n - 1) * 0.95
    if h >= n - 1:  # one value
        return True, lo, hi, mean, values[0]
    ordered = np.sort(values)
    f = int(np.floor(h))
    gamma = h - f
    a, b = ordered[f], ordered[f + 1]
    diff = b - a
    p95 = b - diff * (1.0 - gamma) if gamma >= 0.5 else a + diff * gamma
    return True, lo, hi, mean, p95


@njit("void(float64[::1], int64[::1], boolean[::1], float64[:, ::1])", cache=True)
def aggregate_runs(
    values: np.ndarray, bounds: np.ndarray, finite: np.ndarray, out: np.ndarray
) -> None:
    """`aggregate` of each run values[bounds[i]:bounds[i + 1]] (every window the
    watermark closed, in one call instead of one per window: issue 18), its finite
    flag into finite[i] and (min, max, mean, p95) into out[i]."""
    for i in range(len(bounds) - 1):
        ok, lo, hi, mean, p95 = aggregate(values[bounds[i] : bounds[i + 1]])
        finite[i] = ok
        out[i, 0] = lo
        out[i, 1] = hi
        out[i, 2] = mean
        out[i, 3] = p95
