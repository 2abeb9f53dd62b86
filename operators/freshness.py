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

from operators.base import Observation, Operator
from operators.rules import rule_spec as _rule

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


class Track:
    """What is known about one entity (or topic): its last event and usual gap."""

    __slots__ = ("gap", "last", "n", "silent")

    def __init__(self, last: int, gap: float = -1.0, n: int = 0, silent: bool = False) -> None:
        self.last = last
        self.gap = gap  # usual gap between events (ms), an EWMA; < 0: no gap seen yet
        self.n = n  # events seen
        self.silent = silent  # an entity_silence > 1 was emitted and no data since

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

    def to_list(self) -> list[Any]:
        return [self.last, self.gap, self.n, self.silent]


Step = dict[str, dict[str, list[int]]]  # topic -> key -> [count, min ts, max ts]


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
        for e in events:
            ts = e.ts
            step = self.steps.setdefault(ts - ts % size, {}).setdefault(source, {})
            _count(step, "", ts)
            if key_of is not None:
                _count(step, key_of(e), ts)

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
        spans = [(first, last) for keys in step.values() for _, first, last in keys.values()]
        if spans:
            first_any = min(f for f, _ in spans)
            self._gap(first_any)
        for topic, keys in sorted(step.items()):
            for key, (count, first, last) in sorted(keys.items()):
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
        return {
            "steps": [[start, step] for start, step in sorted(self.steps.items())],
            "tracks": [[t, k, *tr.to_list()] for (t, k), tr in sorted(self.tracks.items())],
            "judged": self.judged,
            "live_last": self.live_last,
            "dead": [list(d) for d in self.dead],
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.steps = {
            start: {t: {k: list(v) for k, v in keys.items()} for t, keys in step.items()}
            for start, step in state["steps"]
        }
        self.tracks = {
            (t, k): Track(last, gap, n, silent) for t, k, last, gap, n, silent in state["tracks"]
        }
        self.judged = state["judged"]
        self.live_last = state.get("live_last")  # older snapshots: no dead time known
        self.dead = [list(d) for d in state.get("dead", [])]


def _count(step: dict[str, list[int]], key: str, ts: int) -> None:
    agg = step.get(key)
    if agg is None:
        step[key] = [1, ts, ts]
    else:
        agg[0] += 1
        if ts < agg[1]:
            agg[1] = ts
        if ts > agg[2]:
            agg[2] = ts


__all__ = [
    "DEFAULT_RULES",
    "ENTITY_METRIC",
    "TOPIC_METRIC",
    "FreshnessConfig",
    "FreshnessOperator",
    "Track",
]
