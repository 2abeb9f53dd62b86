"""Tumbling event-time windows aligned to the epoch.

A window is [start, start + size) with start = ts - ts mod size. Windows are
kept by start in sorted order so the ones ending before a watermark are found
without scanning every key. Every monitor with tumbling windows uses this.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from operator import itemgetter
from typing import Any, Generic, TypeVar

S = TypeVar("S")

#: a window's key: an entity id, or a tuple of them for a composite key (never a
#: string joined with a separator: tuples sort, snapshot and restore as they are)
Key = str | tuple[Any, ...]


def window_start(ts: int, size_ms: int) -> int:
    return ts - ts % size_ms


_FIRST, _SECOND = itemgetter(0), itemgetter(1)


def sorted_pairs(keys: Iterable[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """`sorted(keys)` of 2-tuples, in two stable sorts by one element each (the second,
    then the first): the same list, since sorting by the second and then stably by the
    first is lexicographic order (Knuth, TAOCP 5.2.5, least significant key first).
    Faster: each pass compares strings, not tuples, and the pass by the second (a CTR
    window's variant, nearly always the same few) is nearly a no-op (~0.55x the time of
    `sorted` for 20 k (campaign, variant) keys, issue 18).

    >>> keys = [("b", ""), ("a", "B"), ("a", "A"), ("c", "A"), ("a", "")]
    >>> sorted_pairs(keys) == sorted(keys)
    True
    """
    out = sorted(keys, key=_SECOND)
    out.sort(key=_FIRST)
    return out


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

    def __init__(
        self,
        size_ms: int,
        factory: Callable[[], S],
        sort_keys: Callable[[Iterable[Any]], list[Any]] = sorted,
    ) -> None:
        self.size_ms = size_ms
        self.factory = factory
        # how a bucket's keys are put in order: `sorted`, or a faster function giving
        # the same list for the owner's keys (`sorted_pairs` for 2-tuples)
        self.sort_keys = sort_keys
        self.by_start: dict[int, dict[Key, S]] = {}
        self.starts: list[int] = []  # sorted keys of by_start
        # derived: a bucket's keys in sorted order, kept from the first time they are
        # read in order (so a bucket read by `ending_between` and then popped is sorted
        # once, not twice: with many keys the sorts were a tenth of the CTR pipeline's
        # cost, issue 18); keys added to the bucket after that wait in `_added` and are
        # merged into the order when it is read next (a CTR window gets orphan clicks'
        # keys between its provisional and its final row: merging those few costs a
        # fraction of sorting the whole bucket again)
        self._order: dict[int, list[Key]] = {}
        self._added: dict[int, list[Key]] = {}

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
            if self._order and start in self._order:
                self._added.setdefault(start, []).append(key)
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
        if self._order and start in self._order:
            self._added.setdefault(start, []).append(key)

    def _sorted(self, start: int, bucket: dict[Key, S]) -> list[Key]:
        order = self._order.get(start)
        if order is not None:
            added = self._added.pop(start, None)
            if added:
                # a new list (a caller may still hold the old one): the sorted run and
                # the added keys' sorted run, which the sort merges in one linear pass
                order = order + self.sort_keys(added)
                order.sort()
                self._order[start] = order
        # a length that differs: keys were removed from the bucket in place (as the
        # quality monitor does)
        if order is None or len(order) != len(bucket):
            order = self._order[start] = self.sort_keys(bucket)
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
            self._added.pop(start, None)
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
        self._added = {}

    def clear(self) -> None:
        self.by_start.clear()
        self.starts.clear()
        self._order.clear()
        self._added.clear()

    def __len__(self) -> int:
        return sum(len(b) for b in self.by_start.values())
