"""Shared pieces of the per-reading monitors: event-time release, sliding statistics.

`EventTimeBuffer` holds events until the watermark passes them and releases
them in event-time order. An event with `ts < W` can no longer be joined by
an earlier one (anything earlier than W is late), so a monitor that judges
each event only once it is released sees exactly the sorted input, whatever
the arrival order within the lateness. The entries are tuples starting with
`ts` and ordered by their content alone (no arrival sequence number), so
equal-time events are released in the same order however they arrived.

`SlidingStats` is an event-time sliding window of floats with O(log n)
updates: count, mean, sample standard deviation and linear-interpolated
quantiles. `RecentQuantile` is the same quantile over the last `size` values.

Formulas (all references are the textbook definitions):

    mean = S1 / n + K            with S1 = sum(x - K), S2 = sum((x - K)^2)
    var  = (S2 - S1^2 / n) / (n - 1)           sample variance (ddof = 1)

K is a shift (the mean at the last exact recompute), which keeps the running
sums small and avoids the cancellation of the naive sum-of-squares formula
(Chan, Golub & LeVeque 1983, "Algorithms for computing the sample variance").
The sums are recomputed exactly whenever as many updates as the window holds
(at least 64) have accumulated, so rounding errors stay bounded at amortised
O(1) cost.

    quantile(q) = v[f] + (h - f) * (v[f + 1] - v[f]),  h = q * (n - 1), f = floor(h)

over the sorted values v: Hyndman & Fan (1996) definition 7, the default
("linear") of numpy.percentile. The sorted values are a plain list kept
sorted with `bisect`: O(log n) search plus an O(n) memmove per insert and
remove, which for windows of up to some thousands of values is several times
faster than a balanced structure such as sortedcontainers' SortedList
(BENCHMARKS.md, "Measurements behind design choices").
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterable
from itertools import chain
from operator import itemgetter
from typing import Any, Generic, TypeVar

import msgspec

E = TypeVar("E", bound=tuple)

RECOMPUTE_MIN = 64


BUCKET_MS = 1000  # the span of event time one of `EventTimeBuffer`'s buckets holds
_first = itemgetter(0)


class EventTimeBuffer(Generic[E]):
    """Entries `(ts, ...)` held until the watermark passes `ts`, released in order.

    Held in buckets of `BUCKET_MS` of event time (a push is an append to its
    bucket, usually the last one used), and a release takes the buckets the
    watermark has passed whole, bisects the one it falls in, and sorts only what
    it releases: its cost is that of the released entries, not of everything
    held (with 50 k sensors and 10 s of lateness, 1.5 M held readings were
    compared at every release: issue 18, point 3)."""

    __slots__ = ("_buckets", "_last", "_last_key", "_n", "_unordered")

    def __init__(self) -> None:
        self._buckets: dict[int, list[E]] = {}
        self._last_key: int | None = None  # the bucket pushed to last, and its list
        self._last: list[E] = []
        self._n = 0
        # the buckets whose entries may not be in time order (one pushed before an
        # earlier-time one): `release_unordered` sorts them by time first
        self._unordered: set[int] = set()

    def push(self, entry: E) -> None:
        key = entry[0] // BUCKET_MS
        if key == self._last_key:
            last = self._last
            if entry[0] < last[-1][0]:
                self._unordered.add(key)
            last.append(entry)
        else:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = []
            elif entry[0] < bucket[-1][0]:
                self._unordered.add(key)
            bucket.append(entry)
            self._last_key, self._last = key, bucket
        self._n += 1

    def extend(self, entries: list[E]) -> None:
        """`push` each of `entries`, in order; a batch in time order (a partition's
        usual one) goes in by slices, one per bucket it spans (issue 18, point 3)."""
        n = len(entries)
        if not n:
            return
        times = list(map(_first, entries))
        lo, hi = times[0] // BUCKET_MS, times[-1] // BUCKET_MS
        if hi - lo > n or times != sorted(times):
            push = self.push
            for entry in entries:
                push(entry)
            return
        buckets = self._buckets
        i = 0
        for key in range(lo, hi + 1):
            j = bisect_left(times, (key + 1) * BUCKET_MS, i) if key < hi else n
            if j == i:
                continue
            bucket = buckets.get(key)
            if bucket is None:
                buckets[key] = entries[i:j]
            else:
                if times[i] < bucket[-1][0]:
                    self._unordered.add(key)
                bucket.extend(entries[i:j])
            i = j
        self._last_key = None
        self._n += n

    def release(self, watermark: int) -> list[E]:
        """Remove and return, sorted, every entry with ts < watermark."""
        if not self._n:
            return []
        buckets = self._buckets
        top = watermark // BUCKET_MS  # the bucket the watermark falls in
        out: list[E] = []
        for key in sorted(k for k in buckets if k <= top):
            bucket = buckets[key]
            if key < top:
                out.extend(bucket)
                del buckets[key]
            else:
                bucket.sort()
                i = bisect_left(bucket, (watermark,))  # (W,) sorts before every (W, ...)
                out.extend(bucket[:i])
                del bucket[:i]
                if not bucket:
                    del buckets[key]
            if key == self._last_key:
                self._last_key = None
        out.sort()
        self._n -= len(out)
        return out

    def release_unordered(self, watermark: int) -> list[E]:
        """Remove and return every entry with ts < watermark, not sorted: the buckets
        the watermark passed whole, in arrival order, and of the one it falls in the
        entries before it (that bucket kept in time order, a stable sort by time alone
        when an entry came in before an earlier one, then bisected). Equal entries
        stay in arrival order, so sorted stably the list is `release`'s; for a caller
        that orders the entries itself, cheaper than comparing the tuples (issue 18,
        point 3: with thousands of series at one time every comparison of a tie goes on
        to the strings)."""
        if not self._n:
            return []
        buckets = self._buckets
        top = watermark // BUCKET_MS  # the bucket the watermark falls in
        out: list[E] = []
        for key in sorted(k for k in buckets if k <= top):
            bucket = buckets[key]
            if key < top:
                out.extend(bucket)
                del buckets[key]
            else:
                if key in self._unordered:  # (stable: arrival order among equal times)
                    bucket.sort(key=_first)
                    self._unordered.discard(key)
                i = bisect_left(bucket, watermark, key=_first)
                out.extend(bucket[:i])
                del bucket[:i]
                if not bucket:
                    del buckets[key]
            if key == self._last_key:
                self._last_key = None
        self._unordered.intersection_update(buckets)
        self._n -= len(out)
        return out

    def __len__(self) -> int:
        return self._n

    @property
    def entries(self) -> list[E]:
        """The held entries, sorted (a new list)."""
        return sorted(chain.from_iterable(self._buckets.values()))

    def state(self) -> list[E]:
        """The held entries (a sorted copy), for an operator's typed state: a field
        `pending: list[Entry]` with Entry the operator's tuple type."""
        return self.entries

    def load(self, entries: Iterable[E]) -> None:
        """Hold `entries` (as `state()` gave them), replacing what was held."""
        self._buckets = {}
        self._last_key, self._last, self._n = None, [], 0
        self._unordered = set()
        for entry in sorted(entries):
            self.push(entry)


def quantile_sorted(values: list[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1) of sorted values, numpy's "linear" method."""
    n = len(values)
    if n == 0:
        raise ValueError("quantile of no values")
    h = q * (n - 1)
    f = math.floor(h)
    lo = values[f]
    if f + 1 >= n:
        return float(lo)
    return float(lo + (h - f) * (values[f + 1] - lo))


class WindowState(msgspec.Struct):
    """A sliding window's checkpoint (`SlidingStats` and its compiled twin
    `operators.detectors.window.WindowStats` write the same, so they are
    interchangeable): its readings in time order and the running sums as they are
    (their rounding included); the sorted copy is rebuilt on restore."""

    times: list[int]
    values: list[float]
    shift: float  # K, the mean at the last exact recompute
    s1: float  # sum(x - K)
    s2: float  # sum((x - K)^2)
    ops: int  # updates since the last exact recompute


def window_state_from_format_1(old: dict[str, Any]) -> dict[str, Any]:
    """State format 1 ({"times", "values", "sums": [shift, s1, s2, ops]}) as plain
    `WindowState` data."""
    shift, s1, s2, ops = old["sums"]
    return {
        "times": [int(t) for t in old["times"]],
        "values": [float(v) for v in old["values"]],
        "shift": float(shift),
        "s1": float(s1),
        "s2": float(s2),
        "ops": int(ops),
    }


class SlidingStats:
    """Floats with their event times; the oldest are evicted by time."""

    __slots__ = ("ops", "s1", "s2", "shift", "sorted", "times", "values")

    def __init__(self) -> None:
        self.times: deque[int] = deque()
        self.values: deque[float] = deque()
        self.sorted: list[float] = []
        self.shift = 0.0
        self.s1 = 0.0
        self.s2 = 0.0
        self.ops = 0

    def __len__(self) -> int:
        return len(self.values)

    def first_ts(self) -> int | None:
        return self.times[0] if self.times else None

    def add(self, ts: int, x: float) -> None:
        if not self.values:
            self._reset(x)
        self.times.append(ts)
        self.values.append(x)
        insort(self.sorted, x)
        d = x - self.shift
        self.s1 += d
        self.s2 += d * d
        ops = self.ops = self.ops + 1  # _tick, inlined on the hot path
        if ops >= RECOMPUTE_MIN and ops >= len(self.values):
            self.recompute()

    def evict_before(self, ts_min: int) -> None:
        """Drop the values with ts < ts_min."""
        times, values = self.times, self.values
        if not times or times[0] >= ts_min:
            return
        ordered = self.sorted
        while times and times[0] < ts_min:
            times.popleft()
            x = values.popleft()
            del ordered[bisect_left(ordered, x)]
            d = x - self.shift
            self.s1 -= d
            self.s2 -= d * d
            self.ops += 1
        if values:
            self._tick()
        else:
            self._reset(0.0)  # an emptied window is exactly a new one

    def _reset(self, shift: float) -> None:
        self.shift = shift
        self.s1 = self.s2 = 0.0
        self.ops = 0

    def _tick(self) -> None:
        self.ops += 1
        if self.ops >= max(RECOMPUTE_MIN, len(self.values)):
            self.recompute()

    def recompute(self) -> None:
        """Exact sums again, shifted by the current mean."""
        values = self.values
        n = len(values)
        shift = sum(values) / n if n else 0.0
        s1 = s2 = 0.0
        for x in values:
            d = x - shift
            s1 += d
            s2 += d * d
        self.shift, self.s1, self.s2, self.ops = shift, s1, s2, 0

    def mean(self) -> float:
        return self.shift + self.s1 / len(self.values)

    def std(self) -> float:
        """Sample standard deviation (ddof = 1); 0 below two values."""
        return self.mean_std()[1] if len(self.values) >= 2 else 0.0

    def mean_std(self) -> tuple[float, float]:
        """(`mean()`, `std()`) in one call; n >= 2."""
        n = len(self.values)
        s1 = self.s1
        var = (self.s2 - s1 * s1 / n) / (n - 1)
        return self.shift + s1 / n, math.sqrt(var) if var > 0.0 else 0.0

    def quantile(self, q: float) -> float:
        return quantile_sorted(self.sorted, q)

    def quartiles(self) -> tuple[float, float]:
        """(Q1, Q3): `quantile(0.25)` and `quantile(0.75)` in one call (the IQR fences'
        hot path); the same definition-7 interpolation, inlined."""
        v = self.sorted
        n = len(v)
        if n < 2:
            return self.quantile(0.25), self.quantile(0.75)
        h1, h3 = 0.25 * (n - 1), 0.75 * (n - 1)
        f1, f3 = int(h1), int(h3)  # floor: h >= 0
        a, b = v[f1], v[f3]
        return a + (h1 - f1) * (v[f1 + 1] - a), b + (h3 - f3) * (v[f3 + 1] - b)

    def snapshot(self) -> WindowState:
        return WindowState(
            list(self.times), list(self.values), self.shift, self.s1, self.s2, self.ops
        )

    @classmethod
    def from_snapshot(cls, state: WindowState) -> SlidingStats:
        stats = cls()
        stats.times = deque(state.times)
        stats.values = deque(state.values)
        stats.sorted = sorted(stats.values)
        stats.shift, stats.s1, stats.s2, stats.ops = state.shift, state.s1, state.s2, state.ops
        return stats


class RecentQuantile:
    """Quantiles of the last `size` values (and the event time of each)."""

    __slots__ = ("size", "sorted", "times", "values")

    def __init__(self, size: int) -> None:
        self.size = size
        self.times: deque[int] = deque()
        self.values: deque[float] = deque()
        self.sorted: list[float] = []

    def __len__(self) -> int:
        return len(self.values)

    def add(self, ts: int, x: float) -> None:
        self.times.append(ts)
        self.values.append(x)
        insort(self.sorted, x)
        if len(self.values) > self.size:
            self.times.popleft()
            old = self.values.popleft()
            del self.sorted[bisect_left(self.sorted, old)]

    def first_ts(self) -> int | None:
        return self.times[0] if self.times else None

    def quantile(self, q: float) -> float:
        return quantile_sorted(self.sorted, q)

    def snapshot(self) -> RecentState:
        return RecentState(list(self.times), list(self.values))

    @classmethod
    def from_snapshot(cls, size: int, state: RecentState) -> RecentQuantile:
        recent = cls(size)
        recent.times = deque(state.times)
        recent.values = deque(state.values)
        recent.sorted = sorted(recent.values)  # derived: rebuilt, not stored
        return recent


class RecentState(msgspec.Struct):
    """`RecentQuantile`'s checkpoint: the values in arrival order and their times (the
    same names as in state format 1)."""

    times: list[int]
    values: list[float]
