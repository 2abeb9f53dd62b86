"""Trailing baselines of a rate (clicks per impression), per key."""

from __future__ import annotations

from collections import deque
from typing import Any


class TrailingRate:
    """The pooled rate of the last `size` windows per key: sum(hits) / sum(trials).

    Pooling (rather than averaging window rates) weights each window by its
    traffic and gives the counts a significance test needs.
    """

    def __init__(self, size: int, min_count: int) -> None:
        self.size = size
        self.min_count = min_count
        self.windows: dict[str, deque[tuple[int, int]]] = {}

    def get(self, key: str) -> tuple[int, int] | None:
        """(hits, trials) of the baseline, or None while fewer than `min_count` windows."""
        windows = self.windows.get(key)
        if windows is None or len(windows) < self.min_count:
            return None
        return sum(h for h, _ in windows), sum(t for _, t in windows)

    def add(self, key: str, hits: int, trials: int) -> None:
        windows = self.windows.get(key)
        if windows is None:
            windows = self.windows[key] = deque(maxlen=self.size)
        windows.append((hits, trials))

    def snapshot(self) -> dict[str, Any]:
        return {key: [list(w) for w in windows] for key, windows in self.windows.items()}

    def restore(self, state: dict[str, Any]) -> None:
        self.windows = {
            key: deque((tuple(w) for w in windows), maxlen=self.size)  # type: ignore[misc]
            for key, windows in state.items()
        }


class ClearedRate:
    """The pooled rate of the last windows per key that a detector has cleared, so
    that an incident does not leak into its own baseline.

    A new window is first *held* (pending); the detector then either *commits*
    the held windows to the baseline (its evidence of a change has returned to
    zero, so they were ordinary) or *discards* them (it raised an alarm, so they
    belong to the incident). Held windows beyond `max_pending` enter the
    baseline oldest first, so a key whose detector never settles still learns a
    slow level change. `get` pools what was committed:

        baseline = sum(hits) / sum(trials) over the last `size` committed windows

    and answers only once at least `min_windows` windows, `min_trials` trials and
    `min_hits` hits are in it. Committed windows are summed in blocks of `block`
    windows (the span is `size` windows rounded up to whole blocks, plus the
    block being filled), so a long span costs size / block entries per key.
    Pooling over a long span (four hours by default for CTR) rather than a few
    windows keeps the estimate's own noise small for small keys and the slow
    decline of a campaign visible against it; the gate (not trimming) is what
    makes it robust to the incident itself.

    >>> r = ClearedRate(size=3, min_windows=2, min_trials=10, max_pending=5)
    >>> _ = r.hold("k", 1, 10); r.commit("k"); _ = r.hold("k", 2, 10); r.get("k") is None
    True
    >>> r.commit("k"); r.get("k")
    (3, 20)
    >>> _ = r.hold("k", 0, 10); r.discard("k"); r.get("k")  # an incident's window
    (3, 20)
    """

    def __init__(
        self,
        size: int,
        min_windows: int,
        min_trials: int,
        max_pending: int,
        min_hits: int = 0,
        block: int = 1,
    ) -> None:
        self.size = size
        self.block = block
        self.min_windows = min_windows
        self.min_trials = min_trials
        self.min_hits = min_hits
        self.max_pending = max_pending
        # per key: blocks [hits, trials, windows], the last one being filled
        # (a list while the key has one block: see `_add`)
        self.windows: dict[str, deque[list[int]] | list[list[int]]] = {}
        self.totals: dict[str, list[int]] = {}  # per key: the sums over its blocks
        self.pending: dict[str, list[list[int]]] = {}

    def get(self, key: str) -> tuple[int, int] | None:
        """(hits, trials) of the committed baseline, or None while too small."""
        total = self.totals.get(key)
        if total is None:
            return None
        hits, trials, windows = total
        if windows < self.min_windows or trials < self.min_trials or hits < self.min_hits:
            return None
        return hits, trials

    def _add(self, key: str, hits: int, trials: int) -> None:
        blocks = self.windows.get(key)
        if blocks is None:
            # a key's first block as a plain list: with many keys most never fill one
            # block, and a deque per key costs more than the rest of this call
            self.windows[key] = [[hits, trials, 1]]
            self.totals[key] = [hits, trials, 1]
            return
        total = self.totals[key]
        last = blocks[-1] if blocks else None
        if last is not None and last[2] < self.block:
            last[0] += hits
            last[1] += trials
            last[2] += 1
        else:
            if not isinstance(blocks, deque):
                # whole blocks covering `size`, plus the one being filled
                blocks = self.windows[key] = deque(blocks, maxlen=-(-self.size // self.block) + 1)
            if len(blocks) == blocks.maxlen:  # the oldest block leaves the span
                old = blocks[0]
                total[0] -= old[0]
                total[1] -= old[1]
                total[2] -= old[2]
            blocks.append([hits, trials, 1])
        total[0] += hits
        total[1] += trials
        total[2] += 1

    def hold(self, key: str, hits: int, trials: int) -> list[int]:
        """Hold a window until the detector commits or discards it; returns its entry
        (for `drop`)."""
        entry = [hits, trials]
        pending = self.pending.setdefault(key, [])
        pending.append(entry)
        if len(pending) > self.max_pending:
            self._add(key, *pending.pop(0))
        return entry

    def learn(self, key: str, hits: int, trials: int) -> None:
        """`hold` then `commit` in one step (what a key without a baseline does with
        each window): the held windows, then this one, enter the baseline in order.

        >>> a, b = ClearedRate(3, 1, 0, 5), ClearedRate(3, 1, 0, 5)
        >>> _ = a.hold("k", 1, 10); _ = b.hold("k", 1, 10)
        >>> _ = a.hold("k", 2, 10); a.commit("k"); b.learn("k", 2, 10)
        >>> a.snapshot() == b.snapshot(), b.get("k")
        (True, (3, 20))
        """
        pending = self.pending.pop(key, None)
        if pending:
            for held_hits, held_trials in pending:
                self._add(key, held_hits, held_trials)
        self._add(key, hits, trials)

    def drop(self, key: str, entry: list[int]) -> None:
        """Forget one held window (judged anomalous on its own), if still held."""
        pending = self.pending.get(key)
        if pending:
            for i, held in enumerate(pending):
                if held is entry:
                    del pending[i]
                    break

    def commit(self, key: str) -> None:
        pending = self.pending.pop(key, None)
        if pending:
            for hits, trials in pending:
                self._add(key, hits, trials)

    def discard(self, key: str) -> None:
        self.pending.pop(key, None)

    def snapshot(self) -> dict[str, Any]:
        return {
            "windows": {key: [list(b) for b in bs] for key, bs in self.windows.items()},
            "pending": {key: [list(w) for w in ws] for key, ws in self.pending.items()},
        }

    def restore(self, state: dict[str, Any]) -> None:
        size = -(-self.size // self.block) + 1
        self.windows = {
            key: deque((list(b) for b in bs), maxlen=size) for key, bs in state["windows"].items()
        }
        self.totals = {
            key: [sum(b[i] for b in bs) for i in range(3)] for key, bs in self.windows.items()
        }
        self.pending = {key: [list(w) for w in ws] for key, ws in state["pending"].items()}
