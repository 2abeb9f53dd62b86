"""Drive one monitor of the registry over a `Case` of tests/conformance_inputs.py.

The task is built as the worker builds it (`streams.runtime.monitors.build_monitors` over the
default configuration, with every monitor of the registry switched on and the case's
options): the operator with its default rules, change detection and relations. A run
records every row, every observation (the operator's and change detection's) and every
alert, in the order they were emitted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

import msgspec

from operators.base import Observation
from operators.task import MonitorTask
from schemas.events import Alert
from schemas.rows import Row
from streams.config import Settings, load_settings
from streams.connectors import checkpoints
from streams.runtime.monitors import OPERATORS, build_monitors
from tests.conformance_inputs import Case

NOW = 1_000  # processing time: constant, so no source ever counts as idle


@dataclass
class Run:
    rows: list[tuple[str, Row]] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    late: int = 0
    #: at a restore: the snapshot restored from, and the restored task's own (canonical)
    snapshots: list[Any] = field(default_factory=list)

    def canon(self) -> tuple[list[Any], list[Any], list[Any]]:
        return (
            [canon(r) for r in self.rows],
            [canon(o) for o in self.observations],
            [canon(a) for a in self.alerts],
        )


def canon(value: Any) -> Any:
    """Plain, comparable data: dicts with sorted keys, NaN as a string, structs as dicts."""
    if isinstance(value, msgspec.Struct):  # alerts, rows
        value = msgspec.structs.asdict(value)
    elif is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in fields(value)}
    if isinstance(value, dict):
        return tuple(sorted((str(k), canon(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(canon(v) for v in value)
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


def settings_for(name: str, case: Case) -> Settings:
    overrides: dict[str, Any] = {f"monitors.{n}.enabled": True for n in OPERATORS}
    overrides[f"monitors.{name}.options"] = dict(case.options)
    overrides[f"monitors.{name}.lateness_s"] = case.lateness_s
    return load_settings(env={}, overrides=overrides)


def task_factory(name: str, case: Case) -> Callable[[], MonitorTask]:
    (spec,) = [s for s in build_monitors(settings_for(name, case)) if s.name == name]
    return spec.make_task


def batches(events: Sequence[tuple[str, Any]], size: int) -> list[tuple[str, list[Any]]]:
    """Consecutive events of one source, at most `size` per batch, in the given order."""
    out: list[tuple[str, list[Any]]] = []
    for source, event in events:
        if out and out[-1][0] == source and len(out[-1][1]) < size:
            out[-1][1].append(event)
        else:
            out.append((source, [event]))
    return out


def _record(task: MonitorTask, run: Run) -> None:
    """Route the operator's and change detection's observations into `run`."""
    operator_collect = task.operator.collect

    def collect() -> Any:
        out = operator_collect()
        run.observations.extend(out.observations)
        return out

    task.operator.collect = collect  # type: ignore[method-assign]
    if task.changes is not None:
        observe = task.changes.observe

        def changes(observations: list[Observation]) -> list[Observation]:
            found = observe(observations)
            run.observations.extend(found)
            return found

        task.changes.observe = changes  # type: ignore[method-assign]


def _drain(task: MonitorTask, run: Run) -> None:
    out = task.collect()
    for table, rows in out.rows.items():
        run.rows.extend((table, row) for row in rows)
    run.alerts.extend(out.alerts)


def drive(
    make: Callable[[], MonitorTask],
    events: Sequence[tuple[str, Any]],
    *,
    batch: int = 50,
    split_at: int | None = None,
    far_ms: int | None = None,
    restore_from: bytes | None = None,
) -> tuple[Run, MonitorTask]:
    """Feed `events` in batches (tick and collect after each), replacing the task before
    batch `split_at` by a new one restored from its snapshot through msgpack (as the
    worker's checkpoints are); then finish (end of input) or, with `far_ms`,
    move the watermark that far past the last event instead. With `restore_from` (an
    encoded checkpoint, e.g. one written by an older version), the new task is restored
    from it instead of from the task's own snapshot."""
    run = Run()
    task = make()
    _record(task, run)
    for i, (source, chunk) in enumerate(batches(events, batch)):
        if i == split_at:
            # through the worker's checkpoint encoding (msgpack), as after a restart:
            # its parts encoded from their typed states, the bytes of the plain snapshot's
            blob = checkpoints.encode(checkpoints.Checkpoint({}, task.snapshot_encoded()))
            plain = checkpoints.encode(checkpoints.Checkpoint({}, task.snapshot()))
            assert blob == plain, "snapshot_encoded() is not the bytes of snapshot()"
            if restore_from is not None:
                blob = restore_from
            task = make()
            state = checkpoints.decode(blob).state
            task.restore(state)
            run.snapshots = [canon(checkpoints.decode(blob).state), canon(task.snapshot())]
            _record(task, run)
        run.late += len(task.feed(source, chunk, NOW))
        task.tick(NOW)
        _drain(task, run)
    if far_ms is None:
        task.finish()
    else:
        # every source idle: the task follows its worker's watermark (the floor)
        last = max(e.ts for _, e in events)
        task.tick(NOW + 10**12, floor=last + far_ms)
    _drain(task, run)
    return run, task
