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
`run_table` does the same for a whole release, every entity in one call (issue 18,
point 3), each reading with its own entity's arrays, which a table of their addresses
names by the entity's slot (`set_entity`; the operator keeps the table,
`EntitySlots`); `step` is one reading, shared by both.

Layout (`Recent`, `EntityModel` in `operators.cluster`): the recent
distances are a ring of `cap` (>= `history`) times and values with a sorted
copy; the held run is three arrays; the integers are one array `iv`
(indices below); a sensor's "last judged reading was anomalous" flag is
`active[i]`, i the sensor's index in its entity.

The kernel is compiled when this module is imported (explicit signature,
`cache=True`), as `operators.detectors.window`'s are.

The recent distances (history 3) and their quantile:

>>> mi = np.zeros(N_IV + 3 + 2, dtype=np.int64)
>>> mi[CAP], mi[HCAP] = 3, 2
>>> mf = np.zeros(2 * 3 + 2 * 2)
>>> for t, d in enumerate([4.0, 1.0, 3.0, 2.0]):  # the 4th evicts the 1st
...     recent_add(t, d, mi, mf, 3)
>>> mf[3:6].tolist(), quantile_sorted(mf, 3, 3, 0.75)  # sorted 1, 2, 3; numpy's "linear"
([1.0, 2.0, 3.0], 2.5)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from operators.detectors.kmeans import learn, nearest_center, transform

# mi, the entity's int64 array: these integers, then the recent distances' times
# (ring of CAP), then the held run's times (HCAP)
# (STAMPS: the last activation stamp given, see `run_entity`)
SEEN, LEARN_BATCH, LEARNT, LONG_RUN, HELD_N, HEAD, COUNT, CAP, HCAP, STAMPS = range(10)
N_IV = 10
# mf, its float64 array: the recent distances (ring of CAP), their sorted copy (CAP),
# the held run's distances (HCAP) and the taus they were judged against (HCAP)
# cfg: the monitor's integer settings
WARMUP, LEARN_BATCH_MS, MAX_LEARN, SHORT_RUN, HISTORY = range(5)
# out columns (float64; times and counts are exact below 2^53): reading index, window
# start, n (distances tau is of), centre, anomalous, distance, threshold, ratio
O_INDEX, O_START, O_N, O_CENTER, O_ANOMALOUS, O_DISTANCE, O_THRESHOLD, O_RATIO = range(8)
N_OUT = 8
OUT_OF_RANGE = -1.0  # out[O_ANOMALOUS] of a reading beyond the bound
# the operator's entity table (`run_table`; `operators.cluster.EntitySlots.table`), a
# row per entity slot: the address and length of each of its four arrays (its k-means
# step is `rates[slot]`)
T_DET, T_DET_N, T_MI, T_MI_N, T_MF, T_MF_N, T_ACTIVE, T_ACTIVE_N = range(8)
N_TABLE = 8


@intrinsic
def move(typingctx: Any, a: Any, dst: Any, src: Any, count: Any) -> Any:
    """a[dst : dst + count] = a[src : src + count] (a: a contiguous float64 array; the
    ranges may overlap) as one C `memmove`: `recent_add` shifts a third of the sorted
    distances on average (333 of 1,000), which element by element was most of the
    kernel's time per reading (~370 ns; issue 18, point 1). The same values move to the
    same places, so results are unchanged; no bounds check (the callers stay within
    the sorted copy)."""
    if not (isinstance(a, types.Array) and a.dtype == types.float64 and a.layout == "C"):
        return None
    sig = types.void(a, types.int64, types.int64, types.int64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> None:
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        to, frm = builder.gep(data, [args[1]]), builder.gep(data, [args[2]])
        cgutils.raw_memmove(builder, to, frm, args[3], 8)  # 8: bytes per float64

    return sig, codegen


@njit("void(int64, float64, int64[::1], float64[::1], int64)", cache=True)
def recent_add(ts: int, x: float, mi: np.ndarray, mf: np.ndarray, size: int) -> None:
    """`RecentQuantile.add`: append (ts, x); beyond `size` values, drop the oldest.
    The sorted copy gets x inserted and the oldest removed in one shift."""
    cap = mi[CAP]
    times, values, srt = N_IV, 0, cap  # offsets: times in mi; values, sorted in mf
    head, n = mi[HEAD], mi[COUNT]
    lo, hi = 0, n  # bisect_right(sorted, x): insort's position
    while lo < hi:
        mid = (lo + hi) // 2
        if x < mf[srt + mid]:
            hi = mid
        else:
            lo = mid + 1
    j = lo
    if n < size:  # grows (n < size <= cap)
        slot = (head + n) % cap
        mi[times + slot], mf[values + slot] = ts, x
        move(mf, srt + j + 1, srt + j, n - j)  # sorted[j:n] one up
        mf[srt + j] = x
        mi[COUNT] = n + 1
        return
    # full (n == cap: cap is history, or more if a checkpoint held more): the oldest
    # leaves, x takes its slot
    old = mf[values + head]
    mi[times + head], mf[values + head] = ts, x
    mi[HEAD] = (head + 1) % cap
    lo, hi = 0, n  # bisect_left(sorted, old): the position removed
    while lo < hi:
        mid = (lo + hi) // 2
        if mf[srt + mid] < old:
            lo = mid + 1
        else:
            hi = mid
    i = lo
    if j <= i:
        move(mf, srt + j + 1, srt + j, i - j)  # sorted[j:i] one up, over the old value
        mf[srt + j] = x
    else:
        move(mf, srt + i, srt + i + 1, j - 1 - i)  # sorted[i+1:j] one down, over it
        mf[srt + j - 1] = x


@njit("float64(float64[::1], int64, int64, float64)", cache=True)
def quantile_sorted(values: np.ndarray, start: int, n: int, q: float) -> float:
    """`operators.rolling.quantile_sorted` of the n sorted values from `start`."""
    if n == 0:
        raise ValueError("quantile of no values")
    h = q * (n - 1)
    f = math.floor(h)
    lo = values[start + f]
    if f + 1 >= n:
        return lo
    return lo + (h - f) * (values[start + f + 1] - lo)


@njit(
    "int64(int64, int64, float64[::1], float64[::1], int64[::1], float64[::1], int64[::1],"
    " int64[::1], float64, float64, float64, float64, float64[:, ::1], int64, int64)",
    cache=True,
)
def step(
    t: int,
    s: int,
    x: np.ndarray,
    det: np.ndarray,
    mi: np.ndarray,
    mf: np.ndarray,
    active: np.ndarray,
    cfg: np.ndarray,
    q: float,
    rate: float,
    half: float,
    bound: float,
    out: np.ndarray,
    n_out: int,
    r: int,
) -> int:
    """Score, judge and learn one reading (time t, values x) of sensor index s of the
    entity whose state is det, mi, mf, active: `run_entity`'s loop body. An output row
    (reading index r) goes to out[n_out] if the reading produces one; the new count of
    output rows is returned."""
    warmup, batch_ms, max_learn = cfg[WARMUP], cfg[LEARN_BATCH_MS], cfg[MAX_LEARN]
    short_run, size = cfg[SHORT_RUN], cfg[HISTORY]
    cap, hcap = mi[CAP], mi[HCAP]
    h_ts, h_d, h_tau = N_IV + cap, 2 * cap, 2 * cap + hcap  # offsets in mi, mf, mf
    within = True
    for f in range(x.shape[0]):
        if not -bound <= x[f] <= bound:
            within = False
    if not within:
        out[n_out, O_INDEX], out[n_out, O_ANOMALOUS] = r, OUT_OF_RANGE
        return n_out + 1
    transform(x, det, half)
    distance, center = nearest_center(det)
    if mi[SEEN] >= warmup:
        threshold = quantile_sorted(mf, cap, mi[COUNT], q)
        anomalous = distance > threshold > 0.0
        window_start = mi[N_IV + mi[HEAD]]
        n = mi[COUNT]
        if anomalous and mi[LONG_RUN]:
            recent_add(t, threshold, mi, mf, size)  # winsorised
        elif anomalous:
            k = mi[HELD_N]
            mi[h_ts + k], mf[h_d + k], mf[h_tau + k] = t, distance, threshold
            mi[HELD_N] = k + 1
            if k + 1 > short_run:  # a long run: winsorised, no longer held
                for j in range(k + 1):
                    recent_add(mi[h_ts + j], mf[h_tau + j], mi, mf, size)
                mi[HELD_N] = 0
                mi[LONG_RUN] = 1
        else:  # a short run ended: its distances are the normal tail
            for j in range(mi[HELD_N]):
                recent_add(mi[h_ts + j], mf[h_d + j], mi, mf, size)
            mi[HELD_N] = 0
            mi[LONG_RUN] = 0
            recent_add(t, distance, mi, mf, size)
        if anomalous or active[s]:
            if not anomalous:
                active[s] = 0
            elif not active[s]:  # newly active: stamped, for the state's order
                mi[STAMPS] += 1
                active[s] = mi[STAMPS]
            o = out[n_out]
            o[O_INDEX], o[O_START], o[O_N], o[O_CENTER] = r, window_start, n, center
            o[O_ANOMALOUS] = 1.0 if anomalous else 0.0
            o[O_DISTANCE], o[O_THRESHOLD] = distance, threshold
            o[O_RATIO] = distance / threshold if threshold > 0.0 else 0.0
            n_out += 1
    else:
        recent_add(t, distance, mi, mf, size)
    mi[SEEN] += 1
    b = t - t % batch_ms
    if b != mi[LEARN_BATCH]:
        mi[LEARN_BATCH], mi[LEARNT] = b, 0
    if mi[LEARNT] < max_learn:
        mi[LEARNT] += 1
        learn(x, det, rate, half)
    return n_out


@njit(
    "int64(int64[:, ::1], float64[:, ::1], float64[::1], int64[::1], float64[::1],"
    " int64[::1], int64[::1], float64, float64, float64, float64, float64[:, ::1])",
    cache=True,
)
def run_entity(
    ts_sensor: np.ndarray,
    xs: np.ndarray,
    det: np.ndarray,
    mi: np.ndarray,
    mf: np.ndarray,
    active: np.ndarray,
    cfg: np.ndarray,
    q: float,
    rate: float,
    half: float,
    bound: float,
    out: np.ndarray,
) -> int:
    """Score, judge and learn the readings (ts_sensor[r, 0], xs[r]) of one entity in
    order (ts_sensor[r, 1]: the sensor's index in `active`, which is 0 for a sensor
    whose last judged reading was normal, else a stamp increasing with the time it
    became anomalous: the order of the monitor's `active` dict); the readings that produce
    output are written to `out`, their count returned. A reading with a value beyond
    +-`bound` (or NaN) is neither scored nor learnt: an output row with
    out[O_ANOMALOUS] = -1 (`OUT_OF_RANGE`) says so."""
    n_out = 0
    for r in range(ts_sensor.shape[0]):
        n_out = step(
            ts_sensor[r, 0],
            ts_sensor[r, 1],
            xs[r],
            det,
            mi,
            mf,
            active,
            cfg,
            q,
            rate,
            half,
            bound,
            out,
            n_out,
            r,
        )
    return n_out


@intrinsic
def _pointer(typingctx: Any, address: Any, dtype: Any) -> Any:
    """The int64 `address` as a pointer to `dtype` (`np.float64`, `np.int64`: what
    `numba.carray` makes an array of)."""
    if not isinstance(address, types.Integer) or not isinstance(dtype, types.NumberClass):
        return None
    sig = types.CPointer(dtype.instance_type)(address, dtype)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))

    return sig, codegen


@njit(
    "void(int64[:, ::1], int64, float64[::1], int64[::1], float64[::1], int64[::1])",
    cache=True,
)
def set_entity(
    table: np.ndarray,
    slot: int,
    det: np.ndarray,
    mi: np.ndarray,
    mf: np.ndarray,
    active: np.ndarray,
) -> None:
    """Write the addresses and lengths of an entity's arrays to its row of `table`
    (`run_table`). The arrays must stay alive, unmoved, while the row names them: the
    entity's model holds them, and every array it replaces (a grown ring or flags
    array) is written here again before the next run."""
    row = table[slot]
    row[T_DET], row[T_DET_N] = det.ctypes.data, det.shape[0]
    row[T_MI], row[T_MI_N] = mi.ctypes.data, mi.shape[0]
    row[T_MF], row[T_MF_N] = mf.ctypes.data, mf.shape[0]
    row[T_ACTIVE], row[T_ACTIVE_N] = active.ctypes.data, active.shape[0]


@njit(
    "int64(int64[:, ::1], float64[::1], int64[:, ::1], float64[::1], int64[::1], float64,"
    " float64, float64, float64[:, ::1])",
    cache=True,
)
def run_table(
    rows: np.ndarray,
    xs: np.ndarray,
    table: np.ndarray,
    rates: np.ndarray,
    cfg: np.ndarray,
    q: float,
    half: float,
    bound: float,
    out: np.ndarray,
) -> int:
    """`run_entity` for a whole release, every entity in one call (issue 18, point 3:
    no Python per entity). Reading r is (time rows[r, 0], entity slot rows[r, 1],
    sensor index rows[r, 2] in that entity's activation flags), its values the next
    nf = det[0] floats of the flat `xs` (entities may differ in features); entity
    `slot`'s state is the four arrays its row of `table` names (`set_entity`: the
    detector's, `mi`, `mf` and the flags, by address and length), its k-means step
    rates[slot]. The readings are taken in the given (event) order, each with its own
    entity's state (entities are independent, so this is each entity's `run_entity`
    over its readings in order); the output rows, with O_INDEX = r, are therefore in
    event order; their count is returned (out has a row per reading).

    A table, not numba typed lists of the arrays: appending a new entity's four arrays
    to typed lists cost ~20 µs an entity from Python (each append a compiled call that
    unboxes its list), about a third of a new entity's set-up with 50,000 sensors; a
    row is written in one call (~1 µs). tests/test_cluster_batch_kernel.py checks it
    against `run_entity` per entity, tests/test_cluster_table.py the operator's table,
    kept across grown arrays, against one built afresh."""
    n_out = 0
    off = 0
    for r in range(rows.shape[0]):
        slot = rows[r, 1]
        e = table[slot]
        det = carray(_pointer(e[T_DET], np.float64), e[T_DET_N])
        nf = int(det[0])
        n_out = step(
            rows[r, 0],
            rows[r, 2],
            xs[off : off + nf],
            det,
            carray(_pointer(e[T_MI], np.int64), e[T_MI_N]),
            carray(_pointer(e[T_MF], np.float64), e[T_MF_N]),
            carray(_pointer(e[T_ACTIVE], np.int64), e[T_ACTIVE_N]),
            cfg,
            q,
            rates[slot],
            half,
            bound,
            out,
            n_out,
            r,
        )
        off += nf
    return n_out


@njit(
    types.int64(
        types.int64[:, ::1], types.int64[:, ::1], types.int64[::1], types.int64, types.int64[:, ::1]
    ),
    cache=True,
)
def short_rings(
    rows: np.ndarray, table: np.ndarray, tally: np.ndarray, size: int, short: np.ndarray
) -> int:
    """The entities of a release (`run_table`'s rows) whose recent distances' ring may
    fill up during it: a new entity's ring starts short of `size` (the history) and
    grows on demand (`operators.cluster.EntityModel.grow`), which must happen before
    `run_table` reaches it. A reading adds at most one distance to the ring and the held
    run together (a held run enters the ring in its place), so an entity with k
    readings in the release needs count + held + k places, at most `size`. Writes
    (slot, places needed) of each such entity to `short`, returns their count;
    `tally` (zero, one entry per slot) is scratch, left zero."""
    for r in range(rows.shape[0]):
        tally[rows[r, 1]] += 1
    n_short = 0
    for r in range(rows.shape[0]):
        slot = rows[r, 1]
        k = tally[slot]
        if k == 0:  # counted already
            continue
        tally[slot] = 0
        mi = carray(_pointer(table[slot, T_MI], np.int64), table[slot, T_MI_N])
        need = min(mi[COUNT] + mi[HELD_N] + k, size)
        if need > mi[CAP]:
            short[n_short, 0], short[n_short, 1] = slot, need
            n_short += 1
    return n_short
