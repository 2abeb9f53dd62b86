"""The sensor's compiled rise step (`operators.sensor_rise`) against the detectors.

`SensorOperator` tests a rise per closed bucket with one compiled call on the series'
`RiseBuffer` (issue 18, point 1). The reference is the operator's code before it: the
bucket mean into `RiseDetector.learn_z`, its start into a deque, the p of z, the
likelihood of z (`AnomalyLikelihood`, as `Series` made it), then the verdict. Both
are driven with the same closed buckets (ties, both zeros, NaN, ramps that raise and
end rises), a checkpoint and restore now and then (some with an odd value, NaN or
-0.0, in the likelihood's history, which numpy then fits), and a cadence that resizes
the test; their rows and observations, and their snapshots, must be byte for byte the
same, and so must the episode flag.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import msgspec
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.base import Observation
from operators.detectors.likelihood import AnomalyLikelihood, median_mad, normal_sf
from operators.detectors.trend import RiseDetector
from operators.sensor import DAY_MS, SensorConfig, SensorOperator, Series, SeriesState
from operators.sensor_rise import L_ODD, RiseBuffer, _keep, _sorted, sorted_median_mad
from schemas.rows import SensorAnomalyRow


class _Reference:
    """The rise test of one series as the operator did it before the compiled step
    (`SensorOperator._close_bucket` and `_test_rise` of 8af5fed)."""

    def __init__(self, cfg: SensorConfig, bucket_ms: int) -> None:
        self.cfg, self.bucket_ms = cfg, bucket_ms
        self.mk = RiseDetector(cfg.rise_max_points)
        self.times: deque[int] = deque(maxlen=cfg.rise_max_points)
        self.lk = self._likelihood()
        self.rising = False
        self.out: list[Any] = []

    def _likelihood(self) -> AnomalyLikelihood:
        cfg = self.cfg
        return AnomalyLikelihood(
            short=1,
            history=cfg.rise_history,
            min_history=cfg.rise_min_history,
            refit=10,
            alpha=cfg.rise_history_alpha or 1e-3,
        )

    def close(self, t: int, x: float, start: int, mean: float) -> None:
        cfg, mk = self.cfg, self.mk
        z = mk.learn_z(mean)
        self.times.append(start)
        if mk.n < cfg.rise_min_readings:
            return
        p = normal_sf(z) if z > 0.0 else 1.0
        p_history = self.lk.score_one(z)
        if self.rising:
            if p >= 0.05 or p_history >= 0.05:
                self.rising = False
                details = {"reading": x, "points": len(mk), "p": p, "p_history": p_history}
                self._observe(0.0, t, len(mk), self.times[0], details, None)
            return
        level = cfg.rise_history_alpha
        if level is None:
            level = min(1e-3, cfg.false_alarms_per_day * max(self.bucket_ms, 1) / DAY_MS)
        if p >= cfg.rise_alpha or p_history >= level:
            return
        total, noise = mk.fit()
        needed = max(cfg.rise_min_total, cfg.rise_sigmas * noise)
        if total <= needed:
            return
        self.rising = True
        first = self.times[0]
        details = {
            "reading": x,
            "points": len(mk),
            "span_ms": t - first,
            "p": p,
            "p_history": p_history,
            "noise": noise,
        }
        self.out.append(
            SensorAnomalyRow(
                ts=t,
                sensor_id="s",
                metric="m",
                value=x,
                method="rise",
                score=float(total),
                threshold=float(needed),
                window_start=first,
                window_end=t,
            )
        )
        self._observe(total, t, len(mk), first, details, p)

    def _observe(
        self, score: float, t: int, n: int, start: int, details: dict[str, Any], p: float | None
    ) -> None:
        self.out.append(
            Observation(
                kind="sensor",
                entity="s/m",
                metric="anomaly_rise",
                value=float(score),
                ts=t,
                n=n,
                window_start=start,
                window_end=t,
                details=details,
                p_value=p,
            )
        )

    def state(self) -> tuple[Any, ...]:
        return self.mk.snapshot(), list(self.times), self.lk.snapshot()

    def restore(self, odd: float | None = None) -> None:
        mk, times, lk = self.state()
        if odd is not None:
            lk.history.append(odd)
        self.mk = RiseDetector(mk.size)
        self.mk.restore(mk)
        self.times = deque(times, maxlen=mk.size)
        self.lk = self._likelihood()
        self.lk.restore(lk)

    def resize(self, size: int) -> None:
        self.mk = RiseDetector(size)
        self.times = deque(maxlen=size)


_VALUES = st.one_of(
    st.integers(-4, 4).map(float),
    st.sampled_from([0.0, -0.0, float("nan")]),
    st.floats(-1e3, 1e3, allow_nan=False),
)
_OPS = st.lists(
    st.tuples(st.sampled_from(["close"] * 8 + ["ramp", "restore", "odd", "resize"]), _VALUES),
    min_size=20,
    max_size=120,
)


def _bytes(*parts: Any) -> bytes:
    return msgspec.msgpack.encode(parts)


@settings(max_examples=60, deadline=None)
@given(
    ops=_OPS,
    max_points=st.integers(3, 12),
    min_readings=st.integers(3, 12),
    history=st.integers(1, 14),
    min_history=st.integers(1, 8),
    history_alpha=st.sampled_from([None, 0.05, 0.5]),
    rise_alpha=st.sampled_from([1e-6, 0.01, 0.3]),
)
def test_compiled_rise_is_the_detectors(
    ops: list[tuple[str, float]],
    max_points: int,
    min_readings: int,
    history: int,
    min_history: int,
    history_alpha: float | None,
    rise_alpha: float,
) -> None:
    cfg = SensorConfig(
        rise_max_points=max(max_points, min_readings),
        rise_min_readings=min_readings,
        rise_history=history,
        rise_min_history=min_history,
        rise_history_alpha=history_alpha,
        rise_alpha=rise_alpha,
        rise_sigmas=0.5,
    )
    bucket_ms = 1000
    op = SensorOperator(cfg)
    s = op._new_series("s", "m", 0)  # (in its slot, as the operator makes a series)
    s.bucket_ms = bucket_ms
    op.slots.set_rise(s.slot, s.rise.buf)  # (as its cadence does)
    ref = _Reference(cfg, bucket_ms)
    t = 0

    def close(x: float) -> None:
        nonlocal t
        t += bucket_ms
        op._close_bucket("s", "m", s, t + 1, x, t, x, 1)
        ref.close(t + 1, x, t, x / 1)

    for what, x in ops:
        if what == "close":
            close(x)
        elif what == "ramp":  # a rise through noise: raised, then ended by noise
            for i in range(min_readings + 2):
                close(x + 10.0 * i + (i % 3))
        elif what in ("restore", "odd"):
            # a checkpoint's round trip; "odd": with x in the likelihood's history (a
            # NaN or -0.0 there makes numpy's median and MAD the fit's)
            state = s.state()
            odd = x if what == "odd" else None
            if odd is not None:
                state.rise_lk.history.append(odd)
            saved = msgspec.msgpack.encode(state)
            s = Series.from_state(msgspec.msgpack.decode(saved, type=SeriesState), cfg)
            op.series[("s", "m")] = s
            op.slots.attach(("s", "m"), s)
            op.slots.set_rise(s.slot, s.rise.buf)
            s.bucket_ms = bucket_ms
            ref.restore(odd)
        else:  # the cadence measured: a test of another size
            size = min(cfg.rise_max_points, min_readings + t % 3)
            s.rise.begin(size)
            op.slots.set_rise(s.slot, s.rise.buf)
            ref.resize(size)
        out = op.collect()
        rows = [r for table in out.rows.values() for r in table]
        want = [o for o in ref.out if not isinstance(o, Observation)]
        assert _bytes(*rows) == _bytes(*want)
        want = [o for o in ref.out if isinstance(o, Observation)]
        assert _bytes(*out.observations) == _bytes(*want)
        ref.out.clear()
        state = s.state()
        assert _bytes(state.mk, state.mk_times, state.rise_lk) == _bytes(*ref.state())
        assert s.rising == ref.rising


def test_the_reference_sees_rises() -> None:
    """The property above reaches the rare verdicts: a ramp raises a rise, noise ends it."""
    cfg = SensorConfig(
        rise_max_points=8,
        rise_min_readings=6,
        rise_min_history=3,
        rise_history_alpha=0.5,
        rise_alpha=0.01,
        rise_sigmas=0.5,
    )
    ref = _Reference(cfg, 1000)
    for i in range(6):
        ref.close(i, 0.0, i, math.sin(i))
    for i in range(6, 20):
        ref.close(i, 0.0, i, 10.0 * i)
    for i in range(20, 40):
        ref.close(i, 0.0, i, (-1.0) ** i)
    kinds = [o.value > 0 for o in ref.out if isinstance(o, Observation)]
    assert True in kinds and False in kinds


@settings(max_examples=40, deadline=None)
@given(
    buckets=st.lists(
        st.tuples(st.integers(0, 2), _VALUES, st.booleans(), st.booleans()),
        min_size=10,
        max_size=160,
    ),
    min_readings=st.integers(3, 6),
    history=st.integers(1, 10),
    min_history=st.integers(1, 5),
)
def test_one_call_for_a_rounds_buckets_is_bucket_by_bucket(
    buckets: list[tuple[int, float, bool, bool]],
    min_readings: int,
    history: int,
    min_history: int,
) -> None:
    """`SensorOperator._rise_tests` (all the buckets a round closed in one compiled
    call, `rise_closes`, then what it left to Python, a series' later buckets after
    one that left something) against `_close_bucket` bucket by bucket: three series,
    rounds of random length, each round's buckets series after series as the compiled
    run records them, ramps that raise and end rises."""
    cfg = SensorConfig(
        rise_max_points=6,
        rise_min_readings=min_readings,
        rise_history=history,
        rise_min_history=min_history,
        rise_history_alpha=0.5,
        rise_alpha=0.05,
        rise_sigmas=0.5,
    )
    batched, single = SensorOperator(cfg), SensorOperator(cfg)
    keys = [(f"s{i}", "m") for i in range(3)]
    for op in (batched, single):
        for sid, metric in keys:
            s = op._new_series(sid, metric, 0)
            s.bucket_ms = 1000
            op.slots.set_rise(s.slot, s.rise.buf)  # (as its cadence does)
    level = [0.0, 0.0, 0.0]
    rounds: list[list[tuple[int, float]]] = [[]]
    for i, x, ramp, cut in buckets:
        level[i] = level[i] + 5.0 if ramp else x  # (a ramp: one rise per run of them)
        rounds[-1].append((i, level[i]))
        if cut:
            rounds.append([])
    t = 0
    for batch in rounds:
        batch.sort(key=lambda b: b[0])  # (stable: each series' buckets in order)
        released = []
        for i, x in batch:
            t += 1000
            released.append((t, keys[i][0], "m", x, 1))
        closes = [float(len(batch))]
        for j, (_, _, _, x, _) in enumerate(released):
            closes += [float(j), float(released[j][0] - 500), x, 1.0]
        grouped = np.array([batched.slots.slot_of[e[1:3]] for e in released], dtype=np.int64)
        batched._released = released
        batched._rise_tests(np.array(closes), grouped, list(range(len(released))))
        single._released = released
        for j, (ts, sid, metric, x, _) in enumerate(released):
            single._g = j
            s = single.series[(sid, metric)]
            single._close_bucket(sid, metric, s, ts, x, ts - 500, x, 1)
        a, b = batched.collect(), single.collect()
        assert _bytes(a.rows, a.observations) == _bytes(b.rows, b.observations)
    for key in keys:
        sa, sb = batched.series[key].state(), single.series[key].state()
        assert _bytes(sa.mk, sa.mk_times, sa.rise_lk) == _bytes(sb.mk, sb.mk_times, sb.rise_lk)
        assert batched.series[key].rising == single.series[key].rising


_FINITE = st.one_of(st.integers(-5, 5).map(lambda i: i / 4.0), st.floats(-1e6, 1e6, width=64))


@settings(max_examples=200, deadline=None)
@given(
    xs=st.lists(_FINITE.filter(lambda x: not (x == 0.0 and math.copysign(1, x) < 0)), min_size=1)
)
def test_the_sorted_copys_median_and_mad_are_median_mads(xs: list[float]) -> None:
    """The fit on the sorted history (`sorted_median_mad`, an outward walk from the
    median) is the partitioning one (`median_mad`, numpy's numbers) bit for bit."""
    h = np.array(xs)
    exact, center, mad = median_mad(h)
    assert exact
    got = sorted_median_mad(np.sort(h))
    assert _bytes(*got) == _bytes(center, mad)


@settings(max_examples=100, deadline=None)
@given(
    ms=st.lists(_VALUES | st.sampled_from([math.inf, -math.inf]), max_size=60),
    cap=st.integers(1, 9),
)
def test_the_sorted_copy_follows_the_history(ms: list[float], cap: int) -> None:
    """The history's sorted copy (`_keep`: the oldest out, the new one in) is always its
    values that are finite and not -0.0, sorted; the odd ones are counted apart."""
    r = RiseBuffer(3)
    r.make(cap)
    for m in ms:
        _keep(r.buf, m)
        h = r.history()
        odd = ~np.isfinite(h) | ((h == 0.0) & np.signbit(h))
        ns = len(h) - int(odd.sum())
        assert r.buf[L_ODD] == int(odd.sum())
        assert _bytes(_sorted(r.buf)[:ns].tolist()) == _bytes(np.sort(h[~odd]).tolist())
