"""A cluster entity's recent distances' ring sized on demand (`EntityModel.grow`,
`cluster_kernel.short_rings`; issue 18 point 3: a new entity no longer zeroes a ring of
the whole history) against the ring of the whole history from the start (the layout
before, `INITIAL_RECENT` at least the history): the same rows, observations and
snapshots after every batch, with rings that start at one place and double many times
within a release or across releases, held runs, long runs, several sensors per site,
and a snapshot -> msgpack -> restore mid-run (a restored ring is as long as what it
holds, and grows on from there)."""

from __future__ import annotations

import random
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from operators import cluster
from operators.cluster import ClusterConfig, ClusterOperator
from schemas.events import SensorReading
from streams.connectors import checkpoints

T0 = 1_795_000_020_000
SRC = "sensor-readings"


def _roundtrip(op: ClusterOperator, cfg: ClusterConfig) -> ClusterOperator:
    """A new operator restored from op's snapshot through the worker's checkpoint
    encoding (msgpack)."""
    blob = checkpoints.encode(checkpoints.Checkpoint({}, {"cluster": op.snapshot()}))
    new = ClusterOperator(cfg)
    new.restore(checkpoints.decode(blob).state["cluster"])
    return new


def _exactly(cap: int, need: int, size: int) -> int:
    """`cluster.grown_capacity` without doubling: every place a release needs is used."""
    return need


def _outputs(op: ClusterOperator) -> tuple[list, list]:
    out = op.collect()
    return list(out.rows.get("sensor_anomalies", [])), list(out.observations)


@settings(max_examples=100, deadline=None)
@given(
    group_by=st.sampled_from(["sensor", "site"]),
    initial=st.integers(1, 6),
    exact=st.booleans(),  # rings grown to just what a release needs, not doubled
    warmup=st.integers(1, 30),
    history=st.integers(2, 100),
    quantile=st.sampled_from([0.5, 0.9]),
    stream=st.lists(
        st.tuples(
            st.integers(0, 2500),  # gap to the previous reading, ms
            st.sampled_from(["s1", "s2", "s3"]),
            st.floats(-5, 5, allow_nan=False),
            st.floats(-5, 5, allow_nan=False),
            st.integers(0, 2),  # 2: a far reading (anomalous runs, held at a release's end)
            st.sampled_from(["", "plant"]),
        ),
        min_size=1,
        max_size=300,
    ),
    cuts=st.lists(st.integers(1, 6), min_size=1, max_size=8),  # rings grow in steps
    restore_at=st.integers(0, 40),
)
def test_a_ring_grown_on_demand_is_the_whole_ring(
    group_by, initial, exact, warmup, history, quantile, stream, cuts, restore_at
) -> None:
    cfg = ClusterConfig(
        n_clusters=3,
        warmup=warmup,
        history=history,
        quantile=quantile,
        halflife=0.2,
        seed=5,
        group_by=group_by,
    )
    events, t = [], T0
    for gap, sid, a, b, far, site in stream:
        t += gap
        scale = 50.0 if far == 2 else 1.0
        events.append(
            SensorReading(
                sensor_id=sid, ts=t, values={"a": a * scale, "b": b * scale}, site=site or None
            )
        )
    _same_with_rings_grown(cfg, events, cuts, initial, exact, restore_at)


def test_a_run_held_at_a_release_end_has_room_when_it_enters() -> None:
    """One sensor, small releases, a third of its readings far: runs of anomalies are
    often held at the end of a release, and enter the ring in the next one (the room
    `short_rings` makes for them), while the ring grows to just what is needed."""
    rng = random.Random(3)
    cfg = ClusterConfig(n_clusters=3, warmup=3, history=60, quantile=0.9, halflife=0.2, seed=5)
    events, cuts, t = [], [], T0
    for _ in range(40):
        cuts.append(rng.randint(1, 4))
        for _ in range(cuts[-1]):
            t += 100
            scale = 50.0 if rng.random() < 0.3 else 1.0
            values = {"a": scale * rng.random(), "b": scale * rng.random()}
            events.append(SensorReading(sensor_id="s1", ts=t, values=values))
    _same_with_rings_grown(cfg, events, cuts, initial=1, exact=True, restore_at=-1)


def _same_with_rings_grown(
    cfg: ClusterConfig,
    events: list[SensorReading],
    cuts: list[int],
    initial: int,
    exact: bool,
    restore_at: int,
) -> None:
    """Feed `events` in releases of `cuts` (cycled) to a monitor whose rings start at
    `initial` places (grown to just what a release needs if `exact`; restored from a
    snapshot before release `restore_at`) and to one whose rings are the whole history
    from the start: the same outputs and snapshots after every release."""
    history = cfg.history
    with mock.patch.object(cluster, "INITIAL_RECENT", history + 1):
        whole = ClusterOperator(cfg)  # every ring the whole history from the start
    grown = None
    i = c = 0
    while i < len(events):
        chunk = events[i : i + cuts[c % len(cuts)]]
        i, c = i + len(chunk), c + 1
        with (
            mock.patch.object(cluster, "INITIAL_RECENT", initial),
            mock.patch.object(
                cluster, "grown_capacity", _exactly if exact else cluster.grown_capacity
            ),
        ):
            if grown is None:
                grown = ClusterOperator(cfg)
            elif c == restore_at:
                grown = _roundtrip(grown, cfg)
            grown.feed(SRC, chunk)
            grown.advance(chunk[-1].ts + 1)
        with mock.patch.object(cluster, "INITIAL_RECENT", history + 1):
            whole.feed(SRC, chunk)
            whole.advance(chunk[-1].ts + 1)
        assert _outputs(grown) == _outputs(whole)
        assert grown.snapshot() == whole.snapshot()
    assert grown is not None
    for entity, m in grown.models.items():
        n = m.seen
        assert len(m.r_times) >= min(n, history)  # grown as far as it was filled
        assert whole.models[entity].recent_state() == m.recent_state()
