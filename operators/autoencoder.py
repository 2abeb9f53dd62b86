"""Multivariate sensor anomalies: reconstruction error of an autoencoder of normal operation.

Seed 000's third layer (representation learning). Each reading's `values`
(all metrics of a sensor, the sorted names of `features` or of the sensor's
first reading; a reading missing one is skipped) is a vector x. Per sensor,
in event-time order once the watermark has passed it
(`operators.rolling.EventTimeBuffer`):

1. warm-up: the first `warmup` readings are kept; at the last of them the
   standardisation (per metric mean and standard deviation of the warm-up,
   then fixed; a constant metric gets scale 1) is set, and the autoencoder
   (`operators.detectors.autoencoder`, d -> `hidden` -> d) is trained on
   them for `epochs` shuffled passes (seeded);
2. score: e = mean squared error of the standardised reading's
   reconstruction, by the model as it was before this reading;
3. calibrate: p = the tail probability of e's short-term mean over `short`
   readings against the sensor's own history of normal short-term means
   (`operators.detectors.tail.TailProbability`: empirical body, exponential
   tail fitted to the excesses over its 90 % quantile, peaks over threshold;
   HTM's anomaly likelihood in NAB judges the same short-term mean against a
   normal fit, which measured here put ~1 % of quiet readings below 1e-5).
   The first `min_history` scores after warm-up only build that history.
   The reading is anomalous when p < alpha, the false-alarm budget per
   reading: `false_alarms_per_day` (1) spread over a day of readings at the
   sensor's cadence (the median gap of its warm-up), 1.2e-5 at 1 Hz, or a
   fixed `alpha`;
4. episode (`operators.detectors.episode.Episode`): opens on an anomalous
   reading, ends after `quiet` normal ones (one alert per episode);
5. learn (bounded): a normal reading outside an episode is learnt (one Adam
   step) while the sensor's budget of `max_learn_per_hour` learns per
   aligned event-time hour lasts. A new regime that persists becomes normal:
   once an episode has lasted `regime_after` readings, its readings are
   learnt too (model and score history) until it ends.

Rows (`sensor_anomalies`, one per anomalous reading): method "autoencoder",
metric = "|".join(features), value = e, score = -log10 p (the surprise),
threshold = -log10 alpha, window = [the episode's first reading, ts].
Observations: kind "sensor", entity = sensor_id, metric
"anomaly_autoencoder", value = -log10 p, p_value = p: one per anomalous
reading of an episode, and one with the current (low) value when the episode
ends, so the default rule (`sensor_autoencoder`: value > 3, i.e. p < 1e-3,
which every anomalous reading's p < alpha crosses) fires once and resolves
once (a second `firing` when it escalates to critical, p < 1e-6). A rule's
threshold should not be above -log10 alpha, or readings of an episode may
fall below it.

Cost: see `BENCHMARKS.md` and tests/benchmarks/detection_skab.py (per
reading: one forward pass, and one backward pass plus Adam step when learnt).
State per sensor (`SensorModelState`, format 2 of `operators.state`): the weights
and Adam moments (2 d k + d + k numbers, three times), the warm-up readings until
trained, `history` floats, the episode: named, typed fields (numpy vectors as lists).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from operators.base import Observation, Operator
from operators.detectors.autoencoder import Autoencoder, NetworkState, network_state_from_format_1
from operators.detectors.episode import Episode
from operators.detectors.tail import TailProbability, TailState, tail_state_from_format_1
from operators.rolling import EventTimeBuffer
from operators.rules import rule_spec as _rule
from operators.state import StateCodec
from schemas.events import MAX_SENSOR_MAGNITUDE, SensorReading
from schemas.rows import SensorAnomalyRow

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
MAX_SURPRISE = 300.0  # -log10 of the smallest positive double, about
# standardised inputs are clamped to +-Z_MAX (as the cluster monitor's): a reading that
# far out is anomalous whatever the figure, and the network's activations, squared
# errors and Adam moments stay finite (fuzzing found 1e200 overflowing them)
Z_MAX = 1e6


@dataclass(frozen=True)
class AutoencoderConfig:
    warmup: int = 250  # readings per sensor the model is first trained on
    epochs: int = 30  # passes over the warm-up readings
    # readings per Adam step of the warm-up training: 1 (7,500 steps, ~0.5 s per sensor
    # here) measured F1 0.79 / FAR 12 % on SKAB valve1 (the development split) and 0.74 /
    # 13 % on all runs; 4 (~0.15 s) 0.77 / 9 % on valve1 but 0.70 / 13 % on all runs;
    # 16 (~20x faster than 1) 0.67 with the old defaults
    batch: int = 1
    # bottleneck width; None: max(1, int(d * hidden_fraction)). 0.4 (3 of SKAB's 8
    # channels, 1 of the simulator's 3) chosen on SKAB's valve1 runs only (the
    # development split of tests/benchmarks/detection_skab.py): F1 0.77 there with
    # FAR 12 %, against 0.77 / 17 % with d // 2
    hidden: int | None = None
    hidden_fraction: float = 0.4
    lr: float = 0.003  # Adam step size of the warm-up training
    # step size of the online learning after it: single-reading steps at the warm-up's
    # rate jolt the model, and the scores it is calibrated on, into false alarms
    online_lr: float = 0.0003
    # hidden activation tanh(a) + leak * a: the slope beyond saturation (0: plain tanh,
    # which read a simulated sensor's high-load readings as anomalies)
    leak: float = 1.0
    # readings in the short-term average of the error, and normal readings that end an
    # episode: 30 each (SKAB valve1, the development split: F1 0.66 -> 0.78 against 10
    # each; a slow valve fault drifts in over tens of readings, and 10-reading means let
    # its noisy start close the episode too early)
    short: int = 30
    history: int = 1000  # normal short-term averages the probability is judged against
    # readings after warm-up that only build the history (fewer: the tail fit of young,
    # autocorrelated short-term means raised false alarms on quiet simulated data)
    min_history: int = 150
    # a reading is anomalous when its tail probability is below alpha: the false-alarm
    # budget per sensor spread over a day of readings at the sensor's cadence g (the
    # median gap of its warm-up): alpha = false_alarms_per_day * g / 1 day, at most
    # 0.01 (1.2e-5 at 1 Hz), divided by `overconfidence`; or a fixed `alpha`
    false_alarms_per_day: float = 1.0
    alpha: float | None = None
    # the tail probability of overlapping short-term means, fitted on a history whose
    # ~history/short independent values leave the tail's scale uncertain, is
    # overconfident: on the simulator's quiet sensors (demo scenario, 10 sensors x 1 h)
    # false episodes opened at p = 3e-7..1e-5, 12 per sensor-day at alpha = 1.2e-5, so
    # alpha is the budget's divided by 1,000 (1.2e-8 at 1 Hz: none there; SKAB valve1,
    # the development split: F1 0.79 -> 0.76, FAR 12 % -> 8 %, anomaly-free 7 % -> 1 %)
    overconfidence: float = 1000.0
    quiet: int = 30
    cooldown: int = 0  # readings after an episode before another may start
    max_learn_per_hour: int = 360  # learns per sensor per event-time hour after warm-up
    # readings of one episode after which it is learnt as normal (6 min at 1 Hz): a
    # shorter time learnt the demo's 6-minute sensor_regime before it ended (the alert
    # resolved while it lasted); longer ones raised SKAB valve1's FAR (the development
    # split: 300 -> 5.8 %, 360 -> 11.9 %, 450 -> 18.6 %, 600 -> 23.8 %), where the
    # pump does not return to the warm-up's state after a fault
    regime_after: int = 360
    seed: int = 42
    features: tuple[str, ...] | None = None  # None: those of the sensor's first reading

    def __post_init__(self) -> None:
        if self.warmup < 2:
            raise ValueError("warmup must be at least 2 readings")
        if self.alpha is not None and not 0.0 < self.alpha < 1.0:
            raise ValueError("alpha must be in (0, 1)")
        if self.overconfidence < 1.0:
            raise ValueError("overconfidence must be >= 1")
        if self.false_alarms_per_day <= 0.0:
            raise ValueError("false_alarms_per_day must be positive")
        if not 0.0 < self.hidden_fraction <= 1.0:
            raise ValueError("hidden_fraction must be in (0, 1]")
        if self.short < 1 or self.quiet < 1 or self.min_history < 2:
            raise ValueError("short, quiet must be >= 1 and min_history >= 2")


Entry = tuple[int, str, tuple[tuple[str, float], ...]]  # (ts, sensor_id, sorted values)
STATE_FORMAT = 2  # `AutoencoderState`; 1: positional parts (upgraded, `_from_format_1`)


class SensorModel:
    """Standardisation, autoencoder, likelihood and episode of one sensor."""

    __slots__ = (
        "ae",
        "alpha",
        "episode",
        "episode_start",
        "features",
        "learn_hour",
        "learnt",
        "mean",
        "metric",
        "recent",
        "scale",
        "tail",
        "warm",
        "warm_ts",
    )

    def __init__(self, features: tuple[str, ...], config: AutoencoderConfig) -> None:
        self.features = features
        self.metric = "|".join(features)
        self.warm: list[list[float]] | None = []  # warm-up readings; None once trained
        self.warm_ts: list[int] = []  # their times (for the cadence)
        self.alpha = config.alpha or 1e-3  # set from the cadence when trained
        self.mean = np.zeros(len(features))
        self.scale = np.ones(len(features))
        hidden = config.hidden or max(1, int(len(features) * config.hidden_fraction))
        self.ae = Autoencoder(
            len(features), hidden, seed=config.seed, lr=config.lr, leak=config.leak
        )
        # the short-term mean error and its tail probability against the sensor's
        # own history of normal short-term means
        self.recent: deque[float] = deque(maxlen=config.short)
        self.tail = TailProbability(config.history, config.min_history)
        self.episode = Episode(quiet=config.quiet, cooldown=config.cooldown)
        self.episode_start = 0
        self.learn_hour = 0
        self.learnt = 0

    def train(self, config: AutoencoderConfig) -> None:
        """Fit the standardisation and train on the warm-up readings."""
        assert self.warm is not None
        data = np.asarray(self.warm, dtype=float)
        self.mean = data.mean(axis=0)
        std = data.std(axis=0)
        self.scale = np.where(std > 0.0, std, 1.0)
        z = (data - self.mean) / self.scale
        rng = np.random.default_rng(config.seed)
        batch = config.batch
        for _ in range(config.epochs):
            order = rng.permutation(len(z))
            if batch == 1:
                for i in order:
                    self.ae.learn_one(z[i])
            else:
                for i in range(0, len(z), batch):
                    self.ae.learn_many(z[order[i : i + batch]])
        self.warm = None
        self.ae.lr = config.online_lr
        gaps = sorted(b - a for a, b in zip(self.warm_ts, self.warm_ts[1:], strict=False))
        g = max(gaps[len(gaps) // 2], 1) if gaps else 1000
        budget = min(0.01, config.false_alarms_per_day * g / DAY_MS)
        self.alpha = config.alpha or budget / config.overconfidence
        self.warm_ts = []

    def state(self) -> SensorModelState:
        """The model as typed state (numpy vectors as lists; lists and the episode are
        the live ones: `StateCodec.dump` copies them)."""
        return SensorModelState(
            features=self.features,
            warm=self.warm,  # the live lists: `dump` copies them
            warm_ts=self.warm_ts,
            alpha=self.alpha,
            mean=self.mean.tolist(),
            scale=self.scale.tolist(),
            ae=self.ae.snapshot(),
            recent=list(self.recent),
            tail=self.tail.snapshot(),
            episode=self.episode,
            episode_start=self.episode_start,
            learn_hour=self.learn_hour,
            learnt=self.learnt,
        )

    @classmethod
    def from_state(cls, state: SensorModelState, config: AutoencoderConfig) -> SensorModel:
        m = cls(tuple(state.features), config)
        m.warm = None if state.warm is None else [list(r) for r in state.warm]
        m.warm_ts = list(state.warm_ts)
        m.alpha = state.alpha
        m.mean = np.asarray(state.mean, dtype=float)
        m.scale = np.asarray(state.scale, dtype=float)
        m.ae = Autoencoder.from_snapshot(state.ae)
        m.recent.extend(state.recent)
        m.tail.restore(state.tail)
        # the machine's settings are the configuration's (as in every earlier format)
        m.episode = state.episode
        m.episode.quiet, m.episode.cooldown = config.quiet, config.cooldown
        m.episode_start = state.episode_start
        m.learn_hour, m.learnt = state.learn_hour, state.learnt
        return m


class SensorModelState(msgspec.Struct):
    """One sensor's model (`SensorModel`) as typed state."""

    features: tuple[str, ...]
    warm: list[list[float]] | None  # the warm-up readings; None once trained
    warm_ts: list[int]  # and their times
    alpha: float
    mean: list[float]  # the standardisation, per feature
    scale: list[float]
    ae: NetworkState  # the network's weights and Adam moments
    recent: list[float]  # the last `short` errors
    tail: TailState  # the history of normal short-term means
    episode: Episode
    episode_start: int
    learn_hour: int  # the learning budget's hour and the learns in it
    learnt: int


class AutoencoderState(msgspec.Struct):
    """The autoencoder operator's state (format 2; `operators.state`)."""

    pending: list[Entry]  # readings the watermark has not passed
    models: dict[str, SensorModelState]  # by sensor_id
    skipped: int
    out_of_range: int


def _from_format_1(old: dict[str, Any], config: AutoencoderConfig) -> dict[str, Any]:
    """State format 1 (positional pending entries and episode, "leak"-less models) as
    plain `AutoencoderState` data."""
    models = {}
    for sid, m in old["models"].items():
        *positional, episode_start = m["episode"]
        episode = Episode(quiet=config.quiet, cooldown=config.cooldown)
        episode.restore(positional)
        learn_hour, learnt = m["learn"]
        models[sid] = {
            "features": list(m["features"]),
            "warm": m["warm"],
            "warm_ts": [int(t) for t in m["warm_ts"]],
            "alpha": float(m["alpha"]),
            "mean": m["mean"],
            "scale": m["scale"],
            "ae": network_state_from_format_1(m["ae"]),
            "recent": m["recent"],
            "tail": tail_state_from_format_1(m["tail"]),
            "episode": msgspec.to_builtins(episode),
            "episode_start": int(episode_start),
            "learn_hour": int(learn_hour),
            "learnt": int(learnt),
        }
    return {
        "pending": [[e[0], e[1], [list(kv) for kv in e[2]]] for e in old["pending"]],
        "models": models,
        "skipped": old["skipped"],
        "out_of_range": old.get("out_of_range", 0),  # absent before it was counted
    }


# The default alert rule of the autoencoder's observations, collected by
# operators.registry into streams.config.DEFAULT_RULES.
DEFAULT_RULES: list[dict[str, Any]] = [
    _rule(
        "sensor_autoencoder",
        "sensor",
        "anomaly_autoencoder",
        ">",
        # value = -log10 p: warning at p < 1e-3 (the operator's alpha), critical at 1e-6
        {"warning": 3.0, "critical": 6.0},
        "{entity} reconstructs badly (error {error:.3g}, p = {p:.2g}) across {features}",
        label="reconstruction surprise (-log10 p)",
        value_format="{:.1f}",
        resolved_message="{entity} reconstructs normally again",
        cooldown_s=0,  # the operator's episodes already merge a noisy stretch
    ),
]


class AutoencoderOperator(Operator):
    sources = ("sensor-readings",)
    observes = (("sensor", "anomaly_autoencoder"),)

    @classmethod
    def default_rules(cls, config: Any = None) -> list[dict[str, Any]]:
        return list(DEFAULT_RULES)

    def __init__(self, config: AutoencoderConfig | None = None) -> None:
        super().__init__()
        self.config = config or AutoencoderConfig()
        self.pending: EventTimeBuffer[Entry] = EventTimeBuffer()
        self.models: dict[str, SensorModel] = {}
        self.skipped = 0  # readings without every feature of their model
        # readings with a value beyond MAX_SENSOR_MAGNITUDE (the schema rejects them):
        # they would overflow the standardisation; neither scored nor learnt
        self.out_of_range = 0
        self._codec = StateCodec(
            "autoencoder",
            AutoencoderState,
            format=STATE_FORMAT,
            upgrades={1: lambda old: _from_format_1(old, self.config)},
        )

    def feed(self, source: str, events: Sequence[SensorReading]) -> None:
        push = self.pending.push
        for e in events:
            push((e.ts, e.sensor_id, tuple(sorted((k, float(v)) for k, v in e.values.items()))))

    def advance(self, watermark: int) -> None:
        for ts, sid, items in self.pending.release(watermark):
            self._reading(ts, sid, items)

    def _reading(self, ts: int, sid: str, items: tuple[tuple[str, float], ...]) -> None:
        cfg = self.config
        m = self.models.get(sid)
        if m is None:
            features = tuple(sorted(cfg.features or (k for k, _ in items)))
            m = self.models[sid] = SensorModel(features, cfg)
        values = dict(items)
        try:
            x = [values[f] for f in m.features]
        except KeyError:
            self.skipped += 1
            return
        if not all(-MAX_SENSOR_MAGNITUDE <= v <= MAX_SENSOR_MAGNITUDE for v in x):
            self.out_of_range += 1
            return
        if m.warm is not None:
            m.warm.append(x)
            m.warm_ts.append(ts)
            if len(m.warm) >= cfg.warmup:
                m.train(cfg)
            return
        z = np.clip((np.asarray(x) - m.mean) / m.scale, -Z_MAX, Z_MAX)
        error = m.ae.score_one(z)
        m.recent.append(error)
        mean = sum(m.recent) / len(m.recent)
        p = m.tail.score_one(mean)
        if p is None:  # the history is still being built
            m.tail.learn_one(mean)
            p = 1.0
        elif p >= m.alpha:
            m.tail.learn_one(mean)  # anomalies stay out of the history
        anomalous = p < m.alpha
        episode = m.episode
        change = episode.update(anomalous)
        if change == "start":
            m.episode_start = ts
        surprise = min(-math.log10(p), MAX_SURPRISE) if p > 0.0 else MAX_SURPRISE
        if anomalous and episode.active:
            self._out.add_row(
                SensorAnomalyRow(
                    ts=ts,
                    sensor_id=sid,
                    metric=m.metric,
                    value=error,
                    method="autoencoder",
                    score=surprise,
                    threshold=-math.log10(m.alpha),
                    window_start=m.episode_start,
                    window_end=ts,
                ),
            )
        if (anomalous and episode.active) or change == "end":
            self._observe(sid, m, ts, error, surprise, p)
        regime = episode.active and episode.length >= cfg.regime_after
        if regime and p < m.alpha:
            m.tail.learn_one(mean)  # the persisting regime becomes normal
        if regime or not (anomalous or episode.active):
            hour = ts - ts % HOUR_MS
            if hour != m.learn_hour:
                m.learn_hour, m.learnt = hour, 0
            if m.learnt < cfg.max_learn_per_hour:
                m.learnt += 1
                m.ae.learn_one(z)

    def _observe(
        self, sid: str, m: SensorModel, ts: int, error: float, surprise: float, p: float
    ) -> None:
        self._out.observations.append(
            Observation(
                kind="sensor",
                entity=sid,
                metric="anomaly_autoencoder",
                value=surprise,
                ts=ts,
                n=len(m.tail),
                window_start=m.episode_start,
                window_end=ts,
                details={"error": error, "p": p, "features": m.metric},
                p_value=p,
            )
        )

    def snapshot(self) -> dict[str, Any]:
        return self._codec.dump(
            AutoencoderState(
                pending=self.pending.state(),
                models={sid: m.state() for sid, m in self.models.items()},
                skipped=self.skipped,
                out_of_range=self.out_of_range,
            )
        )

    def restore(self, snapshot: dict[str, Any]) -> None:
        state = self._codec.load(snapshot)
        self.pending.load(state.pending)
        self.models = {
            sid: SensorModel.from_state(m, self.config) for sid, m in state.models.items()
        }
        self.skipped = state.skipped
        self.out_of_range = state.out_of_range


__all__ = ["DEFAULT_RULES", "AutoencoderConfig", "AutoencoderOperator"]
