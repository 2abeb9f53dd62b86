"""The cluster monitor's column path (`ClusterOperator._known_columns`, issue 18: a
release whose sensors all have a model, of the same features, taken in passes in C)
against its reading-by-reading path (`_columns`, which tests/test_cluster_batch_kernel.py
holds equal to the pure-Python reference): the same rows, observations, counters and
snapshots, batch after batch, on streams where releases take either path (new sensors
mid-run, readings missing a feature, a sensor with another feature set, integer values,
a restore mid-run)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from operators.cluster import ClusterConfig, ClusterOperator
from schemas.events import SensorReading

T0 = 1_795_000_020_000
SRC = "sensor-readings"
CFG = ClusterConfig(n_clusters=3, warmup=5, history=12, quantile=0.8, halflife=0.2, seed=5)


class ReadingByReading(ClusterOperator):
    """The monitor with its column path off: every release through `_columns`."""

    def _known_columns(self, released: list[Any]) -> None:
        return None


def _out(op: ClusterOperator) -> tuple[Any, ...]:
    out = op.collect()
    observations = [
        (o.entity, o.ts, o.value, o.n, o.window_start, o.details) for o in out.observations
    ]
    return out.rows, observations, op.skipped, op.out_of_range


@settings(max_examples=60, deadline=None)
@given(
    stream=st.lists(
        st.tuples(
            st.sampled_from(["s1", "s2", "s3"] * 6 + ["t1", "s4"]),  # t1: an extra feature
            st.integers(0, 3000),  # gap, ms
            st.floats(-5, 5, allow_nan=False),
            st.floats(-5, 5, allow_nan=False),
            st.booleans(),  # far out
            st.integers(0, 60),  # 0: "b" missing
            st.booleans(),  # integer values
        ),
        min_size=40,
        max_size=150,
    ),
    batch=st.integers(1, 40),
    restore_at=st.integers(0, 10),
)
def test_column_path_is_the_reading_by_reading_path(
    stream: list[Any], batch: int, restore_at: int
) -> None:
    _compare(stream, batch, restore_at)


def _compare(stream: list[Any], batch: int, restore_at: int) -> int:
    """Feed both monitors `stream` in batches; assert they agree throughout; return how
    many releases took the column path."""
    events, t = [], T0
    for sid, gap, a, b, far, keep_b, ints in stream:
        t += gap
        v: dict[str, float] = {"a": a * 40 if far else a, "b": b + (30.0 if far else 0.0)}
        if ints:
            v = {k: round(x) for k, x in v.items()}
        if sid.startswith("t"):
            v["c"] = v["a"] - v["b"]
        if not keep_b:
            del v["b"]
        events.append(SensorReading(sensor_id=sid, ts=t, values=v))
    fast, slow = ClusterOperator(CFG), ReadingByReading(CFG)
    taken = 0
    original = fast._known_columns

    def counted(released: list[Any]) -> Any:
        nonlocal taken
        cols = original(released)
        taken += cols is not None
        return cols

    fast._known_columns = counted  # type: ignore[method-assign]
    for c, i in enumerate(range(0, len(events), batch)):
        chunk = events[i : i + batch]
        if c == restore_at:
            snap = fast.snapshot()
            assert snap == slow.snapshot()
            fast.restore(snap)
        for op in (fast, slow):
            op.feed(SRC, chunk)
            op.advance(chunk[0].ts - 2_000)
        assert _out(fast) == _out(slow)
    for op in (fast, slow):
        op.advance(t + 1)
    assert _out(fast) == _out(slow)
    assert fast.snapshot() == slow.snapshot()
    return taken


def test_the_column_path_is_exercised() -> None:
    """The property above takes the column path (not only the reading-by-reading one)."""
    stream = [
        (f"s{i % 3}", 700, i % 5 - 2.0, 1.0, i % 37 == 0, 1 + i % 40, i % 2) for i in range(120)
    ]
    assert _compare(stream, batch=12, restore_at=4)


def test_the_column_path_is_taken_on_known_sensors_only() -> None:
    op = ClusterOperator(CFG)
    readings = [
        SensorReading(sensor_id=f"s{i % 3}", ts=T0 + 1000 * i, values={"a": 1.0 * i, "b": 2.0})
        for i in range(30)
    ]
    op.feed(SRC, readings[:3])
    op.advance(T0 + 3_000)  # the three models made
    op.feed(SRC, readings[3:])
    cols = op._known_columns(op.pending.held[:10])
    assert cols is not None and list(cols[0]) == list(range(10))
    assert cols[1] == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0] and cols[3].tolist()[:2] == [3.0, 2.0]
    assert op._known_columns([(T0, "new", {"a": 1.0, "b": 1.0}, "")]) is None
    assert op._known_columns([(T0, "s1", {"a": 1.0}, "")]) is None  # "b" missing
