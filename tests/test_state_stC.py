"""Typed, versioned state of the drift, service, SRM, quality and freshness monitors
(issue 12, point 3; the rules in operators/state.py).

Per monitor: a snapshot is `{"format": 2, "state": ...}` whose state is exactly the
fields of the operator's state Struct, composite keys are tuples (never "\\x1f"-joined),
a snapshot of a format this code does not know is refused with a StateFormatError naming
the monitor, and format-1 snapshots keep their meaning where the layout changed (the
real format-1 checkpoints are tests/test_state_upgrade.py's).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import msgspec
import numpy as np
import pytest

from operators.drift import DriftConfig, DriftOperator, DriftState
from operators.freshness import FreshnessState
from operators.quality import QualityState
from operators.reference import PREDICTION, build_profile
from operators.service import ServiceOperator, ServiceState
from operators.srm import SrmOperator, SrmState
from operators.state import StateFormatError
from schemas.events import InferenceLog
from streams.connectors import checkpoints
from tests.conformance import batches, canon, task_factory
from tests.conformance_inputs import GENERATORS

STATES: dict[str, type[msgspec.Struct]] = {
    "drift": DriftState,
    "service": ServiceState,
    "srm": SrmState,
    "quality": QualityState,
    "freshness": FreshnessState,
}
T0 = 1_795_000_200_000  # a 5-minute boundary
W = 300_000


@functools.cache
def _checkpoint(name: str) -> bytes:
    """The encoded checkpoint of the monitor's task mid-way through its conformance
    case, as the worker writes it."""
    case = GENERATORS[name]()
    task = task_factory(name, case)()
    chunks = batches(case.events, 50)
    for source, chunk in chunks[: len(chunks) // 2]:
        task.feed(source, chunk, 1_000)
        task.tick(1_000)
        task.collect()
    return checkpoints.encode(checkpoints.Checkpoint({}, task.snapshot()))


def operator_snapshot(name: str) -> dict[str, Any]:
    """The operator's snapshot in that checkpoint (through msgpack)."""
    return checkpoints.decode(_checkpoint(name)).state["state"]["operator"]


def _keys(value: Any) -> list[Any]:
    """Every mapping key anywhere in plain data."""
    if isinstance(value, dict):
        return [k for k, v in value.items() for k in (k, *_keys(v))]
    if isinstance(value, list | tuple):
        return [k for v in value for k in _keys(v)]
    return []


@pytest.mark.parametrize("name", sorted(STATES))
def test_snapshot_is_versioned_typed_state(name: str) -> None:
    snap = operator_snapshot(name)
    assert set(snap) == {"format", "state"} and snap["format"] == 2
    assert set(snap["state"]) == set(STATES[name].__struct_fields__)
    # it is the state type's plain form, and nothing but it
    typed = msgspec.convert(snap["state"], type=STATES[name])
    assert canon(msgspec.to_builtins(typed)) == canon(snap["state"])
    joined = [k for k in _keys(snap["state"]) if isinstance(k, str) and "\x1f" in k]
    assert not joined, f"{name}: string-joined keys in its state: {joined[:3]}"


@pytest.mark.parametrize("name", sorted(STATES))
def test_an_unknown_format_is_refused_naming_the_monitor(name: str) -> None:
    snap = operator_snapshot(name)
    operator = task_factory(name, GENERATORS[name]())().operator
    for newer in ({"format": 3, "state": snap["state"]}, {"format": 0, "state": snap["state"]}):
        with pytest.raises(StateFormatError, match=f"^{name}: a checkpoint in state format"):
            operator.restore(newer)
    # the current format with a layout that does not fit: refused, not half-used
    broken = {"format": 2, "state": {**snap["state"], "windows": [["not", "a", "mapping"]]}}
    if name == "freshness":
        broken = {"format": 2, "state": {**snap["state"], "tracks": [1, 2]}}
    with pytest.raises(StateFormatError, match=f"^{name}: .*does not fit"):
        operator.restore(broken)


def test_composite_keys_are_tuples() -> None:
    service = operator_snapshot("service")["state"]
    assert {k for bucket in service["windows"].values() for k in bucket} == {("m1", "v1")}
    srm = operator_snapshot("srm")["state"]
    assert srm["cusum"] and all(
        isinstance(k, tuple) and len(k) == 3 and k[2] in "+-" for k in srm["cusum"]
    )
    quality = operator_snapshot("quality")["state"]
    assert all(isinstance(k, tuple) for b in quality["windows"].values() for k in b)


def test_service_format_1_keys_are_split() -> None:
    op = ServiceOperator()
    op.restore(
        {
            "windows": [[T0, "m1\x1fv2", 3, 1, [10.0, 20.0, 30.0], [0.9]]],
            "error_cusum": {"m1\x1fv2": 2.5},
        }
    )
    assert op.error_cusum.state == {("m1", "v2"): 2.5}
    op.advance(T0 + 60_000)
    out = op.collect()
    [row] = out.rows["inference_windows"]
    assert (row.model_id, row.model_version, row.requests) == ("m1", "v2", 3)
    [err] = [o for o in out.observations if o.metric == "error_rate"]
    assert err.entity == "m1/v2" and err.details["cusum"] > 2.5  # 1 error in 3: evidence


def test_srm_format_1_cusum_keys_and_user_sets() -> None:
    op = SrmOperator()
    op.restore(
        {
            "unit": "impressions",
            "windows": [],
            "cumulative": {"e1": [T0, {"A": 10, "B": 12}]},  # before the mSPRT and dims
            "cusum": {"e1\x1fA\x1f+": 1.5},
        }
    )
    assert op.cusum == {("e1", "A", "+"): 1.5}
    assert op.cumulative["e1"].running == {} and op.cumulative["e1"].dims == {}
    with pytest.raises(ValueError, match="srm snapshot counts impressions"):
        SrmOperator(dataclasses.replace(op.config, unit="users")).restore(op.snapshot())


def _log(i: int, ts: int, x1: float | str) -> InferenceLog:
    return InferenceLog(
        ts=ts,
        request_id=f"r{i}",
        model_id="m1",
        model_version="v1",
        features={"x1": x1},
        prediction=0.5,
        latency_ms=10.0,
        status="ok",
    )


def test_drift_format_1_mismatch_counts_as_non_numeric() -> None:
    """Format 1 kept a numeric feature's numbers in an array (code "d") and counted the
    strings offered to it apart; a format-1 window restores to the same figures as the
    window fed with those strings, and its numbers to an array again."""
    rng = np.random.default_rng(3)
    ref = build_profile(
        [{"x1": float(v), "prediction": 0.5} for v in rng.normal(size=500)], "m1", "ref"
    )
    cfg = DriftConfig(min_count=10, warmup_events=None)
    values = [float(v) for v in rng.normal(size=60)]

    fed = DriftOperator(cfg, references={"m1": ref})
    fed.feed("inference-logs", [_log(i, T0 + i, v) for i, v in enumerate(values)])
    fed.feed("inference-logs", [_log(100 + i, T0 + 100 + i, "n/a") for i in range(4)])
    fed.advance(T0 + W)

    old_window = [64, {"v1": 64}, {"x1": ["d", values], "__prediction__": ["d", [0.5] * 64]}]
    old_window += [{"x1": 4}, [], False, True, None]
    restored = DriftOperator(cfg, references={"m1": ref})
    restored.restore(
        {
            "windows": [[T0, "m1", old_window]],
            "carry": {},
            "learned": {},
            "warmup": {},
            "dropped_windows": 0,
        }
    )
    assert restored.snapshot()["state"]["windows"][T0]["m1"]["numeric"] == ["x1", PREDICTION]
    restored.advance(T0 + W)
    got, want = restored.collect(), fed.collect()
    assert got.rows == want.rows
    x1 = [o for o in got.observations if o.entity == "m1/x1"]
    assert x1 and x1[0].details["non_numeric"] == 4
    assert [o.details for o in got.observations] == [o.details for o in want.observations]


def test_quality_refuses_a_snapshot_of_no_known_format() -> None:
    from operators.quality import QualityOperator

    with pytest.raises(StateFormatError, match=r"quality: .*snapshot format 7"):
        QualityOperator().restore({"format": 7, "windows": []})


def test_freshness_dead_time_behind_the_last_event_survives_a_restore() -> None:
    """A dead stretch the input has already moved past (the jump 34:55 -> 60:00, events
    again since) cannot be found again from the state after it: the restore must keep
    it, or c2's silence is judged as if that stretch were live (the conformance case has
    no jump; this is the check of `dead` in the state)."""
    from operators.freshness import FreshnessConfig, FreshnessOperator
    from tests.test_freshness_operator import MIN, run, traffic
    from tests.test_freshness_operator import T0 as F0

    events = traffic({"c1": (0, 10 * MIN), "c2": (0, 30 * MIN), "c3": (60 * MIN, 70 * MIN)})
    before = [e for e in events if e.ts < F0 + 62 * MIN]
    after = [e for e in events if e.ts >= F0 + 62 * MIN]
    expected = run(FreshnessOperator(FreshnessConfig()), events, [F0 + 62 * MIN, F0 + 70 * MIN])
    first = FreshnessOperator(FreshnessConfig())
    got = run(first, before, [F0 + 62 * MIN])
    assert first.dead  # the stretch is known, and behind the last event
    second = FreshnessOperator(FreshnessConfig())
    second.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(first.snapshot())))
    got += run(second, after, [F0 + 70 * MIN])
    fired = {o.entity: o.ts - F0 for o in got if o.value > 1}
    assert fired["c2"] == 66 * MIN  # live silence: 5 minutes before the jump, 6 after
    assert got == expected


def test_freshness_format_1_tracks_keep_their_silence() -> None:
    """A format-1 track that had fired ([topic, key, last, gap, n, silent]) stays silent:
    its data coming back resolves it instead of firing it again."""
    from operators.freshness import FreshnessOperator
    from tests.test_freshness_operator import MIN, imp
    from tests.test_freshness_operator import T0 as F0

    op = FreshnessOperator()
    op.restore(
        {
            "steps": [],
            "tracks": [["impressions", "c1", F0, 5_000.0, 50, True]],
            "judged": F0 + 20 * MIN,
            "live_last": F0 + 20 * MIN,
        }
    )
    assert op.tracks[("impressions", "c1")].silent and op.dead == []
    op.feed("impressions", [imp(1, F0 + 21 * MIN, "c1")])
    op.advance(F0 + 22 * MIN)
    assert [(o.entity, o.value) for o in op.collect().observations] == [("c1", 0.0)]
