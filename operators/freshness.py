"""Freshness: entities and whole topics that go silent, judged in event time.

A campaign with no impressions, a model version with no inference logs, a
sensor with no readings -- or a whole input topic with no events while the
other topics advance -- is an outage no window statistic shows: there is no
window to judge. This operator reads every input topic and watches the last
event time of each entity and topic against its usual gap between events.

Semantics (defaults in FreshnessConfig):

- Event time is cut into check steps [s, s + check_ms). Per step, entity and
  topic, only (count, min ts, max ts) is kept; a step is folded into the
  entity's state when the watermark reaches its end. Folding depends on the
  multiset of events only, so any arrival order within the lateness gives
  the same result.
- Usual gap: an exponentially weighted mean of the inter-arrival gaps,
  learned online in event time. A step with c events after a last event at
  t0 contributes the c gaps t0 -> ... -> max ts, whose mean is
  (max - t0) / c, with the weight of c arrivals:

      g <- (1 - a)^c g + (1 - (1 - a)^c) (max - t0) / c,   a = ewma_alpha

  (the EWMA of Roberts, S. W. (1959), "Control chart tests based on
  geometric moving averages", Technometrics 1(3):239-250, applied per
  arrival). Steps without events change nothing, so a silence does not
  teach the entity that silence is usual.
- Silent: at the end B of each closed step, an entity that has shown at
  least `min_events` events is silent when

      B - last > allowed = clip(multiple * g, min_silence_ms, max_silence_ms)

  It yields Observation(kind="freshness", entity, metric="entity_silence",
  value=(B - last) / allowed > 1, ts=B, window [last, B]) once per silence;
  when its data returns, the step that holds the new events yields the same
  metric with value 0 (the rule resolves). A whole topic is judged the same
  way (metric "topic_silence", entity = the topic's name): as the
  watermark is the minimum over the *active* topics (operators.watermark
  leaves a topic idle for idle_timeout_s out), a silent topic shows as its
  last event falling behind a watermark the other topics advance.
- Dead time: event time more than `jump_ms` after the last event of *any*
  topic, until the next event, runs no silence clock (silence = live event
  time since the entity's last event). A replay that skips ahead, a test's
  far-ahead tail event or the end of the input are then not a silence of
  every entity at once; a total outage of the input is the consumer lag's
  and `/health`'s job. Dead stretches are known exactly: one found while
  judging a boundary ends at it (no event before the watermark is still to
  come), and a later event only extends it.
- False alarms: for Poisson arrivals at rate r, a gap exceeds `allowed` with
  probability exp(-r allowed) <= exp(-multiple), so a quiet entity raises at
  most 86,400 r exp(-max(multiple, r min_silence)) false alerts a day: with
  the defaults (multiple 20, 10 minutes) below 1e-5 per entity-day for every
  rate (docs/monitors/freshness.md).
- State per entity: last ts, usual gap, events seen, silent flag; an entity
  silent for `forget_ms` is forgotten (its alert, if any, stays firing).
  Typed and versioned (`FreshnessState`, format 2, `operators.state`): the open
  steps, the tracks by topic then key, the dead stretches; format 1 (positional
  lists) is upgraded on restore. It has string keys only, so it also goes
  through JSON.

Entity keys: impressions -> campaign_id, inference-logs ->
"<model_id>/<model_version>", sensor-readings -> sensor_id (the entities of
the ctr, service and sensor alerts); clicks are watched as a topic only (a
campaign may rightly have no clicks for hours).

>>> from schemas.events import Impression
>>> T0 = 1_800_000_000_000  # a minute boundary
>>> op = FreshnessOperator(FreshnessConfig(min_events=3, min_silence_ms=60_000))
>>> op.feed("impressions", [  # one impression every 10 s for 10 minutes
...     Impression(impression_id=str(t), campaign_id="c1", user_id="u", ts=T0 + t * 1000)
...     for t in range(0, 600, 10)])
>>> op.advance(T0 + 600_000); op.collect().observations
[]
>>> op.advance(T0 + 900_000)  # silent since T0 + 590 s; allowed max(20 x 10 s, 60 s)
>>> [(o.entity, o.metric, o.ts - T0, round(o.value, 2)) for o in op.collect().observations]
[('impressions', 'topic_silence', 840000, 1.25), ('c1', 'entity_silence', 840000, 1.25)]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from operators.base import Observation, Operator
from operators.rules import rule_spec as _rule
from operators.state import StateCodec

ENTITY_METRIC = "entity_silence"
TOPIC_METRIC = "topic_silence"

# logical topic -> the entity an event is about (None: watched as a topic only)
ENTITY_OF: dict[str, Callable[[Any], str] | None] = {
    "impressions": lambda e: e.campaign_id,
    "clicks": None,
    "inference-logs": lambda e: f"{e.model_id}/{e.model_version}",
    "sensor-readings": lambda e: e.sensor_id,
}


@dataclass(frozen=True)
class FreshnessConfig:
    check_ms: int = 60_000  # silence is judged at the end of each step of event time
    multiple: float = 20.0  # silent after this many usual gaps ...
    min_silence_ms: int = 600_000  # ... and never before this
    max_silence_ms: int = 6 * 3_600_000  # ... and always after this
    ewma_alpha: float = 0.05  # weight of one arrival in the usual gap
    min_events: int = 20  # events seen before an entity is judged
    forget_ms: int = 7 * 86_400_000  # an entity silent this long is dropped
    watch_entities: bool = True  # False: whole topics only
    # event time more than this after the last event of *any* topic is dead time: no
    # silence clock runs in it (a replay that skips ahead, a test's far-ahead tail event,
    # the end of the input); 0 = every stretch of event time counts
    jump_ms: int = 300_000

    def __post_init__(self) -> None:
        if self.check_ms <= 0 or self.multiple <= 1 or not 0 < self.ewma_alpha <= 1:
            raise ValueError("freshness needs check_ms > 0, multiple > 1, 0 < ewma_alpha <= 1")
        if self.jump_ms and self.jump_ms < self.check_ms:
            # gaps inside a step are not seen: a shorter jump could not be found
            raise ValueError("freshness needs jump_ms = 0 or jump_ms >= check_ms")
        if not 0 < self.min_silence_ms <= self.max_silence_ms:
            raise ValueError("freshness needs 0 < min_silence_ms <= max_silence_ms")


class Track(msgspec.Struct):
    """What is known about one entity (or topic): its last event and usual gap."""

    last: int
    gap: float = -1.0  # usual gap between events (ms), an EWMA; < 0: no gap seen yet
    n: int = 0  # events seen
    silent: bool = False  # an entity_silence > 1 was emitted and no data since

    def fold(self, count: int, first: int, last: int, alpha: float) -> None:
        """Fold one closed step holding `count` events between `first` and `last`."""
        if self.n == 0:
            # the first step: its own c - 1 gaps are all there is
            if count > 1:
                self.gap = (last - first) / (count - 1)
        elif self.gap < 0:
            self.gap = (last - self.last) / count  # the first gaps seen start the mean
        else:
            keep = (1.0 - alpha) ** count
            self.gap = keep * self.gap + (1.0 - keep) * (last - self.last) / count
        self.n += count
        self.last = max(self.last, last)


class Span(msgspec.Struct, array_like=True):
    """The events of one key in one step: how many, the first and the last time."""

    count: int
    first: int
    last: int


class Step(msgspec.Struct):
    """One open check step: per topic and key ("" for the topic itself), its span."""

    start: int
    topics: dict[str, dict[str, Span]] = {}


class FreshnessState(msgspec.Struct):
    """What a checkpoint keeps (string keys only: it goes through JSON as well)."""

    steps: list[Step] = []  # the open steps, by start
    tracks: dict[str, dict[str, Track]] = {}  # topic -> key ("" the topic) -> track
    judged: int | None = None
    live_last: int | None = None
    dead: list[list[int]] = []  # dead stretches [start, end), oldest first


def _from_format_1(old: dict[str, Any]) -> dict[str, Any]:
    """Format 1: steps as [start, {topic: {key: [count, min, max]}}], tracks as
    [topic, key, last, gap, n, silent]; no dead time before it was kept."""
    tracks: dict[str, dict[str, dict[str, Any]]] = {}
    for topic, key, last, gap, n, silent in old["tracks"]:
        tracks.setdefault(topic, {})[key] = {"last": last, "gap": gap, "n": n, "silent": silent}
    return {
        "steps": [{"start": start, "topics": step} for start, step in old["steps"]],
        "tracks": tracks,
        "judged": old["judged"],
        "live_last": old.get("live_last"),
        "dead": old.get("dead", []),
    }


CODEC = StateCodec("freshness", FreshnessState, format=2, upgrades={1: _from_format_1})


# The default alert rules of the freshness monitor's observations, collected by
# operators.registry into streams.config.DEFAULT_RULES.
DEFAULT_RULES: list[dict[str, Any]] = [
    _rule(
        "freshness_entity",
        "freshness",
        "entity_silence",
        ">",
        {"warning": 1.0},
        "{entity} has sent nothing on {topic} for {silence_s:.0f} s, "
        "{value:.1f}x its allowed silence of {allowed_s:.0f} s",
        label="silence (in allowed silences)",
        value_format="{:.1f}",
        resolved_message="{entity} is sending on {topic} again",
        cooldown_s=0,  # a silence is already at least min_silence_ms long
    ),
    _rule(
        "freshness_topic",
        "freshness",
        "topic_silence",
        ">",
        {"critical": 1.0},
        "topic {entity} has had no events for {silence_s:.0f} s while the others advance",
        label="topic silence (in allowed silences)",
        value_format="{:.1f}",
        resolved_message="topic {entity} has events again",
        cooldown_s=0,
    ),
]


class FreshnessOperator(Operator):
    sources = tuple(ENTITY_OF)
    observes = (("freshness", "entity_silence"), ("freshness", "topic_silence"))
    reports_late = False  # an event behind the watermark is old data, not lost evidence

    @classmethod
    def default_rules(cls, config: Any = None) -> list[dict[str, Any]]:
        return list(DEFAULT_RULES)

    def __init__(self, config: FreshnessConfig | None = None) -> None:
        super().__init__()
        self.config = config or FreshnessConfig()
        self.steps: dict[int, Step] = {}  # open steps by start
        # (topic, key) -> Track; key "" is the topic itself
        self.tracks: dict[tuple[str, str], Track] = {}
        self.judged: int | None = None  # last step boundary judged (only saves work)
        self.live_last: int | None = None  # last event of any topic in the closed steps
        # dead stretches [start, end) of event time (jump_ms after a last event of any
        # topic, until the next one), oldest first
        self.dead: list[list[int]] = []

    # -- input ---------------------------------------------------------------

    def feed(self, source: str, events: Sequence[Any]) -> None:
        size = self.config.check_ms
        key_of = ENTITY_OF.get(source) if self.config.watch_entities else None
        steps = self.steps
        start: int | None = None
        keys: dict[str, Span] = {}
        for e in events:
            ts = e.ts
            if ts - ts % size != start:  # another step (events come mostly in order)
                start = ts - ts % size
                step = steps.get(start)
                if step is None:
                    step = steps[start] = Step(start)
                keys = step.topics.setdefault(source, {})
            _count(keys, "", ts)
            if key_of is not None:
                _count(keys, key_of(e), ts)

    # -- event time ----------------------------------------------------------

    def advance(self, watermark: int) -> None:
        size = self.config.check_ms
        for start in sorted(s for s in self.steps if s + size <= watermark):
            self._close(start + size, self.steps.pop(start))
        end = watermark - watermark % size  # the last step boundary the watermark passed
        if self.judged is None or end > self.judged:
            self.judged = end
            self._judge(end)

    def _close(self, end: int, step: Step) -> None:
        alpha = self.config.ewma_alpha
        spans = [(s.first, s.last) for keys in step.topics.values() for s in keys.values()]
        if spans:
            first_any = min(f for f, _ in spans)
            self._gap(first_any)
        for topic, keys in sorted(step.topics.items()):
            for key, span in sorted(keys.items()):
                count, first, last = span.count, span.first, span.last
                track = self.tracks.get((topic, key))
                if track is None:
                    track = self.tracks[(topic, key)] = Track(last)
                    track.fold(count, first, last, alpha)
                    continue
                # a silence that began and ended between two judgements still counts
                self._check(topic, key, track, end - self.config.check_ms)
                was = track.last
                track.fold(count, first, last, alpha)
                if track.silent:
                    track.silent = False
                    self._emit(topic, key, 0.0, end, was, track, first)
        if spans:
            last_any = max(t for _, t in spans)
            self.live_last = max(last_any, self.live_last or last_any)

    def _gap(self, upto: int) -> None:
        """Record the dead stretch between the last event of any topic and `upto` (the
        next event, or a boundary the watermark passed: nothing before it is to come)."""
        jump = self.config.jump_ms
        if not jump or self.live_last is None or upto - self.live_last <= jump:
            return
        start = self.live_last + jump
        if self.dead and self.dead[-1][1] >= start:  # the same stretch, known further
            self.dead[-1][1] = max(self.dead[-1][1], upto)
        else:
            self.dead.append([start, upto])

    def _due(self, last: int, allowed: float) -> float:
        """The event time at which `allowed` ms of live (not dead) time have passed
        since `last`."""
        t, remaining = float(last), allowed
        for start, end in self.dead:
            if end <= t:
                continue
            s = max(start, t)
            if s >= t + remaining:
                break
            remaining -= s - t
            t = end
        return t + remaining

    def _live(self, last: int, until: int) -> float:
        """Live event time in [last, until)."""
        dead = sum(max(0, min(end, until) - max(start, last)) for start, end in self.dead)
        return until - last - dead

    def _judge(self, end: int) -> None:
        forget = self.config.forget_ms
        self._gap(end)  # no event before `end` is still to come (end <= the watermark)
        self.dead = [d for d in self.dead if d[1] > end - forget]
        for (topic, key), track in sorted(self.tracks.items()):
            if end - track.last >= forget:
                del self.tracks[(topic, key)]
            else:
                self._check(topic, key, track, end)
        if not self.tracks:  # dead time only shifts the silences of tracked entities
            self.dead = []

    def _check(self, topic: str, key: str, track: Track, until: int) -> None:
        """Fire at the first step boundary <= `until` where the silence exceeds the allowed.

        The boundary is computed, not waited for, so the alert's time does not
        depend on how often the watermark happened to advance."""
        if track.silent or track.n < self.config.min_events:
            return
        size = self.config.check_ms
        allowed = self._allowed(track)
        due = self._due(track.last, allowed)
        boundary = int(due - due % size) + size  # first boundary strictly after `due`
        if boundary <= until:
            track.silent = True
            value = self._live(track.last, boundary) / allowed
            self._emit(topic, key, value, boundary, track.last, track)

    def _allowed(self, track: Track) -> float:
        cfg = self.config
        return min(max(cfg.multiple * track.gap, cfg.min_silence_ms), cfg.max_silence_ms)

    def _emit(
        self,
        topic: str,
        key: str,
        value: float,
        ts: int,
        last: int,
        track: Track,
        back: int | None = None,
    ) -> None:
        details: dict[str, Any] = {
            "topic": topic,
            "last_event_ts": last,
            # live silence (dead stretches of the whole input left out) when it fires
            "silence_s": (self._live(last, ts) if back is None else back - last) / 1000,
            "usual_gap_s": track.gap / 1000,
            "allowed_s": self._allowed(track) / 1000,
        }
        if back is not None:
            details["back_ts"] = back
        self._out.observations.append(
            Observation(
                "freshness",
                key or topic,
                TOPIC_METRIC if not key else ENTITY_METRIC,
                value,
                ts=ts,
                n=track.n,
                window_start=last,
                window_end=ts,
                details=details,
            )
        )

    # -- checkpoints ---------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        tracks: dict[str, dict[str, Track]] = {}
        for (topic, key), track in sorted(self.tracks.items()):
            tracks.setdefault(topic, {})[key] = track
        return CODEC.dump(
            FreshnessState(
                steps=[step for _, step in sorted(self.steps.items())],
                tracks=tracks,
                judged=self.judged,
                live_last=self.live_last,
                dead=self.dead,
            )
        )

    def restore(self, state: dict[str, Any]) -> None:
        typed = CODEC.load(state)
        self.steps = {step.start: step for step in typed.steps}
        self.tracks = {
            (topic, key): track
            for topic, keys in typed.tracks.items()
            for key, track in keys.items()
        }
        self.judged = typed.judged
        self.live_last = typed.live_last
        self.dead = typed.dead


def _count(keys: dict[str, Span], key: str, ts: int) -> None:
    span = keys.get(key)
    if span is None:
        keys[key] = Span(1, ts, ts)
    else:
        span.count += 1
        if ts < span.first:
            span.first = ts
        if ts > span.last:
            span.last = ts


__all__ = [
    "DEFAULT_RULES",
    "ENTITY_METRIC",
    "TOPIC_METRIC",
    "FreshnessConfig",
    "FreshnessOperator",
    "FreshnessState",
    "Span",
    "Step",
    "Track",
]
