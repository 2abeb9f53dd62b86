"""Anomalous sensor readings against a sliding event-time window, and window aggregates.

Every (sensor_id, metric) of `SensorReading.values` is a series. A reading is
judged once the watermark has passed its time, in event-time order (ties by
value), so any arrival order within the lateness gives the sorted input's
result. Reading x at time t is judged against the readings strictly before
it in the sliding window [t - window_ms, t) (so a spike does not mask
itself), once that window holds at least `min_points`:

- zscore (`operators.detectors.zscore.ZScore`): z = |x - mean| / std, with the
  window's mean and sample standard deviation (ddof = 1); anomalous when
  z > z_threshold. The standard score; a threshold of 3 is the "three-sigma
  rule" (for a normal distribution P(|Z| > 3) = 0.27 %). score = z,
  threshold = z_threshold.
- iqr (`operators.detectors.iqr.IqrFences`): Tukey's fences (Tukey 1977,
  "Exploratory Data Analysis"): with the window's quartiles Q1, Q3 (numpy's
  "linear" quantile, Hyndman & Fan definition 7) and IQR = Q3 - Q1, anomalous
  when x < Q1 - k * IQR or x > Q3 + k * IQR (k = iqr_k, 1.5 by Tukey's choice).
  score = distance beyond the crossed fence in IQR units,
  (x - (Q3 + k IQR)) / IQR resp. ((Q1 - k IQR) - x) / IQR; threshold = the
  crossed fence itself (in the metric's units).
- calibration (issue 14): a reading beyond the z line or a fence is an
  anomaly only if its score is also improbable for this series, p < alpha,
  with p the peaks-over-threshold tail probability of the score (|z|, resp.
  |x - (Q1 + Q3) / 2| / IQR) against the series' last `score_history` normal
  scores (`operators.detectors.tail`); alpha = false_alarms_per_day * g /
  (1 day * m) at the series' interval g for a sensor of m metrics (the
  false-alarm budget per sensor and method, split evenly over its metrics:
  Bonferroni; `budget_per="series"`: m = 1), or `alpha`. And p is at least the
  small-sample prediction-interval p-value of the reading against the n
  readings of its window (`operators.detectors.interval`: t(n - 1) for z, a
  t(n / 2.72) approximation for the quartiles), so a young series, or a slow
  one whose window holds only ~min_points readings, is judged at the stated
  rate from its first min_points readings on (before, plain fences on 30
  readings were crossed ~300x their large-sample rate: the IQR warm-up).
- rise: a sustained rise unlikely under the series' own noise
  (`operators.detectors.trend`): the Mann-Kendall test over the means of the
  last buckets (30 over max(rise_span_ms, rise_min_readings * g)), judged as
  each bucket closes: p < rise_alpha, its z improbable against the series'
  own recent z-scores (`AnomalyLikelihood`), and a Theil-Sen total above
  rise_sigmas residual scales and rise_min_total. Raised once per episode,
  which ends when either p-value is >= 0.05. score = the total, threshold =
  the magnitude it had to exceed, window = the tested buckets.
  `rise_test="runs"` keeps the legacy test: a run of strictly increasing
  readings with >= rise_min_points readings spanning >= rise_span_ms that
  rose by more than rise_min_total.
- cadence: after 16 readings the interval g (median gap) is measured; the
  window becomes max(window_ms, min_window_readings * g) (`adapt_window`). A
  window that still cannot hold min_points is logged and listed in
  `unjudgeable`, never silently idle.
- episodes (zscore, iqr; `operators.detectors.episode`): end after
  `episode_quiet` judged normal readings; a new one starts only
  `episode_cooldown` readings later (its readings get rows, no observations).

A window whose std (resp. IQR) is not above `min_std` (`min_iqr`), e.g. a
constant one, gives no z-score (fences): those methods do not judge then.

Mean and std come from shifted running sums, quantiles from a sorted array:
O(log n) search per reading, no re-sort; `operators.rolling.SlidingStats`'s
arithmetic, compiled with numba (`operators.detectors.window`, issue 18). A
release is judged in one compiled call for all its series
(`operators.sensor_run.run_all`; issue 18 point 3: no Python per series): the
readings are grouped by series slot with numpy (stable, so each series keeps its
event-time order), and every series' state is in shared arrays, one row per slot
(`operators.sensor_slots.SeriesSlots`: the scalars, the warm-up gaps, and the
window buffer and tail rings as regions of shared chunks). Each series runs its
readings that produce nothing (no anomaly candidate, no open episode, no tie or
gap; window step, z-score and fences, tail learning, cooldown count, rise
bucket, the cadence warm-up's gaps and the judgement of the cadence, whose
Python parts follow the call) until the first that needs Python, which
Python then judges (after the rise tests of the buckets the run closed) before
the next round resumes the series; their rows and observations are put back in
event-time order, so the output is the reading-by-reading loop's
(tests/test_sensor_run.py, tests/test_sensor_batch_kernel.py). The
`sensor_windows` aggregates are filed per (series, window) from the releases'
arrays and are numpy's statistics computed in compiled code
(`operators.sensor_run.aggregate`).

Rows:
- `sensor_anomalies`: one per anomalous (reading, metric, method).
- `sensor_windows`: per (sensor, metric) tumbling window of
  `aggregate_window_ms` (closed when the watermark reaches its end): n, min,
  max, mean, and p95 = numpy.percentile(values, 95) (linear).

Observations (kind "sensor", entity "sensor_id/metric"): metric
"anomaly_zscore" | "anomaly_iqr" | "anomaly_rise", value = score, n = the
points behind it, p_value = the calibrated p (zscore, iqr) or Mann-Kendall p
(rise). One per anomaly of an open episode, and one more when the episode
ends (the reading that ends it, with its score, or 0 when the calibration
vetoed it; 0 for a rise that ended; or value 0 with details.expired when the
series was silent for its window), so rules resolve and can fire again.
Details never use the rule message's own names (value, metric, entity,
threshold, op); the reading is `reading`.

State is bounded by window_ms of readings per series: a series silent for
more than window_ms (by the watermark, or by the gap to its next reading) is
forgotten, which is the same as its window having emptied. It snapshots as
`SensorState` (format 3 of `operators.state`): per (sensor_id, metric) a
`SeriesState` of named, typed fields; the compiled window's float64 buffer stays
the live layout and becomes its readings in time order only in the snapshot,
packed as bytes like the score histories (format 3: a series is ~3,600 numbers,
which as lists bound the checkpoint at many sensors, issue 18); the shared rows
and chunks (`SeriesSlots`) are derived, rebuilt on restore. Formats 1 (positional
lists, "sensor\\x1fmetric" keys) and 2 (the same numbers as lists) are upgraded.
"""

from __future__ import annotations

import heapq
import logging
import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress, repeat
from operator import is_, itemgetter
from typing import Any

import msgspec
import numpy as np

from operators.base import Observation, Operator
from operators.detectors.episode import Episode
from operators.detectors.iqr import IqrFences
from operators.detectors.likelihood import LikelihoodState, likelihood_state_from_format_1
from operators.detectors.tail import (
    PackedTailState,
    TailProbability,
    packed_tail_state,
    tail_state_from_format_1,
)
from operators.detectors.trend import RiseState, rise_fit
from operators.detectors.window import PackedWindowState, WindowStats, packed_window_state
from operators.detectors.window import step as window_step
from operators.detectors.zscore import ZScore
from operators.rolling import window_state_from_format_1
from operators.rules import rule_spec as _rule
from operators.sensor_pending import PendingReadings, Released
from operators.sensor_rise import (
    DEFER,
    END,
    MAKE,
    NUMPY_FIT,
    QUIET,
    R_P,
    R_PH,
    R_RISING,
    RiseBuffer,
    rise_close,
    rise_closes,
    rise_config,
    rise_judge,
)
from operators.sensor_run import (
    CAD_SIZE,
    CFG_SIZE,
    DONE,
    PRE,
    RISE,
    ST_BUCKET_COUNT,
    ST_BUCKET_MS,
    ST_BUCKET_START,
    ST_BUCKET_SUM,
    ST_HAS_LAST,
    ST_LAST,
    ST_MEAN,
    ST_N,
    ST_NGAPS,
    ST_NSTAGED,
    ST_Q1,
    ST_Q3,
    ST_SINCE_I,
    ST_SINCE_Z,
    ST_SIZE,
    ST_STAGED,
    ST_START,
    ST_STD,
    ST_WINDOW,
    aggregate,
    aggregate_runs,
    run_all,
)
from operators.sensor_slots import SeriesSlots
from operators.state import StateCodec
from operators.windows import TumblingWindows, window_start
from schemas.events import SensorReading
from schemas.rows import SensorAnomalyRow, SensorWindowRow

METHODS = ("zscore", "iqr", "rise")
# `SensorState`; upgraded: 1, positional lists (`_from_format_1`); 2, the window and the
# score histories as lists of numbers (`_from_format_2`)
STATE_FORMAT = 3
log = logging.getLogger(__name__)
# readings after which a series' cadence is judged (the median gap between them)
CADENCE_READINGS = 16
DAY_MS = 86_400_000
# a series' scalars from staged to since_end into its shared row (float64, native layout)
pack_mid = struct.Struct(f"{ST_N - ST_STAGED}d").pack_into


@dataclass(frozen=True)
class SensorConfig:
    window_ms: int = 300_000  # sliding window each reading is judged against
    z_threshold: float = 3.0
    iqr_k: float = 1.5
    min_points: int = 30  # zscore and iqr judge only windows with this many readings
    rise_span_ms: int = 300_000  # the span a rise is tested over
    rise_min_points: int = 5  # fewest readings a rise is tested on
    rise_min_total: float = 0.0  # a rise must exceed this in total (metric units)
    # "mann_kendall": a trend unlikely under the series' noise; "runs": the legacy
    # strictly rising run of rise_min_points readings (a coin flip in noisy data)
    rise_test: str = "mann_kendall"
    # Mann-Kendall runs on the means of rise_max_points buckets spanning the rise
    # span (at 1 Hz: 30 means of 10 s), at least rise_min_readings of them
    rise_max_points: int = 30  # its cost is O(n) per bucket
    rise_min_readings: int = 20  # fewer cannot reach p < 1e-6 (n = 15 at best 1.3e-7)
    rise_alpha: float = 1e-6  # one-sided Mann-Kendall p-value a rise must be below
    # and the Mann-Kendall z must be this improbable against the series' own recent
    # z-scores (`AnomalyLikelihood`, median/MAD): a series that always warms up
    # slowly is not rising unusually. None: the false-alarm budget per bucket, split
    # over the sensor's metrics like zscore's and iqr's (false_alarms_per_day *
    # bucket / 1 day / m, at most 1e-3: 1.4e-5 for SKAB's 8 channels at 1 Hz, 3.9e-5
    # for the simulator's 3); 1e-3 before raised rises on SKAB's warming pump: 8 % of
    # its normal test rows inside rise alerts (valve1, the development split: 6.8 % ->
    # 3.1 %, the default set-up's FAR 18.4 % -> 15.4 %, F1 0.78 -> 0.78)
    rise_history_alpha: float | None = None
    rise_history: int = 720  # buckets of z-scores kept (an hour at 1 Hz)
    rise_min_history: int = 30  # buckets tested before a rise may be raised
    # and its total must exceed this many residual scales around its Theil-Sen line
    rise_sigmas: float = 3.0
    # cadence: once a series' sampling interval g is measured (median of its first
    # gaps), its window is max(window_ms, min_window_readings * g) and its rise test
    # spans max(rise_span_ms, rise_min_points * g), so one default serves 1 Hz and
    # hourly data; False keeps window_ms as is (a window that cannot hold
    # min_points is then logged and listed in `unjudgeable`)
    adapt_window: bool = True
    min_window_readings: int | None = None  # None: min_points
    # episodes (zscore, iqr): ended by this many judged normal readings; a new one
    # may start only this many readings after (a cooldown in the series' readings)
    episode_quiet: int = 1
    episode_cooldown: int = 10
    # calibration (zscore, iqr): a reading beyond the threshold (fence) is anomalous
    # only if its score is also improbable against the series' own recent scores
    # (`operators.detectors.tail`, peaks over threshold) and against the window's n
    # readings (`operators.detectors.interval`, the small-sample prediction
    # interval): the larger p < alpha; until min_score_history scores are kept the
    # prediction interval alone judges (the warm-up). alpha is the
    # false-alarm budget per series and method: false_alarms_per_day spread over
    # the readings of a day at the series' cadence g (alpha = budget * g / 1 day,
    # at most 0.01: 1.2e-5 at 1 Hz, 3.5e-3 at 5 min), or `alpha` if set
    calibrate: bool = True
    false_alarms_per_day: float = 1.0
    # "sensor": that budget holds per sensor and method, split evenly over the
    # sensor's metrics (Bonferroni: alpha / m for a sensor of m metrics, so an
    # 8-channel pump and a 1-metric probe raise the same false alarms a day);
    # "series": per (sensor, metric) and method, as before issue 14's follow-up
    budget_per: str = "sensor"
    alpha: float | None = None
    score_history: int = 1000
    min_score_history: int = 100
    aggregate_window_ms: int = 60_000
    min_std: float = 0.0  # zscore is not judged when std <= this
    min_iqr: float = 0.0  # iqr is not judged when IQR <= this
    methods: tuple[str, ...] = METHODS

    def __post_init__(self) -> None:
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"unknown methods {sorted(unknown)}; known: {METHODS}")
        if self.min_points < 2:
            raise ValueError("min_points must be at least 2")
        if self.rise_test not in ("mann_kendall", "runs"):
            raise ValueError('rise_test must be "mann_kendall" or "runs"')
        if not 3 <= self.rise_min_readings <= self.rise_max_points:
            raise ValueError("need 3 <= rise_min_readings <= rise_max_points")
        if self.budget_per not in ("sensor", "series"):
            raise ValueError('budget_per must be "sensor" or "series"')
        if self.episode_quiet < 1 or self.episode_cooldown < 0:
            raise ValueError("episode_quiet must be >= 1 and episode_cooldown >= 0")

    @property
    def window_readings(self) -> int:
        return self.min_window_readings or self.min_points


# (ts, sensor_id, metric, value, metrics of its reading): the metric count travels
# with the value so that the per-sensor budget's split is decided in event-time order,
# not by how the input happened to be batched (0: unknown, from an older checkpoint)
Entry = tuple[int, str, str, float, int]


class Series:
    """The state of one (sensor, metric)."""

    __slots__ = (
        "alpha",
        "bound",
        "bucket",
        "config",
        "episodes",
        "gap_row",
        "gaps",
        "iqr",
        "prev",
        "rise",
        "row",
        "run_len",
        "run_start_ts",
        "run_start_value",
        "slot",
        "staged",
        "stats",
        "tails",
        "zscore",
    )

    def __init__(self, config: SensorConfig) -> None:
        # the scalars the compiled run shares (`operators.sensor_run.ST_*`): its own row
        # until `SeriesSlots.attach` gives it one of the operator's shared rows. last_ts,
        # window_ms and bucket_ms live there (properties); staged, bucket, the episodes'
        # since_end and the warm-up gaps are Python objects too, read from the row by
        # `load` and written back by `store` around each Python path
        self.row = np.zeros(ST_SIZE)
        self.gap_row = np.zeros(CADENCE_READINGS, dtype=np.int64)
        self.slot = -1
        self.bound: tuple[np.ndarray, ...] | None = None  # its buffers as bound (region views)
        # readings before last_ts in the sliding window (compiled `SlidingStats`)
        self.stats = WindowStats()
        self.staged: list[float] = []  # readings at last_ts (not yet "before" anything)
        self.last_ts = None
        # the Mann-Kendall rise test, its bucket starts, its likelihood of z-scores (made
        # at its first use: a series tests a rise only after rise_min_readings buckets,
        # and most series of a large fleet are made long before: issue 18, point 3) and
        # the episode flag, in the buffer its compiled step works on
        self.rise = RiseBuffer(config.rise_max_points)
        self.prev: float | None = None  # the last value, for the rise run
        self.run_len = 0
        self.run_start_ts = 0
        self.run_start_value = 0.0
        self.rising = False  # the current run (or trend) was raised
        self.episodes = {
            m: Episode(config.episode_quiet, config.episode_cooldown) for m in ("zscore", "iqr")
        }
        self.window_ms = config.window_ms  # stretched to the cadence once it is measured
        self.alpha = config.alpha or 1e-3  # until the cadence is measured
        self.tails = {
            m: TailProbability(config.score_history, config.min_score_history)
            for m in ("zscore", "iqr")
        }
        # the z-score and Tukey-fence verdicts (`operators.detectors.zscore`, `.iqr`):
        # their state is the tails above (restored in place), calibrated or not
        calibrate = config.calibrate
        self.zscore = ZScore(
            config.z_threshold, config.min_std, self.tails["zscore"] if calibrate else None
        )
        self.iqr = IqrFences(config.iqr_k, config.min_iqr, self.tails["iqr"] if calibrate else None)
        self.bucket_ms = 0  # set with the cadence
        self.bucket: list[float] = [0, 0.0, 0]  # [start, sum, count] of the open bucket
        # gaps between the first readings, until the cadence is judged (then None)
        self.gaps: list[int] | None = []
        self.store()

    @classmethod
    def like(cls, proto: Series) -> Series:
        """A new series equal to `Series(config)`, made from `proto` (a `Series(config)`
        that is never fed or attached: the operator's `_proto`) without running
        `__init__` per series (its seven fresh numpy arrays, its detectors' set-up:
        most of a new series' cost at 50 k sensors, issue 18 point 3).

        Its row, gap row and window and tail buffers are the prototype's own arrays
        until `SeriesSlots.attach`, which copies them into the series' slot and
        regions (their one write) and points the series at those: a series made here
        must be attached before anything writes it. The rest is its own: the rise
        buffer copied, the lists, episodes and detectors new (the tails' `fitted` is
        the prototype's empty array, never written in place: a fit replaces it)."""
        s = cls.__new__(cls)
        s.row = proto.row
        s.gap_row = proto.gap_row
        s.slot = -1
        s.bound = None
        stats = s.stats = WindowStats.__new__(WindowStats)
        stats.buf = proto.stats.buf
        s.staged = []
        rise = s.rise = RiseBuffer.__new__(RiseBuffer)
        rise.buf = proto.rise.buf.copy()
        s.prev = None
        s.run_len = 0
        s.run_start_ts = 0
        s.run_start_value = 0.0
        pz, pi = proto.episodes["zscore"], proto.episodes["iqr"]
        s.episodes = {
            "zscore": Episode(pz.quiet, pz.cooldown),
            "iqr": Episode(pi.quiet, pi.cooldown),
        }
        s.alpha = proto.alpha
        tz = proto.tails["zscore"].fresh_sharing_ring()
        ti = proto.tails["iqr"].fresh_sharing_ring()
        s.tails = {"zscore": tz, "iqr": ti}
        z, i = proto.zscore, proto.iqr
        s.zscore = ZScore(z.threshold, z.min_std, tz if z.tail is not None else None)
        s.iqr = IqrFences(i.k, i.min_iqr, ti if i.tail is not None else None)
        s.bucket = [0, 0.0, 0]
        s.gaps = []
        return s

    @property
    def rising(self) -> bool:  # the current run (or trend) was raised
        return bool(self.rise.buf[R_RISING])

    @rising.setter
    def rising(self, on: bool) -> None:
        self.rise.buf[R_RISING] = on

    @property
    def last_ts(self) -> int | None:
        row = self.row
        return int(row[ST_LAST]) if row[ST_HAS_LAST] else None

    @last_ts.setter
    def last_ts(self, t: int | None) -> None:
        row = self.row
        row[ST_LAST] = t or 0
        row[ST_HAS_LAST] = t is not None

    @property
    def window_ms(self) -> int:  # stretched to the cadence once it is measured
        return int(self.row[ST_WINDOW])

    @window_ms.setter
    def window_ms(self, ms: int) -> None:
        self.row[ST_WINDOW] = ms

    @property
    def bucket_ms(self) -> int:  # the rise test's bucket, set with the cadence
        return int(self.row[ST_BUCKET_MS])

    @bucket_ms.setter
    def bucket_ms(self, ms: int) -> None:
        self.row[ST_BUCKET_MS] = ms

    def load(self) -> None:
        """The Python objects from the shared row, as the compiled run left them."""
        v = self.row.tolist()
        n = v[ST_NSTAGED]
        if n <= 1.0:  # (more, ties at last_ts, stop the run: the list is as it was)
            self.staged = [v[ST_STAGED]] if n else []
        self.bucket = [int(v[ST_BUCKET_START]), v[ST_BUCKET_SUM], int(v[ST_BUCKET_COUNT])]
        ez, ei = self.episodes["zscore"], self.episodes["iqr"]
        ez.since_end = int(v[ST_SINCE_Z])
        ei.since_end = int(v[ST_SINCE_I])
        ngaps = int(v[ST_NGAPS])
        self.gaps = self.gap_row[:ngaps].tolist() if ngaps >= 0 else None

    def store(self) -> None:
        """The Python objects into the shared row, for the compiled run."""
        row = self.row
        staged, bucket = self.staged, self.bucket
        ez, ei = self.episodes["zscore"], self.episodes["iqr"]
        # (struct's pack_into: numpy's item assignments cost more)
        pack_mid(
            row,
            8 * ST_STAGED,
            staged[-1] if staged else 0.0,
            len(staged),
            row[ST_WINDOW],
            row[ST_BUCKET_MS],
            bucket[0],
            bucket[1],
            bucket[2],
            ez.active,
            ez.since_end,
            ei.active,
            ei.since_end,
        )
        gaps = self.gaps
        if gaps is None:
            row[ST_NGAPS] = -1
        else:
            if gaps:
                self.gap_row[: len(gaps)] = gaps
            row[ST_NGAPS] = len(gaps)

    def buffers(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The float64 buffers the compiled run steps (`SeriesSlots`)."""
        return self.stats.buf, self.tails["zscore"].buf, self.tails["iqr"].buf

    def set_buffers(self, window: np.ndarray, tail_z: np.ndarray, tail_i: np.ndarray) -> None:
        self.stats.buf = window
        self.tails["zscore"].buf = tail_z
        self.tails["iqr"].buf = tail_i
        self.bound = (window, tail_z, tail_i)

    def state(self) -> SeriesState:
        """The series as typed state (its lists and episodes are the live ones, which
        `StateCodec.dump` copies; the rise test's buffer becomes lists, the window's and
        the score histories' become packed bytes)."""
        mk, mk_times, rise_lk = self.rise.snapshot()
        return SeriesState(
            stats=self.stats.snapshot_packed(),
            staged=self.staged,  # live lists and Structs: `dump` copies them
            last_ts=self.last_ts,
            prev=self.prev,
            run_len=self.run_len,
            run_start_ts=self.run_start_ts,
            run_start_value=self.run_start_value,
            rising=self.rising,
            episodes=self.episodes,
            window_ms=self.window_ms,
            alpha=self.alpha,
            tails={m: t.snapshot_packed() for m, t in self.tails.items()},
            mk=mk,
            mk_times=mk_times,
            bucket_ms=self.bucket_ms,
            bucket=RiseBucket(int(self.bucket[0]), float(self.bucket[1]), int(self.bucket[2])),
            rise_lk=rise_lk,
            gaps=self.gaps,
        )

    @classmethod
    def from_state(cls, state: SeriesState, config: SensorConfig) -> Series:
        """The live series of its typed state: the detectors built from the
        configuration, then given their checkpointed state."""
        s = cls(config)
        s.stats = WindowStats.from_packed(state.stats)
        s.staged = list(state.staged)
        s.last_ts = state.last_ts
        s.prev, s.run_len = state.prev, state.run_len
        s.run_start_ts, s.run_start_value = state.run_start_ts, state.run_start_value
        for m, episode in state.episodes.items():
            # the machine's settings are the configuration's (as in every earlier format)
            episode.quiet, episode.cooldown = config.episode_quiet, config.episode_cooldown
            s.episodes[m] = episode
        s.window_ms = state.window_ms
        s.alpha = state.alpha
        for m, tail in state.tails.items():
            s.tails[m].restore_packed(tail)
        s.rise = RiseBuffer.restored(state.mk, state.mk_times, state.rise_lk, config.rise_history)
        s.rising = state.rising
        s.bucket_ms = state.bucket_ms
        s.bucket = [state.bucket.start, state.bucket.total, state.bucket.count]
        s.gaps = None if state.gaps is None else list(state.gaps)
        s.store()
        return s


class RiseBucket(msgspec.Struct):
    """The open bucket of the Mann-Kendall rise test (live: a [start, sum, count] list,
    the per-reading path's cheapest form)."""

    start: int
    total: float
    count: int


class SeriesState(msgspec.Struct):
    """One (sensor, metric)'s state: `Series` as named, typed fields. The sliding
    window's float64 buffer (`WindowStats`, the layout the compiled kernels work on) is
    kept live as it is and becomes its readings in time order, packed
    (`PackedWindowState`), only here, per snapshot; so do the score histories
    (`PackedTailState`), most of a series' bytes; derived parts (the window's sorted
    copy, the Mann-Kendall tie term, the aggregate cache) are rebuilt on restore."""

    stats: PackedWindowState  # readings before last_ts in the sliding window
    staged: list[float]  # readings at last_ts
    last_ts: int | None
    prev: float | None  # the legacy "runs" rise test: the last value and the run
    run_len: int
    run_start_ts: int
    run_start_value: float
    rising: bool  # the current run (or trend) was raised
    episodes: dict[str, Episode]  # "zscore", "iqr"
    window_ms: int  # stretched to the cadence once it is measured
    alpha: float  # the calibration's level
    tails: dict[str, PackedTailState]  # "zscore", "iqr": the score histories
    mk: RiseState  # the Mann-Kendall rise test's bucket means
    mk_times: list[int]  # and their bucket starts
    bucket_ms: int
    bucket: RiseBucket
    rise_lk: LikelihoodState
    gaps: list[int] | None  # the first gaps until the cadence is judged (then None)


class SensorState(msgspec.Struct):
    """The sensor operator's state (format 3; `operators.state`)."""

    pending: list[Entry]  # readings the watermark has not passed
    series: dict[tuple[str, str], SeriesState]  # (sensor_id, metric)
    # the open `sensor_windows` aggregates: start -> (sensor_id, metric) -> readings
    aggregates: dict[int, dict[tuple[str, str], list[float]]]
    unjudgeable: list[str]  # "sensor/metric", sorted
    metrics: dict[str, int]  # metrics per sensor, for the per-sensor budget


def _series_from_format_1(old: dict[str, Any], config: SensorConfig) -> dict[str, Any]:
    """A format-1 series ({"stats", "staged", "last_ts", "rise": [prev, run_len,
    run_start_ts, run_start_value], "flags": [rising, active_z, active_i], ...}) as plain
    `SeriesState` data, with format 1's own fallbacks: no "episodes" (the flags are the
    open episodes), no "mk" (a rise test not begun), no "gaps" (the cadence still to be
    measured), no "window_ms" (the configured one)."""
    # a new series' defaults, as format 2 wrote them: the current state with the tails
    # as their lists (the window is the old one's, below); `_from_format_2` packs them
    fresh = Series(config)
    new = msgspec.to_builtins(fresh.state(), builtin_types=(bytes,))
    new["tails"] = {m: msgspec.to_builtins(t.snapshot()) for m, t in fresh.tails.items()}
    new["stats"] = window_state_from_format_1(old["stats"])
    new["staged"] = [float(v) for v in old["staged"]]
    new["last_ts"] = old["last_ts"]
    prev, run_len, run_start_ts, run_start_value = old["rise"]
    new.update(prev=prev, run_len=run_len, run_start_ts=run_start_ts)
    new["run_start_value"] = float(run_start_value)
    rising, active_z, active_i = old["flags"]
    new["rising"] = bool(rising)
    if "episodes" in old:
        for m, positional in old["episodes"].items():
            episode = Episode(config.episode_quiet, config.episode_cooldown)
            episode.restore(positional)
            new["episodes"][m] = msgspec.to_builtins(episode)
    else:
        new["episodes"]["zscore"]["active"] = bool(active_z)
        new["episodes"]["iqr"]["active"] = bool(active_i)
    new["window_ms"] = int(old.get("window_ms", config.window_ms))
    if "mk" in old:
        size, mk, times = old["mk"]
        new["mk"] = {"size": int(size), "values": list(mk["values"]), "s": int(mk["s"])}
        new["mk_times"] = [int(t) for t in times][-int(size) :]
        bucket_ms, start, total, count = old["bucket"]
        new["bucket_ms"] = int(bucket_ms)
        new["bucket"] = {"start": int(start), "total": float(total), "count": int(count)}
        new["rise_lk"] = likelihood_state_from_format_1(old["rise_lk"])
        new["tails"] = {m: tail_state_from_format_1(t) for m, t in old["tails"].items()}
        new["alpha"] = float(old["alpha"])
    gaps = old.get("gaps")
    new["gaps"] = None if gaps is None and "gaps" in old else [int(g) for g in gaps or []]
    return new


def _from_format_1(old: dict[str, Any], config: SensorConfig) -> dict[str, Any]:
    """State format 1 (positional lists, "\x1f"-joined aggregate keys) as plain
    `SensorState` data (pending entries of 4 fields, from before the metric count
    travelled along, get 0: unknown)."""
    pending = [[e[0], e[1], e[2], float(e[3]), e[4] if len(e) > 4 else 0] for e in old["pending"]]
    aggregates: dict[int, dict[tuple[str, str], list[float]]] = {}
    for start, key, values in old["aggregates"]:
        sid, _, metric = key.partition("\x1f")
        aggregates.setdefault(int(start), {})[(sid, metric)] = [float(v) for v in values]
    return {
        "pending": pending,
        "series": {
            (sid, metric): _series_from_format_1(state, config)
            for sid, metric, state in old["series"]
        },
        "aggregates": aggregates,
        "unjudgeable": sorted(old.get("unjudgeable", ())),
        "metrics": dict(old.get("metrics", {})),  # absent before the per-sensor budget
    }


def _from_format_2(old: dict[str, Any]) -> dict[str, Any]:
    """State format 2 as plain `SensorState` data: each series' window readings and
    score histories packed (`operators.state.pack_f64`), the same values bit for bit."""
    series = {}
    for key, plain in old["series"].items():
        tails = {m: packed_tail_state(t) for m, t in plain["tails"].items()}
        series[key] = {**plain, "stats": packed_window_state(plain["stats"]), "tails": tails}
    return {**old, "series": series}


def _tag_order(item: tuple[int, int, Any, Any]) -> tuple[int, int]:
    return item[0], item[1]


_key_of = itemgetter(1, 2)  # an entry's (sensor_id, metric)
_ts_of = itemgetter(0)
_value_of = itemgetter(3)


_sid_of = itemgetter(1)
_count_of = itemgetter(4)


def _numpy_stats(arr: np.ndarray) -> tuple[float, float, float, float]:
    """(min, max, mean, p95) of a `sensor_windows` window's readings by numpy itself
    (`numpy.percentile(arr, 95)`, linear)."""
    return float(arr.min()), float(arr.max()), float(arr.mean()), float(np.percentile(arr, 95))


def _window_stats(arr: np.ndarray) -> tuple[float, float, float, float]:
    """numpy's (min, max, mean, p95) of a window's readings, compiled (`aggregate`);
    numpy's own where a value is not finite or is -0.0."""
    finite, lo, hi, mean, p95 = aggregate(arr)
    return (lo, hi, mean, p95) if finite else _numpy_stats(arr)


def _loaded(s: Series) -> Series:
    """s with its Python objects as the compiled run left them (for its `state`)."""
    s.load()
    return s


# The default alert rules of the sensor monitor's detectors (seed 004), collected by
# operators.registry into streams.config.DEFAULT_RULES.
DEFAULT_RULES: list[dict[str, Any]] = [
    _rule(
        "sensor_zscore",
        "sensor",
        "anomaly_zscore",
        ">",
        {"warning": 4.5, "critical": 6.0},
        "{entity} reads {reading:.4g}, z-score {value:.1f}",
        label="z-score",
        value_format="{:.1f}",
        cooldown_s=300,
    ),
    _rule(
        "sensor_iqr",
        "sensor",
        "anomaly_iqr",
        ">",
        {"warning": 1.5, "critical": 3.0},
        "{entity} reads {reading:.4g}, {value:.1f} IQR beyond Tukey's fence",
        label="distance beyond Tukey's fence (IQRs)",
        value_format="{:.1f}",
        cooldown_s=300,
    ),
    _rule(
        "sensor_rise",
        "sensor",
        "anomaly_rise",
        ">",
        {"warning": 0.0},
        "{entity} has risen steadily by {value:.3g}",
        label="steady rise",
        value_format="{:.3g}",
        cooldown_s=900,
    ),
]


class SensorOperator(Operator):
    sources = ("sensor-readings",)
    observes = (
        ("sensor", "anomaly_zscore"),
        ("sensor", "anomaly_iqr"),
        ("sensor", "anomaly_rise"),
    )

    @classmethod
    def default_rules(cls, config: Any = None) -> list[dict[str, Any]]:
        return list(DEFAULT_RULES)

    def __init__(self, config: SensorConfig | None = None) -> None:
        super().__init__()
        self.config = config or SensorConfig()
        self.pending = PendingReadings()
        self.series: dict[tuple[str, str], Series] = {}
        # (time after which a series may be forgotten, sensor, metric); lazily checked
        self.expiry: list[tuple[int, str, str]] = []
        # keyed by (sensor_id, metric)
        self.aggregates: TumblingWindows[list[float]] = TumblingWindows(
            self.config.aggregate_window_ms, list
        )
        methods = self.config.methods
        self._zscore = "zscore" in methods
        self._iqr = "iqr" in methods
        self._rise = "rise" in methods
        # series whose measured cadence can never fill `min_points` in `window_ms`
        # (zscore and iqr never judge them): counted for metrics and /health, logged
        self.unjudgeable: set[str] = set()
        # metrics per sensor (its latest reading's): the split of a per-sensor budget
        self.metrics: dict[str, int] = {}
        # live series per sensor (derived from `series`, rebuilt on restore): when a
        # sensor's last series expires its metric count goes too, so state stays bounded
        self._series_of: Counter[str] = Counter()
        # snapshot and restore (`operators.state`): format 2 is `SensorState`; format 1
        # (positional, before typed state) is upgraded with this configuration's defaults
        # the compiled per-series run (`operators.sensor_run`): its
        # configuration, its scratch state, and the bookkeeping of `_run`
        cfg = self.config
        self._fast = not (self._rise and cfg.rise_test == "runs")
        self._cfg = np.zeros(CFG_SIZE)
        self._cfg[:] = (
            cfg.min_points,
            cfg.z_threshold,
            cfg.min_std,
            cfg.iqr_k,
            cfg.min_iqr,
            self._zscore,
            self._iqr,
            cfg.calibrate,
            self._rise,
            cfg.score_history,
            CADENCE_READINGS,
            cfg.adapt_window,
            cfg.window_ms,
            cfg.window_readings,
            cfg.false_alarms_per_day,
            cfg.budget_per == "sensor",
            cfg.alpha or 0.0,  # (0: none, as `or` reads it)
            cfg.rise_span_ms,
            cfg.rise_min_readings,
            cfg.rise_max_points,
        )
        # every series' shared rows and buffers (derived: rebuilt on restore)
        self.slots = SeriesSlots(ST_SIZE, CADENCE_READINGS)
        # a new series is a copy of this one (`Series.like`: never fed, never attached)
        self._proto = Series(cfg)
        # the compiled rise step's configuration (`operators.sensor_rise`): anomalous
        # z-scores stay out of its likelihood's history (masking) at rise_history_alpha
        self._rise_cfg = rise_config(
            cfg.rise_min_readings,
            cfg.rise_min_history,
            cfg.rise_history_alpha or 1e-3,
            cfg.rise_alpha,
            cfg.rise_history,
        )
        # `_rise_tests`' marks of the series whose buckets went to Python, by slot
        self._rise_marks = np.zeros(0, dtype=np.int64)
        self._rise_mark = 0
        # the rise buckets a release's run closed (`sensor_run.run_all`): empty, sized
        # to the release (never full); a fixed one (tests) stops a series at a full one
        self._closes = np.zeros(0)
        # the released readings not yet in `aggregates`: per release (slot, aggregate
        # window start, value) arrays; the open windows' readings of earlier closes
        # (`_close_windows`), each as it sorted them; the earliest window start among
        # all of them (derived, like the slots: filed before a snapshot)
        self._unfiled: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._kept: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._unfiled_start: int | None = None
        self._released: Released | list[Entry] | None = None  # the release `_run` is judging
        self._g = 0  # the place in it of the reading being judged
        # `_run`'s rows and observations: (place, order, row, observation)
        self._tagged: list[tuple[int, int, Any, Any]] | None = None
        self._codec = StateCodec(
            "sensor",
            SensorState,
            format=STATE_FORMAT,
            upgrades={1: lambda old: _from_format_1(old, self.config), 2: _from_format_2},
        )

    # -- input ---------------------------------------------------------------

    def feed(self, source: str, events: Sequence[SensorReading]) -> None:
        # held as a chunk of columns, which the release reads directly
        # (`operators.sensor_pending`: no entry tuple per reading and metric)
        self.pending.add(events)

    # -- event time ----------------------------------------------------------

    def advance(self, watermark: int) -> None:
        released = self.pending.release_unordered(watermark)
        if released:
            self._run(released)
        self._expire_until(watermark)
        self._close_windows(watermark)

    def _close_windows(self, watermark: int) -> None:
        """The `sensor_windows` rows of the aggregate windows the watermark ended, by
        start then (sensor, metric), aggregated from the releases' arrays: every window
        in one compiled call (`_closed_runs`), no list per window filled and read back.
        A window filed in `aggregates` while open (by a snapshot or an expiry) is its
        list, then its readings since.

        The open windows' readings stay arrays (`_kept`), in the order filing them
        here would have filed them: when a snapshot or an expiry files them
        (`_flush_aggregates`), `aggregates` gets the lists, in the same dict order, that
        filing every release's readings at each close made (the snapshot's bytes)."""
        size = self.config.aggregate_window_ms
        closed: dict[int, dict[tuple[str, str], tuple[int, float, float, float, float]]] = {}
        filed = {start: bucket for start, _, bucket in self.aggregates.pop_buckets_until(watermark)}
        if self._unfiled_start is not None and self._unfiled_start + size <= watermark:
            parts = self._split_unfiled(watermark - size)
            if parts:
                if len(parts) == 1:
                    slot, win, x = parts[0]
                else:  # (stable: a series' readings of earlier closes first, as filed)
                    slot, win, x = (np.concatenate(part) for part in zip(*parts, strict=True))
                    order = np.lexsort((slot, win))
                    slot, win, x = slot[order], win[order], x[order]
                self._closed_runs(slot, win, x, filed, closed)
        for start, bucket in filed.items():  # windows with no unfiled readings
            for key, values in bucket.items():
                arr = np.asarray(values, dtype=float)
                closed.setdefault(start, {})[key] = (arr.size, *_window_stats(arr))
        add_row = self._out.add_row
        for start in sorted(closed):
            window = closed[start]
            for key in sorted(window):
                n, lo, hi, mean, p95 = window[key]
                add_row(
                    SensorWindowRow(
                        window_start=start,
                        window_end=start + size,
                        sensor_id=key[0],
                        metric=key[1],
                        n=n,
                        min=lo,
                        max=hi,
                        mean=mean,
                        p95=p95,
                    ),
                )

    def _split_unfiled(self, last: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The unfiled readings of the windows starting at or before `last` (those the
        watermark closed), by earlier closes' parts then the releases since, each
        ordered as `_unfiled_sorted` orders them; the rest kept (`_kept`): each part's
        open windows apart, as filing at each close would have filed them one close
        after the other."""
        new = self._unfiled_sorted()
        parts = self._kept if new is None else [*self._kept, new]
        closing = []
        self._kept = kept = []
        for slot, win, x in parts:
            c = int(np.searchsorted(win, last, side="right"))  # (by window start first)
            if c:
                closing.append((slot[:c], win[:c], x[:c]))
            if c < len(x):
                kept.append((slot[c:], win[c:], x[c:]))
        self._unfiled_start = min(int(win[0]) for _, win, _ in kept) if kept else None
        return closing

    def _closed_runs(
        self,
        slot: np.ndarray,
        win: np.ndarray,
        x: np.ndarray,
        filed: dict[int, dict[tuple[str, str], list[float]]],
        closed: dict[int, dict[tuple[str, str], tuple[int, float, float, float, float]]],
    ) -> None:
        """closed[start][key] = (n, min, max, mean, p95) of each closed window's unfiled
        readings (slot, win, x: by window start then slot, each series' readings in the
        order filing keeps them), every window in one compiled call
        (`sensor_run.aggregate_runs`); a window filed too (in `filed`, taken from it)
        is its list then these readings, aggregated as one array."""
        n = len(x)
        if not n:
            return
        cut = np.flatnonzero((slot[1:] != slot[:-1]) | (win[1:] != win[:-1])) + 1
        bounds = np.concatenate((np.zeros(1, dtype=np.int64), cut, np.full(1, n, dtype=np.int64)))
        runs = len(bounds) - 1
        finite = np.zeros(runs, dtype=np.bool_)
        stats = np.zeros((runs, 4))
        aggregate_runs(x, bounds, finite, stats)
        firsts = bounds[:-1]
        key_of = self.slots.key_of
        for s, w, a, b, ok, row in zip(
            slot[firsts].tolist(),
            win[firsts].tolist(),
            firsts.tolist(),
            bounds[1:].tolist(),
            finite.tolist(),
            stats.tolist(),
            strict=True,
        ):
            key = key_of[s]
            bucket = filed.get(w)
            if bucket is not None and key in bucket:  # its list first, then these
                arr = np.concatenate((np.asarray(bucket.pop(key), dtype=float), x[a:b]))
                closed.setdefault(w, {})[key] = (arr.size, *_window_stats(arr))
            elif ok:
                closed.setdefault(w, {})[key] = (b - a, *row)
            else:  # a value not finite or -0.0: numpy's own
                closed.setdefault(w, {})[key] = (b - a, *_numpy_stats(x[a:b]))

    def _run(self, released: Released | list[Entry]) -> None:
        """The released readings (in arrival order; columns, or a list of entries), all
        series at once: the readings
        grouped by series slot (`_grouped`: each series in event-time order, the
        release sorted first only where arrival order does not give that), then rounds
        of one compiled call for every series (`operators.sensor_run.run_all`), each
        series running until its next reading that needs Python (`_reading`, `_judged`,
        `_judge_rise`; the rise tests of the buckets it closed first), which Python then
        does before the next round resumes the series after it. Their rows and
        observations are put back in the readings' event-time order, so the output is
        the reading-by-reading loop's."""
        group = self._grouped(released, in_order=False) if self._fast else None
        in_order = group is None
        if in_order:
            # (timsort: the buckets' entries come mostly in time order, so the tuples'
            # comparisons are about one per entry; measured cheaper than a lexsort on
            # columns with the strings ranked)
            released = sorted(released)
            group = self._grouped(released, in_order=True)
            assert group is not None
        order, grouped, ts, xs, counts, starts, ends, changed = group
        seg_slots = grouped[starts]
        self._released = released
        self._tagged = tagged = []
        # their aggregates: filed into `aggregates` when needed (`_flush_aggregates`)
        wins = ts - ts % self.config.aggregate_window_ms
        self._unfiled.append((grouped, wins, xs))
        first = int(wins.min())
        if self._unfiled_start is None or first < self._unfiled_start:
            self._unfiled_start = first
        try:
            order_list = order.tolist()
            if not self._fast:  # the legacy "runs" rise test: every reading in Python
                for g in order_list:
                    self._g = g
                    e = released[g]
                    self._reading(e[0], e[1], e[2], e[3])
            else:
                self._rounds(order_list, grouped, ts, xs, counts[order], seg_slots, starts, ends)
        finally:
            self._released = None
            self._tagged = None
        self._note_metrics(released, counts, order[ends - 1], changed)
        if tagged:
            # in event-time order: the sorted release's place (the place in arrival
            # order after the entry, which is where a stable sort keeps equal entries)
            tagged.sort(key=_tag_order if in_order else lambda tag: (released[tag[0]], tag[0]))
            out = self._out
            for _, _, row, obs in tagged:
                if row is not None:
                    out.add_row(row)
                else:
                    out.observations.append(obs)

    def _grouped(self, released: Released | list[Entry], in_order: bool) -> tuple[Any, ...] | None:
        """(order, slots, times, values, metric counts, starts, ends, changed): the
        release grouped by series slot by numpy's stable argsort (each series keeps its
        readings' order in `released`), order[i] the place in `released` of grouped
        reading i, the counts in `released`'s order, series k the grouped readings
        starts[k] to ends[k] - 1; changed (None when sorted): whether a series' latest
        reading has another metric count than its sensor's known one.

        Sorted (`in_order`), keys without a slot yet are given one in event-time order
        (their series is made by their first reading's `_reading`). In arrival order,
        None unless this grouping is the sorted release's, so that sorting the whole
        release (tuples whose time ties compare strings) is not needed: every key has
        its slot and every sensor its metric count already (they are given in
        event-time order), every series' times strictly increase (no ties, which sort
        by value), and every entry has its metric count (an old checkpoint's entry looks
        back in event-time order, `_metric_count`).

        Columns (`Released`, the pending buffer's) are read as they are; a list of
        entries (a sorted release) is taken apart into them."""
        n = len(released)
        slots = self.slots
        columns = released if isinstance(released, Released) else None
        # (map and itemgetter: the per-reading work in C; -1: no slot yet)
        keys = columns.keys() if columns is not None else map(_key_of, released)
        by_slot = np.fromiter(map(slots.slot_of.get, keys, repeat(-1)), np.int64, n)
        if (by_slot < 0).any():
            if not in_order:
                return None
            take = slots.slot
            keys = map(_key_of, released)
            had = by_slot.tolist()
            by_slot = np.array(
                [take(k) if s < 0 else s for s, k in zip(had, keys, strict=True)], dtype=np.int64
            )
        order = np.argsort(by_slot, kind="stable")
        grouped = by_slot[order]
        if columns is not None:
            ts, counts = columns.ts[order], columns.counts
        else:
            ts = np.fromiter(map(_ts_of, released), dtype=np.int64, count=n)[order]
            counts = np.fromiter(map(_count_of, released), dtype=np.int64, count=n)
        new = grouped[1:] != grouped[:-1]  # a series' first reading (but the first)
        if not in_order and not (counts.all() and ((ts[1:] > ts[:-1]) | new).all()):
            return None
        cut = np.flatnonzero(new) + 1
        starts = np.concatenate((np.zeros(1, dtype=np.int64), cut))
        ends = np.concatenate((cut, np.full(1, n, dtype=np.int64)))
        changed = None
        if not in_order:  # each series' sensor's known metric count (0: none), in C
            lasts = order[ends - 1]
            at = lasts.tolist()
            sids = (
                map(columns.sids.__getitem__, at)
                if columns is not None
                else map(_sid_of, map(released.__getitem__, at))
            )
            known = np.fromiter(map(self.metrics.get, sids, repeat(0)), np.int64, len(lasts))
            if not known.all():
                return None
            changed = not np.array_equal(known, counts[lasts])
        if columns is not None:
            xs = columns.xs[order]
        else:
            xs = np.fromiter(map(_value_of, released), dtype=np.float64, count=n)[order]
        return order, grouped, ts, xs, counts, starts, ends, changed

    def _note_metrics(
        self,
        released: Released | list[Entry],
        counts: np.ndarray,
        lasts: np.ndarray,
        changed: bool | None,
    ) -> None:
        """Each sensor's metric count as of its latest released reading (0: unknown, from
        an old checkpoint); lasts: the place in `released` of each series' latest;
        changed: `_grouped`'s (None: `released` is sorted)."""
        metrics = self.metrics
        if changed is not None:  # (every sensor already in `metrics`: `_grouped`)
            if changed:  # (else nothing changes)
                # a sensor's latest reading: the last of its series' latest in event
                # time, where the sorted release's last entry of the sensor is
                latest = sorted(map(released.__getitem__, lasts.tolist()))
                metrics.update(zip(map(_sid_of, latest), map(_count_of, latest), strict=True))
        elif counts.all():  # (pairs zipped in C; the last of a sensor wins, as below)
            metrics.update(zip(map(_sid_of, released), counts.tolist(), strict=True))
        else:
            metrics.update({e[1]: e[4] for e in released if e[4]})

    def _rounds(
        self,
        order: list[int],
        grouped: np.ndarray,
        ts: np.ndarray,
        xs: np.ndarray,
        ms: np.ndarray,
        seg_slots: np.ndarray,
        starts: np.ndarray,
        ends: np.ndarray,
    ) -> None:
        """`_run`'s rounds (order: the release's place of each grouped reading, grouped:
        its series slot; series k is slot seg_slots[k] with readings
        starts[k]..ends[k]-1)."""
        released = self._released
        assert released is not None
        slots = self.slots
        series = self.series
        # a series not made yet is made (as `_reading` makes it); its first reading is
        # the compiled run's (no last reading, nothing staged: the window step of an
        # empty window, nothing judged, no rise bucket before the cadence, the reading
        # staged), as `_reading` would do it
        holders = slots.holders
        seg_list = seg_slots.tolist()
        if None in map(holders.__getitem__, seg_list):  # (the look-ups in C)
            # the new ones' first readings picked in C too, in series order (not a
            # Python loop over every series of the release: ~3,700 at 50 k sensors)
            news = compress(
                starts.tolist(), map(is_, map(holders.__getitem__, seg_list), repeat(None))
            )
            for j in list(news):
                t, sid, metric, _, _ = released[order[j]]
                self._new_series(sid, metric, t)
        closes = self._closes
        if not len(closes):
            closes = np.zeros(1 + 4 * len(ts))
        cfg = self._cfg
        # the cadences judged by a call (a record per series: never full)
        cads = np.zeros(1 + CAD_SIZE * len(seg_slots))
        m = len(seg_slots)
        status = np.zeros(m, dtype=np.int64)
        stops = np.zeros(m, dtype=np.int64)
        while m:
            run_all(
                slots.chunks,
                slots.where,
                slots.offsets,
                slots.sizes,
                ts,
                xs,
                seg_slots,
                starts,
                ends,
                slots.states,
                cfg,
                closes,
                slots.gaps,
                ms,
                cads,
                status[:m],
                stops[:m],
            )
            if cads[0]:  # the Python parts of the cadences judged, before anything else
                self._cadences(cads[1 : 1 + CAD_SIZE * int(cads[0])].tolist())
            if closes[0]:  # the rise tests of the buckets closed, each series' in order
                self._rise_tests(closes, grouped, order)
            stopped = np.flatnonzero(status[:m] != DONE)
            if not len(stopped):
                return
            at = stops[stopped]
            for j, how in zip(at.tolist(), status[stopped].tolist(), strict=True):
                g = order[j]
                self._g = g
                t, sid, metric, x, _ = released[g]
                if how == PRE:
                    self._reading(t, sid, metric, x)
                    continue
                s = series[(sid, metric)]
                s.load()
                if how == RISE:  # all but its rise test, which closes a bucket
                    self._judge_rise(sid, metric, s, t, x)
                else:  # POST: its window stepped (the staged reading added)
                    v = s.row.tolist()
                    self._judged(
                        sid,
                        metric,
                        s,
                        t,
                        x,
                        int(v[ST_START]),
                        int(v[ST_N]),
                        v[ST_MEAN],
                        v[ST_STD],
                        v[ST_Q1],
                        v[ST_Q3],
                    )
                s.store()
                slots.bind(s)
            nxt = at + 1
            left = nxt < ends[stopped]
            seg_slots = seg_slots[stopped][left]
            starts = nxt[left]
            ends = ends[stopped][left]
            m = len(seg_slots)

    def _rise_tests(self, closes: np.ndarray, grouped: np.ndarray, order: list[int]) -> None:
        """The rise tests of the buckets a round closed (`closes`, the reading of each
        a place in `grouped`): one compiled call for all (`sensor_rise.rise_closes`),
        then in Python, in order, what it left (`_rise_rest`) and the buckets of a
        series after one that left something (`_close_bucket` inlined)."""
        slots = self.slots
        if len(self._rise_marks) < len(slots.states):  # (slots grew: fresh marks)
            self._rise_marks = np.zeros(len(slots.states), dtype=np.int64)
        self._rise_mark += 1
        k = int(closes[0])
        hows = np.zeros(k, dtype=np.int64)
        rcfg = self._rise_cfg
        rise_closes(slots.rises, closes, grouped, rcfg, hows, self._rise_marks, self._rise_mark)
        left = np.flatnonzero(hows)
        if not len(left):
            return
        released = self._released
        assert released is not None
        series = self.series
        for c, how in zip(left.tolist(), hows[left].tolist(), strict=True):
            j, start, total, count = closes[1 + 4 * c : 5 + 4 * c].tolist()
            g = order[int(j)]
            self._g = g
            t, sid, metric, x, _ = released[g]
            s = series[(sid, metric)]
            if how == DEFER:
                how = rise_close(s.rise.buf, total / int(count), start, rcfg)
            if how:
                self._rise_rest(sid, metric, s, t, x, how)

    def _flush_aggregates(self) -> None:
        """The readings kept as arrays (`_kept`, then `_unfiled`) into their
        `sensor_windows` aggregates (`_file`), in the order of the closes that kept
        them. Done before a snapshot and before a slot is freed (so every slot in them
        is still its key's)."""
        for part in self._kept:
            self._file(*part)
        self._kept = []
        unfiled = self._unfiled_sorted()
        if unfiled is not None:
            self._file(*unfiled)
        self._unfiled_start = None

    def _unfiled_sorted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(slots, window starts, values) of the unfiled readings, which it empties,
        ordered by window start then series slot (numpy's lexsort, stable: each
        series' readings stay in event-time order, its earlier releases first); None
        when there are none."""
        unfiled = self._unfiled
        if not unfiled:
            return None
        self._unfiled = []
        self._unfiled_start = None
        if len(unfiled) == 1:
            slot, win, x = unfiled[0]
        else:
            slot, win, x = (np.concatenate(part) for part in zip(*unfiled, strict=True))
        order = np.lexsort((slot, win))
        return slot[order], win[order], x[order]

    def _file(self, slot: np.ndarray, win: np.ndarray, x: np.ndarray) -> None:
        """Readings ordered as `_unfiled_sorted` orders them into `aggregates`: one
        extend per (series, window) however many releases it spans."""
        values = x.tolist()
        if not values:
            return
        cut = np.flatnonzero((slot[1:] != slot[:-1]) | (win[1:] != win[:-1])) + 1
        bounds = [0, *cut.tolist(), len(values)]
        firsts = bounds[:-1]
        key_of = self.slots.key_of
        at = self.aggregates.at
        for a, b, s, w in zip(
            firsts, bounds[1:], slot[firsts].tolist(), win[firsts].tolist(), strict=True
        ):
            at(key_of[s], w).extend(values[a:b])

    def _metric_count(self, sid: str) -> int:
        """Metrics of sensor sid as of the reading being judged: its latest judged
        reading's (the per-sensor budget's split, decided in event-time order)."""
        released = self._released
        if released is None:
            return self.metrics.get(sid, 1)
        g = self._g
        m = released[g][4]
        if m:
            return m
        for e in reversed(released[:g]):  # an entry of an old checkpoint: the one before
            if e[1] == sid and e[4]:
                return e[4]
        return self.metrics.get(sid, 1)

    def _expire_until(self, watermark: int) -> None:
        """Forget series silent for more than their window before the watermark.

        The heap's entries are lazy (a series' first `until`, pushed again with its
        current one when popped too early), so the order they come out in depends on
        the heap's history, which a restore rebuilds from the series' current `until`s.
        The series are forgotten in (until, sid, metric) order instead, so that their
        observations come out the same after a restore as in an uninterrupted run."""
        heap = self.expiry
        expired: list[tuple[int, str, str]] = []
        while heap and heap[0][0] < watermark:
            _, sid, metric = heapq.heappop(heap)
            s = self.series.get((sid, metric))
            if s is None or s.last_ts is None:
                continue
            until = s.last_ts + s.window_ms
            if until < watermark:
                expired.append((until, sid, metric))
            else:
                heapq.heappush(heap, (until, sid, metric))
        if not expired:
            return
        self._flush_aggregates()  # (a forgotten series' slot may be another key's next)
        for _, sid, metric in sorted(expired):
            s = self.series.pop((sid, metric))
            s.load()
            self._expire(sid, metric, s)
            self.slots.release((sid, metric))
            self._series_of[sid] -= 1
            if self._series_of[sid] <= 0:
                # readings of it still pending are a new start: warm-up, unjudged
                del self._series_of[sid]
                self.metrics.pop(sid, None)

    def _expire(self, sid: str, metric: str, s: Series) -> None:
        """The series' window emptied: end its episodes (observations only)."""
        assert s.last_ts is not None
        ts = s.last_ts + s.window_ms
        for method, episode in s.episodes.items():
            if episode.close() == "end":
                self._observe(sid, metric, method, 0.0, ts, 0, None, None, {"expired": True})
        if s.rising:
            self._observe(sid, metric, "rise", 0.0, ts, 0, None, None, {"expired": True})

    def _reading(self, t: int, sid: str, metric: str, x: float) -> None:
        key = (sid, metric)
        s = self.series.get(key)
        slots = self.slots
        if s is None:
            s = self._new_series(sid, metric, t)
        elif s.last_ts is not None and t - s.last_ts > s.window_ms:
            # silent for longer than the window: the same as having been forgotten
            s.load()
            self._expire(sid, metric, s)
            s = self.series[key] = self._fresh()
            slots.attach(key, s)
        else:
            s.load()  # from the shared row (the compiled run's)
        last, staged_x, add = 0, 0.0, 0
        if s.last_ts is not None and t > s.last_ts:
            if s.gaps is not None:
                self._cadence(sid, metric, s, t - s.last_ts)
            staged = s.staged
            if staged:
                last = s.last_ts
                for v in staged[:-1]:  # ties at last_ts (rare): all but the last added here
                    s.stats.add(last, v)
                staged_x, add = staged[-1], 1
                staged.clear()
        start = t - s.window_ms
        # the staged reading added, the window evicted and its statistics, in one
        # compiled call (`operators.detectors.window`)
        out = window_step(s.stats.buf, last, staged_x, add, start)
        if out[0] < 0:  # its buffer is full: grown (rare: the window only grows so far)
            out = s.stats.step(last, staged_x, add, start)
        n, mean, std, q1, q3 = out
        self._judged(sid, metric, s, t, x, start, n, mean, std, q1, q3)
        s.store()
        slots.bind(s)  # a window buffer or tail ring that grew: into a region

    def _new_series(self, sid: str, metric: str, t: int) -> Series:
        """A new series of (sid, metric), its first reading at t: made, given its slot,
        counted for its sensor, and in the expiry heap (one entry per series)."""
        key = (sid, metric)
        s = self.series[key] = self._fresh()
        self.slots.attach(key, s)
        self._series_of[sid] += 1
        heapq.heappush(self.expiry, (t + s.window_ms, sid, metric))
        return s

    def _fresh(self) -> Series:
        """A new series, to be attached at once (`Series.like`: a copy of the
        prototype, which `Series(config)` would make at ~2x the cost)."""
        return Series.like(self._proto)

    def _judged(
        self,
        sid: str,
        metric: str,
        s: Series,
        t: int,
        x: float,
        start: int,
        n: int,
        mean: float,
        std: float,
        q1: float,
        q3: float,
    ) -> None:
        """The rest of a reading once its window is stepped (n, mean, std, q1, q3 of
        the readings before it in [start, t)): its verdicts, the rise test, and the
        reading staged (its aggregate is `_run`'s)."""
        cfg = self.config
        if n >= cfg.min_points:
            # the verdicts are the detectors'; the episodes, rows and observations are
            # this operator's. A normal reading outside an episode (the hot path) only
            # counts towards the episode's cooldown, without a further call
            if self._zscore:
                v = s.zscore.judge_one(x, n, mean, std, s.alpha)
                if v is not None:
                    episode = s.episodes["zscore"]
                    if v[2] or episode.active:
                        self._zscore_found(sid, metric, s, t, x, start, n, mean, std, v)
                    else:
                        episode.since_end += 1
            if self._iqr:
                w = s.iqr.judge_one(x, n, q1, q3, s.alpha)
                if w is not None:
                    episode = s.episodes["iqr"]
                    if w[3] or episode.active:
                        self._iqr_found(sid, metric, s, t, x, start, n, q1, q3, w)
                    else:
                        episode.since_end += 1
        if self._rise:
            if cfg.rise_test == "runs":
                self._judge_rise_runs(sid, metric, s, t, x)
            else:
                self._judge_rise(sid, metric, s, t, x)
        s.staged.append(x)
        s.last_ts = t

    def _cadence(self, sid: str, metric: str, s: Series, gap: int) -> None:
        """After CADENCE_READINGS readings, the series' interval g (median gap) sets
        its window and rise span (`adapt_window`), and a window that still cannot
        hold min_points is reported (a warning, `unjudgeable`), never silent."""
        assert s.gaps is not None
        s.gaps.append(gap)
        if len(s.gaps) < CADENCE_READINGS:
            return
        gaps = sorted(s.gaps)
        g = max(gaps[len(gaps) // 2], 1)
        s.gaps = None
        cfg = self.config
        if cfg.adapt_window:
            s.window_ms = max(cfg.window_ms, cfg.window_readings * g)
        budget = cfg.false_alarms_per_day
        if cfg.budget_per == "sensor":
            budget /= max(1, self._metric_count(sid))
        alpha = cfg.alpha or min(0.01, budget * g / DAY_MS)
        s.alpha = alpha
        span = max(cfg.rise_span_ms, cfg.rise_min_readings * g)
        s.bucket_ms = max(g, span // cfg.rise_max_points)
        size = min(max(span // s.bucket_ms, cfg.rise_min_readings), cfg.rise_max_points)
        s.rise.begin(size)
        # (where `rise_closes` finds it: a series closes rise buckets only once its
        # cadence is measured, here or in `_cadences`, or after a restore)
        self.slots.set_rise(s.slot, s.rise.buf)
        if (self._zscore or self._iqr) and s.window_ms // g < cfg.min_points:
            self._unjudgeable(f"{sid}/{metric}", g, s.window_ms)

    def _unjudgeable(self, key: str, g: int, window_ms: int) -> None:
        """Series `key`'s window (window_ms at its interval g) never holds min_points:
        listed and logged once."""
        if key in self.unjudgeable:
            return
        self.unjudgeable.add(key)
        min_points = self.config.min_points
        log.warning(
            "sensor %s: readings every %d ms, so the %d ms window never holds "
            "min_points=%d; zscore and iqr cannot judge it (raise window_ms to "
            "at least %d ms, lower min_points, or set adapt_window)",
            key,
            g,
            window_ms,
            min_points,
            g * min_points,
        )

    def _cadences(self, records: list[float]) -> None:
        """The rest of the cadences the compiled run judged (`sensor_run.run`: the
        window and the rise buckets are in the series' rows), as `_cadence` does it:
        the level alpha, the rise test of its size, an unjudgeable window reported."""
        cfg = self.config
        slots = self.slots
        judged = self._zscore or self._iqr
        for c in range(0, len(records), CAD_SIZE):
            slot, g, alpha, size = records[c : c + CAD_SIZE]
            s = slots.holders[int(slot)]
            assert s is not None
            s.gaps = None
            s.alpha = alpha
            size = int(size)
            s.rise.begin(size)
            slots.set_rise(s.slot, s.rise.buf)  # (as in `_cadence`)
            g = int(g)
            if judged and s.window_ms // g < cfg.min_points:
                sid, metric = slots.key_of[int(slot)]
                self._unjudgeable(f"{sid}/{metric}", g, s.window_ms)

    def _zscore_found(
        self,
        sid: str,
        metric: str,
        s: Series,
        t: int,
        x: float,
        start: int,
        n: int,
        mean: float,
        std: float,
        verdict: tuple[float, float | None, bool, bool],
    ) -> None:
        """The episode and finding of a z-score verdict (`ZScore.judge_one`) that is
        anomalous or falls in an open episode (a vetoed reading outside one is the
        hot path's: normal)."""
        z, p, anomalous, vetoed = verdict
        if vetoed:
            # usual for this series (its scores have such a tail): not an anomaly, and
            # an end-of-episode observation with value 0 so that rules resolve
            z = 0.0
        change = s.episodes["zscore"].update(anomalous)
        if anomalous or change:
            details = {"reading": x, "mean": mean, "std": std}
            if vetoed:
                details["vetoed_z"] = abs(x - mean) / std
            threshold = self.config.z_threshold
            self._finding(
                sid, metric, "zscore", s, t, x, z, threshold, start, n, anomalous, details, p
            )

    def _iqr_found(
        self,
        sid: str,
        metric: str,
        s: Series,
        t: int,
        x: float,
        start: int,
        n: int,
        q1: float,
        q3: float,
        verdict: tuple[float, float, float | None, bool],
    ) -> None:
        """The episode and finding of a Tukey-fence verdict (`IqrFences.judge_one`)
        that is anomalous or falls in an open episode."""
        score, fence, p, anomalous = verdict
        episode = s.episodes["iqr"]
        change = episode.update(anomalous)
        if anomalous or change:
            iqr = q3 - q1
            details = {"reading": x, "q1": q1, "q3": q3, "iqr": iqr, "fence": fence}
            self._finding(
                sid, metric, "iqr", s, t, x, score, fence, start, n, anomalous, details, p
            )

    def _judge_rise(self, sid: str, metric: str, s: Series, t: int, x: float) -> None:
        """Mann-Kendall over the means of the last buckets (`operators.detectors.trend`),
        judged as each bucket closes: a rise with p < rise_alpha whose Theil-Sen total
        exceeds rise_sigmas residual scales around the line (and rise_min_total); its
        episode ends when p >= 0.05 (no trend left)."""
        if not s.bucket_ms:
            return  # the cadence, and so the buckets, are not known yet
        bucket = s.bucket
        b = t - t % s.bucket_ms
        if b == bucket[0] or not bucket[2]:
            if not bucket[2]:
                bucket[0] = b
            bucket[1] += x
            bucket[2] += 1
            return
        s.bucket = [b, x, 1]
        self._close_bucket(sid, metric, s, t, x, bucket[0], bucket[1], bucket[2])

    def _close_bucket(
        self,
        sid: str,
        metric: str,
        s: Series,
        t: int,
        x: float,
        start: int,
        total: float,
        count: int,
    ) -> None:
        """The rise test as reading x at t closes the bucket (start, total, count)
        (`_rounds` does the same inline for the buckets the compiled run closes)."""
        how = rise_close(s.rise.buf, total / count, float(start), self._rise_cfg)
        if how:
            self._rise_rest(sid, metric, s, t, x, how)

    def _rise_history_alpha(self, sid: str, s: Series) -> float:
        """The level the rise's z must be improbable at against the series' own z-scores."""
        cfg = self.config
        if cfg.rise_history_alpha is not None:
            return cfg.rise_history_alpha
        budget = cfg.false_alarms_per_day
        if cfg.budget_per == "sensor":
            budget /= max(1, self._metric_count(sid))
        return min(1e-3, budget * max(s.bucket_ms, 1) / DAY_MS)

    def _rise_rest(self, sid: str, metric: str, s: Series, t: int, x: float, how: int) -> None:
        """What the compiled rise step (`operators.sensor_rise.rise_close`) left to
        Python as reading x at t closed a bucket: the likelihood made at its first use,
        a fit of numpy's, then the verdict (the test of the Mann-Kendall z of the
        series' last rise_min_readings or more bucket means and of its likelihood)."""
        cfg = self.config
        rise = s.rise
        rcfg = self._rise_cfg
        if how == MAKE:
            rise.make(cfg.rise_history)
            self.slots.set_rise(s.slot, rise.buf)  # (a new buffer)
            how = rise_judge(rise.buf, rcfg, False, 0.0, 0.0)
        if how == NUMPY_FIT:
            how = rise_judge(rise.buf, rcfg, True, *rise.numpy_fit())
        if how == QUIET:
            return
        buf = rise.buf
        p, p_history = float(buf[R_P]), float(buf[R_PH])
        n = rise.n
        if how == END:  # no (unusual) trend left: the episode ends
            s.rising = False
            details = {"reading": x, "points": n, "p": p, "p_history": p_history}
            self._observe(sid, metric, "rise", 0.0, t, n, rise.oldest_start(), t, details)
            return
        if p_history >= self._rise_history_alpha(sid, s):  # (CANDIDATE: p < rise_alpha)
            return
        total, noise = rise_fit(rise.values())
        needed = max(cfg.rise_min_total, cfg.rise_sigmas * noise)
        if total <= needed:
            return
        s.rising = True
        start = rise.oldest_start()
        details = {
            "reading": x,
            "points": n,
            "span_ms": t - start,
            "p": p,
            "p_history": p_history,
            "noise": noise,
        }
        self._row(sid, metric, "rise", t, x, total, needed, start, t)
        self._observe(sid, metric, "rise", total, t, n, start, t, details, p)

    def _judge_rise_runs(self, sid: str, metric: str, s: Series, t: int, x: float) -> None:
        """The legacy test (`rise_test="runs"`): a strictly rising run."""
        cfg = self.config
        if s.prev is not None and x > s.prev:
            s.run_len += 1
        else:
            if s.rising:  # the run broke: its episode ends
                details = {"reading": x, "points": s.run_len}
                self._observe(sid, metric, "rise", 0.0, t, s.run_len, s.run_start_ts, t, details)
                s.rising = False
            s.run_len, s.run_start_ts, s.run_start_value = 1, t, x
        s.prev = x
        total = x - s.run_start_value
        if (
            not s.rising
            and s.run_len >= cfg.rise_min_points
            and t - s.run_start_ts >= cfg.rise_span_ms
            and total > cfg.rise_min_total
        ):
            s.rising = True
            details = {
                "reading": x,
                "start_value": s.run_start_value,
                "points": s.run_len,
                "span_ms": t - s.run_start_ts,
            }
            self._row(sid, metric, "rise", t, x, total, cfg.rise_min_total, s.run_start_ts, t)
            self._observe(sid, metric, "rise", total, t, s.run_len, s.run_start_ts, t, details)

    def _finding(
        self,
        sid: str,
        metric: str,
        method: str,
        s: Series,
        t: int,
        x: float,
        score: float,
        threshold: float,
        start: int,
        n: int,
        anomalous: bool,
        details: dict[str, Any],
        p_value: float | None = None,
    ) -> None:
        """An anomaly (row; observation while its episode is open), or the end of an
        episode (observation). An anomalous reading in the cooldown after an episode
        has its row but no observation."""
        if anomalous:
            self._row(sid, metric, method, t, x, score, threshold, start, t)
        episode = s.episodes[method]
        if episode.active or not anomalous:
            self._observe(sid, metric, method, score, t, n, start, t, details, p_value)

    def _emit(self, row: SensorAnomalyRow | None, obs: Observation | None) -> None:
        tagged = self._tagged
        if tagged is None:
            if row is not None:
                self._out.add_row(row)
            else:
                self._out.observations.append(obs)
        else:  # within `_run`: put in event-time order at its end
            tagged.append((self._g, len(tagged), row, obs))

    def _row(
        self,
        sid: str,
        metric: str,
        method: str,
        t: int,
        x: float,
        score: float,
        threshold: float,
        start: int,
        end: int,
    ) -> None:
        self._emit(
            SensorAnomalyRow(
                ts=t,
                sensor_id=sid,
                metric=metric,
                value=x,
                method=method,
                score=float(score),
                threshold=float(threshold),
                window_start=start,
                window_end=end,
            ),
            None,
        )

    def _observe(
        self,
        sid: str,
        metric: str,
        method: str,
        score: float,
        t: int,
        n: int,
        start: int | None,
        end: int | None,
        details: dict[str, Any],
        p_value: float | None = None,
    ) -> None:
        self._emit(
            None,
            Observation(
                kind="sensor",
                entity=f"{sid}/{metric}",
                metric=f"anomaly_{method}",
                value=float(score),
                ts=t,
                n=n,
                window_start=start,
                window_end=end,
                details=details,
                p_value=p_value,
            ),
        )

    def late_window(self, source: str, event: Any) -> int:
        """The aggregate window (`sensor_windows`) a late reading missed: the sliding
        window it would have been judged against ends at the reading itself."""
        return window_start(event.ts, self.config.aggregate_window_ms)

    # -- checkpoints ---------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return self._codec.dump(self._state())

    def snapshot_encoded(self) -> msgspec.Raw:
        # written from the typed state without a plain copy first (`StateCodec.encode`)
        return self._codec.encode(self._state())

    def _state(self) -> SensorState:
        self._flush_aggregates()
        return SensorState(
            pending=self.pending.state(),
            series={key: _loaded(s).state() for key, s in self.series.items()},
            aggregates=self.aggregates.state(),
            unjudgeable=sorted(self.unjudgeable),
            metrics=self.metrics,
        )

    def restore(self, snapshot: dict[str, Any]) -> None:
        state = self._codec.load(snapshot)
        self.pending.load(state.pending)
        self.series = {key: Series.from_state(s, self.config) for key, s in state.series.items()}
        # derived, rebuilt: the series' shared rows and buffers
        self.slots = slots = SeriesSlots(
            ST_SIZE, CADENCE_READINGS, capacity=max(64, len(self.series))
        )
        for key, s in self.series.items():
            slots.attach(key, s)
            slots.set_rise(s.slot, s.rise.buf)
        # derived, rebuilt: the expiry heap (one entry per series) and series per sensor
        self.expiry = [
            (s.last_ts + s.window_ms, sid, metric)
            for (sid, metric), s in self.series.items()
            if s.last_ts is not None
        ]
        heapq.heapify(self.expiry)
        self._series_of = Counter(sid for sid, _ in self.series)
        self.unjudgeable = set(state.unjudgeable)
        self.metrics = state.metrics
        self.aggregates.load(state.aggregates)
        self._unfiled = []
        self._kept = []
        self._unfiled_start = None


__all__ = ["DEFAULT_RULES", "METHODS", "SensorConfig", "SensorOperator"]
