"""Trailing baselines of a window metric, per key."""

from __future__ import annotations

import statistics
from collections import deque
from typing import Any


class TrailingMedian:
    """Median of the last `size` values per key.

    The median (not the mean) so that the incident being detected, or one odd
    window, barely moves the baseline it is compared with.
    """

    def __init__(self, size: int, min_count: int) -> None:
        self.size = size
        self.min_count = min_count
        self.values: dict[str, deque[float]] = {}

    def get(self, key: str) -> float | None:
        """The baseline, or None while fewer than `min_count` values are known."""
        values = self.values.get(key)
        if values is None or len(values) < self.min_count:
            return None
        return statistics.median(values)

    def add(self, key: str, value: float) -> None:
        values = self.values.get(key)
        if values is None:
            values = self.values[key] = deque(maxlen=self.size)
        values.append(value)

    def snapshot(self) -> dict[str, Any]:
        return {key: list(values) for key, values in self.values.items()}

    def restore(self, state: dict[str, Any]) -> None:
        self.values = {key: deque(values, maxlen=self.size) for key, values in state.items()}
