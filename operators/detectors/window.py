"""The sensor monitor's sliding window, compiled: count, mean, std and quartiles per reading.

The same event-time sliding window and the same arithmetic, operation for
operation, as `operators.rolling.SlidingStats` (the pure-Python reference it is
tested against, bit for bit), with its state in one float64 array per series
and each reading's work (add the staged reading, evict by time, mean, sample
standard deviation, quartiles) in one numba-compiled call (issue 18, point 1):
one call into compiled code per reading instead of a dozen Python operations.

    mean = S1 / n + K            with S1 = sum(x - K), S2 = sum((x - K)^2)
    var  = (S2 - S1^2 / n) / (n - 1)           sample variance (ddof = 1)
    quantile(q) = v[f] + (h - f) * (v[f + 1] - v[f]),  h = q * (n - 1), f = floor(h)

K is the mean at the last exact recompute (Chan, Golub & LeVeque 1983), redone
once as many updates as the window holds (at least 64) have accumulated; the
quantile is Hyndman & Fan (1996) definition 7, numpy's "linear". The exact
recompute sums in window order from 0.0, as CPython 3.11's `sum` does (3.12's
`sum` is compensated, so there the reference may differ in the last bits).

Layout of `buf` (times are epoch milliseconds, exact in a float64 below 2^53):

    [head, n, shift, s1, s2, ops, cap, 0] + times ring[cap] + values ring[cap] + sorted[cap]

The kernels are compiled when this module is imported (explicit signatures,
`cache=True`: the first import on a machine compiles and writes numba's cache
next to this file, later imports load it), so a worker pays it at start, not
on its first reading.

>>> w = WindowStats()
>>> for t, x in enumerate([1.0, 2.0, 4.0]):
...     w.add(t, x)
>>> w.step(3, 8.0, 1, start=1)   # add 8.0 at time 3, evict time 0: the window 2, 4, 8
(3, 4.666666666666666, 3.055050463303893, 3.0, 6.0)
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import msgspec
import numpy as np
from numba import njit

from operators.rolling import WindowState
from operators.state import pack_f64, pack_i64, unpack_f64, unpack_i64

H = 8  # header slots
RECOMPUTE_MIN = 64  # as operators.rolling
INITIAL_CAP = 64
_HEAD, _N, _SHIFT, _S1, _S2, _OPS, _CAP = range(7)
_T0 = time.perf_counter()  # the kernels below compile (or load) as they are defined


@njit("void(float64[::1])", cache=True)
def _recompute(buf: np.ndarray) -> None:
    """Exact sums again, shifted by the current mean (in window order)."""
    head, n, cap = int(buf[_HEAD]), int(buf[_N]), int(buf[_CAP])
    v0 = H + cap
    total = 0.0
    for i in range(n):
        total += buf[v0 + (head + i) % cap]
    shift = total / n if n else 0.0
    s1 = 0.0
    s2 = 0.0
    for i in range(n):
        d = buf[v0 + (head + i) % cap] - shift
        s1 += d
        s2 += d * d
    buf[_SHIFT] = shift
    buf[_S1] = s1
    buf[_S2] = s2
    buf[_OPS] = 0.0


@njit("void(float64[::1], int64, int64)", cache=True)
def _move_up(buf: np.ndarray, lo: int, hi: int) -> None:
    """buf[lo + 1 : hi + 1] = buf[lo:hi], the last first (a memmove up by one place).

    The index is unsigned so that numba adds no negative-index wrap-around check to
    each access, which kept LLVM from vectorising the loop: ~25-60 ns to move 150
    values instead of ~330 (issue 18: the sorted copy's shifts were most of a
    reading's window step at 300 readings a window)."""
    a = buf[lo:]
    for i in range(hi - lo, 0, -1):
        k = np.uint64(i)
        a[k] = a[k - np.uint64(1)]


@njit("void(float64[::1], int64, int64)", cache=True)
def _move_down(buf: np.ndarray, lo: int, hi: int) -> None:
    """buf[lo : hi - 1] = buf[lo + 1 : hi], the first first (a memmove down by one
    place; unsigned, as `_move_up`)."""
    a = buf[lo:]
    for i in range(hi - lo - 1):
        k = np.uint64(i)
        a[k] = a[k + np.uint64(1)]


@njit("boolean(float64[::1], int64, float64)", cache=True)
def _add(buf: np.ndarray, ts: int, x: float) -> bool:
    """Add x at time ts (`SlidingStats.add`); False, unchanged, when the buffer is full."""
    head, n, cap = int(buf[_HEAD]), int(buf[_N]), int(buf[_CAP])
    if n >= cap:
        return False
    if n == 0:
        buf[_SHIFT] = x
        buf[_S1] = 0.0
        buf[_S2] = 0.0
        buf[_OPS] = 0.0
    pos = (head + n) % cap
    buf[H + pos] = ts
    buf[H + cap + pos] = x
    # insort_right, CPython's bisection step for step (ties land after equal values)
    s0 = H + 2 * cap
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        if x < buf[s0 + mid]:
            hi = mid
        else:
            lo = mid + 1
    _move_up(buf, s0 + lo, s0 + n)
    buf[s0 + lo] = x
    n += 1
    buf[_N] = n
    d = x - buf[_SHIFT]
    buf[_S1] += d
    buf[_S2] += d * d
    ops = buf[_OPS] + 1.0
    buf[_OPS] = ops
    if ops >= RECOMPUTE_MIN and ops >= n:
        _recompute(buf)
    return True


@njit("void(float64[::1], int64)", cache=True)
def _evict_before(buf: np.ndarray, ts_min: int) -> None:
    """Drop the values with time < ts_min (`SlidingStats.evict_before`)."""
    head, n, cap = int(buf[_HEAD]), int(buf[_N]), int(buf[_CAP])
    if n == 0 or buf[H + head] >= ts_min:
        return
    v0, s0 = H + cap, H + 2 * cap
    shift = buf[_SHIFT]
    s1, s2, ops = buf[_S1], buf[_S2], buf[_OPS]
    while n and buf[H + head] < ts_min:
        x = buf[v0 + head]
        head = (head + 1) % cap
        # bisect_left, then delete that element
        lo, hi = 0, n
        while lo < hi:
            mid = (lo + hi) // 2
            if buf[s0 + mid] < x:
                lo = mid + 1
            else:
                hi = mid
        _move_down(buf, s0 + lo, s0 + n)
        n -= 1
        d = x - shift
        s1 -= d
        s2 -= d * d
        ops += 1.0
    buf[_HEAD] = head
    buf[_N] = n
    buf[_S1] = s1
    buf[_S2] = s2
    if n:
        ops += 1.0  # SlidingStats._tick
        buf[_OPS] = ops
        if ops >= max(RECOMPUTE_MIN, n):
            _recompute(buf)
    else:  # an emptied window is exactly a new one
        buf[_HEAD] = 0.0
        buf[_SHIFT] = 0.0
        buf[_S1] = 0.0
        buf[_S2] = 0.0
        buf[_OPS] = 0.0


_STEP_SIGNATURE = "Tuple((int64, float64, float64, float64, float64))" + (
    "(float64[::1], int64, float64, int64, int64)"
)


@njit(_STEP_SIGNATURE, cache=True)
def _step(
    buf: np.ndarray, add_ts: int, x: float, add: int, start: int
) -> tuple[int, float, float, float, float]:
    """One reading's window: add x at add_ts if `add`, evict times < start, then
    (n, mean, std, q1, q3) of the window (zeros below two values); n = -1, nothing
    changed, when the buffer must grow first."""
    if add and not _add(buf, add_ts, x):
        return -1, 0.0, 0.0, 0.0, 0.0
    _evict_before(buf, start)
    n = int(buf[_N])
    if n < 2:
        return n, 0.0, 0.0, 0.0, 0.0
    s1 = buf[_S1]
    var = (buf[_S2] - s1 * s1 / n) / (n - 1)
    mean = buf[_SHIFT] + s1 / n
    std = np.sqrt(var) if var > 0.0 else 0.0
    s0 = H + 2 * int(buf[_CAP])
    h1, h3 = 0.25 * (n - 1), 0.75 * (n - 1)
    f1, f3 = int(h1), int(h3)
    a, b = buf[s0 + f1], buf[s0 + f3]
    q1 = a + (h1 - f1) * (buf[s0 + f1 + 1] - a)
    q3 = b + (h3 - f3) * (buf[s0 + f3 + 1] - b)
    return n, mean, std, q1, q3


@njit("float64[::1](float64[::1], int64)", cache=True)
def _resized(buf: np.ndarray, cap: int) -> np.ndarray:
    """The same window in a buffer of capacity cap (>= n), its ring starting at 0."""
    head, n, old = int(buf[_HEAD]), int(buf[_N]), int(buf[_CAP])
    out = np.zeros(H + 3 * cap)
    out[:H] = buf[:H]
    out[_HEAD] = 0.0
    out[_CAP] = cap
    for i in range(n):
        j = (head + i) % old
        out[H + i] = buf[H + j]
        out[H + cap + i] = buf[H + old + j]
        out[H + 2 * cap + i] = buf[H + 2 * old + i]
    return out


# the kernel itself, for a caller's hot loop (one Python call less than `WindowStats.step`);
# n = -1: grow the buffer (`WindowStats.step` does) and call again
step = _step


def _empty(cap: int = INITIAL_CAP) -> np.ndarray:
    buf = np.zeros(H + 3 * cap)
    buf[_CAP] = cap
    return buf


class WindowStats:
    """A series' sliding window (`SlidingStats`' state and arithmetic, compiled)."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = _empty()

    def __len__(self) -> int:
        return int(self.buf[_N])

    def _grow(self) -> None:
        self.buf = _resized(self.buf, 2 * int(self.buf[_CAP]))

    def add(self, ts: int, x: float) -> None:
        while not _add(self.buf, ts, x):
            self._grow()

    def step(
        self, add_ts: int, x: float, add: int, start: int
    ) -> tuple[int, float, float, float, float]:
        """Add x at add_ts if `add`, evict times < start: (n, mean, std, q1, q3)."""
        out = _step(self.buf, add_ts, x, add, start)
        while out[0] < 0:
            self._grow()
            out = _step(self.buf, add_ts, x, add, start)
        return out

    def _order(self) -> np.ndarray:
        head, n, cap = int(self.buf[_HEAD]), int(self.buf[_N]), int(self.buf[_CAP])
        return H + (head + np.arange(n)) % cap  # ring positions in time order

    @property
    def times(self) -> list[int]:
        """The window's event times, oldest first (as `SlidingStats.times`)."""
        # exact: times are whole milliseconds below 2^53 (one C pass, not a loop per time)
        return self.buf[self._order()].astype(np.int64).tolist()

    @property
    def values(self) -> list[float]:
        """The window's values in time order (as `SlidingStats.values`)."""
        return self.buf[self._order() + int(self.buf[_CAP])].tolist()

    def snapshot(self) -> WindowState:
        """The window as a typed checkpoint (`operators.rolling.WindowState`, the one
        `SlidingStats` writes: checkpoints are interchangeable). The live layout is the
        float64 buffer the kernels need; only here is it turned into named lists, once
        per checkpoint, never per reading."""
        buf = self.buf
        return WindowState(
            times=self.times,
            values=self.values,
            shift=float(buf[_SHIFT]),
            s1=float(buf[_S1]),
            s2=float(buf[_S2]),
            ops=int(buf[_OPS]),
        )

    def snapshot_packed(self) -> PackedWindowState:
        """`snapshot` with the times and values as packed int64 and float64 bytes
        (`operators.state`): one copy of each, no Python number per reading (the sensor
        monitor's checkpoint, issue 18)."""
        buf = self.buf
        order = self._order()
        return PackedWindowState(
            times=pack_i64(buf[order].astype(np.int64)),
            values=pack_f64(buf[order + int(buf[_CAP])]),
            shift=float(buf[_SHIFT]),
            s1=float(buf[_S1]),
            s2=float(buf[_S2]),
            ops=int(buf[_OPS]),
        )

    @classmethod
    def from_snapshot(cls, state: WindowState) -> WindowStats:
        """The buffer again from a checkpoint (its sorted copy rebuilt, not stored)."""
        return cls._of(
            np.asarray(state.times, dtype=np.int64),
            np.asarray(state.values, dtype=float),
            (state.shift, state.s1, state.s2, state.ops),
        )

    @classmethod
    def from_packed(cls, state: PackedWindowState) -> WindowStats:
        """The buffer again from a packed checkpoint (`snapshot_packed`)."""
        return cls._of(
            unpack_i64(state.times),
            unpack_f64(state.values),
            (state.shift, state.s1, state.s2, state.ops),
        )

    @classmethod
    def _of(
        cls, times: np.ndarray, values: np.ndarray, sums: tuple[float, float, float, int]
    ) -> WindowStats:
        """The buffer of a window's times and values in time order and its running
        sums (shift, s1, s2, ops), the sorted copy rebuilt."""
        w = cls()
        n = len(values)
        cap = INITIAL_CAP
        while cap < n:
            cap *= 2
        buf = w.buf = _empty(cap)
        buf[H : H + n] = times
        buf[H + cap : H + cap + n] = values
        buf[H + 2 * cap : H + 2 * cap + n] = np.sort(values, kind="stable")
        buf[_N] = n
        buf[_SHIFT], buf[_S1], buf[_S2], buf[_OPS] = sums
        return w


class PackedWindowState(msgspec.Struct):
    """`operators.rolling.WindowState` with the readings packed (`operators.state`):
    times as int64 bytes, values as float64 bytes, in time order; the running sums as
    they are."""

    times: bytes
    values: bytes
    shift: float
    s1: float
    s2: float
    ops: int


def packed_window_state(plain: Mapping[str, Any]) -> dict[str, Any]:
    """Plain `WindowState` data as plain `PackedWindowState` data (a state upgrade)."""
    return {**plain, "times": pack_i64(plain["times"]), "values": pack_f64(plain["values"])}


def compile_time() -> float:
    """Seconds the kernels took to be ready at import (compiled, or loaded from the cache)."""
    return _READY


_step(_empty(), 0, 0.0, 1, 0)  # touch once: the dispatcher is ready before the first reading
_READY = time.perf_counter() - _T0
