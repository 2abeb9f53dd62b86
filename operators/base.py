"""The one operator interface every monitor implements, and what operators emit.

An operator is pure: it is fed decoded events, told how far event time has
advanced (the watermark), and drained of its results. It never reads a clock,
a topic or a database, so the same input always yields the same output.

    op.feed(source, events)   # events of one input topic, in arrival order
    op.advance(watermark)     # close everything that ends at or before it
    op.collect()              # rows for ClickHouse (schemas.rows), observations for the rules
    op.snapshot() / op.restore(state)   # plain data for checkpoints
    op.snapshot_encoded()               # the same snapshot, msgpack-encoded (the worker's)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import msgspec

from schemas.rows import Row


class Observation(msgspec.Struct, frozen=True):
    """A measured figure that alert rules judge (e.g. a window's CTR).

    A frozen msgspec Struct rather than a frozen dataclass: built in C, ~0.09 µs
    against ~0.86 µs (a frozen dataclass sets every field through
    `object.__setattr__`), and with many keys nearly every event yields one (issue 18;
    BENCHMARKS.md "Measurements behind design choices"). Immutable either way;
    `msgspec.structs.replace` derives a changed copy.
    """

    kind: str  # alert kind: ctr, sensor, cluster, drift, service, srm, change
    entity: str  # campaign, sensor, model, model/feature, experiment
    metric: str
    value: float
    ts: int  # event time of the evidence (ms)
    n: int = 0  # samples behind the figure; rules may require a minimum
    window_start: int | None = None
    window_end: int | None = None
    details: dict[str, Any] = msgspec.field(default_factory=dict)
    # probability of a deviation at least this large by chance, where the
    # operator can say; rules may require it to be small (`max_p_value`)
    p_value: float | None = None


@dataclass(slots=True)
class Output:
    """What an operator emitted since it was last collected."""

    #: table name -> its rows (of the table's row type, `schemas.rows`), in emission order
    rows: dict[str, list[Row]] = field(default_factory=dict)
    observations: list[Observation] = field(default_factory=list)

    def add_row(self, row: Row) -> None:
        """Add a row to its table's (`row.__table__`). The row was built by keyword from
        its typed definition, so a misspelt or missing column has already failed in the
        operator that made it (TypeError), not when the writer inserts it, far from its
        cause (issue 12, point 2)."""
        self.rows.setdefault(row.__table__.name, []).append(row)

    def extend(self, other: Output) -> None:
        for table, rows in other.rows.items():
            self.rows.setdefault(table, []).extend(rows)
        self.observations.extend(other.observations)

    def __bool__(self) -> bool:
        return bool(self.rows or self.observations)


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What the worker knows beyond a monitor's own options, offered to every operator
    alike (`Operator.build`); each takes what it needs."""

    #: model_id -> reference profile (`operators.reference.ReferenceProfile`) from the
    #: configured `drift_references` files
    references: Mapping[str, Any] = field(default_factory=dict)


class Operator(ABC):
    """A monitor's logic over one partition of its input topics."""

    #: input topics this operator reads; the watermark is the minimum across them
    sources: tuple[str, ...] = ()
    #: whether events behind the watermark are reported as late (late_events);
    #: False where a late event loses nothing (freshness: data did arrive)
    reports_late: bool = True
    #: the (alert kind, metric) of every observation it emits; each has a default rule
    #: (`default_rules`), both checked by tests/test_conformance.py
    observes: tuple[tuple[str, str], ...] = ()
    #: the event field its inputs must be keyed by when that is not the topics' own
    #: key (e.g. "experiment"): the worker re-keys them (streams/runtime/repartition.py)
    keyed_by: str | None = None

    def __init__(self) -> None:
        self._out = Output()

    @classmethod
    def sources_for(cls, config: Any) -> tuple[str, ...]:
        """The inputs an operator of this config reads: `sources` unless an option
        adds or drops one (ctr reads conversions only when joining them)."""
        return cls.sources

    @classmethod
    def default_rules(cls, config: Any = None) -> list[dict[str, Any]]:
        """The default alert rules of its observations, as data (`operators.rules.rule_spec`),
        declared next to the code that emits them and collected by `operators.registry`
        into `streams.config.DEFAULT_RULES`. `config` is the monitor's config dataclass
        (None: its defaults), for rules whose evidence level follows its options."""
        return []

    @classmethod
    def build(cls, config: Any, context: BuildContext) -> Self:
        """The operator of a monitor: its config dataclass and the shared context (the
        worker builds every monitor this way; most need only their config)."""
        return cls(config)  # type: ignore[call-arg]

    @abstractmethod
    def feed(self, source: str, events: Sequence[Any]) -> None:
        """Add on-time events of one source (late ones are filtered out before)."""

    @abstractmethod
    def advance(self, watermark: int) -> None:
        """Event time has reached `watermark` (ms): close what ends at or before it."""

    def collect(self) -> Output:
        """Drain and return what was emitted since the last call."""
        out, self._out = self._out, Output()
        return out

    def late_window(self, source: str, event: Any) -> int:
        """Where a late event of `source` would have counted: the start of its window
        (the `window_start` of its `late_events` row). By default the event's own time,
        for operators without windows, which judge each event on its own (cluster,
        autoencoder); operators with windows say which window."""
        return int(event.ts)

    @abstractmethod
    def snapshot(self) -> dict[str, Any]:
        """Plain data (msgpack-able) from which `restore` rebuilds the state."""

    def snapshot_encoded(self) -> msgspec.Raw:
        """`snapshot()` already encoded (msgpack), for a checkpoint: the same bytes
        `msgspec.msgpack.encode(self.snapshot())` gives. An operator whose snapshot is its
        codec's dump of a typed state, and large, writes it with `StateCodec.encode`
        instead, without the plain copy (the CTR, sensor and cluster operators;
        tests/conformance.py holds every operator to the same bytes)."""
        return msgspec.Raw(msgspec.msgpack.encode(self.snapshot()))

    @abstractmethod
    def restore(self, state: dict[str, Any]) -> None:
        """Replace the state with a snapshot's."""
