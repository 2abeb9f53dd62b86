"""The compiled sliding window (`operators.detectors.window`) against the pure-Python
`operators.rolling.SlidingStats` it replaces in the sensor monitor: the same values
to the last bit after every step (count, mean, sample std, quartiles, the running
sums and the window itself), through growth, eviction, emptied windows, ties in
value and time, and checkpoints in either direction; and against numpy. And the
compiled Mann-Kendall update against the statistic's definitions."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.detectors.trend import RiseDetector, mann_kendall_s, mann_kendall_var
from operators.detectors.window import INITIAL_CAP, WindowStats
from operators.rolling import SlidingStats

# CPython 3.12's sum() is compensated (Neumaier); the kernels sum in order as 3.11 does,
# so from 3.12 on the reference's exact recompute may differ in the last bits
EXACT = sys.version_info < (3, 12)


def reference_step(
    ref: SlidingStats, add_ts: int, x: float, add: int, start: int
) -> tuple[int, float, float, float, float]:
    """What the sensor monitor computed per reading before the kernels."""
    if add:
        ref.add(add_ts, x)
    if ref.times and ref.times[0] < start:
        ref.evict_before(start)
    n = len(ref.values)
    if n < 2:
        return n, 0.0, 0.0, 0.0, 0.0
    mean, std = ref.mean_std()
    q1, q3 = ref.quartiles()
    return n, mean, std, q1, q3


def same(a: tuple[float, ...], b: tuple[float, ...]) -> None:
    if EXACT:
        # repr: bit-equal, and tells -0.0 from 0.0
        assert [repr(float(v)) for v in a] == [repr(float(v)) for v in b]
    else:
        assert a == pytest.approx(b, rel=1e-12, abs=1e-12)


values = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1.0, 1e-300, 3.0]),  # ties, signed zeros
)
steps = st.lists(
    st.tuples(
        st.integers(0, 3),  # time step to the reading (0: a tie in time)
        values,
        st.integers(1, 400),  # the window's span in ms
        st.integers(0, 3),  # extra readings staged at the previous time (ties)
    ),
    min_size=1,
    max_size=400,
)


@settings(max_examples=150, deadline=None)
@given(steps)
def test_equal_to_sliding_stats_step_by_step(seq: list[tuple[int, float, int, int]]) -> None:
    ref, win = SlidingStats(), WindowStats()
    t, last = 0, None
    for dt, x, span, ties in seq:
        t += dt
        add = 0
        if last is not None and t > last:
            for k in range(ties):
                v = x * (k + 2)
                ref.add(last, v)
                win.add(last, v)
            add = 1
        got = win.step(last or 0, x, add, t - span)
        want = reference_step(ref, last or 0, x, add, t - span)
        same(got, want)
        assert win.times == list(ref.times)
        same(tuple(win.values), tuple(ref.values))
        got_state, want_state = win.snapshot(), ref.snapshot()
        same(
            (got_state.shift, got_state.s1, got_state.s2, got_state.ops),
            (want_state.shift, want_state.s1, want_state.s2, want_state.ops),
        )
        last = t


@settings(max_examples=40, deadline=None)
@given(steps, st.integers(0, 400))
def test_checkpoints_are_interchangeable(seq: list[tuple[int, float, int, int]], cut: int) -> None:
    """A checkpoint of either restores into the other and both go on identically."""
    ref, win = SlidingStats(), WindowStats()
    t, last = 0, None
    for i, (dt, x, span, _) in enumerate(seq):
        if i == cut % len(seq):
            win = WindowStats.from_snapshot(ref.snapshot())
            ref = SlidingStats.from_snapshot(win.snapshot())
        t += dt
        add = int(last is not None and t > last)
        want = reference_step(ref, last or 0, x, add, t - span)
        same(win.step(last or 0, x, add, t - span), want)
        last = t


def test_grows_past_its_first_capacity_and_matches_numpy() -> None:
    rng = np.random.default_rng(3)
    xs = rng.normal(20.0, 3.0, 5 * INITIAL_CAP)
    win = WindowStats()
    for i, x in enumerate(xs[:-1]):
        win.add(i, float(x))
    n, mean, std, q1, q3 = win.step(len(xs) - 1, float(xs[-1]), 1, start=INITIAL_CAP)
    window = xs[INITIAL_CAP:]
    assert n == len(window) == len(win)
    assert mean == pytest.approx(window.mean(), rel=1e-12)
    assert std == pytest.approx(window.std(ddof=1), rel=1e-12)
    assert (q1, q3) == pytest.approx(np.percentile(window, [25, 75]), rel=1e-12)
    assert win.times == list(range(INITIAL_CAP, len(xs)))


def test_an_emptied_window_is_a_new_one() -> None:
    win = WindowStats()
    for i in range(10):
        win.add(i, 1e9 + i)
    assert win.step(0, 0.0, 0, start=100) == (0, 0.0, 0.0, 0.0, 0.0)
    win.add(100, 2.0)
    n, mean, std, _, _ = win.step(101, 4.0, 1, start=50)
    assert (n, mean, std) == (2, 3.0, math.sqrt(2.0))


# -- the Mann-Kendall update (`operators.detectors.trend.RiseDetector`, compiled) --


@settings(max_examples=150, deadline=None)
@given(
    st.integers(3, 12),
    st.lists(st.sampled_from([0.0, -0.0, 1.0, 2.0, 2.5, -1.0, 1e-300]), max_size=60),
    st.integers(0, 60),
)
def test_rise_detector_equals_the_definitions(size: int, xs: list[float], cut: int) -> None:
    """S, the tie term and the window after every reading equal the O(n^2) definition
    and the tie-corrected variance over the last `size` readings (values drawn from a
    small set: many ties, signed zeros), through a checkpoint at any point."""
    d = RiseDetector(size)
    for i, x in enumerate(xs):
        if i == cut:
            restored = RiseDetector(size)
            restored.restore(d.snapshot())
            d = restored
        d.learn_one(x)
        window = xs[max(0, i + 1 - size) : i + 1]
        assert [repr(v) for v in d.values] == [repr(v) for v in window]
        assert d.s == mann_kendall_s(window)
        n = len(window)
        assert (n * (n - 1) * (2 * n + 5) - d.ties) / 18.0 == mann_kendall_var(window)
