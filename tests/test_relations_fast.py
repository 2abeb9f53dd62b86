"""`RelationLearner.observe` per batch equals observing the events one by one (issue 18).

The batch path learns each (entity, value) pair once with its latest time, and drops
the entities a batch's new ones push out in one go, where that is exact; otherwise it
goes event by event. The reference here is written independently from the module's
docstring rules (least recently seen entity dropped first, at most `max_values` values
per entity with the oldest dropped, a single-valued relation keeping the latest value),
one event at a time. Compared: the tables with their order (which decides what is
dropped next), the hints, and the snapshots, after every batch, on random streams with
many drops, out-of-order times, events without a value and TTL expiry.
"""

from __future__ import annotations

from collections import OrderedDict
from types import SimpleNamespace as E
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from operators.causes import RelationLearner, RelationSource

RELS = (
    RelationSource("impressions", "campaign_id", "model_id", "models", many=True),
    RelationSource("sensor-readings", "sensor_id", "site", "site", many=False),
)


class Reference:
    """One event at a time, from the rules (not from the module's code)."""

    def __init__(self, max_keys: int, max_values: int) -> None:
        self.max_keys, self.max_values = max_keys, max_values
        self.seen: dict[str, OrderedDict[str, dict[str, int]]] = {
            r.hint: OrderedDict() for r in RELS
        }

    def one(self, rel: RelationSource, key: str, value: Any, ts: int) -> None:
        if not value:
            return  # nothing learned, nothing touched
        table = self.seen[rel.hint]
        if key in table:
            table.move_to_end(key)
        else:
            table[key] = {}
            while len(table) > self.max_keys:
                del table[next(iter(table))]  # the least recently seen
        values = table[key]
        if rel.many or value in values:
            values[value] = max(ts, values.get(value, ts))
        elif not values or ts >= max(values.values()):
            values.clear()
            values[value] = ts
        while len(values) > self.max_values:
            oldest = min(values.values())
            del values[next(v for v, t in values.items() if t == oldest)]

    def expire(self, horizon: int) -> None:
        for table in self.seen.values():
            for key in [k for k, v in table.items() if max(v.values()) < horizon]:
                del table[key]


def ordered(seen: dict[str, Any]) -> list[Any]:
    """The tables with their order (dict equality ignores it)."""
    return [(h, [(k, list(v.items())) for k, v in t.items()]) for h, t in seen.items()]


def event(rel: RelationSource, key: str, value: Any, ts: int) -> Any:
    return E(**{rel.key: key, rel.value: value, "ts": ts})


batches = st.lists(
    st.tuples(
        st.sampled_from([0, 1]),  # which relation
        st.lists(
            st.tuples(
                st.integers(0, 9),  # entity
                st.sampled_from([None, "", "a", "b", "c", "d"]),  # value
                st.integers(0, 40),  # time step
            ),
            max_size=25,
        ),
        st.booleans(),  # time-ordered batch (the usual) or as drawn
        st.booleans(),  # a watermark (expiry) after it
    ),
    max_size=12,
)


@settings(max_examples=400, deadline=None)
@given(
    batches,
    st.integers(1, 6),  # max_keys: drops in most streams
    st.integers(1, 4),  # max_values
    st.sampled_from([5, 50, 10_000]),  # ttl (in time steps)
)
def test_batch_equals_event_by_event(
    stream: list[Any], max_keys: int, max_values: int, ttl: int
) -> None:
    batched = RelationLearner(ttl_ms=ttl, max_keys=max_keys, max_values=max_values, relations=RELS)
    single = RelationLearner(ttl_ms=ttl, max_keys=max_keys, max_values=max_values, relations=RELS)
    ref = Reference(max_keys, max_values)
    clock = 0
    for which, drawn, in_order, expire in stream:
        rel = RELS[which]
        rows = sorted(drawn, key=lambda r: r[2]) if in_order else drawn
        events = [event(rel, f"k{k}", v, clock + t) for k, v, t in rows]
        times = [e.ts for e in events]
        batched.observe(rel.source, events, times if in_order else None)
        for e in events:
            single.observe(rel.source, [e])
            ref.one(rel, getattr(e, rel.key), getattr(e, rel.value), e.ts)
        assert ordered(batched.seen) == ordered(ref.seen)
        assert ordered(single.seen) == ordered(ref.seen)
        assert batched.snapshot() == single.snapshot()
        clock += 20
        if expire:
            scanned = batched.expired_at
            for learner in (batched, single):
                learner.expire(clock)
            if batched.expired_at != scanned:  # it scanned (at most every ttl / 10)
                ref.expire(clock - ttl)
            assert ordered(batched.seen) == ordered(ref.seen)
            assert ordered(single.seen) == ordered(ref.seen)
        for k in range(10):
            assert batched.hints(f"k{k}", clock) == single.hints(f"k{k}", clock)


def test_restored_table_over_its_bound_goes_event_by_event() -> None:
    """A table restored larger than `max_keys` (a smaller bound configured since):
    the batch path declines, and the result is the event-by-event one."""
    big = RelationLearner(max_keys=5, relations=RELS)
    big.observe("impressions", [event(RELS[0], f"k{i}", "m", i) for i in range(5)])
    small_a = RelationLearner(max_keys=3, relations=RELS)
    small_b = RelationLearner(max_keys=3, relations=RELS)
    small_a.restore(big.snapshot())
    small_b.restore(big.snapshot())
    events = [event(RELS[0], "k9", "m", 10), event(RELS[0], "k1", "m", 11)]
    small_a.observe("impressions", events)
    for e in events:
        small_b.observe("impressions", [e])
    assert ordered(small_a.seen) == ordered(small_b.seen)
    # event by event: k9 enters and drops one entity (k0), then k1 is seen again
    assert list(small_a.seen["models"]) == ["k2", "k3", "k4", "k9", "k1"]
