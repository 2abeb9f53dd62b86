"""The sensor monitor's pending readings held as columns (`operators.sensor_pending`)
against the entry tuples they replaced.

`PendingReadings` keeps a feed's readings as one chunk of columns and releases them in
arrival order, a chunk the watermark falls in split, a small feed joined to the last
chunk. Hypothesis drives it and a plain
list of the same entries in arrival order through the same adds, releases and
checkpoint reloads: every release must be the list's entries before the watermark in
arrival order (sorted, for `release`), and what is held (its length, its checkpoint
entries) the list's. Then the whole operator: `TupleFed` feeds the entry tuples into
`operators.rolling.EventTimeBuffer` and judges the released list, as before the
columns; the operator as shipped must give its rows and observations in the same
order and the same snapshot bytes after every batch (in time order and jittered
deliveries, metric counts that change, snapshots restored mid-run).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from operators.rolling import EventTimeBuffer
from operators.sensor import Entry, SensorConfig, SensorOperator
from operators.sensor_pending import PendingReadings
from schemas.events import SensorReading
from tests.test_sensor_arrival_order import BATCH_DRAWS, drawn_batches, run_batches
from tests.test_sensor_batch_kernel import T0
from tests.test_sensor_run import small_config


class TupleFed(SensorOperator):
    """The pending readings as entry tuples in an `EventTimeBuffer` (the buffer before
    the columns), each release judged as a list of entries."""

    def __init__(self, config: SensorConfig | None = None) -> None:
        super().__init__(config)
        self.pending: Any = EventTimeBuffer()

    def feed(self, source: str, events: Sequence[SensorReading]) -> None:
        self.pending.extend(
            [
                (e.ts, e.sensor_id, metric, float(value), len(e.values))
                for e in events
                for metric, value in e.values.items()
            ]
        )


readings = st.builds(
    lambda dt, sid, values: SensorReading(sensor_id=sid, ts=T0 + dt, values=values),
    st.integers(0, 3_000),
    st.sampled_from(["s-1", "s-10", "s-2", "a"]),
    st.dictionaries(
        st.sampled_from(["t", "p", "a"]),
        st.sampled_from([0.0, -0.0, 1.5, -2.0, 1e99, -1e-300, 3.0, 7]),
        min_size=1,
    ),
)
# a batch in time order (a partition's usual one: its splits are slices) or not
batches = st.one_of(
    st.lists(readings, max_size=12),
    st.lists(readings, max_size=12).map(lambda rs: sorted(rs, key=lambda r: r.ts)),
)
steps = st.lists(
    st.one_of(
        batches.map(lambda b: ("add", b)),
        st.integers(-100, 3_200).map(lambda dt: ("release", T0 + dt)),
        st.integers(-100, 3_200).map(lambda dt: ("sorted", T0 + dt)),
        st.just(("reload", None)),
    ),
    max_size=30,
)


def _exact(es: Any) -> list[tuple[Any, ...]]:
    """Entries with their values' signs and types visible (0.0 == -0.0 == 0 otherwise)."""
    return [(t, s, m, repr(x), n) for t, s, m, x, n in es]


@settings(max_examples=300, deadline=None)
@given(steps, st.integers(0, 40), st.integers(0, 80))
def test_pending_readings_release_the_arrival_lists_entries(
    plan: list, small: int, chunk: int
) -> None:
    # (small feeds join the last chunk below its size; 0: never)
    pending = PendingReadings(small, chunk)
    arrived: list[Entry] = []  # the reference: the held entries in arrival order
    for what, arg in plan:
        if what == "add":
            pending.add(arg)
            arrived += [
                (r.ts, r.sensor_id, metric, float(x), len(r.values))
                for r in arg
                for metric, x in r.values.items()
            ]
        elif what == "reload":  # a checkpoint restored: held in sorted order since
            arrived.sort()
            pending.load(pending.state())
        else:
            want = [e for e in arrived if e[0] < arg]
            arrived = [e for e in arrived if e[0] >= arg]
            if what == "sorted":
                assert _exact(pending.release(arg)) == _exact(sorted(want))
            else:
                assert _exact(pending.release_unordered(arg)) == _exact(want)
        assert len(pending) == len(arrived)
        assert _exact(pending.state()) == _exact(sorted(arrived))


@settings(max_examples=25, deadline=None)
@given(**BATCH_DRAWS)
def test_the_columns_judge_as_the_entry_tuples(
    seed: int, sensors: int, batch: int, jitter: bool, restore: bool
) -> None:
    config = small_config(min_points=3)
    batches, lateness, restore_at = drawn_batches(seed, sensors, batch, jitter, restore)
    got = run_batches(SensorOperator(config), batches, lateness, restore_at)
    want = run_batches(TupleFed(config), batches, lateness, restore_at)
    assert got == want
