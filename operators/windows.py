"""Tumbling event-time windows aligned to the epoch.

A window is [start, start + size) with start = ts - ts mod size. Windows are
kept by start in sorted order so the ones ending before a watermark are found
without scanning every key. Every monitor with tumbling windows uses this.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

S = TypeVar("S")

#: a window's key: an entity id, or a tuple of them for a composite key (never a
#: string joined with a separator: tuples sort, snapshot and restore as they are)
Key = str | tuple[Any, ...]


def window_start(ts: int, size_ms: int) -> int:
    return ts - ts % size_ms


class TumblingWindows(Generic[S]):
    """State of type S per (key, window), created on first use by `factory`.

    For checkpoints, `state()` is every window by start then key, and `load` takes it
    back; with S a msgspec Struct that mapping is the typed state itself
    (`operators.state`), so no operator reaches into how the windows are kept.

    >>> import msgspec
    >>> class Count(msgspec.Struct):
    ...     n: int = 0
    >>> windows = TumblingWindows(60_000, Count)
    >>> windows.at(("campaign-1", "arm-a"), 61_000).n += 2
    >>> plain = msgspec.to_builtins(windows.state())
    >>> again = TumblingWindows(60_000, Count)
    >>> again.load(msgspec.convert(plain, type=dict[int, dict[tuple[str, str], Count]]))
    >>> [(start, key, w.n) for start, key, w in again.pop_ending_until(120_000)]
    [(60000, ('campaign-1', 'arm-a'), 2)]
    """

    def __init__(self, size_ms: int, factory: Callable[[], S]) -> None:
        self.size_ms = size_ms
        self.factory = factory
        self.by_start: dict[int, dict[Key, S]] = {}
        self.starts: list[int] = []  # sorted keys of by_start
        # derived: a bucket's keys in sorted order, kept from the first time they are
        # read in order until a key is added (so a bucket read by `ending_between` and
        # then popped is sorted once, not twice: with many keys the sorts were a tenth
        # of the CTR pipeline's cost, issue 18)
        self._order: dict[int, list[Key]] = {}

    def at(self, key: Key, ts: int) -> S:
        """The state of the window of `key` that contains `ts`."""
        start = ts - ts % self.size_ms
        bucket = self.by_start.get(start)
        if bucket is None:
            bucket = self.by_start[start] = {}
            bisect.insort(self.starts, start)
        state = bucket.get(key)
        if state is None:
            state = bucket[key] = self.factory()
            if self._order:
                self._order.pop(start, None)
        return state

    def insert(self, key: Key, start: int, state: S) -> None:
        """Add the window of `key` starting at `start` (a multiple of the size), which
        must not exist yet, with `state`: `at` for a caller that builds a new window's
        state itself instead of the factory's and then changing it."""
        bucket = self.by_start.get(start)
        if bucket is None:
            bucket = self.by_start[start] = {}
            bisect.insort(self.starts, start)
        bucket[key] = state
        if self._order:
            self._order.pop(start, None)

    def _sorted(self, start: int, bucket: dict[Key, S]) -> list[Key]:
        order = self._order.get(start)
        # a length that differs: keys were removed from the bucket in place (as the
        # quality monitor does); an added key has dropped the order already
        if order is None or len(order) != len(bucket):
            order = self._order[start] = sorted(bucket)
        return order

    def buckets_ending_between(
        self, after: int, until: int
    ) -> list[tuple[int, list[Key], dict[Key, S]]]:
        """(start, its keys in order, its windows by key) of the starts with
        after < end <= until, by start (kept in place): `ending_between` without a
        tuple per window."""
        lo = bisect.bisect_right(self.starts, after - self.size_ms)
        hi = bisect.bisect_right(self.starts, until - self.size_ms)
        by_start = self.by_start
        return [
            (start, self._sorted(start, by_start[start]), by_start[start])
            for start in self.starts[lo:hi]
        ]

    def ending_between(self, after: int, until: int) -> Iterator[tuple[int, Key, S]]:
        """Windows with after < end <= until, by start then key (kept in place)."""
        for start, keys, bucket in self.buckets_ending_between(after, until):
            for key in keys:
                yield start, key, bucket[key]

    def pop_ending_until(self, until: int) -> list[tuple[int, Key, S]]:
        """Remove and return the windows with end <= until, by start then key."""
        closed = []
        for start, order, bucket in self.pop_buckets_until(until):
            closed.extend([(start, key, bucket[key]) for key in order])
        return closed

    def pop_buckets_until(self, until: int) -> list[tuple[int, list[Key], dict[Key, S]]]:
        """Remove and return (start, its keys in order, its windows by key) of the
        starts with end <= until, by start: `pop_ending_until` without a tuple per
        window (with many keys nearly one per event, issue 18)."""
        hi = bisect.bisect_right(self.starts, until - self.size_ms)
        if not hi:
            return []
        closed = []
        for start in self.starts[:hi]:
            bucket = self.by_start.pop(start)
            order = self._sorted(start, bucket)
            del self._order[start]
            closed.append((start, order, bucket))
        del self.starts[:hi]
        return closed

    def items(self) -> Iterator[tuple[int, Key, S]]:
        for start in self.starts:
            for key, state in self.by_start[start].items():
                yield start, key, state

    def state(self) -> dict[int, dict[Key, S]]:
        """Every window, by start then key: what a snapshot keeps (not a copy)."""
        return self.by_start

    def load(self, by_start: dict[int, dict[Key, S]]) -> None:
        """Replace every window with those of `state()` (e.g. as restored)."""
        self.by_start = {start: dict(bucket) for start, bucket in by_start.items() if bucket}
        self.starts = sorted(self.by_start)
        self._order = {}

    def clear(self) -> None:
        self.by_start.clear()
        self.starts.clear()
        self._order.clear()

    def __len__(self) -> int:
        return sum(len(b) for b in self.by_start.values())
