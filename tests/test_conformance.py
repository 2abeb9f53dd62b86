"""The conformance suite: properties every monitor of the registry must have (issue 12, point 5).

Run over `streams.runtime.monitors.OPERATORS`, so a new monitor is included automatically; its input
comes from `tests.conformance_inputs.GENERATORS` (a monitor without an entry fails here). The
task is built as the worker builds it: operator, default rules, change detection, relations.

1. A snapshot taken mid-stream, through msgpack, restored into a new task, gives exactly the
   rows, observations and alerts of the uninterrupted run (at several points), and the
   restored task's snapshot equals the one it was restored from.
2. Any arrival order within the allowed lateness gives what the sorted input gives: the
   tables' final view (one row per key, as `SELECT ... FINAL` shows it), the observations and
   the alerts (as sets); no event is late.
3. After a watermark far past all input, the operator holds nothing of its windows and
   entities: its snapshot has the shape of a fresh operator's (every container as empty),
   apart from the learned models its case names in `keeps` (and the relations expired).
   The rule engine's and change detection's memory per entity is not judged here.
4. Every emitted row is of its table's row type (`schemas.rows`, so it has exactly the
   table's columns but `inserted_at`), each value of the column's type.
5. Every observation is of a (kind, metric) the operator declares (`Operator.observes`), and
   every declared and every change-detection metric has a default rule.

Deliberately broken variants tried (each made this suite fail, then reverted):
- a CTR restore that forgets the baseline (`CtrOperator.restore` without
  `self.judge.restore(...)`): property 1 fails (the alerts after the restore differ, and the
  restored snapshot lacks the baselines);
- a misspelt `window_strat` in the cluster's `sensor_anomalies` rows: property 4 failed
  while rows were dicts; typed rows (`schemas.rows`) now refuse it where the row is built
  (TypeError, tests/test_rows.py), so the cluster operator fails before any property;
- the SRM operator no longer popping closed windows (`pop_ending_until` -> `ending_between`):
  properties 2 (rows emitted again at every step) and 3 (windows kept) fail;
- the service operator emitting `latency_p95` observations it does not declare: property 5
  fails;
- the sensor restore dropping the pending (not yet judged) readings: property 1 fails;
- the quality operator counting a label that arrives before its prediction as an orphan at
  once (instead of holding it until the watermark passes): property 2 fails.
"""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest

from operators.change import DEFAULT_WATCH, METHODS
from schemas.rows import Row
from schemas.tables import TABLES_BY_NAME, Table
from streams.config import load_settings
from streams.runtime.monitors import OPERATORS
from tests.conformance import Run, batches, canon, drive, task_factory
from tests.conformance_inputs import GENERATORS, Case

MONITORS = sorted(OPERATORS)
FAR_MS = 30 * 86_400_000  # a month past the last event


def case_of(name: str) -> Case:
    if name not in GENERATORS:
        pytest.fail(
            f"monitor {name!r} has no input generator: add one to "
            "tests/conformance_inputs.py GENERATORS (every monitor must pass this suite)"
        )
    return GENERATORS[name]()


_RUNS: dict[str, Run] = {}


def uninterrupted(name: str) -> Run:
    """The reference run of a monitor over its case (computed once per session)."""
    if name not in _RUNS:
        case = case_of(name)
        run, _ = drive(task_factory(name, case), case.events)
        assert run.late == 0
        assert run.rows or name == "freshness", f"{name}: its case emits no rows"
        assert run.observations, f"{name}: its case emits no observations"
        assert run.alerts or not case.alerts, f"{name}: its case raises no alert"
        _RUNS[name] = run
    return _RUNS[name]


def test_every_monitor_has_a_generator() -> None:
    assert set(OPERATORS) <= set(GENERATORS), sorted(set(OPERATORS) - set(GENERATORS))
    assert set(GENERATORS) <= set(OPERATORS), "a generator of no monitor (renamed?)"


# -- 1. snapshot -> msgpack -> restore ---------------------------------------------------


@pytest.mark.parametrize("name", MONITORS)
def test_restore_mid_stream_equals_uninterrupted(name: str) -> None:
    case = case_of(name)
    make = task_factory(name, case)
    want = uninterrupted(name).canon()
    n_batches = len(batches(case.events, 50))
    for fraction in (0.2, 0.45, 0.7, 0.9):
        split = max(1, int(n_batches * fraction))
        got, _ = drive(make, case.events, split_at=split)
        assert got.snapshots and got.snapshots[0] == got.snapshots[1], (
            f"{name}: the restored task's snapshot differs from the one it came from "
            f"(batch {split} of {n_batches})"
        )
        for what, g, w in zip(("rows", "observations", "alerts"), got.canon(), want, strict=True):
            assert g == w, f"{name}: {what} differ after a restore at batch {split}/{n_batches}"


# -- 2. arrival order within the lateness ------------------------------------------------


def final_view(run: Run) -> dict[str, dict[Any, Any]]:
    """Per table, one row per key (its ORDER BY columns): the highest version, or the
    last written where a table has no version column (ReplacingMergeTree under FINAL)."""
    view: dict[str, dict[Any, Any]] = {}
    for table, row in run.rows:
        spec = TABLES_BY_NAME[table]
        key = tuple(getattr(row, c) for c in spec.order_by)
        rows = view.setdefault(table, {})
        old = rows.get(key)
        if (
            old is None
            or spec.version is None
            or getattr(row, spec.version) >= getattr(old, spec.version)
        ):
            rows[key] = row
    return {t: {k: canon(r) for k, r in rows.items()} for t, rows in view.items()}


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("name", MONITORS)
def test_arrival_order_within_lateness_equals_sorted(name: str, seed: int) -> None:
    case = case_of(name)
    rng = random.Random(seed)
    lateness = round(case.lateness_s * 1000)
    # sort by a jittered time: an event is overtaken only by events less than the
    # lateness newer than it, so none falls behind the watermark
    shuffled = sorted(case.events, key=lambda se: se[1].ts + rng.uniform(0, lateness - 1))
    assert shuffled != case.events
    got, _ = drive(task_factory(name, case), shuffled, batch=rng.choice([7, 50, 400]))
    want = uninterrupted(name)
    assert got.late == 0
    assert final_view(got) == final_view(want), f"{name}: the tables' final view differs"
    assert sorted(map(repr, map(canon, got.observations))) == sorted(
        map(repr, map(canon, want.observations))
    ), f"{name}: observations differ"
    assert sorted(map(repr, map(canon, got.alerts))) == sorted(
        map(repr, map(canon, want.alerts))
    ), f"{name}: alerts differ"


# -- 3. state after a watermark far past all input ---------------------------------------


def shape(value: Any) -> Any:
    """The containers of a snapshot, scalars (counters, times) left out."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [shape(v) for v in value]
    return None


def state_of(snapshot: Any) -> Any:
    """An operator's state: a versioned snapshot's `state` (`operators.state`), or the
    snapshot itself (state format 1)."""
    if isinstance(snapshot, dict) and "format" in snapshot and "state" in snapshot:
        return snapshot["state"]
    return snapshot


@pytest.mark.parametrize("name", MONITORS)
def test_state_is_empty_after_a_watermark_far_past_all_input(name: str) -> None:
    case = case_of(name)
    make = task_factory(name, case)
    _, task = drive(make, case.events, far_ms=FAR_MS)
    fresh = make()
    after, before = state_of(task.operator.snapshot()), state_of(fresh.operator.snapshot())
    assert set(case.keeps) <= set(after), f"{name}: keeps names keys its snapshot lacks"
    for key in sorted(set(after) | set(before)):
        if key in case.keeps:
            continue
        assert shape(after.get(key)) == shape(before.get(key)), (
            f"{name}: snapshot[{key!r}] still holds state a month after the last event"
        )
    if task.relations is not None:
        assert shape(task.relations.snapshot()) == shape(fresh.relations.snapshot())


# -- 4. rows match their tables ----------------------------------------------------------


def _type_ok(kind: str, value: Any) -> bool:
    if kind.startswith("Nullable("):
        return value is None or _type_ok(kind[len("Nullable(") : -1], value)
    if kind.startswith("LowCardinality("):
        return _type_ok(kind[len("LowCardinality(") : -1], value)
    if kind.startswith("DateTime64"):
        return isinstance(value, int) and not isinstance(value, bool)
    if kind.startswith("UInt"):
        return (
            isinstance(value, int)
            and value >= 0
            and (kind == "UInt8" or not isinstance(value, bool))
        )
    if kind.startswith("Float"):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "String":  # dicts and lists are written as JSON
        return isinstance(value, str | dict | list)
    raise AssertionError(f"no check for the column type {kind}")


def row_problems(table: Table, typed: Row) -> list[str]:
    if type(typed) is not table.row:
        return [f"a {type(typed).__name__}, not the table's {table.row.__name__}"]
    row = msgspec.structs.asdict(typed)
    problems = []
    kinds = dict(table.columns)
    unknown = sorted(set(row) - set(kinds))
    missing = sorted(set(table.insert_columns) - set(row))
    if unknown:
        problems.append(f"unknown columns {unknown}")
    if missing:
        problems.append(f"missing columns {missing}")
    for column, value in row.items():
        if column in kinds and not _type_ok(kinds[column].split(" DEFAULT ")[0], value):
            problems.append(f"{column}={value!r} is not {kinds[column]}")
    return problems


@pytest.mark.parametrize("name", MONITORS)
def test_every_row_matches_its_table(name: str) -> None:
    run = uninterrupted(name)
    for table, row in run.rows:
        assert table in TABLES_BY_NAME, f"{name}: rows for a table that does not exist: {table}"
        problems = row_problems(TABLES_BY_NAME[table], row)
        assert not problems, f"{name}: a {table} row: {'; '.join(problems)}: {row}"


# -- 5. declared metrics, default rules --------------------------------------------------


@pytest.mark.parametrize("name", MONITORS)
def test_observations_are_declared_and_have_default_rules(name: str) -> None:
    operator_type = OPERATORS[name][0]
    declared = set(operator_type.observes)
    assert declared, f"{name}: {operator_type.__name__}.observes declares no metric"
    ruled = {(r.kind, r.metric) for r in load_settings(env={}).rules}
    # a metric only change detection judges (quality's window accuracy) is ruled through
    # the change metrics it raises
    watched = {
        (kind, metric)
        for kind, metric in DEFAULT_WATCH
        if all(("change", f"{metric}_change_{m}") in ruled for m in METHODS)
    }
    assert declared <= ruled | watched, f"{name}: declared metrics without a default rule: " + str(
        sorted(declared - ruled - watched)
    )
    run = uninterrupted(name)
    observed = {(o.kind, o.metric) for o in run.observations}
    changes = {m for m in observed if m[0] == "change"}
    assert observed - changes <= declared, f"{name}: undeclared observations: " + str(
        sorted(observed - changes - declared)
    )
    assert changes <= ruled, f"{name}: change metrics without a default rule: " + str(
        sorted(changes - ruled)
    )
