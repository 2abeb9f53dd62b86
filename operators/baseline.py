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
