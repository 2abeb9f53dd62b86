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
    """The pooled rate of the last `size` windows per key that a detector has
    cleared, so that an incident does not leak into its own baseline.

    A new window is first *held* (pending); the detector then either *commits*
    the held windows to the baseline (its evidence of a change has returned to
    zero, so they were ordinary) or *discards* them (it raised an alarm, so they
    belong to the incident). Held windows beyond `max_pending` enter the
    baseline oldest first, so a key whose detector never settles still learns a
    slow level change. `get` pools what was committed:

        baseline = sum(hits) / sum(trials) over the last `size` committed windows

    and answers only once at least `min_windows` windows and `min_trials` trials
    are in it. Pooling over a long span (an hour by default for CTR) rather than
    a few windows keeps the estimate's own noise small for small keys; the gate
    (not trimming) is what makes it robust to the incident itself.

    >>> r = ClearedRate(size=3, min_windows=2, min_trials=10, max_pending=5)
    >>> _ = r.hold("k", 1, 10); r.commit("k"); _ = r.hold("k", 2, 10); r.get("k") is None
    True
    >>> r.commit("k"); r.get("k")
    (3, 20)
    >>> _ = r.hold("k", 0, 10); r.discard("k"); r.get("k")  # an incident's window
    (3, 20)
    """

    def __init__(self, size: int, min_windows: int, min_trials: int, max_pending: int) -> None:
        self.size = size
        self.min_windows = min_windows
        self.min_trials = min_trials
        self.max_pending = max_pending
        self.windows: dict[str, deque[list[int]]] = {}
        self.pending: dict[str, list[list[int]]] = {}

    def get(self, key: str) -> tuple[int, int] | None:
        """(hits, trials) of the committed baseline, or None while too small."""
        windows = self.windows.get(key)
        if windows is None or len(windows) < self.min_windows:
            return None
        hits = sum(w[0] for w in windows)
        trials = sum(w[1] for w in windows)
        return (hits, trials) if trials >= self.min_trials else None

    def _committed(self, key: str) -> deque[list[int]]:
        windows = self.windows.get(key)
        if windows is None:
            windows = self.windows[key] = deque(maxlen=self.size)
        return windows

    def hold(self, key: str, hits: int, trials: int) -> list[int]:
        """Hold a window until the detector commits or discards it; returns its entry
        (for `drop`)."""
        entry = [hits, trials]
        pending = self.pending.setdefault(key, [])
        pending.append(entry)
        if len(pending) > self.max_pending:
            self._committed(key).append(pending.pop(0))
        return entry

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
            self._committed(key).extend(pending)

    def discard(self, key: str) -> None:
        self.pending.pop(key, None)

    def snapshot(self) -> dict[str, Any]:
        return {
            "windows": {key: [list(w) for w in ws] for key, ws in self.windows.items()},
            "pending": {key: [list(w) for w in ws] for key, ws in self.pending.items()},
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.windows = {
            key: deque((list(w) for w in ws), maxlen=self.size)
            for key, ws in state["windows"].items()
        }
        self.pending = {key: [list(w) for w in ws] for key, ws in state["pending"].items()}
