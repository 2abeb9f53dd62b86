"""One monitor over one partition: watermark, late-event split, operator, rules.

This is the whole per-partition state a worker checkpoints. The Kafka layer
calls `feed` with decoded events, `tick` after each batch, then `collect`.

Its snapshot (`operators.state`, format 2) is `TaskState`: the versioned snapshot of
each part, each restored (or upgraded, or refused) by its own codec: the watermark,
the operator, the rule engine, and where configured change detection and the
relations. Format 1 (the same parts unversioned, written before state formats) is
upgraded: its parts are format 1 of each part's own codec. A part that cannot be
restored raises `StateFormatError` naming the monitor and the part; the worker stops
on it (docs/operations.md, "Upgrading").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import msgspec

from operators.base import Operator
from operators.rules import RuleEngine
from operators.state import FORMAT_KEY, StateCodec, StateFormatError
from operators.watermark import NO_WATERMARK, Watermark
from schemas.events import Alert
from schemas.rows import Row

if TYPE_CHECKING:
    from operators.causes import RelationLearner
    from operators.change import ChangeDetectors


@dataclass(slots=True)
class TaskOutput:
    rows: dict[str, list[Row]] = field(default_factory=dict)
    alerts: list[Alert] = field(default_factory=list)


class TaskState(msgspec.Struct):
    """A task's checkpointed state: each part's own versioned snapshot
    (`{"format", "state"}`, restored by that part's codec)."""

    watermark: dict[str, Any]
    operator: dict[str, Any]
    rules: dict[str, Any]
    changes: dict[str, Any] | None = None  # None: change detection was off
    relations: dict[str, Any] | None = None  # None: no relations were learned


def _from_format_1(plain: dict[str, Any]) -> dict[str, Any]:
    """Format 1: the same parts, each in its own format 1 (upgraded by its codec)."""
    return {part: plain.get(part) for part in TaskState.__struct_fields__}


_TS = attrgetter("ts")


def _decoded_parts(snapshot: Any) -> Any:
    """A snapshot of `snapshot_encoded` handed over in memory (not read back from the
    broker) with its encoded parts as plain data again; any other as it is."""
    parts = snapshot.get("state") if isinstance(snapshot, dict) else None
    if not isinstance(parts, dict) or not any(type(p) is msgspec.Raw for p in parts.values()):
        return snapshot
    decode = msgspec.msgpack.decode
    plain = {k: decode(p) if type(p) is msgspec.Raw else p for k, p in parts.items()}
    return {**snapshot, "state": plain}


CODEC = StateCodec("monitor task", TaskState, format=2, upgrades={1: _from_format_1})


class MonitorTask:
    def __init__(
        self,
        operator: Operator,
        rules: RuleEngine,
        lateness_ms: int,
        idle_timeout_ms: int,
        *,
        changes: ChangeDetectors | None = None,
        relations: RelationLearner | None = None,
        name: str | None = None,
    ) -> None:
        # the monitor's name: a refused checkpoint's message names it
        self.name = name
        self.operator = operator
        self.rules = rules
        # optional change detection on the operator's observations (kind "change")
        self.changes = changes
        # optional: relations learned from the input (a campaign's models, a sensor's
        # site), attached to alerts as `details.related` hints (operators.causes)
        self.relations = relations
        self.watermark = Watermark(operator.sources, lateness_ms, idle_timeout_ms)

    def feed(
        self, source: str, events: Sequence[Any], now_ms: int, progress: int | None = None
    ) -> list[int]:
        """Feed one source's events; return the indices of the late ones (not fed).

        `progress`: how far this source has got in event time, where that is not
        its events' largest time: a re-keyed source merges several upstream
        partitions and has got only as far as the slowest of them
        (streams/runtime/repartition.py)."""
        if not events:
            return []
        wm = self.watermark.value
        times = list(map(_TS, events))  # in C: no Python step per event
        late: list[int] = []
        if min(times) < wm:
            late = [i for i, t in enumerate(times) if t < wm]
            skip = set(late)
            events = [e for i, e in enumerate(events) if i not in skip]
            times = [t for i, t in enumerate(times) if i not in skip]
        if events:
            self.operator.feed(source, events)
            if self.relations is not None:
                self.relations.observe(source, events, times)
            self.watermark.observe(source, max(times) if progress is None else progress, now_ms)
        else:
            self.watermark.observe(source, wm, now_ms)
        return late if self.operator.reports_late else []

    def tick(self, now_ms: int, floor: int = NO_WATERMARK) -> int:
        """Advance the watermark (and close windows) as far as the input allows."""
        before = self.watermark.value
        after = self.watermark.update(now_ms, floor)
        if after > before:
            self.operator.advance(after)
            if self.relations is not None:
                self.relations.expire(after)
        return after

    def finish(self) -> int:
        """End of input (an orderly stop, the end of a replay, or an input idle past its
        timeout): judge every event fed so far, as if the lateness had elapsed.

        The watermark moves to one past the largest event time seen, so every held
        reading is released and judged and every window ending by then closes; a
        tumbling window still open (it ends after the last event) stays open until
        input resumes. Events at or before the last one seen are late afterwards
        (the price of closing at a stop). Returns the new watermark; collect after."""
        seen = self.watermark.max_ts.values()
        if not seen:
            return self.watermark.value
        end = max(seen) + 1
        if end > self.watermark.value:
            self.watermark.value = end
            self.operator.advance(end)
        return self.watermark.value

    def quiet_ms(self, now_ms: int) -> int:
        """Processing time since any source of this task last delivered events (since
        this task was first used when none has yet, e.g. after a restart; 0 before)."""
        wm = self.watermark
        last = max(wm.last_seen.values(), default=wm.started)
        return 0 if last is None else max(0, now_ms - last)

    def input_ended(self, now_ms: int, quiet_ms: int) -> bool:
        """True when the input of this task has been silent for `quiet_ms`, and at least
        for its allowed lateness: in live operation (event time close to processing
        time) no event within the lateness of the last one seen can still come after
        that silence, so `finish` then closes only what the lateness would have closed."""
        return self.quiet_ms(now_ms) >= max(quiet_ms, self.watermark.lateness_ms)

    def collect(self) -> TaskOutput:
        out = self.operator.collect()
        observations = out.observations
        if self.changes is not None and observations:
            observations = observations + self.changes.observe(observations)
        alerts = self.rules.evaluate(observations)
        if self.relations is not None:
            for alert in alerts:
                hints = self.relations.hints(alert.entity, alert.ts)
                if hints:
                    alert.details = {**alert.details, "related": hints}
        return TaskOutput(rows=out.rows, alerts=alerts)

    def snapshot(self) -> dict[str, Any]:
        return self._versioned(encoded=False)

    def snapshot_encoded(self) -> dict[str, Any]:
        """`snapshot()` as the worker checkpoints it: the same, with the operator's and
        the relations' parts already msgpack-encoded (`msgspec.Raw`, written from their
        typed states without a plain copy first), which `checkpoints.encode` embeds as
        they are: the checkpoint's bytes are the same (tests/conformance.py, `drive`)."""
        return self._versioned(encoded=True)

    def _versioned(self, encoded: bool) -> dict[str, Any]:
        operator: Any = self.operator.snapshot_encoded if encoded else self.operator.snapshot
        relations: Any = None
        if self.relations is not None:
            relations = self.relations.snapshot_encoded if encoded else self.relations.snapshot
        state = TaskState(
            watermark=self.watermark.snapshot(),
            operator=operator(),
            rules=self.rules.snapshot(),
            changes=self.changes.snapshot() if self.changes is not None else None,
            relations=relations() if relations is not None else None,
        )
        # the parts are plain copies (or bytes) already, each made by its part's own
        # codec: CODEC.dump's to_builtins would copy every one of them a second time
        return {FORMAT_KEY: CODEC.format, "state": msgspec.structs.asdict(state)}

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Restore every part, or raise StateFormatError naming the monitor and the
        part. Parts before the refused one may be restored already: a refused task
        must not be used (the worker stops on it)."""
        snapshot = _decoded_parts(snapshot)
        try:
            state = CODEC.load(snapshot)
            self.watermark.restore(state.watermark)
            self.operator.restore(state.operator)
            self.rules.restore(state.rules)
            if self.changes is not None:
                # a snapshot from before change detection was enabled starts it afresh
                self.changes.restore(state.changes or {})
            if self.relations is not None:
                # a snapshot from before relations were learned starts them afresh
                self.relations.restore(state.relations or {})
        except StateFormatError as exc:
            if self.name is None:
                raise
            raise StateFormatError(
                f"monitor {self.name}: {exc}".replace("<monitor>", self.name)
            ) from exc
