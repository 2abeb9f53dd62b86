"""The cluster monitor's per-entity loop, compiled (issue 18, point 1).

`run_entity` does, for a batch of one entity's released readings in event
order, in one numba call, what `operators.cluster` describes per reading:
scale and score against the k-means as it was (`operators.detectors.kmeans`
kernels), judge against tau = the `quantile` of the recent distances (numpy's
"linear" definition, Hyndman & Fan 1996 definition 7:
v[f] + (h - f) (v[f + 1] - v[f]), h = q (n - 1), f = floor(h), over the sorted
distances v), hold or winsorise anomalous runs, count the learning budget and
learn. The arithmetic is the pure-Python monitor's, operation for operation
(the recent distances' quantile is `operators.rolling.RecentQuantile`'s), so
rows, observations and state are the same whatever the batching; what needs
Python objects (rows, observations, the alert state's sensor ids) is returned
as arrays of the readings that produce output, and built by the operator.

Layout (`Recent`, `EntityModel` in `operators.cluster`): the recent
distances are a ring of `cap` (>= `history`) times and values with a sorted
copy; the held run is three arrays; the integers are one array `iv`
(indices below); a sensor's "last judged reading was anomalous" flag is
`active[i]`, i the sensor's index in its entity.

The kernel is compiled when this module is imported (explicit signature,
`cache=True`), as `operators.detectors.window`'s are.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from operators.detectors.kmeans import learn, nearest_center, transform

# iv: the entity's integers
SEEN, LEARN_BATCH, LEARNT, LONG_RUN, HELD_N, HEAD, COUNT = range(7)
N_IV = 7
# cfg: the monitor's integer settings
WARMUP, LEARN_BATCH_MS, MAX_LEARN, SHORT_RUN, HISTORY = range(5)
# out_i columns: reading index, window start, n (distances tau is of), centre, anomalous
O_INDEX, O_START, O_N, O_CENTER, O_ANOMALOUS = range(5)
# out_f columns: distance, threshold, ratio
O_DISTANCE, O_THRESHOLD, O_RATIO = range(3)


@njit(
    "void(int64, float64, int64[::1], float64[::1], float64[::1], int64[::1], int64)",
    cache=True,
)
def recent_add(
    ts: int,
    x: float,
    times: np.ndarray,
    values: np.ndarray,
    sorted_: np.ndarray,
    iv: np.ndarray,
    size: int,
) -> None:
    """`RecentQuantile.add`: append (ts, x); beyond `size` values, drop the oldest.
    The sorted copy gets x inserted and the oldest removed in one shift."""
    cap = times.shape[0]
    head, n = iv[HEAD], iv[COUNT]
    # bisect_right(sorted, x): insort's position
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        if x < sorted_[mid]:
            hi = mid
        else:
            lo = mid + 1
    j = lo
    if n < size:  # grows (n < size <= cap)
        slot = (head + n) % cap
        times[slot], values[slot] = ts, x
        for k in range(n, j, -1):
            sorted_[k] = sorted_[k - 1]
        sorted_[j] = x
        iv[COUNT] = n + 1
        return
    old = values[head]  # the oldest leaves, x takes its slot
    times[head], values[head] = ts, x
    iv[HEAD] = (head + 1) % cap  # full: n == cap (cap is history, or more if restored so)
    lo, hi = 0, n  # bisect_left(sorted, old): the position removed
    while lo < hi:
        mid = (lo + hi) // 2
        if sorted_[mid] < old:
            lo = mid + 1
        else:
            hi = mid
    i = lo
    if j <= i:
        for k in range(i, j, -1):
            sorted_[k] = sorted_[k - 1]
        sorted_[j] = x
    else:
        for k in range(i, j - 1):
            sorted_[k] = sorted_[k + 1]
        sorted_[j - 1] = x


@njit("float64(float64[::1], int64, float64)", cache=True)
def quantile_sorted(sorted_: np.ndarray, n: int, q: float) -> float:
    """`operators.rolling.quantile_sorted` of the first n sorted values."""
    if n == 0:
        raise ValueError("quantile of no values")
    h = q * (n - 1)
    f = math.floor(h)
    lo = sorted_[f]
    if f + 1 >= n:
        return lo
    return lo + (h - f) * (sorted_[f + 1] - lo)


@njit(
    "int64(int64[::1], float64[:, ::1], int64[::1],"  # readings: ts, x, sensor index
    " float64[::1], float64[::1], int64[::1], uint8[:, ::1], float64[:, ::1], float64[::1],"
    " int64[::1], float64[::1], float64[::1],"  # recent: times, values, sorted
    " int64[::1], float64[::1], float64[::1],"  # held: ts, distance, tau
    " uint8[::1], int64[::1], int64[::1], float64, float64, float64,"
    " int64[:, ::1], float64[:, ::1])",
    cache=True,
)
def run_entity(
    ts: np.ndarray,
    xs: np.ndarray,
    sensor: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    count: np.ndarray,
    present: np.ndarray,
    centers: np.ndarray,
    z: np.ndarray,
    r_times: np.ndarray,
    r_values: np.ndarray,
    r_sorted: np.ndarray,
    h_ts: np.ndarray,
    h_d: np.ndarray,
    h_tau: np.ndarray,
    active: np.ndarray,
    iv: np.ndarray,
    cfg: np.ndarray,
    q: float,
    rate: float,
    half: float,
    out_i: np.ndarray,
    out_f: np.ndarray,
) -> int:
    """Score, judge and learn the readings (ts[r], xs[r]) of one entity in order;
    the readings that produce output are written to out_i/out_f, their count
    returned."""
    warmup, batch_ms, max_learn = cfg[WARMUP], cfg[LEARN_BATCH_MS], cfg[MAX_LEARN]
    short_run, size = cfg[SHORT_RUN], cfg[HISTORY]
    n_out = 0
    for r in range(ts.shape[0]):
        t = ts[r]
        x = xs[r]
        transform(x, mean, var, present, z, half)
        distance, center = nearest_center(z, centers)
        if iv[SEEN] >= warmup:
            threshold = quantile_sorted(r_sorted, iv[COUNT], q)
            anomalous = distance > threshold > 0.0
            window_start = r_times[iv[HEAD]]
            n = iv[COUNT]
            if anomalous and iv[LONG_RUN]:
                recent_add(t, threshold, r_times, r_values, r_sorted, iv, size)
            elif anomalous:
                k = iv[HELD_N]
                h_ts[k], h_d[k], h_tau[k] = t, distance, threshold
                iv[HELD_N] = k + 1
                if k + 1 > short_run:  # a long run: winsorised, no longer held
                    for j in range(k + 1):
                        recent_add(h_ts[j], h_tau[j], r_times, r_values, r_sorted, iv, size)
                    iv[HELD_N] = 0
                    iv[LONG_RUN] = 1
            else:  # a short run ended: its distances are the normal tail
                for j in range(iv[HELD_N]):
                    recent_add(h_ts[j], h_d[j], r_times, r_values, r_sorted, iv, size)
                iv[HELD_N] = 0
                iv[LONG_RUN] = 0
                recent_add(t, distance, r_times, r_values, r_sorted, iv, size)
            s = sensor[r]
            if anomalous or active[s]:
                active[s] = 1 if anomalous else 0
                out_i[n_out, O_INDEX] = r
                out_i[n_out, O_START] = window_start
                out_i[n_out, O_N] = n
                out_i[n_out, O_CENTER] = int(center)
                out_i[n_out, O_ANOMALOUS] = 1 if anomalous else 0
                out_f[n_out, O_DISTANCE] = distance
                out_f[n_out, O_THRESHOLD] = threshold
                out_f[n_out, O_RATIO] = distance / threshold if threshold > 0.0 else 0.0
                n_out += 1
        else:
            recent_add(t, distance, r_times, r_values, r_sorted, iv, size)
        iv[SEEN] += 1
        b = t - t % batch_ms
        if b != iv[LEARN_BATCH]:
            iv[LEARN_BATCH], iv[LEARNT] = b, 0
        if iv[LEARNT] < max_learn:
            iv[LEARNT] += 1
            learn(x, mean, var, count, present, centers, rate, z, half)
    return n_out
