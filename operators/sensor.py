"""Anomalous sensor readings against a sliding event-time window, and window aggregates.

Every (sensor_id, metric) of `SensorReading.values` is a series. A reading is
judged once the watermark has passed its time, in event-time order (ties by
value), so any arrival order within the lateness gives the sorted input's
result. Reading x at time t is judged against the readings strictly before
it in the sliding window [t - window_ms, t) (so a spike does not mask
itself), once that window holds at least `min_points`:

- zscore: z = |x - mean| / std, with the window's mean and sample standard
  deviation (ddof = 1); anomalous when z > z_threshold. The standard score;
  a threshold of 3 is the "three-sigma rule" (for a normal distribution
  P(|Z| > 3) = 0.27 %). score = z, threshold = z_threshold.
- iqr: Tukey's fences (Tukey 1977, "Exploratory Data Analysis"): with the
  window's quartiles Q1, Q3 (numpy's "linear" quantile, Hyndman & Fan
  definition 7) and IQR = Q3 - Q1, anomalous when
  x < Q1 - k * IQR or x > Q3 + k * IQR (k = iqr_k, 1.5 by Tukey's choice).
  score = distance beyond the crossed fence in IQR units,
  (x - (Q3 + k IQR)) / IQR resp. ((Q1 - k IQR) - x) / IQR; threshold = the
  crossed fence itself (in the metric's units).
- rise: a sustained rise. The readings of a series form runs of strictly
  increasing values (each reading above the one before it, at most window_ms
  after it). A run is an anomaly once it holds >= rise_min_points readings
  spanning >= rise_span_ms and rose by more than rise_min_total (default 0):
  the "temperature rises for five minutes straight" case. It is raised once
  per run (episode), at the reading that completes the condition.
  score = x - first value of the run (the total rise), threshold =
  rise_min_total, and the row's window is the run [first ts, t].

A window whose std (resp. IQR) is not above `min_std` (`min_iqr`), e.g. a
constant one, gives no z-score (fences): those methods do not judge then.

Mean and std come from shifted running sums, quantiles from a sorted list
(`operators.rolling.SlidingStats`): O(log n) per reading, no re-sort.

Rows:
- `sensor_anomalies`: one per anomalous (reading, metric, method).
- `sensor_windows`: per (sensor, metric) tumbling window of
  `aggregate_window_ms` (closed when the watermark reaches its end): n, min,
  max, mean, and p95 = numpy.percentile(values, 95) (linear).

Observations (kind "sensor", entity "sensor_id/metric"): metric
"anomaly_zscore" | "anomaly_iqr" | "anomaly_rise", value = score, n = the
points behind it. One per anomaly, and one more when the episode ends (the
next judged reading that is not anomalous, with its score: 0 for iqr inside
the fences and for a rise run that broke; or value 0 with details.expired
when the series was silent for window_ms), so rules resolve and can fire
again. Details never use the rule message's own names (value, metric,
entity, threshold, op); the reading is `reading`.

State is bounded by window_ms of readings per series: a series silent for
more than window_ms (by the watermark, or by the gap to its next reading) is
forgotten, which is the same as its window having emptied.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from operators.base import Observation, Operator
from operators.rolling import EventTimeBuffer, SlidingStats
from operators.windows import TumblingWindows
from schemas.events import SensorReading

METHODS = ("zscore", "iqr", "rise")


@dataclass(frozen=True)
class SensorConfig:
    window_ms: int = 300_000  # sliding window each reading is judged against
    z_threshold: float = 3.0
    iqr_k: float = 1.5
    min_points: int = 30  # zscore and iqr judge only windows with this many readings
    rise_span_ms: int = 300_000
    rise_min_points: int = 5
    rise_min_total: float = 0.0  # a rise must exceed this in total (metric units)
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


Entry = tuple[int, str, str, float]  # (ts, sensor_id, metric, value)


class Series:
    """The state of one (sensor, metric)."""

    __slots__ = (
        "active",
        "agg",
        "agg_start",
        "last_ts",
        "prev",
        "rising",
        "run_len",
        "run_start_ts",
        "run_start_value",
        "staged",
        "stats",
    )

    def __init__(self) -> None:
        self.stats = SlidingStats()  # readings before last_ts, in the sliding window
        self.staged: list[float] = []  # readings at last_ts (not yet "before" anything)
        self.last_ts: int | None = None
        self.prev: float | None = None  # the last value, for the rise run
        self.run_len = 0
        self.run_start_ts = 0
        self.run_start_value = 0.0
        self.rising = False  # the current run was raised
        self.active: dict[str, bool] = {"zscore": False, "iqr": False}
        # the open aggregate window this series last wrote to (a cache of
        # `aggregates.at`: readings come in time order, so it is usually the same)
        self.agg_start: int | None = None
        self.agg: list[float] = []

    def snapshot(self) -> dict[str, Any]:
        return {
            "stats": self.stats.snapshot(),
            "staged": list(self.staged),
            "last_ts": self.last_ts,
            "rise": [self.prev, self.run_len, self.run_start_ts, self.run_start_value],
            "flags": [self.rising, self.active["zscore"], self.active["iqr"]],
        }

    @classmethod
    def from_snapshot(cls, state: dict[str, Any]) -> Series:
        s = cls()
        s.stats = SlidingStats.from_snapshot(state["stats"])
        s.staged = [float(v) for v in state["staged"]]
        s.last_ts = state["last_ts"]
        s.prev, s.run_len, s.run_start_ts, s.run_start_value = state["rise"]
        s.rising, s.active["zscore"], s.active["iqr"] = state["flags"]
        return s


def _key(sensor_id: str, metric: str) -> str:
    return f"{sensor_id}\x1f{metric}"


class SensorOperator(Operator):
    sources = ("sensor-readings",)

    def __init__(self, config: SensorConfig | None = None) -> None:
        super().__init__()
        self.config = config or SensorConfig()
        self.pending: EventTimeBuffer[Entry] = EventTimeBuffer()
        self.series: dict[tuple[str, str], Series] = {}
        # (time after which a series may be forgotten, sensor, metric); lazily checked
        self.expiry: list[tuple[int, str, str]] = []
        self.aggregates: TumblingWindows[list[float]] = TumblingWindows(
            self.config.aggregate_window_ms, list
        )
        methods = self.config.methods
        self._zscore = "zscore" in methods
        self._iqr = "iqr" in methods
        self._rise = "rise" in methods

    # -- input ---------------------------------------------------------------

    def feed(self, source: str, events: Sequence[SensorReading]) -> None:
        push = self.pending.push
        for event in events:
            ts, sid = event.ts, event.sensor_id
            for metric, value in event.values.items():
                push((ts, sid, metric, float(value)))

    # -- event time ----------------------------------------------------------

    def advance(self, watermark: int) -> None:
        for ts, sid, metric, value in self.pending.release(watermark):
            self._reading(ts, sid, metric, value)
        self._expire_until(watermark)
        size = self.config.aggregate_window_ms
        for start, key, values in self.aggregates.pop_ending_until(watermark):
            sid, _, metric = key.partition("\x1f")
            arr = np.asarray(values, dtype=float)
            self._out.add_row(
                "sensor_windows",
                {
                    "window_start": start,
                    "window_end": start + size,
                    "sensor_id": sid,
                    "metric": metric,
                    "n": int(arr.size),
                    "min": float(arr.min()),
                    "max": float(arr.max()),
                    "mean": float(arr.mean()),
                    "p95": float(np.percentile(arr, 95)),
                },
            )

    def _expire_until(self, watermark: int) -> None:
        """Forget series silent for more than window_ms before the watermark."""
        window_ms = self.config.window_ms
        heap = self.expiry
        while heap and heap[0][0] < watermark:
            _, sid, metric = heapq.heappop(heap)
            s = self.series.get((sid, metric))
            if s is None or s.last_ts is None:
                continue
            until = s.last_ts + window_ms
            if until < watermark:
                self._expire(sid, metric, s)
                del self.series[(sid, metric)]
            else:
                heapq.heappush(heap, (until, sid, metric))

    def _expire(self, sid: str, metric: str, s: Series) -> None:
        """The series' window emptied: end its episodes (observations only)."""
        assert s.last_ts is not None
        ts = s.last_ts + self.config.window_ms
        for method, active in (("zscore", s.active["zscore"]), ("iqr", s.active["iqr"])):
            if active:
                self._observe(sid, metric, method, 0.0, ts, 0, None, None, {"expired": True})
        if s.rising:
            self._observe(sid, metric, "rise", 0.0, ts, 0, None, None, {"expired": True})

    def _reading(self, t: int, sid: str, metric: str, x: float) -> None:
        cfg = self.config
        key = (sid, metric)
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = Series()
            heapq.heappush(self.expiry, (t + cfg.window_ms, sid, metric))  # one per series
        elif s.last_ts is not None and t - s.last_ts > cfg.window_ms:
            # silent for longer than the window: the same as having been forgotten
            self._expire(sid, metric, s)
            s = self.series[key] = Series()
        stats = s.stats
        if s.last_ts is not None and t > s.last_ts:
            last = s.last_ts
            for v in s.staged:
                stats.add(last, v)
            s.staged.clear()
        start = t - cfg.window_ms
        if stats.times and stats.times[0] < start:
            stats.evict_before(start)
        if len(stats.values) >= cfg.min_points:
            if self._zscore:
                self._judge_zscore(sid, metric, s, t, x, start)
            if self._iqr:
                self._judge_iqr(sid, metric, s, t, x, start)
        if self._rise:
            self._judge_rise(sid, metric, s, t, x)
        s.staged.append(x)
        s.last_ts = t
        agg_start = t - t % cfg.aggregate_window_ms
        if agg_start != s.agg_start:
            s.agg_start, s.agg = agg_start, self.aggregates.at(_key(sid, metric), t)
        s.agg.append(x)

    def _judge_zscore(self, sid: str, metric: str, s: Series, t: int, x: float, start: int) -> None:
        mean, std = s.stats.mean_std()  # min_points >= 2
        if std <= self.config.min_std:
            return
        z = abs(x - mean) / std
        anomalous = z > self.config.z_threshold
        if anomalous or s.active["zscore"]:
            details = {"reading": x, "mean": mean, "std": std}
            threshold = self.config.z_threshold
            n = len(s.stats)
            self._finding(
                sid, metric, "zscore", s, t, x, z, threshold, start, n, anomalous, details
            )

    def _judge_iqr(self, sid: str, metric: str, s: Series, t: int, x: float, start: int) -> None:
        stats = s.stats
        q1, q3 = stats.quartiles()
        iqr = q3 - q1
        if iqr <= self.config.min_iqr:
            return
        k = self.config.iqr_k
        upper, lower = q3 + k * iqr, q1 - k * iqr
        if x > upper:
            score, fence = (x - upper) / iqr, upper
        elif x < lower:
            score, fence = (lower - x) / iqr, lower
        else:
            score, fence = 0.0, upper if x >= (q1 + q3) / 2 else lower
        anomalous = score > 0.0
        if anomalous or s.active["iqr"]:
            details = {"reading": x, "q1": q1, "q3": q3, "iqr": iqr, "fence": fence}
            n = len(stats)
            self._finding(sid, metric, "iqr", s, t, x, score, fence, start, n, anomalous, details)

    def _judge_rise(self, sid: str, metric: str, s: Series, t: int, x: float) -> None:
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
    ) -> None:
        """An anomaly (row and observation), or the end of an episode (observation)."""
        if anomalous:
            self._row(sid, metric, method, t, x, score, threshold, start, t)
        self._observe(sid, metric, method, score, t, n, start, t, details)
        s.active[method] = anomalous

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
        self._out.add_row(
            "sensor_anomalies",
            {
                "ts": t,
                "sensor_id": sid,
                "metric": metric,
                "value": x,
                "method": method,
                "score": float(score),
                "threshold": float(threshold),
                "window_start": start,
                "window_end": end,
            },
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
    ) -> None:
        self._out.observations.append(
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
            )
        )

    # -- checkpoints ---------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "pending": self.pending.snapshot(),
            "series": [[sid, metric, s.snapshot()] for (sid, metric), s in self.series.items()],
            "aggregates": [
                [start, key, list(vals)] for start, key, vals in self.aggregates.items()
            ],
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.pending.restore(state["pending"])
        self.series = {}
        self.expiry = []
        for sid, metric, s_state in state["series"]:
            s = self.series[(sid, metric)] = Series.from_snapshot(s_state)
            if s.last_ts is not None:
                self.expiry.append((s.last_ts + self.config.window_ms, sid, metric))
        heapq.heapify(self.expiry)
        self.aggregates.clear()
        for start, key, vals in state["aggregates"]:
            self.aggregates.at(key, start).extend(float(v) for v in vals)


__all__ = ["METHODS", "SensorConfig", "SensorOperator"]
