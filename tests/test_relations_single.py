"""The single-valued relation's batch path (`RelationLearner._observe_single`: a sensor's
site, per-entity dicts instead of (entity, value) pairs, issue 18) against the
event-by-event reference of tests/test_relations_fast.py, on the streams it is built
for: many sensors a batch, more than `max_keys` (drops every batch), sites that rarely
change (and sometimes twice in a batch), readings without a site, batches in time order
or not. Compared after every batch: the table with its order, and the snapshot of a
learner fed one event at a time."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from operators.causes import RelationLearner
from tests.test_relations_fast import RELS, Reference, event, ordered

SITE = RELS[1]


@settings(max_examples=200, deadline=None)
@given(
    batches=st.lists(
        st.tuples(
            st.lists(
                st.tuples(
                    st.integers(0, 40),  # sensor
                    st.sampled_from(["s1", "s1", "s1", "s2", "", None]),  # site
                    st.integers(0, 30),  # time step
                ),
                max_size=60,
            ),
            st.booleans(),  # time-ordered (the usual) or as drawn
        ),
        max_size=8,
    ),
    max_keys=st.integers(1, 30),
    max_values=st.integers(1, 3),
)
def test_single_valued_batches_equal_event_by_event(
    batches: list[tuple[list[tuple[int, object, int]], bool]], max_keys: int, max_values: int
) -> None:
    batched = RelationLearner(max_keys=max_keys, max_values=max_values, relations=RELS)
    single = RelationLearner(max_keys=max_keys, max_values=max_values, relations=RELS)
    ref = Reference(max_keys, max_values)
    clock = 0
    for rows, in_order in batches:
        rows = sorted(rows, key=lambda r: r[2]) if in_order else rows
        events = [event(SITE, f"k{k}", v, clock + t) for k, v, t in rows]
        batched.observe(SITE.source, events, [e.ts for e in events] if in_order else None)
        for e in events:
            single.observe(SITE.source, [e])
            ref.one(SITE, e.sensor_id, e.site, e.ts)
        assert ordered(batched.seen) == ordered(ref.seen)
        assert batched.snapshot() == single.snapshot()
        clock += 20
