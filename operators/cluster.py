"""Multivariate sensor anomalies: distance to the nearest centre of an online k-means.

Each reading's `values` is a point in feature space (the sorted feature names
of `ClusterConfig.features`, or of the model's first reading; a reading
missing one of them is skipped, extra ones are ignored). Per model entity
(the sensor by default, its site with `group_by="site"`), in event-time
order once the watermark has passed (`PendingReadings`):

1. scale: z_f = (x_f - mean_f) / std_f with river's
   `preprocessing.StandardScaler` (running mean and population variance,
   Welford 1962; a feature without variance yet scales to 0);
2. distance: d = min_c ||z - c||_2 over the centres c of river's
   `cluster.KMeans` (sequential k-means, MacQueen 1967; Sculley 2010,
   "Web-scale k-means clustering"), computed with the model as it was
   before this reading;
3. judge: after `warmup` readings of the entity, the reading is anomalous
   when d > tau, tau = the `quantile` (numpy "linear" definition) of the
   last `history` distances of the entity;
4. learn (after scoring): the scaler, then the nearest centre moves toward
   the scaled point, c <- c + halflife * (z - c) (river's KMeans update;
   `halflife` is its step size, an exponential moving average with an
   effective memory of about 1 / halflife points).

Extreme input (issue 14 fuzzing: readings near 1e154 overflowed the squared
distances, so `nearest` found no centre and `learn` raised KeyError): each
scaled coordinate is clamped to +-Z_MAX = 1e6 standard deviations, for
scoring and learning alike, so distances and centre steps stay finite; a
reading that far out is anomalous whatever the exact figure, and normal data
(|z| far below 1e6) is untouched. Readings with a value beyond
`MAX_SENSOR_MAGNITUDE` (1e100) would overflow the scaler's variance; the
event schema sends them to the dead letter (`out_of_range`), and should one
reach this operator anyway it is counted in `out_of_range`, logged once per
entity and neither scored nor learnt.

Calibration (issue 14: the share of normal readings flagged should be
1 - quantile, 0.5 %; measured 1.7 % on i.i.d. Gaussian readings and 1.0 % on
SKAB's anomaly-free run before this rule). Every anomalous distance used to
enter the history as tau itself (winsorised): then no value above tau ever
entered, tau could only fall as larger distances expired, and it ratcheted
down until about 1.7 % of normal readings exceeded it. Now a run of
anomalous readings is held aside (it cannot raise the tau that judges it:
no masking) and, when it ends, enters the history at its own distances if
it was no longer than the quantile's share of the history (5 readings of
1,000 at 99.5 %: the normal tail that tau describes); a longer run is an
anomaly and enters as the tau each reading was judged against (winsorised),
from the reading that makes it long. Measured (tests/test_cluster_operator.py,
`test_flag_rate_on_normal_data_matches_the_quantile`): 0.57 % of i.i.d.
readings, 0.62 % of AR(1) readings, 0.63 % of SKAB's anomaly-free run (the
remaining excess: the autocorrelation of the distances, and the adapting
model). A new regime stops being anomalous as the model learns it: its
points pull the nearest centre over at rate `halflife`.

Learning is budgeted: at most `max_learn_per_batch` learns per entity per
aligned event-time interval of `learn_batch_ms` (the rest is only scored).
The budget is counted in event time, not per `advance` call, so results do
not depend on how the input is batched. The default (2000 per minute)
learns every reading of a sensor up to ~33 readings a second and bounds the
learner's cost (`operators.detectors.kmeans.learn`: the scaler's update, a
transform, the nearest centre and the step; its cost is in BENCHMARKS.md) above that. A
tighter budget is cheaper but costs precision: over 6 h of quiet
simulated traffic (10 sensors at 1 Hz), a budget of 30 per minute raised
5 false `cluster_distance` alerts (12 per minute: 22 in 15 h), the default
none (`tests/benchmarks/memory_profile.py`).

Why KMeans and not DBSTREAM: with 3 features DBSTREAM's learn costs about four
times scaler + KMeans(4)'s and grows with its micro-clusters (BENCHMARKS.md,
"Measurements behind design choices"); a fixed k keeps cost and state (k centres and the scaler's
statistics, ~1 KB) constant per entity, and distance to the
nearest centre is a direct anomaly score, where DBSTREAM's micro-cluster
weights and periodic clean-up need their own time bookkeeping. Centre
coordinates are drawn (river's seeded Gaussian initialisation, `seed`) in
sorted feature order when the model is created, so no draw depends on
set iteration order.

Rows (`sensor_anomalies`): method "cluster", metric = "|".join(features),
value = d, score = d / tau, threshold = tau, window = [time of the oldest
distance in the history, ts]. Observations: kind "cluster", entity =
sensor_id, metric "cluster_distance", value = d / tau (> 1 is anomalous), one
per anomaly and one for the first normal reading after an anomaly (so rules
resolve).

Compiled (issue 18, points 1 and 3): steps 1-4 run in numba, in one call per
`advance` for every entity's released readings (`operators.cluster_kernel.run_table`),
over each entity's state as numpy arrays updated in place (the detector's one
float64 array, the monitor's one int64 and one float64 array: recent distances as
a ring with a sorted copy, the held run, the counters), which the call reaches
through a table of their addresses indexed by the entity's slot (`EntitySlots`:
derived state, rebuilt on restore, not checkpointed; numba typed lists before, whose
appends were ~20 µs of each new entity's set-up). Python finds each released reading's
slot, sensor index and values (`PendingReadings`: the event's dict, sorted only for
a snapshot) and builds the rows and observations of the readings the kernel
reports, in event order. The arithmetic is the pure-Python monitor's, operation for
operation, so every result is the same whatever the batching
(tests/test_kmeans_kernel.py: against river and a reading-by-reading reference;
tests/test_cluster_batch_kernel.py: many entities in one call against the
per-entity kernel and the reference). Measured with `tests.benchmarks.operator_cost
--kind sensor --only ClusterOperator`: about 1.0 µs of CPU per reading with 100
sensors in batches of 1,250 (9 µs in pure Python), about 2.1 µs with 5,000 sensors
and 60 readings each (7.3 µs with a compiled call per entity, when an entity has
about one reading per `advance`), of which ~0.5 µs is each new entity's set-up
(~25 µs, spread over its 60 readings): with the 5,000 models made, 1.4-1.7 µs.
Releases sort only the readings fed since the last one (`PendingReadings`).

State (`ClusterState`, format 3 of `operators.state`): per entity, a tuple
("sensor", sensor_id) or ("site", site), the scaler's and k-means' state as named
fields (counts, means, variances; step size and centres, as river's objects name
them), and the recent distances, packed as int64 / float64 bytes (format 3: up to
2,000 numbers an entity, which as list items were most of its checkpoint's cost);
the live arrays are written to it and read back (`EntityModel.state`,
`from_state`). Format 2 (the recent distances as lists) is upgraded; so is format
1, which held the river objects as pickle bytes (unpickled once, so restore only
checkpoints this system wrote).
"""

from __future__ import annotations

import logging
import pickle
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from operator import itemgetter
from typing import Any

import msgspec
import numpy as np

from operators import cluster_kernel as ck
from operators.base import Observation, Operator
from operators.detectors.kmeans import HALF, Z_MAX, KMeansDistance, KMeansState, ScalerState
from operators.rolling import RecentQuantile, RecentState
from operators.rules import rule_spec as _rule
from operators.state import StateCodec, pack_f64, pack_i64, unpack_f64, unpack_i64
from schemas.events import MAX_SENSOR_MAGNITUDE, SensorReading
from schemas.rows import SensorAnomalyRow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterConfig:
    n_clusters: int = 4
    warmup: int = 200  # readings per entity before any is judged
    quantile: float = 0.995  # of the recent distances: the adaptive threshold
    history: int = 1000  # recent distances per entity
    halflife: float = 0.05  # river KMeans step toward each learnt point
    seed: int = 42  # initial centres
    max_learn_per_batch: int = 2000  # learns per entity per learn_batch_ms of event time
    learn_batch_ms: int = 60_000
    group_by: str = "sensor"  # "sensor" or "site" (sensors without a site: per sensor)
    features: tuple[str, ...] | None = None  # None: those of the entity's first reading

    def __post_init__(self) -> None:
        if self.group_by not in ("sensor", "site"):
            raise ValueError('group_by must be "sensor" or "site"')
        if not 0.0 < self.quantile < 1.0:
            raise ValueError("quantile must be in (0, 1)")


# (ts, sensor_id, ((feature, value), ...) sorted, site or ""); the model's entity is
# derived from it when released (`advance`)
Entry = tuple[int, str, tuple[tuple[str, float], ...], str]
#: a model's entity: ("sensor", sensor_id), or ("site", site) with group_by="site"
Entity = tuple[str, str]
# `ClusterState`; upgraded: 1, river objects pickled (`_from_format_1`); 2, the recent
# distances as lists of numbers (`_from_format_2`)
STATE_FORMAT = 3
#: a new entity's ring of recent distances: this long, doubled as it fills, up to the
#: history (`EntityModel.grow`)
INITIAL_RECENT = 64


#: the kernel's input (`ClusterOperator._columns`): the readings scored (their indices
#: in the release), their entity slots, rows (ts, slot, sensor index) and flat values
Columns = tuple[Sequence[int], list[int], np.ndarray, np.ndarray]
_first, _sensor_of, _values_of = itemgetter(0), itemgetter(1), itemgetter(2)

#: a reading waiting for the watermark: an `Entry` whose values are still the event's
#: dict (str -> float: CPython stops tracking such a tuple in its garbage collector,
#: where an object per reading would be traversed by every collection)
Pending = tuple[int, str, dict[str, float], str]


def items_of(values: dict[str, float]) -> tuple[tuple[str, float], ...]:
    """A reading's values as in `Entry`: (feature, float value), sorted by feature."""
    return tuple(sorted(zip(values, map(float, values.values()), strict=True)))


def _in_order(held: list[Pending]) -> None:
    """Sort `held` as its `Entry` tuples would sort (time, sensor, values, site)."""
    try:
        held.sort()  # dicts are compared only when time and sensor tie
    except TypeError:  # a tie with different values: ordered by their sorted items
        held.sort(key=lambda e: (e[0], e[1], items_of(e[2]), e[3]))


class PendingReadings:
    """`operators.rolling.EventTimeBuffer` for readings that keep the event's values
    dict (no sorted copy per reading): released in (time, sensor, values, site)
    order, as the `Entry` tuples of the state would be.

    `held[start:]` are the readings held: in that order up to `n_sorted`, then the
    readings fed since (appended, in arrival order). A release sorts only those (with
    the sorted readings of their times or later, usually none): re-sorting everything
    held costs a comparison per held reading and release, which grows with the number
    of sensors times the lateness (issue 18, point 3). The order is the one sort of all
    would give (stable: equal readings stay in arrival order).

    `held[:start]` are places of released readings (None), cut from the list only once
    they are at least as many as the readings held: deleting the released readings
    from the list's front at every release moves every reading held, ~500,000 pointers
    a release with 50,000 sensors and 10 s of lateness (measured: feed and release
    ~500 -> ~400 ns per reading there, issue 18 point 3); cut when as many were
    released, each reading is moved at most about once over its stay."""

    __slots__ = ("_list", "held", "n_sorted", "start")

    def __init__(self) -> None:
        self.held: list[Pending] = []
        self.n_sorted = 0
        self.start = 0
        self._list = self.held  # the list `start` and `n_sorted` describe

    def release(self, watermark: int) -> list[Pending]:
        """Remove and return, in order, every reading with ts < watermark."""
        held = self.held
        start, k = self.start, self.n_sorted
        if held is not self._list:  # `held` replaced from outside: nothing known
            start = k = 0
        if start >= len(held):
            return []
        if k < len(held):
            tail = held[k:]
            _in_order(tail)
            # the sorted readings not before the new ones' first time go in with them
            p = bisect_left(held, (tail[0][0],), start, k)
            if p < k:
                tail = held[p:k] + tail  # arrived before the new ones: stable order kept
                _in_order(tail)
            held[p:] = tail
        i = bisect_left(held, (watermark,), start)  # (W,) sorts before every (W, ...)
        out = held[start:i]
        if i >= len(held) - i:  # released places at least as many as held: cut
            del held[:i]
            i = 0
        else:
            held[start:i] = [None] * (i - start)  # (the readings' references dropped)
        self.start, self.n_sorted, self._list = i, len(held), held
        return out

    def __len__(self) -> int:
        return len(self.held) - self._start()

    def _start(self) -> int:
        """Where the held readings begin in `held` (0 if it was replaced from outside)."""
        return self.start if self.held is self._list else 0

    @property
    def entries(self) -> list[Entry]:
        """The held readings as `Entry` tuples (a copy)."""
        held = self.held[self._start() :]
        return [(ts, sid, items_of(values), site) for ts, sid, values, site in held]

    def state(self) -> list[Entry]:
        return self.entries

    def load(self, entries: Iterable[Entry]) -> None:
        """Hold `entries` (as `state()` gave them), replacing what was held."""
        self.held = self._list = [(ts, sid, dict(items), site) for ts, sid, items, site in entries]
        _in_order(self.held)
        self.n_sorted = len(self.held)
        self.start = 0


class EntityModel:
    """The k-means distance detector (`operators.detectors.kmeans`) of one entity, and
    the monitor's bookkeeping around it: recent distances, learning budget, alert runs,
    as the arrays `operators.cluster_kernel.run_entity` updates in place."""

    __slots__ = ("active_flags", "detector", "features", "get", "metric", "mf", "mi", "sensors")

    def __init__(self, features: tuple[str, ...], config: ClusterConfig) -> None:
        self.features = features
        self.metric = "|".join(features)
        self.get = values_getter(features)
        self.detector = new_detector(features, config)
        self._arrays(config, 0, 0)

    def _arrays(self, config: ClusterConfig, n_recent: int, n_held: int) -> None:
        # the recent distances' ring holds `history`, or more if a checkpoint held more
        # (RecentQuantile then stays at that length); it starts at INITIAL_RECENT (or what
        # a checkpoint held) and grows on demand (`grow`); the held run at most
        # short_run + 1
        full = max(config.history, n_recent, 1)
        cap = min(full, max(INITIAL_RECENT, n_recent))
        hcap = max(short_run_of(config), n_held) + 1
        self._layout(cap, hcap)
        self.sensors: dict[str, int] = {}  # sensor_id -> its index in active_flags
        self.active_flags = np.zeros(4, dtype=np.int64)  # activation stamps

    def _layout(self, cap: int, hcap: int) -> None:
        """New zeroed arrays `mi`, `mf` for a ring of `cap` and a held run of `hcap`
        (the kernel updates them in place; their parts by name: `iv`, `r_times`, ...)."""
        self.mi = np.zeros(ck.N_IV + cap + hcap, dtype=np.int64)
        self.mf = np.zeros(2 * cap + 2 * hcap)
        self.mi[ck.CAP], self.mi[ck.HCAP] = cap, hcap

    # the parts of `mi` and `mf` by name (views), made when read: they are for the
    # state, restore and checks, and seven views made with every new entity were ~5 µs
    # (and ~0.8 KB) of its set-up (issue 18, point 3)
    @property
    def iv(self) -> np.ndarray:
        """The integers (`cluster_kernel.SEEN`, ...)."""
        return self.mi[: ck.N_IV]

    @property
    def r_times(self) -> np.ndarray:
        """The recent distances' times (ring)."""
        return self.mi[ck.N_IV : ck.N_IV + int(self.mi[ck.CAP])]

    @property
    def h_ts(self) -> np.ndarray:
        """The held run's times."""
        return self.mi[ck.N_IV + int(self.mi[ck.CAP]) :]

    @property
    def r_values(self) -> np.ndarray:
        """The recent distances (ring)."""
        return self.mf[: int(self.mi[ck.CAP])]

    @property
    def r_sorted(self) -> np.ndarray:
        """The recent distances, sorted."""
        cap = int(self.mi[ck.CAP])
        return self.mf[cap : 2 * cap]

    @property
    def h_d(self) -> np.ndarray:
        """The held run's distances."""
        cap, hcap = int(self.mi[ck.CAP]), int(self.mi[ck.HCAP])
        return self.mf[2 * cap : 2 * cap + hcap]

    @property
    def h_tau(self) -> np.ndarray:
        """The taus the held run's distances were judged against."""
        cap, hcap = int(self.mi[ck.CAP]), int(self.mi[ck.HCAP])
        return self.mf[2 * cap + hcap :]

    def grow(self, need: int, size: int) -> None:
        """Re-lay the recent distances' ring at a capacity of at least `need`
        (`grown_capacity`: doubled, at most `size`, the history). Issue 18, point 3: a
        ring of the whole history from the start was ~24 KB of zeroed memory per entity
        (~10 µs of a new entity's set-up, and most of its memory for a sensor that sends
        few readings). Only a ring that is not full grows, and until it is full its
        oldest value is at 0 (`cluster_kernel.recent_add` moves the head only when
        full), so the values keep their places and every result is the same."""
        old_iv, n = self.iv, int(self.iv[ck.COUNT])
        old = (self.r_times[:n], self.r_values[:n], self.r_sorted[:n])
        held = (self.h_ts, self.h_d, self.h_tau)
        cap = grown_capacity(int(old_iv[ck.CAP]), need, size)
        self._layout(cap, len(held[0]))
        self.iv[:] = old_iv
        self.iv[ck.CAP] = cap  # (the copy above wrote the old capacity)
        self.r_times[:n], self.r_values[:n], self.r_sorted[:n] = old
        self.h_ts[:], self.h_d[:], self.h_tau[:] = held

    def sensor_index(self, sid: str) -> int:
        """The index of sensor `sid` in `active_flags` (added when new)."""
        i = self.sensors.get(sid)
        if i is None:
            i = self.sensors[sid] = len(self.sensors)
            if i >= len(self.active_flags):
                self.active_flags = np.concatenate(
                    [self.active_flags, np.zeros(len(self.active_flags), dtype=np.int64)]
                )
        return i

    # the bookkeeping by name (state, checks)
    @property
    def seen(self) -> int:
        return int(self.iv[ck.SEEN])

    @property
    def learn_batch(self) -> int:
        """Start of the current learning budget interval."""
        return int(self.iv[ck.LEARN_BATCH])

    @property
    def learnt(self) -> int:
        """Learns in the current learning budget interval."""
        return int(self.iv[ck.LEARNT])

    @property
    def long_run(self) -> bool:
        """The current run outgrew the held share: winsorised."""
        return bool(self.iv[ck.LONG_RUN])

    @property
    def held(self) -> list[tuple[int, float, float]]:
        """(ts, distance, tau) of the current run of anomalous readings, not yet in
        the recent distances."""
        n = int(self.iv[ck.HELD_N])
        return list(
            zip(self.h_ts[:n].tolist(), self.h_d[:n].tolist(), self.h_tau[:n].tolist(), strict=True)
        )

    @property
    def active(self) -> dict[str, bool]:
        """sensor_id -> its last judged reading was anomalous (only those that are)."""
        stamps = self.active_flags.tolist()  # in the order they became active
        flagged = sorted((stamps[i], sid) for sid, i in self.sensors.items() if stamps[i])
        return {sid: True for _, sid in flagged}

    def recent_state(self) -> RecentState:
        """The recent distances and their times, oldest first."""
        order = self._recent_order()
        return RecentState(self.r_times[order].tolist(), self.r_values[order].tolist())

    def _recent_order(self) -> np.ndarray:
        """The ring positions of the recent distances, oldest first."""
        n, cap = int(self.iv[ck.COUNT]), len(self.r_times)
        return (int(self.iv[ck.HEAD]) + np.arange(n)) % cap

    @property
    def recent(self) -> RecentQuantile:
        """The recent distances as a `RecentQuantile` (a copy, for checks)."""
        return RecentQuantile.from_snapshot(len(self.r_times), self.recent_state())

    def recent_packed(self) -> PackedRecentState:
        """`recent_state` packed (`operators.state`): the times as int64 bytes, the
        distances as float64 bytes, one copy each (the checkpoint, issue 18)."""
        order = self._recent_order()
        return PackedRecentState(pack_i64(self.r_times[order]), pack_f64(self.r_values[order]))

    def state(self) -> EntityState:
        """The model as typed state: river's scaler and k-means by their named fields."""
        scaler, kmeans = self.detector.state()
        return EntityState(
            features=self.features,
            scaler=scaler,
            kmeans=kmeans,
            recent=self.recent_packed(),
            seen=self.seen,
            learn_batch=self.learn_batch,
            learnt=self.learnt,
            active=self.active,
            held=self.held,
            long_run=self.long_run,
        )

    @classmethod
    def from_state(cls, state: EntityState, config: ClusterConfig) -> EntityModel:
        """The live model of its typed state: the arrays filled from it."""
        m = cls.__new__(cls)
        m.features = tuple(state.features)
        m.metric = "|".join(m.features)
        m.get = values_getter(m.features)
        m.detector = KMeansDistance.from_state(m.features, state.scaler, state.kmeans, config.seed)
        held = state.held
        times, values = unpack_i64(state.recent.times), unpack_f64(state.recent.values)
        n = len(values)
        m._arrays(config, n, len(held))
        m.r_times[:n] = times
        m.r_values[:n] = values
        m.r_sorted[:n] = sorted(values.tolist())  # (Python's order, as before packing)
        for i, (t, d, tau) in enumerate(held):
            m.h_ts[i], m.h_d[i], m.h_tau[i] = t, d, tau
        iv = m.iv
        iv[ck.COUNT], iv[ck.HEAD], iv[ck.HELD_N] = n, 0, len(held)
        iv[ck.SEEN], iv[ck.LEARN_BATCH], iv[ck.LEARNT] = state.seen, state.learn_batch, state.learnt
        iv[ck.LONG_RUN] = state.long_run
        for sid, flag in state.active.items():
            if flag:
                iv[ck.STAMPS] += 1
                m.active_flags[m.sensor_index(sid)] = iv[ck.STAMPS]
        return m


@lru_cache(maxsize=64)
def initial_centers(features: tuple[str, ...], k: int, seed: int) -> tuple[tuple[float, ...], ...]:
    """The k centres river's `KMeans(n_clusters=k, seed=seed)` draws, centre by centre
    and features in `features`' order (as `KMeansDistance` draws them): a seeded
    `random.Random` gives every model of the same features the same draws, so they are
    drawn once per (features, k, seed) and not per entity (issue 18, point 3: river's
    KMeans and its 12 Gaussian draws were ~40 % of a new entity's set-up with 5,000
    sensors and more)."""
    from river import cluster  # here, not at import: river pulls in scikit-learn

    model = cluster.KMeans(n_clusters=k, seed=seed)  # the step size draws nothing
    return tuple(tuple(model.centers[c][f] for f in features) for c in range(k))


def new_detector(features: tuple[str, ...], config: ClusterConfig) -> KMeansDistance:
    """A new entity's `KMeansDistance`: with a seed, its centres from `initial_centers`
    (the same arrays as `KMeansDistance(features, ...)`, tests/test_cluster_batch_kernel.py);
    without one (every model its own random draws), river's as ever."""
    k, seed = config.n_clusters, config.seed
    if seed is None:
        return KMeansDistance(features, k, config.halflife, seed)
    det = initial_array(features, k, seed).copy()
    return KMeansDistance.of_array(features, config.halflife, seed, det)


@lru_cache(maxsize=64)
def initial_array(features: tuple[str, ...], k: int, seed: int) -> np.ndarray:
    """The array of a new detector whose centres are `initial_centers` (read only: a
    new entity's detector is a copy, one memcpy instead of filling the centres from
    Python lists, issue 18 point 3)."""
    centers = list(map(list, initial_centers(features, k, seed)))
    det = KMeansDistance.with_centers(features, 0.0, seed, centers).det  # no step in det
    det.flags.writeable = False
    return det


def values_getter(features: tuple[str, ...]) -> Callable[[dict[str, float]], tuple[float, ...]]:
    """values -> the tuple of values[f] for f in features (KeyError if one is missing)."""
    if len(features) >= 2:
        return itemgetter(*features)
    return lambda values: tuple(values[f] for f in features)


def feature_columns(values: list[dict[str, float]], features: tuple[str, ...]) -> np.ndarray | None:
    """The readings' `values` as an (n, len(features)) float64 array, row r holding
    float(values[r][f]) for f in `features` (the rows of `values_getter`); None if a
    reading misses one. Filled a feature column at a time, each by one C-level pass
    (`np.fromiter` of an `itemgetter` map): an array made of a list of per-reading
    tuples costs numpy a sequence check per tuple, about twice as much per reading
    (issue 18, point 3). Each value goes through numpy's float64 conversion either
    way (`float(v)`: ints, bools alike), so the array is the same.

    >>> feature_columns([{"a": 1, "b": 2.5}, {"b": 0.5, "a": 3.0, "c": 9}], ("a", "b")).tolist()
    [[1.0, 2.5], [3.0, 0.5]]
    >>> feature_columns([{"a": 1.0}, {"b": 2.0}], ("a",)) is None
    True
    """
    n = len(values)
    out = np.empty((n, len(features)), dtype=np.float64)
    try:
        for j, f in enumerate(features):
            out[:, j] = np.fromiter(map(itemgetter(f), values), np.float64, n)
    except KeyError:
        return None
    return out


def grown_capacity(cap: int, need: int, size: int) -> int:
    """The capacity a ring of `cap` grows to for `need` places (`EntityModel.grow`):
    doubled, so that a ring is laid out a few times in its life, at least `need`, at
    most `size` (the history)."""
    return min(max(need, 2 * cap), size)


def short_run_of(config: ClusterConfig) -> int:
    """The longest run of anomalies admitted at its own distances: the quantile's
    share of the history (5 of 1,000 at 99.5 %)."""
    return max(1, int(config.history * (1.0 - config.quantile)))


class EntityState(msgspec.Struct):
    """One entity's model (`EntityModel`) as typed state."""

    features: tuple[str, ...]
    scaler: ScalerState
    kmeans: KMeansState
    recent: PackedRecentState  # the recent distances tau is the quantile of
    seen: int
    learn_batch: int  # start of the current learning budget interval
    learnt: int  # learns in it
    active: dict[str, bool]  # sensor_id -> its last judged reading was anomalous
    held: list[tuple[int, float, float]]  # (ts, distance, tau) of the current run
    long_run: bool


class PackedRecentState(msgspec.Struct):
    """`operators.rolling.RecentState` packed (`operators.state`): the recent distances'
    times (int64 bytes) and values (float64 bytes), oldest first."""

    times: bytes
    values: bytes


class ClusterState(msgspec.Struct):
    """The cluster operator's state (format 3; `operators.state`)."""

    pending: list[Entry]  # readings the watermark has not passed
    models: dict[Entity, EntityState]
    skipped: int
    out_of_range: int


def _entity_from_format_1(entity: str) -> Entity:
    """Format 1's entity strings: "site\\x1f<site>", or the sensor id."""
    kind, sep, site = entity.partition("\x1f")
    return ("site", site) if sep and kind == "site" else ("sensor", entity)


def _from_format_1(old: dict[str, Any]) -> dict[str, Any]:
    """State format 1 as plain `ClusterState` data: "\\x1f"-joined entities become
    tuples, pending entries lose their (derived) entity, and the river objects, pickled
    in format 1, are read once here into their named fields (a format-1 checkpoint is
    unpickled: restore only checkpoints this system wrote)."""
    models = {}
    for entity, m in old["models"].items():
        scaler, model = pickle.loads(m["river"])
        models[_entity_from_format_1(entity)] = {
            "features": list(m["features"]),
            "scaler": {
                "counts": dict(scaler.counts),
                "means": dict(scaler.means),
                "vars": dict(scaler.vars),
            },
            "kmeans": {
                "halflife": model.halflife,
                "centers": [dict(model.centers[c]) for c in range(len(model.centers))],
            },
            "recent": {"times": list(m["recent"]["times"]), "values": m["recent"]["values"]},
            "seen": m["seen"],
            "learn_batch": m["learn"][0],
            "learnt": m["learn"][1],
            "active": dict(m["active"]),
            "held": [list(h) for h in m.get("held", ())],
            "long_run": bool(m.get("long_run", False)),
        }
    return {
        "pending": [[ts, sid, items, site] for ts, _, sid, items, site in old["pending"]],
        "models": models,
        "skipped": old["skipped"],
        "out_of_range": old.get("out_of_range", 0),  # absent before it was counted
    }


def _from_format_2(old: dict[str, Any]) -> dict[str, Any]:
    """State format 2 as plain `ClusterState` data: each model's recent distances
    packed (`operators.state`), the same values bit for bit."""
    models = {}
    for entity, m in old["models"].items():
        recent = m["recent"]
        packed = {"times": pack_i64(recent["times"]), "values": pack_f64(recent["values"])}
        models[entity] = {**m, "recent": packed}
    return {**old, "models": models}


class EntitySlots:
    """The entity models' arrays where one compiled call reaches them all
    (`operators.cluster_kernel.run_table`, issue 18 point 3): an entity gets the next
    slot when its model is made, and row `slot` of `table` names its model's own
    arrays (address and length of the detector's, `mi`, `mf` and `active_flags`:
    the same memory, so the model's views and Python paths see the kernel's
    updates), `rates[slot]` its k-means step. The models are held here (`models`),
    which keeps the arrays a row names alive; an array a model replaces (a grown
    ring, grown flags) is re-written to its row by `grow` and `sensor_index`, the
    only places that replace them. Entities are never forgotten, so slots are never
    freed. Nothing here is checkpointed: the slots are rebuilt from the models on
    restore (derived layout, `operators.state`)."""

    __slots__ = (
        "by_sensor",
        "by_site",
        "entities",
        "feature_sets",
        "getters",
        "models",
        "rates",
        "solo",
        "solo_of",
        "table",
        "tally",
    )

    def __init__(self) -> None:
        self.by_sensor: dict[str, int] = {}  # sensor_id -> slot of ("sensor", sensor_id)
        self.by_site: dict[str, int] = {}  # site -> slot of ("site", site)
        self.entities: list[Entity] = []
        self.models: list[EntityModel] = []
        # the models' distinct feature tuples (one: a release's models share theirs)
        self.feature_sets: set[tuple[str, ...]] = set()
        self.getters: list[Callable[[dict[str, float]], tuple[float, ...]]] = []
        # a row per slot (its first len(models) rows): `cluster_kernel.set_entity`
        self.table = np.zeros((16, ck.N_TABLE), dtype=np.int64)
        self.rates = np.zeros(16)
        self.tally = np.zeros(16, dtype=np.int64)  # `cluster_kernel.short_rings`' scratch
        self.solo: list[int] = []  # slot -> its one sensor's index (-1: a site)
        # `solo` as an array (its first len(solo) items), which `_known_columns` indexes
        # by a release's slots in one numpy call (issue 18: ~50 ns a reading less than a
        # list look-up per reading, and a column numpy need not convert from a list)
        self.solo_of = np.zeros(16, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.models)

    def add(self, entity: Entity, m: EntityModel) -> int:
        """Give the model m of `entity` the next slot; return it."""
        slot = len(self.models)
        (self.by_site if entity[0] == "site" else self.by_sensor)[entity[1]] = slot
        self.entities.append(entity)
        self.models.append(m)
        self.feature_sets.add(m.features)
        self.getters.append(m.get)
        # the sensor of a ("sensor", sensor_id) entity: indexed now (without a flag, so
        # not in the state), the readings' loop then takes its index from `solo`; before
        # its row is written, as indexing may grow its flags
        self.solo.append(m.sensor_index(entity[1]) if entity[0] == "sensor" else -1)
        if slot == len(self.rates):
            self.rates = np.concatenate([self.rates, np.zeros(slot)])
            self.solo_of = np.concatenate([self.solo_of, np.zeros(slot, dtype=np.int64)])
            self.table = np.concatenate([self.table, np.zeros_like(self.table)])
            self.tally = np.zeros(2 * slot, dtype=np.int64)
        self._write(slot, m)
        self.rates[slot] = m.detector.halflife
        self.solo_of[slot] = self.solo[slot]
        return slot

    def _write(self, slot: int, m: EntityModel) -> None:
        """Name m's arrays in row `slot` of `table`."""
        ck.set_entity(self.table, slot, m.detector.det, m.mi, m.mf, m.active_flags)

    def grow(self, slot: int, need: int, size: int) -> None:
        """`EntityModel.grow` of the model in `slot` (its new arrays written to its row)."""
        m = self.models[slot]
        m.grow(need, size)
        self._write(slot, m)

    def sensor_index(self, slot: int, sid: str) -> int:
        """`EntityModel.sensor_index` of the model in `slot` (its flags array, which
        may have grown, written to its row)."""
        m = self.models[slot]
        n = len(m.active_flags)
        i = m.sensor_index(sid)
        if len(m.active_flags) != n:
            self._write(slot, m)
        return i


# The default alert rule of the cluster monitor's observations, collected by
# operators.registry into streams.config.DEFAULT_RULES.
DEFAULT_RULES: list[dict[str, Any]] = [
    _rule(
        "cluster_distance",
        "cluster",
        "cluster_distance",
        ">",
        {"warning": 3.0, "critical": 6.0},
        "{entity} is {value:.1f}x the usual distance from every known operating regime",
        label="distance from the known operating regimes",
        value_format="{:.1f}x the usual",
        cooldown_s=1800,
    ),
]


class ClusterOperator(Operator):
    sources = ("sensor-readings",)
    observes = (("cluster", "cluster_distance"),)

    @classmethod
    def default_rules(cls, config: Any = None) -> list[dict[str, Any]]:
        return list(DEFAULT_RULES)

    def __init__(self, config: ClusterConfig | None = None) -> None:
        super().__init__()
        self.config = config or ClusterConfig()
        self.pending = PendingReadings()
        self.models: dict[Entity, EntityModel] = {}
        self.skipped = 0  # readings without every feature of their model
        # readings with a value beyond MAX_SENSOR_MAGNITUDE (the schema rejects them)
        self.out_of_range = 0
        self._warned: set[Entity] = set()  # entities whose out-of-range reading was logged
        self._short_run = short_run_of(self.config)
        cfg = self.config
        self._cfg = np.zeros(5, dtype=np.int64)  # the kernel's integer settings
        self._cfg[ck.WARMUP], self._cfg[ck.LEARN_BATCH_MS] = cfg.warmup, cfg.learn_batch_ms
        self._cfg[ck.MAX_LEARN], self._cfg[ck.SHORT_RUN] = cfg.max_learn_per_batch, self._short_run
        self._cfg[ck.HISTORY] = cfg.history
        self._scratch = np.empty((64, ck.N_OUT))  # the kernel's output rows, reused
        self._slots = EntitySlots()  # the models' arrays as the compiled run takes them
        self._codec = StateCodec(
            "cluster",
            ClusterState,
            format=STATE_FORMAT,
            upgrades={1: _from_format_1, 2: _from_format_2},
        )

    def feed(self, source: str, events: Sequence[SensorReading]) -> None:
        self.pending.held += [(e.ts, e.sensor_id, e.values, e.site or "") for e in events]

    def advance(self, watermark: int) -> None:
        """Score, judge and learn the released readings: every entity's in one compiled
        call (`operators.cluster_kernel.run_table`), in event order; Python finds each
        reading's entity slot, sensor index and values (`_known_columns`, else
        `_columns`), and builds the rows and observations of the readings the kernel
        reports."""
        released = self.pending.release(watermark)
        if not released:
            return
        cols = None if self.config.group_by == "site" else self._known_columns(released)
        index, slot_of, rows, flat = cols or self._columns(released)
        n = len(index)
        if not n:
            return
        self._grow_rings(rows)
        out = self._scratch
        if len(out) < n:
            out = self._scratch = np.empty((max(n, 2 * len(out)), ck.N_OUT))
        slots = self._slots
        n_out = ck.run_table(
            rows,
            flat,
            slots.table,
            slots.rates,
            self._cfg,
            self.config.quantile,
            HALF,
            MAX_SENSOR_MAGNITUDE,
            out,
        )
        if n_out:  # in event order, as one reading after the other would give them
            self._emit(out[:n_out].tolist(), released, index, slot_of)

    def _grow_rings(self, rows: np.ndarray) -> None:
        """Grow the recent distances' ring of every entity whose ring this release may
        fill (`cluster_kernel.short_rings`), before the kernel reaches it."""
        slots = self._slots
        short = np.empty((len(rows), 2), dtype=np.int64)
        history = self.config.history
        n_short = ck.short_rings(rows, slots.table, slots.tally, history, short)
        for slot, need in short[:n_short].tolist():
            slots.grow(slot, need, history)

    def _columns(self, released: list[Pending]) -> Columns:
        """The kernel's input of `released`, reading by reading: each reading's entity
        (its model made when new), sensor index and values; a reading missing one of
        its model's features is skipped (counted)."""
        by_site = self.config.group_by == "site"
        slots = self._slots
        sensor_slot, site_slot = slots.by_sensor.get, slots.by_site.get
        getters, smodels, solo = slots.getters, slots.models, slots.solo
        index: list[int] = []  # of the readings scored, in `released`
        rows: list[int] = []  # their (ts, entity slot, sensor index), flat
        flat: list[float] = []  # their values, flat (each its entity's features)
        for i, (ts, sid, values, site) in enumerate(released):
            if by_site and site:
                slot = site_slot(site)
                if slot is None:
                    slot = self._new_entity(("site", site), values)
                s = smodels[slot].sensors.get(sid)
                if s is None:
                    s = slots.sensor_index(slot, sid)
            else:  # the entity of one sensor: its index kept by `EntitySlots.add`
                slot = sensor_slot(sid)
                if slot is None:
                    slot = self._new_entity(("sensor", sid), values)
                s = solo[slot]
            try:
                x = getters[slot](values)  # the model's features (extra ones ignored)
            except KeyError:  # one missing: skipped
                self.skipped += 1
                continue
            index.append(i)
            rows += (ts, slot, s)
            flat += x
        return (
            index,
            rows[1::3],
            np.array(rows, dtype=np.int64).reshape(len(index), 3),
            np.array(flat, dtype=np.float64),  # float(v)
        )

    def _known_columns(self, released: list[Pending]) -> Columns | None:
        """`_columns` in passes over the readings in C (issue 18: the per-reading loop
        was most of the monitor's Python), where that is the same: a model per sensor,
        every sensor's model already made, all of them with the same features, and no
        reading missing one; None otherwise (`_columns` decides reading by reading)."""
        slots = self._slots
        slot_of = list(map(slots.by_sensor.get, map(_sensor_of, released)))
        if None in slot_of:
            return None  # a new sensor: its model is made in event order by `_columns`
        models = slots.models
        first = models[slot_of[0]]
        if len(slots.feature_sets) > 1 and any(
            models[s].features != first.features for s in set(slot_of)
        ):
            return None  # (with one feature tuple among all models, none differs)
        n = len(released)
        flat = feature_columns(list(map(_values_of, released)), first.features)
        if flat is None:
            return None  # a reading missing a feature: skipped by `_columns`
        rows = np.empty((n, 3), dtype=np.int64)
        rows[:, 0] = list(map(_first, released))
        rows[:, 1] = slot_of
        rows[:, 2] = slots.solo_of[rows[:, 1]]
        return range(n), slot_of, rows, flat.reshape(n * len(first.features))

    def _new_entity(self, entity: Entity, values: dict[str, float]) -> int:
        """A model for an entity seen for the first time (its features: the configured
        ones, or those of this first reading), and its slot."""
        features = self.config.features or tuple(values)
        m = self.models[entity] = EntityModel(tuple(sorted(features)), self.config)
        return self._slots.add(entity, m)

    def _emit(
        self,
        outputs: list[list[float]],
        released: list[Pending],
        index: Sequence[int],
        slot_of: list[int],
    ) -> None:
        """The rows and observations of the kernel's output rows `outputs` (reading r of
        the kernel's input: released[index[r]], of the entity in slot slot_of[r])."""
        slots = self._slots
        out = self._out
        for row_out in outputs:
            r, start, n_tau, c, anomalous, distance, tau, ratio = row_out
            r = int(r)
            ts, sid, values, _ = released[index[r]]
            slot = slot_of[r]
            m = slots.models[slot]
            if anomalous == ck.OUT_OF_RANGE:
                x = np.array(m.get(values), dtype=np.float64).reshape(len(m.features))
                self._out_of_range(slots.entities[slot], ts, sid, m.features, x)
                continue
            window_start = int(start)
            if anomalous:
                out.add_row(
                    SensorAnomalyRow(
                        ts=ts,
                        sensor_id=sid,
                        metric=m.metric,
                        value=distance,
                        method="cluster",
                        score=ratio,
                        threshold=tau,
                        window_start=window_start,
                        window_end=ts,
                    )
                )
            out.observations.append(
                Observation(
                    kind="cluster",
                    entity=sid,
                    metric="cluster_distance",
                    value=ratio,
                    ts=ts,
                    n=int(n_tau),
                    window_start=window_start,
                    window_end=ts,
                    details={
                        "distance": distance,
                        "distance_threshold": tau,
                        "cluster": int(c),
                        "features": m.metric,
                    },
                )
            )

    def _out_of_range(
        self, entity: Entity, ts: int, sid: str, features: tuple[str, ...], x: np.ndarray
    ) -> None:
        """A reading with a value beyond MAX_SENSOR_MAGNITUDE: counted, logged once per
        entity."""
        self.out_of_range += 1
        if entity not in self._warned:
            self._warned.add(entity)
            log.warning(
                "cluster: reading of %s at %d has a value beyond %g, not scored: %s",
                sid,
                ts,
                MAX_SENSOR_MAGNITUDE,
                dict(zip(features, x.tolist(), strict=True)),
            )

    def snapshot(self) -> dict[str, Any]:
        return self._codec.dump(self._state())

    def snapshot_encoded(self) -> msgspec.Raw:
        # written from the typed state without a plain copy first (`StateCodec.encode`)
        return self._codec.encode(self._state())

    def _state(self) -> ClusterState:
        return ClusterState(
            pending=self.pending.state(),
            models={entity: m.state() for entity, m in self.models.items()},
            skipped=self.skipped,
            out_of_range=self.out_of_range,
        )

    def restore(self, snapshot: dict[str, Any]) -> None:
        state = self._codec.load(snapshot)
        self.pending.load(state.pending)
        self.models = {
            entity: EntityModel.from_state(m, self.config) for entity, m in state.models.items()
        }
        self._slots = EntitySlots()  # derived: rebuilt, not checkpointed
        for entity, m in self.models.items():
            self._slots.add(entity, m)
        self.skipped = state.skipped
        self.out_of_range = state.out_of_range


__all__ = [
    "DEFAULT_RULES",
    "Z_MAX",
    "ClusterConfig",
    "ClusterOperator",
    "KMeansState",
    "ScalerState",
]
