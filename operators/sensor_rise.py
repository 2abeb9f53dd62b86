"""The sensor's rise test per closed bucket, compiled: one call per round of a release.

`operators.sensor.SensorOperator` tests a rise as each rise bucket of a series
closes: the bucket's mean into the Mann-Kendall test of the last buckets
(`operators.detectors.trend.RiseDetector`: S, its tie term and the z-score), the
one-sided p of z, and the likelihood of z against the series' own recent z-scores
(`operators.detectors.likelihood.AnomalyLikelihood` as `Series` makes it: short 1,
refit every 10). In Python that was ~3.5 µs per closed bucket, about 15 % of the
operator with 100 sensors (issue 18, point 1). Here the whole of it is compiled
(`rise_close`) on one float64 buffer per series (`RiseBuffer`), with the same
float64 and integer arithmetic operation for operation, and every bucket a round
of the operator's run closed goes through one call (`rise_closes`, each series'
buffer found by its slot in `operators.sensor_slots.SeriesSlots.rises`). Python is
called back only for what is rare: the likelihood made at its first use (`MAKE`),
a fit whose median and MAD are numpy's to choose (a history with a value not finite
or -0.0: `NUMPY_FIT`), and a verdict to act on (`END` of a rise episode, a
`CANDIDATE` rise whose history level and Theil-Sen fit the operator judges).

The likelihood's fit (median and MAD of up to 720 z-scores, every 10 buckets) is
taken from a sorted copy of its history kept by insertion (`_keep`), by a walk
outwards from the median (`sorted_median_mad`): the order statistics that
partitioning (`median_mad`, numpy's numbers) selects, without two partitions of
copies per fit. Values not finite or -0.0 stay out of the copy (counted in
`L_ODD`); while there is one, the fit is `median_mad`'s and then numpy's, as before.

The buffer (`R_*`, `L_*`, then the rings): the test's size, the ring head and count
of the bucket means, S and the tie term, the ring head and count of the bucket
starts (a deque of its own before: restored apart), the episode flag; the
likelihood's made flag, running total, window (short = 1: its one value and its
length), history count and write position, fit (centre, scale, readings since),
odd values, then the scratch z, p and p of the history of the last call. After
the header: the bucket means (`size`), their starts (`size`), and once made the
history ring (`history`, in order from position 0 until full, then oldest at the
write position) and its sorted copy (`history`). Nothing here is checkpointed:
`RiseBuffer.snapshot` gives the `RiseState`, bucket starts and `LikelihoodState`
the detectors gave, byte for byte, and `restored` takes them (tests/test_sensor_rise.py
holds it to the detectors, step for step).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit, types

from operators.detectors.likelihood import (
    MAD_TO_SIGMA,
    MIN_SCALE,
    SQRT2,
    AnomalyLikelihood,
    LikelihoodState,
    median_mad,
)
from operators.detectors.trend import RiseDetector, RiseState, _learn
from operators.detectors.window import _move_down, _move_up

(
    R_SIZE,  # the Mann-Kendall test's size (bucket means kept)
    R_HEAD,  # the means' ring: oldest at head, n of them
    R_N,
    R_S,  # S
    R_TIES,  # sum over tie groups of t(t-1)(2t+5)
    R_THEAD,  # the bucket starts' ring: oldest at thead, tn of them
    R_TN,
    R_RISING,  # a rise episode is open
    L_MADE,  # the likelihood is made (its ring follows the starts)
    L_TOTAL,  # its running total of the window
    L_WLEN,  # its window's length (0 or 1: short = 1)
    L_W0,  # and value
    L_NH,  # its history's length
    L_POS,  # the history ring's write position
    L_CENTER,  # its fit: median, scale (1.4826 MAD, floored), readings since
    L_SCALE,
    L_SINCE,
    L_ODD,  # history values not finite or -0.0 (out of the sorted copy)
    R_Z,  # the last call's z, p and p of the history
    R_P,
    R_PH,
    HEADER,
) = range(22)
# the configuration a call reads (`RiseBuffer.config`)
C_MIN_READINGS, C_MIN_HISTORY, C_REFIT, C_ALPHA, C_RISE_ALPHA, C_HISTORY, C_SIZE = range(7)
# what a call leaves to Python (`rise_closes`: DEFER, a bucket not stepped)
QUIET, MAKE, NUMPY_FIT, END, CANDIDATE, DEFER = range(6)
REFIT = 10  # the rise likelihood's refit interval (every 10 closed buckets)


@njit("float64(float64[::1], float64, float64)", cache=True)
def _mk_step(buf: np.ndarray, x: float, start: float) -> float:
    """x (a bucket mean starting at `start`) into the Mann-Kendall test: the z of
    `RiseDetector.learn_z`, and the start into its ring (a deque of maxlen size)."""
    size = int(buf[R_SIZE])
    ring = buf[HEADER : HEADER + size]
    ds, dties, head, n = _learn(ring, int(buf[R_HEAD]), int(buf[R_N]), x)
    buf[R_HEAD] = head
    buf[R_N] = n
    s = buf[R_S] + ds
    ties = buf[R_TIES] + dties
    buf[R_S] = s
    buf[R_TIES] = ties
    thead, tn = int(buf[R_THEAD]), int(buf[R_TN])
    if tn == size:  # full: over the oldest
        buf[HEADER + size + thead] = start
        buf[R_THEAD] = (thead + 1) % size
    else:
        buf[HEADER + size + (thead + tn) % size] = start
        buf[R_TN] = tn + 1
    if n < 3 or s == 0.0:
        return 0.0
    var = (n * (n - 1) * (2 * n + 5) - ties) / 18.0
    if var <= 0.0:
        return 0.0
    return (s - (1.0 if s > 0.0 else -1.0)) / math.sqrt(var)


@njit("float64[::1](float64[::1])", cache=True)
def _history(buf: np.ndarray) -> np.ndarray:
    """The likelihood's history ring (its valid part is [:nh])."""
    base = HEADER + 2 * int(buf[R_SIZE])
    return buf[base : base + (len(buf) - base) // 2]


@njit("float64[::1](float64[::1])", cache=True)
def _sorted(buf: np.ndarray) -> np.ndarray:
    """The history's values that are finite and not -0.0, sorted (their count is nh
    less the odd ones)."""
    base = HEADER + 2 * int(buf[R_SIZE])
    return buf[base + (len(buf) - base) // 2 :]


@njit("boolean(float64)", cache=True)
def _odd(x: float) -> bool:
    """x is not finite or is -0.0: numpy decides the median of a history with it."""
    return not np.isfinite(x) or (x == 0.0 and math.copysign(1.0, x) < 0.0)


@njit("void(float64[::1], float64)", cache=True)
def _keep(buf: np.ndarray, m: float) -> None:
    """m into the history (`AnomalyLikelihood._keep`: full, over the oldest), and into
    its sorted copy (an insertion: the oldest's removal and m's, O(history) moves,
    made by the window's unsigned loops: `operators.detectors.window._move_up`)."""
    ring = _history(buf)
    cap = len(ring)
    if cap:
        srt = _sorted(buf)
        ns = int(buf[L_NH] - buf[L_ODD])
        pos = int(buf[L_POS])
        if buf[L_NH] == cap:  # full: the oldest leaves
            old = ring[pos]
            if _odd(old):
                buf[L_ODD] -= 1
            else:  # (equal values are the same float: any of them is it)
                _move_down(srt, np.searchsorted(srt[:ns], old), ns)
                ns -= 1
        else:
            buf[L_NH] += 1
        ring[pos] = m
        if _odd(m):
            buf[L_ODD] += 1
        else:
            i = np.searchsorted(srt[:ns], m)
            _move_up(srt, i, ns)
            srt[i] = m
        pos += 1
        buf[L_POS] = 0 if pos == cap else pos


@njit("UniTuple(float64, 2)(float64[::1])", cache=True)
def sorted_median_mad(srt: np.ndarray) -> tuple[float, float]:
    """(median, MAD) of n >= 1 sorted values (finite, no -0.0) as `median_mad` gives
    them (the same order statistics, the same (a + b) / 2 of an even n's middle two),
    without partitioning: the deviations |x - median| in increasing order are the
    merge of the values walked outwards from the median (each side's deviations grow
    as its values move away, and float subtraction is monotone), so the MAD is the
    n // 2-th step of that walk: O(n / 2) instead of two O(n) partitions of copies."""
    n = len(srt)
    half = n // 2
    center = srt[half] if n % 2 else (srt[half - 1] + srt[half]) / 2.0
    right = np.searchsorted(srt, center)  # the first >= center
    left = right - 1
    lo = hi = 0.0
    for _ in range(half + 1):  # (steps 0..half: the last two are the middle ones)
        if right < n and (left < 0 or abs(srt[right] - center) <= abs(srt[left] - center)):
            d = abs(srt[right] - center)
            right += 1
        else:
            d = abs(srt[left] - center)
            left -= 1
        lo, hi = hi, d
    return center, (hi if n % 2 else (lo + hi) / 2.0)


@njit("int64(float64[::1], float64[::1], boolean, float64, float64)", cache=True)
def rise_judge(buf: np.ndarray, cfg: np.ndarray, given: bool, center: float, mad: float) -> int:
    """The likelihood of the last z (`AnomalyLikelihood.score_one`, short 1, log off)
    and the verdict. A fit due whose median and MAD are not exact here returns
    `NUMPY_FIT` before changing anything; the caller calls again with numpy's
    (`given`, center, mad)."""
    z, p = buf[R_Z], buf[R_P]
    total = buf[L_TOTAL]
    if buf[L_WLEN] == 1.0:  # the window is full (short = 1): its value leaves
        total -= buf[L_W0]
    total += z
    m = total / 1.0  # (total / len(window))
    nh = int(buf[L_NH])
    if nh < cfg[C_MIN_HISTORY]:
        _keep(buf, m)
        buf[L_SINCE] = cfg[C_REFIT]
        ph = 1.0
    else:
        # a young history is refitted more often (every quarter of its length)
        refit = int(cfg[C_REFIT])
        quarter = nh // 4
        if buf[L_SINCE] >= (refit if refit <= quarter else quarter):
            if given:
                pass
            elif nh and not buf[L_ODD]:  # (the sorted copy is the whole history)
                center, mad = sorted_median_mad(_sorted(buf)[:nh])
            else:  # numpy's, for an odd value (or no history at all: as it was)
                exact, center, mad = median_mad(_history(buf)[:nh])
                if not exact:
                    return NUMPY_FIT
            buf[L_CENTER] = center
            scale = MAD_TO_SIGMA * mad
            # max(scale, min_scale) as Python's max: scale unless min_scale is larger
            # (so a NaN scale stays NaN)
            buf[L_SCALE] = MIN_SCALE if scale < MIN_SCALE else scale
            buf[L_SINCE] = 0.0
        buf[L_SINCE] += 1.0
        ph = 0.5 * math.erfc(((m - buf[L_CENTER]) / buf[L_SCALE]) / SQRT2)  # normal_sf
        if ph >= cfg[C_ALPHA]:  # anomalous z-scores stay out of the history (masking)
            _keep(buf, m)
    buf[L_W0] = z
    buf[L_WLEN] = 1.0
    buf[L_TOTAL] = total
    buf[R_PH] = ph
    if buf[R_RISING]:  # the episode ends when no (unusual) trend is left
        return END if p >= 0.05 or ph >= 0.05 else QUIET
    return CANDIDATE if p < cfg[C_RISE_ALPHA] else QUIET


@njit("int64(float64[::1], float64, float64, float64[::1])", cache=True)
def rise_close(buf: np.ndarray, x: float, start: float, cfg: np.ndarray) -> int:
    """The bucket (mean x, its start) closes: the Mann-Kendall step, and from
    min_readings means on p and the likelihood (`rise_judge`; `MAKE` first when the
    likelihood is not made yet)."""
    z = _mk_step(buf, x, start)
    if buf[R_N] < cfg[C_MIN_READINGS]:
        return QUIET
    buf[R_Z] = z
    buf[R_P] = 0.5 * math.erfc(z / SQRT2) if z > 0.0 else 1.0  # normal_sf(z)
    if not buf[L_MADE]:
        return MAKE
    return rise_judge(buf, cfg, False, 0.0, 0.0)


def rise_config(
    min_readings: int, min_history: int, alpha: float, rise_alpha: float, history: int
) -> np.ndarray:
    """The configuration array of `rise_close` and `rise_judge`: the fewest bucket means
    tested, the likelihood's min_history, refit, alpha (its masking level) and history
    length, and the rise's alpha."""
    cfg = np.zeros(C_SIZE)
    cfg[C_MIN_READINGS] = min_readings
    cfg[C_MIN_HISTORY] = min_history
    cfg[C_REFIT] = REFIT
    cfg[C_ALPHA] = alpha
    cfg[C_RISE_ALPHA] = rise_alpha
    cfg[C_HISTORY] = history
    return cfg


class RiseBuffer:
    """One series' rise test state in the buffer `rise_close` steps (see the module's
    docstring); its checkpoint is the detectors' (`snapshot`, `restore`)."""

    __slots__ = ("buf",)

    def __init__(self, size: int) -> None:
        self.buf = np.zeros(HEADER + 2 * size)
        self.buf[R_SIZE] = size
        self.buf[L_SINCE] = REFIT  # a fresh likelihood fits at the first chance

    @property
    def size(self) -> int:
        return int(self.buf[R_SIZE])

    @property
    def n(self) -> int:
        """Bucket means in the Mann-Kendall test."""
        return int(self.buf[R_N])

    @property
    def made(self) -> bool:
        """Whether the likelihood is made (it is at its first use)."""
        return bool(self.buf[L_MADE])

    def make(self, history: int) -> None:
        """Make the likelihood: its history ring of `history` after the rings, then the
        history's sorted copy."""
        self.buf = np.concatenate((self.buf, np.zeros(2 * history)))
        self.buf[L_MADE] = 1.0

    def begin(self, size: int) -> None:
        """The Mann-Kendall test begun anew with `size` (the cadence measured), the
        likelihood and the episode flag kept: in place when the size is the same (the
        usual case: rise_max_points), else in a new buffer."""
        old = self.buf
        if size != self.size:
            self.buf = np.concatenate((np.zeros(HEADER + 2 * size), old[HEADER + 2 * self.size :]))
            self.buf[:HEADER] = old[:HEADER]
            self.buf[R_SIZE] = size
        self.buf[R_HEAD : R_TN + 1] = 0.0  # empty: head, n, S, ties and the starts

    def values(self) -> list[float]:
        """The bucket means, oldest first."""
        size, head = self.size, int(self.buf[R_HEAD])
        ring = self.buf[HEADER : HEADER + size].tolist()
        return [ring[(head + i) % size] for i in range(self.n)]

    def starts(self) -> list[int]:
        """The bucket starts, oldest first."""
        size, head = self.size, int(self.buf[R_THEAD])
        ring = self.buf[HEADER + size : HEADER + 2 * size].tolist()
        return [int(ring[(head + i) % size]) for i in range(int(self.buf[R_TN]))]

    def oldest_start(self) -> int:
        return int(self.buf[HEADER + self.size + int(self.buf[R_THEAD])])

    def history(self) -> np.ndarray:
        """The likelihood's history, oldest first."""
        ring = _history(self.buf)
        nh, pos = int(self.buf[L_NH]), int(self.buf[L_POS])
        return ring[:nh].copy() if nh < len(ring) else np.concatenate((ring[pos:], ring[:pos]))

    def numpy_fit(self) -> tuple[float, float]:
        """numpy's median and MAD of the history in order (`AnomalyLikelihood._fit`'s
        own for a value not finite or -0.0)."""
        h = self.history()
        center = float(np.median(h))
        return center, float(np.median(np.abs(h - center)))

    def snapshot(self) -> tuple[RiseState, list[int], LikelihoodState]:
        """The Mann-Kendall test's state, its bucket starts and the likelihood's state,
        as `RiseDetector`, its deque and `AnomalyLikelihood` gave them."""
        b = self.buf
        mk = RiseState(size=self.size, values=self.values(), s=int(b[R_S]))
        lk = LikelihoodState(
            window=[float(b[L_W0])] if b[L_WLEN] else [],
            total=float(b[L_TOTAL]),
            history=self.history().tolist(),
            center=float(b[L_CENTER]),
            scale=float(b[L_SCALE]),
            since_fit=int(b[L_SINCE]),
        )
        return mk, self.starts(), lk

    @classmethod
    def restored(
        cls, mk: RiseState, starts: list[int], lk: LikelihoodState, history: int
    ) -> RiseBuffer:
        """The buffer of a checkpoint's states, as the detectors restore them (the
        tie term recomputed by `RiseDetector.restore`; the likelihood made)."""
        d = RiseDetector(mk.size)
        d.restore(mk)
        r = cls(mk.size)
        b = r.buf
        b[HEADER : HEADER + mk.size] = d.ring
        b[R_HEAD], b[R_N], b[R_S], b[R_TIES] = d.head, d.n, d.s, d.ties
        kept = starts[-mk.size :] if mk.size else []
        b[HEADER + mk.size : HEADER + mk.size + len(kept)] = kept
        b[R_TN] = len(kept)
        a = AnomalyLikelihood(short=1, history=history, refit=REFIT)
        a.restore(lk)
        r.make(history)
        b = r.buf
        if a.window:
            b[L_WLEN], b[L_W0] = 1.0, a.window[-1]
        b[L_TOTAL] = a.total
        h = np.array(a.history, dtype=float)
        _history(b)[: len(h)] = h
        b[L_NH] = len(h)
        b[L_POS] = 0 if len(h) == history else len(h)
        odd = ~np.isfinite(h) | ((h == 0.0) & np.signbit(h))
        b[L_ODD] = int(odd.sum())
        normal = np.sort(h[~odd])
        _sorted(b)[: len(normal)] = normal
        b[L_CENTER], b[L_SCALE], b[L_SINCE] = a.center, a.scale, a.since_fit
        return r


@njit(
    types.void(
        types.ListType(types.float64[::1]),
        types.float64[::1],
        types.int64[::1],
        types.float64[::1],
        types.int64[::1],
        types.int64[::1],
        types.int64,
    ),
    cache=True,
)
def rise_closes(
    rises: Any,
    closes: np.ndarray,
    slot_of: np.ndarray,
    cfg: np.ndarray,
    hows: np.ndarray,
    marks: np.ndarray,
    mark: int,
) -> None:
    """`rise_close` of every bucket a release's run closed, in one call (issue 18,
    point 1: no Python per bucket). closes is `operators.sensor_run.run_all`'s
    ([count] + (reading, start, sum, count) per bucket, each series' in order), the
    reading's series slot is slot_of[reading], its buffer rises[slot]. hows[c] is
    the call's result for bucket c. A series whose bucket left something to Python
    is marked (marks[slot] = mark) and its later buckets are not stepped (`DEFER`):
    what Python does (an episode begun or ended, the likelihood made) comes first."""
    for c in range(int(closes[0])):
        base = 1 + 4 * c
        slot = slot_of[int(closes[base])]
        if marks[slot] == mark:
            hows[c] = DEFER
            continue
        mean = closes[base + 2] / float(int(closes[base + 3]))  # total / count
        how = rise_close(rises[slot], mean, closes[base + 1], cfg)
        hows[c] = how
        if how != QUIET:
            marks[slot] = mark
