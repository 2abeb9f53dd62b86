"""Event-time watermarks.

The watermark of a task is the minimum, over its input sources (topic
partitions), of the largest event time seen on each, less the allowed
lateness:

    W = min_s max_ts(s) - lateness

An event with `ts < W` is late. Windows ending at or before W are closed.
W never moves backwards.

A source that has sent nothing for `idle_timeout_ms` of processing time is
left out of the minimum, so an idle partition (e.g. no clicks at night) does
not hold every window open forever. This is the one place wall-clock time
enters; it is passed in (`now_ms`), never read here.

State (`operators.state`): what a checkpoint keeps is `WatermarkState`, the largest
event time per source and W itself (format 2; format 1 was the same two fields
without a version, upgraded as it is). Processing times are not kept: after a
restart every source counts as fresh.

>>> wm = Watermark(("a",), lateness_ms=10, idle_timeout_ms=1000)
>>> wm.observe("a", 500, now_ms=0)
>>> wm.update(now_ms=0)
490
>>> wm.snapshot()
{'format': 2, 'state': {'max_ts': {'a': 500}, 'value': 490}}
"""

from __future__ import annotations

from typing import Any

import msgspec

from operators.state import StateCodec

NO_WATERMARK = -(2**62)


class WatermarkState(msgspec.Struct):
    """A watermark's checkpointed state."""

    max_ts: dict[str, int] = {}  # source -> the largest event time it delivered
    value: int = NO_WATERMARK  # W


def _from_format_1(plain: dict[str, Any]) -> dict[str, Any]:
    """Format 1 ({"max_ts", "value"}, unversioned) has format 2's fields."""
    return {"max_ts": dict(plain["max_ts"]), "value": plain["value"]}


CODEC = StateCodec("watermark", WatermarkState, format=2, upgrades={1: _from_format_1})


class Watermark:
    def __init__(self, sources: tuple[str, ...], lateness_ms: int, idle_timeout_ms: int) -> None:
        self.sources = sources
        self.lateness_ms = lateness_ms
        self.idle_timeout_ms = idle_timeout_ms
        self.max_ts: dict[str, int] = {}
        self.last_seen: dict[str, int] = {}  # processing time of each source's last event
        self.started: int | None = None  # processing time this tracker was first used
        self.value = NO_WATERMARK

    def observe(self, source: str, max_ts: int, now_ms: int) -> None:
        """Record that `source` delivered events up to `max_ts` at processing time `now_ms`."""
        if self.started is None:
            self.started = now_ms
        if max_ts > self.max_ts.get(source, NO_WATERMARK):
            self.max_ts[source] = max_ts
        self.last_seen[source] = now_ms

    def waiting(self, source: str, now_ms: int) -> None:
        """`source` has events the worker has not read yet (consumer lag): it is not
        idle, however long since its last event was read. Under CPU starvation a
        partition's fetched data can wait in the consumer's queue longer than the idle
        timeout; counted idle, it would let the watermark pass events still to come."""
        self.last_seen[source] = max(self.last_seen.get(source, now_ms), now_ms)

    def pause(self, ms: int) -> None:
        """The input was not read for `ms` (backpressure): that is not idleness."""
        self.last_seen = {s: t + ms for s, t in self.last_seen.items()}
        if self.started is not None:
            self.started += ms

    def idle(self, now_ms: int) -> bool:
        """True when every source has been silent for the idle timeout."""
        return not self._active(now_ms)

    def _active(self, now_ms: int) -> list[str]:
        if self.started is None:
            self.started = now_ms
        return [
            s
            for s in self.sources
            if now_ms - self.last_seen.get(s, self.started) < self.idle_timeout_ms
        ]

    def update(self, now_ms: int, floor: int = NO_WATERMARK) -> int:
        """Recompute W. `floor` is where a fully idle task may follow its worker's watermark."""
        active = self._active(now_ms)
        if not active:
            candidate = floor
        elif all(s in self.max_ts for s in active):
            candidate = min(self.max_ts[s] for s in active) - self.lateness_ms
        else:
            candidate = NO_WATERMARK  # an active source has sent nothing yet: wait for it
        self.value = max(self.value, candidate)
        return self.value

    def is_late(self, ts: int) -> bool:
        return ts < self.value

    def snapshot(self) -> dict[str, Any]:
        # processing times are not kept: after a restart every source counts as fresh
        return CODEC.dump(WatermarkState(max_ts=self.max_ts, value=self.value))

    def restore(self, snapshot: dict[str, Any]) -> None:
        state = CODEC.load(snapshot)
        self.max_ts = state.max_ts
        self.value = state.value
        self.last_seen = {}
        self.started = None
