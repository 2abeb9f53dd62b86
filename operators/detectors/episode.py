"""The episode state machine: one alert per anomalous stretch (hysteresis).

An episode opens on an anomalous reading and stays open until `quiet`
consecutive readings are normal; only then does it end. A noisy anomalous
stretch (anomalous, normal, anomalous, ...) is therefore one episode, so the
rule engine raises one `firing` and one `resolved` alert for it. After an
episode ends, a new one may open only after `cooldown` further readings (a
cooldown counted in the series' own readings, whatever its cadence; the rule
engine's `cooldown_s` counts event time on top).

>>> e = Episode(quiet=2, cooldown=1)
>>> [e.update(a) for a in (False, True, False, True, False, False, True, True)]
[None, 'start', None, None, None, 'end', None, 'start']
"""

from __future__ import annotations

from typing import Any, Literal

Transition = Literal["start", "end"] | None


class Episode:
    __slots__ = ("active", "cooldown", "length", "normal_run", "quiet", "since_end")

    def __init__(self, quiet: int = 1, cooldown: int = 0) -> None:
        if quiet < 1 or cooldown < 0:
            raise ValueError("quiet must be >= 1 and cooldown >= 0")
        self.quiet = quiet
        self.cooldown = cooldown
        self.active = False
        self.normal_run = 0  # consecutive normal readings inside the episode
        self.since_end = cooldown  # readings since the last episode ended
        self.length = 0  # readings in the current episode

    def update(self, anomalous: bool) -> Transition:
        """One judged reading; returns "start", "end" or None."""
        if self.active:
            self.length += 1
            if anomalous:
                self.normal_run = 0
                return None
            self.normal_run += 1
            if self.normal_run >= self.quiet:
                self.active = False
                self.since_end = 0
                return "end"
            return None
        self.since_end += 1
        if anomalous and self.since_end > self.cooldown:
            self.active, self.normal_run, self.length = True, 0, 1
            return "start"
        return None

    def close(self) -> Transition:
        """End an open episode without a reading (the series went silent)."""
        if not self.active:
            return None
        self.active = False
        self.since_end = 0
        return "end"

    def snapshot(self) -> list[Any]:
        return [self.active, self.normal_run, self.since_end, self.length]

    def restore(self, state: list[Any]) -> None:
        self.active, self.normal_run, self.since_end, self.length = (
            bool(state[0]),
            int(state[1]),
            int(state[2]),
            int(state[3]),
        )
