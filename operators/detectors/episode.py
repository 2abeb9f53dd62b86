"""The episode state machine: one alert per anomalous stretch (hysteresis).

An episode opens on an anomalous reading and stays open until `quiet`
consecutive readings are normal; only then does it end. A noisy anomalous
stretch (anomalous, normal, anomalous, ...) is therefore one episode, so the
rule engine raises one `firing` and one `resolved` alert for it. After an
episode ends, a new one may open only after `cooldown` further readings (a
cooldown counted in the series' own readings, whatever its cadence).

The one machine behind every alert episode: the sensor and autoencoder monitors
run it on their readings, the rule engine (`operators.rules.RuleEngine`) on each
rule's observations of an entity. For the engine a reading has a level, the
severity it crosses (1, 2, 3 for info, warning, critical; 0 for none): an open
episode whose reading crosses a higher level escalates; a reading that `holds`
(past the line, but without the evidence to fire) neither fires nor counts as
clear; and the caller may veto a start (`may_start`: the engine's cooldown in
event time since it last fired).

>>> e = Episode(quiet=2, cooldown=1)
>>> [e.update(a) for a in (False, True, False, True, False, False, True, True)]
[None, 'start', None, None, None, 'end', None, 'start']
>>> e = Episode(quiet=2)
>>> [e.update(level) for level in (2, 1, 3, 0, 0)], e.level
(['start', None, 'escalate', None, 'end'], 0)
>>> e = Episode(quiet=2)
>>> [e.update(1), e.update(0, hold=True), e.update(0), e.update(0)]
['start', None, None, 'end']
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

Transition = Literal["start", "escalate", "end"] | None


class Episode(msgspec.Struct):
    """The machine's state is its fields (a msgspec Struct): it snapshots and restores
    as a typed field of its owner's state (`operators.state`)."""

    quiet: int = 1
    cooldown: int = 0
    active: bool = False
    level: int = 0  # the open episode's highest level (True counts as 1)
    normal_run: int = 0  # consecutive normal readings inside the episode
    since_end: int = -1  # readings since the last episode ended (-1: `cooldown`)
    length: int = 0  # readings in the current episode

    def __post_init__(self) -> None:
        if self.quiet < 1 or self.cooldown < 0:
            raise ValueError("quiet must be >= 1 and cooldown >= 0")
        if self.since_end < 0:  # a new machine may start at once
            self.since_end = self.cooldown

    def update(self, anomalous: int, hold: bool = False, may_start: bool = True) -> Transition:
        """One judged reading; returns "start", "escalate", "end" or None.

        `anomalous`: False/0 for a normal reading, True or a level >= 1 for an
        anomalous one. `hold`: a normal reading that does not count towards ending
        the episode either. `may_start`: False vetoes opening an episode here."""
        if self.active:
            self.length += 1
            if anomalous:
                self.normal_run = 0
                # a level above the episode's: it goes on at the higher level
                if self.level and anomalous > self.level:
                    self.level = int(anomalous)
                    return "escalate"
                return None
            if hold:
                self.normal_run = 0
                return None
            self.normal_run += 1
            if self.normal_run >= self.quiet:
                self.active, self.level = False, 0
                self.since_end = 0
                return "end"
            return None
        self.since_end += 1
        if anomalous and may_start and self.since_end > self.cooldown:
            self.active, self.normal_run, self.length = True, 0, 1
            self.level = int(anomalous)
            return "start"
        return None

    def close(self) -> Transition:
        """End an open episode without a reading (the series went silent)."""
        if not self.active:
            return None
        self.active, self.level = False, 0
        self.since_end = 0
        return "end"

    def snapshot(self) -> list[Any]:
        """State format 1 (positional), kept while owners still write it."""
        return [self.active, self.normal_run, self.since_end, self.length, self.level]

    def restore(self, state: list[Any]) -> None:
        self.active, self.normal_run, self.since_end, self.length = (
            bool(state[0]),
            int(state[1]),
            int(state[2]),
            int(state[3]),
        )
        # a snapshot from before levels: an open episode is at level 1 (True)
        self.level = int(state[4]) if len(state) > 4 else int(self.active)
