"""Possible causes: which other firing alerts may explain an alert (pure logic).

Two pieces, both without Kafka or clocks (docs/causes.md has the design):

`RelationLearner` learns, online from one partition's input, which entities
are related, bounded in size and in event time:

- impressions: campaign -> the `model_id`s its impressions carried;
- sensor readings: sensor -> its `site`.

It lives in the monitor task of the partition that reads those events, so the
relation is learned where the alert about the campaign or sensor is made
(impressions are keyed by campaign, readings by sensor: co-partitioned), and
the alert carries it as a hint in `details.related`:

>>> learner = RelationLearner(ttl_ms=3_600_000)
>>> from types import SimpleNamespace as E
>>> learner.observe("impressions", [E(campaign_id="cmp-1", model_id="m-0", ts=1_000)])
>>> learner.hints("cmp-1/A", ts=2_000)
{'models': ['m-0']}
>>> learner.hints("cmp-1", ts=1_000 + 3_600_001)  # older than the TTL: forgotten
{}

`Correlator` keeps the alert episodes (firing, and for a while after they
resolved) in event time, fed with every alert the worker raises and, through
`streams.runtime.correlate.AlertFeed`, those other workers raise; for a firing alert
it lists the episodes on related entities that overlap its window in event
time, strongest first:

- a CTR alert on a campaign: drift, quality, service and change alerts of the
  models the campaign's impressions carried (its `related.models` hint);
- a quality alert on a model: drift alerts of that model's features;
- a sensor or cluster alert: sensor and cluster alerts of other sensors of
  the same site (both carry their `related.site` hint).

Strength: severity first, then how far past its line the value is
(value / threshold, or its inverse for a value below its line).

The learner's checkpointed state is `RelationsState` (`operators.state`, format 2:
per hint, per key from least to most recently seen, each value's last event time;
and when it last expired). Format 1 (unversioned: per hint [[key, {value: ts}], ...])
is upgraded.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import compress, islice, repeat
from operator import attrgetter, is_
from typing import Any, NamedTuple

import msgspec

from operators.state import StateCodec
from operators.watermark import NO_WATERMARK
from schemas.events import Alert

SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}
# kinds whose entity starts with a model id ("m", "m/feature", "m/version")
MODEL_KINDS = frozenset({"drift", "quality", "service", "change"})
SENSOR_KINDS = frozenset({"sensor", "cluster"})
# what a cause's metric is called in the one-line phrase
METRIC_LABELS = {
    "psi": "PSI",
    "confidence_shift": "fall in mean confidence",
    "error_rate": "error rate",
    "latency_p99": "p99 latency",
    "low_confidence_ratio": "low-confidence share",
    "accuracy": "accuracy",
    "accuracy_drop": "accuracy drop",
    "mae_increase": "MAE increase",
    "anomaly_zscore": "z-score",
    "anomaly_iqr": "IQR distance",
    "anomaly_rise": "steady rise",
    "cluster_distance": "regime distance",
}


def _head(entity: str) -> str:
    return entity.partition("/")[0]


# -- relations learned from the input ------------------------------------------


@dataclass(frozen=True)
class RelationSource:
    """One relation learned from one input: key field -> value field of its events."""

    source: str  # logical input topic
    key: str  # event field naming the entity an alert is about
    value: str  # event field naming the related entity
    hint: str  # name of the hint in details.related
    many: bool  # a list of values (models of a campaign) or the latest one (site)


RELATIONS = (
    RelationSource("impressions", "campaign_id", "model_id", "models", many=True),
    RelationSource("sensor-readings", "sensor_id", "site", "site", many=False),
)


class RelationsState(msgspec.Struct):
    """A `RelationLearner`'s checkpointed state."""

    # hint -> key -> value -> last event time seen; keys least recently seen first
    # (msgpack maps keep their order, and so do dicts)
    seen: dict[str, dict[str, dict[str, int]]] = {}
    expired_at: int = NO_WATERMARK  # the watermark of the last expiry scan


def _from_format_1(plain: dict[str, Any]) -> dict[str, Any]:
    """Format 1: {hint: [[key, {value: ts}], ...]} in recency order; no expiry time
    (its restore left a fresh learner's, which scans at the first watermark)."""
    return {"seen": {hint: dict(pairs) for hint, pairs in plain.items()}}


CODEC = StateCodec("relations", RelationsState, format=2, upgrades={1: _from_format_1})


def _latest(
    events: Iterable[Any], key: str, value: str, times: list[int] | None = None
) -> dict[tuple[str, str], int]:
    """The latest event time of each (key, value) pair with a value, the pairs in
    order of first appearance. `times`: the events' times, where the caller has them.

    >>> from types import SimpleNamespace as E
    >>> _latest([E(s="a", v="x", ts=1), E(s="b", v="", ts=2), E(s="a", v="x", ts=3)], "s", "v")
    {('a', 'x'): 3}
    >>> _latest([E(s="a", v="x", ts=5), E(s="a", v="x", ts=3)], "s", "v")
    {('a', 'x'): 5}
    >>> _latest([E(s="a", v=None, ts=5), E(s="b", v="", ts=3)], "s", "v")
    {}
    """
    events = events if isinstance(events, list) else list(events)
    values = list(map(attrgetter(value), events))
    if times is None:
        times = list(map(attrgetter("ts"), events))
    return _latest_pairs(list(map(attrgetter(key), events)), values, times)


def _latest_pairs(
    keys: list[str], values: list[str | None], times: list[int]
) -> dict[tuple[str, str], int]:
    """`_latest` of columns. Events in time order (a partition's usual batch): the
    last time of a pair is its latest, so the columns are zipped into a dict in C
    (issue 18: per-event overhead); otherwise one comparison per event."""
    pairs = zip(keys, values, strict=True)
    if times == sorted(times):
        latest = dict(zip(pairs, times, strict=True))
        if all(values):
            return latest
        return {p: ts for p, ts in latest.items() if p[1]}
    latest = {}
    for pair, ts in zip(pairs, times, strict=True):
        if pair[1] and latest.get(pair, -1) < ts:
            latest[pair] = ts
    return latest


def _single_value(values: dict[str, int], value: str, ts: int) -> dict[str, int]:
    """A single-valued relation's `values` of an entity (mutated) after its `value` at
    event time `ts`, as `RelationLearner._observe_one` learns it: a known value takes
    the later time; another one replaces it if not older (the latest value wins)."""
    if value in values:
        if values[value] < ts:
            values[value] = ts
    elif ts >= max(values.values(), default=ts):
        values.clear()
        values[value] = ts
    return values


class SingleSummary(NamedTuple):
    """What a batch says of a single-valued relation, whatever the learner
    (`single_summary`): its entities by their last event with a value (`order`), and
    each one's value and latest time, in that order; `latest`: entity -> latest time."""

    order: list[str]
    values: list[Any]
    times: list[int]
    latest: dict[str, int]


def summarise_single(keys: list[str], values: list[Any], times: list[int]) -> SingleSummary | None:
    """The `SingleSummary` of a batch's columns, in passes over the batch in C (no
    (entity, value) pair per event, as `_latest_pairs` builds); None if an entity has
    two values in it. Events without a value touch nothing. With one event per entity
    (thousands of sensors a batch), the summary is the batch's columns (copied: it keeps
    no list of the caller's). Otherwise each entity's value is its last one, and the
    summary holds only if every event of it has that value; in a time-ordered batch its
    last time is its latest.

    >>> summarise_single(["a", "b", "a"], ["x", "y", "x"], [1, 2, 3])
    SingleSummary(order=['b', 'a'], values=['y', 'x'], times=[2, 3], latest={'a': 3, 'b': 2})
    >>> summarise_single(["a", "a"], ["x", "z"], [1, 2]) is None
    True
    >>> summarise_single(["b", "a"], ["y", None], [2, 1])
    SingleSummary(order=['b'], values=['y'], times=[2], latest={'b': 2})
    """
    if not all(values):
        keep = values
        keys, times, values = (list(compress(c, keep)) for c in (keys, times, values))
    latest = dict(zip(keys, times, strict=True))
    if len(latest) == len(keys):  # an event per entity (many sensors): the batch itself
        return SingleSummary(list(keys), list(values), list(times), latest)  # not aliased
    value_of = dict(zip(keys, values, strict=True))
    if list(map(value_of.__getitem__, keys)) != values:
        return None
    if times != sorted(times):  # else the last time of an entity is its latest
        latest = {}
        for key, ts in zip(keys, times, strict=True):
            if latest.get(key, ts) <= ts:
                latest[key] = ts
    order = list(dict.fromkeys(reversed(keys)))
    order.reverse()
    return SingleSummary(
        order, list(map(value_of.__getitem__, order)), list(map(latest.__getitem__, order)), latest
    )


#: the last batch `single_summary` summed up: (events, keys, values, times, summary)
_last_single: tuple[list[Any], list[str], list[Any], list[int], SingleSummary | None] | None = None


def single_summary(
    keys: list[str], values: list[Any], times: list[int], events: list[Any] | None = None
) -> SingleSummary | None:
    """`summarise_single`, made once for two learners that observe the same batch one
    after the other: the sensor and the cluster monitors' tasks each learn a sensor's
    site from the same readings (the worker hands both tasks the same decoded list).
    Each learner keeps its own table, state and expiry (both are checkpointed with
    their own task); only this pure function of the batch is shared. The previous
    summary is taken when `events` is the same list object and the columns read from it
    are equal (as they are unless the list or its events changed in between): a
    summary is a function of the columns alone, so it is the one they would make
    (issue 18: at 5,000 sensors a batch's summary is ~0.5 µs per reading)."""
    global _last_single
    last = _last_single
    if (
        events is not None
        and last is not None
        and last[0] is events
        and last[2] == values
        and last[3] == times
        and last[1] == keys
    ):
        return last[4]
    summary = summarise_single(keys, values, times)
    # copies: what a later call is compared with is this call's batch, whatever the
    # caller does with its lists afterwards (the summary holds lists of its own)
    _last_single = None if events is None else (events, keys[:], values[:], times[:], summary)
    return summary


# Entities (campaigns, sensors) whose relations one partition remembers. An alert is
# hinted with its entity's relation when it is collected (operators/task.py), so an
# entity dropped from the table raises its alert without `details.related`: the bound
# must sit above the live entities of a partition. 100 k covers the 50 k-sensor fleet
# of the scaling benchmark in one partition (~0.45 KB an entity: tracemalloc read
# 43 MB for 100 k sensors' sites), and keeps the table from re-learning evicted
# sensors every batch (which is what a 10 k bound did at 50 k sensors).
RELATION_MAX_KEYS = 100_000


class RelationLearner:
    """Relations learned from one partition's events, bounded: at most `max_keys`
    entities per relation (least recently seen dropped first), `max_values`
    values per entity, and none older than `ttl_ms` of event time.

    `observe` takes a batch; what it learns (and the order of the tables, which
    decides what is dropped first) is exactly what observing its events one by one
    would learn (tests/test_relations_fast.py checks it on random streams)."""

    def __init__(
        self,
        ttl_ms: int = 3_600_000,
        max_keys: int = RELATION_MAX_KEYS,
        max_values: int = 8,
        relations: Sequence[RelationSource] = RELATIONS,
    ) -> None:
        self.ttl_ms = ttl_ms
        self.max_keys = max_keys
        self.max_values = max_values
        self.relations = {r.source: r for r in relations}
        # hint -> key -> value -> last event time seen (ordered: least recent first)
        self.seen: dict[str, OrderedDict[str, dict[str, int]]] = {
            r.hint: OrderedDict() for r in relations
        }
        self.expired_at = NO_WATERMARK

    def observe(self, source: str, events: Iterable[Any], times: list[int] | None = None) -> None:
        """Learn from one batch of `source`'s events (`times`: their event times, if
        the caller has them): the same as observing them one by one, in order."""
        relation = self.relations.get(source)
        if relation is None:
            return
        events = events if isinstance(events, list) else list(events)
        values = list(map(attrgetter(relation.value), events))
        if not any(values):
            return  # nothing to learn (impressions without a model): one pass in C
        if times is None:
            times = list(map(attrgetter("ts"), events))
        keys = list(map(attrgetter(relation.key), events))
        table = self.seen[relation.hint]
        if self._observe_batch(relation, table, keys, values, times, events):
            return
        # a batch the shortcut cannot take exactly: event by event
        for key, value, ts in zip(keys, values, times, strict=True):
            if value:
                self._observe_one(relation, table, key, value, ts)

    def _observe_one(
        self,
        relation: RelationSource,
        table: OrderedDict[str, dict[str, int]],
        key: str,
        value: str,
        ts: int,
    ) -> None:
        """One event (with a value): the reference the batch path equals."""
        values = table.get(key)
        if values is None:
            values = table[key] = {}
            if len(table) > self.max_keys:
                table.popitem(last=False)
        else:
            table.move_to_end(key)
        if value in values or relation.many:
            values[value] = max(values.get(value, ts), ts)
        elif ts >= max(values.values(), default=ts):
            values.clear()  # a single-valued relation: the latest value wins
            values[value] = ts
        if len(values) > self.max_values:
            del values[min(values, key=values.__getitem__)]

    def _observe_batch(
        self,
        relation: RelationSource,
        table: OrderedDict[str, dict[str, int]],
        keys: list[str],
        values: list[Any],
        times: list[int],
        events: list[Any] | None = None,
    ) -> bool:
        """A batch once per (key, value) pair, with its latest time, where that is
        exactly what `_observe_one` per event gives; False (nothing changed) otherwise.

        Exact when no entity gets more than `max_values` values (none is dropped:
        a many-valued entity's values keep their first appearance order and take
        their latest time; a single-valued entity has one value in the batch, whose
        latest time wins or loses as its first would, the later ones following it),
        and the entities dropped for new ones are the least recently seen ones that
        the batch does not touch (event by event, the j-th new entity drops the j-th
        of them). The table's order: those untouched first, as they were, then the
        touched ones by their last event (an event without a value touches nothing).
        """
        if not relation.many:
            done = self._observe_single(table, single_summary(keys, values, times, events))
            if done is not None:
                return done
        latest = _latest_pairs(keys, values, times)
        batch: dict[str, dict[str, int]] = {}
        for (key, value), ts in latest.items():
            vals = batch.get(key)
            if vals is None:
                batch[key] = {value: ts}
            else:
                vals[value] = ts
        many, cap = relation.many, self.max_values
        new = 0
        for key, vals in batch.items():  # checks first: a fallback finds nothing changed
            old = table.get(key)
            if old is None:
                new += 1
                size = len(vals)
            else:
                size = len(old.keys() | vals.keys())
            if size > cap or (not many and len(vals) > 1):
                return False
        if not self._make_room(table, batch, new):
            return False
        # the touched entities by their last event with a value
        touched = keys if all(values) else list(compress(keys, values))
        order = list(dict.fromkeys(reversed(touched)))
        order.reverse()
        for key in order:
            vals = batch[key]
            old = table.get(key)
            if old is None:
                table[key] = vals  # as event by event: first appearance order
                continue
            table.move_to_end(key)
            if many:
                for value, ts in vals.items():
                    if old.get(value, ts) <= ts:
                        old[value] = ts
            else:
                ((value, ts),) = vals.items()
                if value in old:
                    old[value] = max(old[value], ts)
                elif ts >= max(old.values(), default=ts):
                    old.clear()  # a single-valued relation: the latest value wins
                    old[value] = ts
        return True

    def _make_room(
        self, table: OrderedDict[str, dict[str, int]], batch: dict[str, Any], new: int
    ) -> bool:
        """Drop the oldest entities so that `new` more fit under `max_keys`, as event
        by event would; False (nothing dropped) where the batch's own entities would be
        among them, or new ones drop each other: the caller goes event by event."""
        drops = len(table) + new - self.max_keys
        if drops <= 0:
            return True
        if drops > len(table) or len(table) > self.max_keys:
            return False  # new entities would drop each other (or it is over its bound)
        oldest = list(islice(table, drops))
        if not batch.keys().isdisjoint(oldest):
            return False
        deque(map(table.__delitem__, oldest), maxlen=0)  # a loop in C
        return True

    def _observe_single(
        self, table: OrderedDict[str, dict[str, int]], summary: SingleSummary | None
    ) -> bool | None:
        """`_observe_batch` for a single-valued relation (a sensor's site) from the
        batch's `single_summary` (None: an entity with two values, event by event), with
        one comprehension over its entities: the same table and order (issue 18, point
        3: thousands of sensors a batch); None where it does not apply (an entity with
        values near `max_values`: the general path decides)."""
        if summary is None:
            return False  # an entity with two values in one batch: event by event
        order, olds = summary.order, list(map(table.get, summary.order))
        if max(map(len, filter(None, olds)), default=0) >= self.max_values:
            return None  # its size check is the general path's
        n_new = olds.count(None)
        if not self._make_room(table, summary.latest, n_new):
            return False
        news = [
            {value: ts} if old is None else _single_value(old, value, ts)
            for old, value, ts in zip(olds, summary.values, summary.times, strict=True)
        ]
        if n_new:  # the new ones in (the others' dicts are changed in place)
            new = list(map(is_, olds, repeat(None)))
            table.update(zip(compress(order, new), compress(news, new), strict=True))
        # then the touched ones after the untouched by their last event: moved, not
        # popped and put back (a pop leaves a deleted entry in the table)
        deque(map(table.move_to_end, order), maxlen=0)
        return True

    def hints(self, entity: str, ts: int) -> dict[str, Any]:
        """What is known about the entity of an alert at event time `ts`."""
        key = _head(entity)
        out: dict[str, Any] = {}
        for relation in self.relations.values():
            values = self.seen[relation.hint].get(key)
            if not values:
                continue
            live = sorted(v for v, t in values.items() if ts - t <= self.ttl_ms)
            if live:
                out[relation.hint] = live if relation.many else live[-1]
        return out

    def expire(self, watermark: int) -> None:
        """Forget what is older than the TTL at this watermark (a scan at most every
        tenth of the TTL: `hints` checks the age itself, this only bounds memory)."""
        if watermark < self.expired_at + self.ttl_ms // 10:
            return
        self.expired_at = watermark
        for table in self.seen.values():
            for key in [k for k, v in table.items() if max(v.values()) < watermark - self.ttl_ms]:
                del table[key]

    def snapshot(self) -> dict[str, Any]:
        return CODEC.dump(self._state())

    def snapshot_encoded(self) -> msgspec.Raw:
        """`snapshot()` msgpack-encoded in one pass, for a checkpoint (`StateCodec.encode`:
        up to 100 k entities' sites, issue 18)."""
        return CODEC.encode(self._state())

    def _state(self) -> RelationsState:
        # each table's items in recency order: msgspec reads an OrderedDict in the
        # order its keys were first inserted, not the order move_to_end made
        seen = {hint: dict(table.items()) for hint, table in self.seen.items()}
        return RelationsState(seen=seen, expired_at=self.expired_at)

    def restore(self, snapshot: dict[str, Any]) -> None:
        state = CODEC.load(snapshot)
        # the relations this learner has (a hint no longer learned is dropped); each
        # table an OrderedDict again, for its least-recently-seen eviction
        self.seen = {hint: OrderedDict(state.seen.get(hint, {})) for hint in self.seen}
        self.expired_at = state.expired_at


# -- the firing set and the causes ----------------------------------------------


@dataclass(slots=True)
class Firing:
    """What the correlator keeps of an episode: its firing alert, and when it ended."""

    alert_id: str
    kind: str
    rule: str
    entity: str
    metric: str
    severity: str
    value: float
    threshold: float
    start: int  # evidence window (or the alert's time when it has none)
    end: int
    message: str
    related: dict[str, Any] = field(default_factory=dict)
    until: int | None = None  # event time the episode ended (None: firing still)
    resolved_id: str | None = None

    @classmethod
    def of(cls, alert: Alert) -> Firing:
        start = alert.window_start if alert.window_start is not None else alert.ts
        end = alert.window_end if alert.window_end is not None else alert.ts
        related = alert.details.get("related") if isinstance(alert.details, dict) else None
        return cls(
            alert.alert_id,
            alert.kind,
            alert.rule,
            alert.entity,
            alert.metric,
            alert.severity,
            float(alert.value),
            float(alert.threshold),
            start,
            end,
            alert.message,
            dict(related) if isinstance(related, dict) else {},
        )

    def strength(self) -> tuple[int, float]:
        """(severity, how far past the line): higher is stronger."""
        v, t = abs(self.value), abs(self.threshold)
        ratio = max(v / t, t / v) if v > 0 and t > 0 else 1.0
        return SEVERITY_RANK.get(self.severity, 0), ratio

    def phrase(self) -> str:
        """One short phrase naming the figure: "PSI of user_segment = 0.21"."""
        label = METRIC_LABELS.get(self.metric, self.metric.replace("_", " "))
        subject = self.entity
        if self.kind == "drift" and "/" in subject:
            subject = subject.partition("/")[2]  # the feature: the model is implied
        return f"{label} of {subject} = {self.value:.3g}"


@dataclass(frozen=True)
class CorrelatorConfig:
    # how long before an alert's window a cause's evidence may have begun
    lookback_ms: int = 3_600_000
    # ... and how long after it ends (or before it, after the cause ended): "at the
    # same time" for point evidence (a single reading) and windows of other sizes
    slack_ms: int = 60_000
    # an episode is forgotten this long (event time) after it ended; one never
    # resolved this long after its evidence (the entity went silent)
    ttl_ms: int = 6 * 3_600_000
    max_keys: int = 50_000  # (rule, entity) pairs remembered
    max_episodes: int = 8  # episodes remembered per (rule, entity)
    max_causes: int = 5


class Correlator:
    """Alert episodes in event time, and the possible causes of a new alert.

    An episode runs from its firing alert's evidence to the start of the
    evidence of the alert that resolved it. A cause is judged on event time,
    not on arrival: an episode counts when it overlaps the alert's window
    (within `slack_ms`), even if its resolution was read first (partitions are
    read unevenly during a backlog), and began at most `lookback_ms` before it.
    """

    def __init__(self, config: CorrelatorConfig | None = None) -> None:
        self.config = config or CorrelatorConfig()
        # (rule, entity) -> its latest episodes, oldest first
        self.episodes: OrderedDict[tuple[str, str], list[Firing]] = OrderedDict()
        # indexes of the keys, so finding causes does not scan every episode:
        # by the entity's first segment (a model, a sensor) and by learned site
        self.by_head: dict[str, set[tuple[str, str]]] = {}
        self.by_site: dict[str, set[tuple[str, str]]] = {}
        self.clock = 0  # the latest event time seen

    def _drop(self, key: tuple[str, str]) -> None:
        for e in self.episodes.pop(key, ()):
            site = e.related.get("site")
            if isinstance(site, str):
                self.by_site.get(site, set()).discard(key)
        head = _head(key[1])
        keys = self.by_head.get(head)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self.by_head[head]

    def observe(self, alert: Alert) -> None:
        """Take a firing or resolved alert in (idempotent: the same alert twice,
        e.g. this worker's own read back from the topic, changes nothing)."""
        key = (alert.rule, alert.entity)
        episodes = self.episodes.get(key)
        if episodes is None:
            if len(self.episodes) >= self.config.max_keys:
                self._drop(next(iter(self.episodes)))
            episodes = self.episodes[key] = []
            self.by_head.setdefault(_head(alert.entity), set()).add(key)
        else:
            self.episodes.move_to_end(key)
        self.clock = max(self.clock, alert.ts)
        if alert.status == "firing":
            if any(e.alert_id == alert.alert_id for e in episodes):
                return
            episode = Firing.of(alert)
            site = episode.related.get("site")
            if isinstance(site, str):
                self.by_site.setdefault(site, set()).add(key)
            for e in episodes:
                if e.until is None and e.start <= episode.start:
                    e.until = episode.start  # a new severity: the new alert goes on
            episodes.append(episode)
            episodes.sort(key=lambda e: e.start)
            del episodes[: -self.config.max_episodes]
            return
        if any(e.resolved_id == alert.alert_id for e in episodes):
            return
        clear = alert.window_start if alert.window_start is not None else alert.ts
        for e in reversed(episodes):
            if e.until is None and e.start <= clear:
                e.until, e.resolved_id = clear, alert.alert_id
                return

    def advance(self, now_ms: int) -> None:
        """Event time moved on (a watermark): forget episodes past the TTL."""
        self.clock = max(self.clock, now_ms)
        horizon = self.clock - self.config.ttl_ms
        for key in list(self.episodes):
            kept = [
                e
                for e in self.episodes[key]
                if (e.until if e.until is not None else e.end) >= horizon
            ]
            if kept:
                self.episodes[key] = kept
            else:
                self._drop(key)

    def firing(self) -> list[Firing]:
        """The episodes not resolved (yet)."""
        return [e for eps in self.episodes.values() for e in eps if e.until is None]

    def causes(self, alert: Alert) -> list[Firing]:
        """Episodes on entities related to `alert` that overlap its window,
        strongest first (at most `max_causes`)."""
        if alert.status != "firing":
            return []
        me = Firing.of(alert)
        related = me.related
        if alert.kind == "ctr":
            models = set(related.get("models") or ())
            keys = set().union(*(self.by_head.get(m, ()) for m in models))

            def wanted(f: Firing) -> bool:
                if f.kind not in MODEL_KINDS or _head(f.entity) not in models:
                    return False
                return f.kind != "change" or not f.metric.startswith("ctr")

        elif alert.kind == "quality":
            model = _head(alert.entity)
            keys = set(self.by_head.get(model, ()))

            def wanted(f: Firing) -> bool:
                return f.kind == "drift" and _head(f.entity) == model

        elif alert.kind in SENSOR_KINDS:
            site, sensor = related.get("site"), _head(alert.entity)
            keys = set(self.by_site.get(site, ())) if isinstance(site, str) else set()

            def wanted(f: Firing) -> bool:
                return (
                    bool(site)
                    and f.kind in SENSOR_KINDS
                    and f.related.get("site") == site
                    and _head(f.entity) != sensor
                )

        else:
            return []
        slack = self.config.slack_ms
        lo = me.start - self.config.lookback_ms
        found = [
            f
            for key in keys
            for f in self.episodes.get(key, ())
            if f.alert_id != me.alert_id
            and wanted(f)
            and f.start <= me.end + slack
            and (f.until is None or f.until + slack >= me.start)
            and f.start >= lo
        ]
        found.sort(key=lambda f: (f.strength(), f.entity, f.rule, f.alert_id), reverse=True)
        seen: set[tuple[str, str]] = set()
        unique = []  # one episode per (rule, entity): the strongest
        for f in found:
            if (f.rule, f.entity) not in seen:
                seen.add((f.rule, f.entity))
                unique.append(f)
        return unique[: self.config.max_causes]

    def enrich(self, alert: Alert) -> Alert:
        """Attach `details.possible_causes` and name the strongest in the message;
        then take the alert in. The alert_id is left as it is."""
        causes = self.causes(alert)
        if causes:
            alert.details = {
                **alert.details,
                "possible_causes": [
                    {
                        "alert_id": c.alert_id,
                        "kind": c.kind,
                        "rule": c.rule,
                        "entity": c.entity,
                        "severity": c.severity,
                        "message": c.message,
                    }
                    for c in causes
                ],
            }
            text = alert.message.removesuffix(".")
            alert.message = f"{text}; possible cause: {causes[0].phrase()}."
        self.observe(alert)
        return alert
