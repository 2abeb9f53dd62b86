"""One monitor over one partition: watermark, late-event split, operator, rules.

This is the whole per-partition state a worker checkpoints. The Kafka layer
calls `feed` with decoded events, `tick` after each batch, then `collect`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from operators.base import Operator
from operators.rules import RuleEngine
from operators.watermark import NO_WATERMARK, Watermark
from schemas.events import Alert

if TYPE_CHECKING:
    from operators.change import ChangeDetectors


@dataclass(slots=True)
class TaskOutput:
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    alerts: list[Alert] = field(default_factory=list)


class MonitorTask:
    def __init__(
        self,
        operator: Operator,
        rules: RuleEngine,
        lateness_ms: int,
        idle_timeout_ms: int,
        *,
        changes: ChangeDetectors | None = None,
    ) -> None:
        self.operator = operator
        self.rules = rules
        # optional change detection on the operator's observations (kind "change")
        self.changes = changes
        self.watermark = Watermark(operator.sources, lateness_ms, idle_timeout_ms)

    def feed(
        self, source: str, events: Sequence[Any], now_ms: int, progress: int | None = None
    ) -> list[int]:
        """Feed one source's events; return the indices of the late ones (not fed).

        `progress`: how far this source has got in event time, where that is not
        its events' largest time: a re-keyed source merges several upstream
        partitions and has got only as far as the slowest of them
        (streams/repartition.py)."""
        if not events:
            return []
        wm = self.watermark.value
        times = [e.ts for e in events]
        late: list[int] = []
        if min(times) < wm:
            late = [i for i, t in enumerate(times) if t < wm]
            skip = set(late)
            events = [e for i, e in enumerate(events) if i not in skip]
            times = [t for i, t in enumerate(times) if i not in skip]
        if events:
            self.operator.feed(source, events)
            self.watermark.observe(source, max(times) if progress is None else progress, now_ms)
        else:
            self.watermark.observe(source, wm, now_ms)
        return late

    def tick(self, now_ms: int, floor: int = NO_WATERMARK) -> int:
        """Advance the watermark (and close windows) as far as the input allows."""
        before = self.watermark.value
        after = self.watermark.update(now_ms, floor)
        if after > before:
            self.operator.advance(after)
        return after

    def collect(self) -> TaskOutput:
        out = self.operator.collect()
        observations = out.observations
        if self.changes is not None and observations:
            observations = observations + self.changes.observe(observations)
        return TaskOutput(rows=out.rows, alerts=self.rules.evaluate(observations))

    def snapshot(self) -> dict[str, Any]:
        state = {
            "watermark": self.watermark.snapshot(),
            "operator": self.operator.snapshot(),
            "rules": self.rules.snapshot(),
        }
        if self.changes is not None:
            state["changes"] = self.changes.snapshot()
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self.watermark.restore(state["watermark"])
        self.operator.restore(state["operator"])
        self.rules.restore(state["rules"])
        if self.changes is not None:
            # a snapshot from before change detection was enabled starts it afresh
            self.changes.restore(state.get("changes", {}))
