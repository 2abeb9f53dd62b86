"""Learners that observe the same batch one after the other share its single-valued
summary (`operators.causes.single_summary`: the sensor and the cluster monitors' tasks
both learn a sensor's site from the same list of readings, issue 18), and each still
learns exactly what it would alone: checked against the event-by-event reference of
tests/test_relations_fast.py, per learner and after every batch, on learners with
different bounds and histories (one skips batches, one sees only part of some), the
same list handed to them in a drawn order, and the list or one of its events changed
in place between two of them (the shared summary must not be taken then)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from operators.causes import RelationLearner
from tests.test_relations_fast import RELS, Reference, event, ordered

SITE = RELS[1]


#: an event changed in place between two learners: its site, time or sensor
CHANGES = {
    "site": lambda e: setattr(e, "site", "s3" if e.site == "s1" else "s1"),
    "ts": lambda e: setattr(e, "ts", e.ts + 7),
    "sensor": lambda e: setattr(e, "sensor_id", "k99"),
}


class Learner:
    """A learner fed batches, and its reference fed the same events one by one."""

    def __init__(self, max_keys: int, max_values: int) -> None:
        self.learner = RelationLearner(max_keys=max_keys, max_values=max_values, relations=RELS)
        self.ref = Reference(max_keys, max_values)

    def observe(self, events: list[Any], with_times: bool) -> None:
        times = [e.ts for e in events] if with_times else None
        self.learner.observe(SITE.source, events, times)
        for e in events:
            self.ref.one(SITE, e.sensor_id, e.site, e.ts)

    def check(self) -> None:
        assert ordered(self.learner.seen) == ordered(self.ref.seen)


@settings(max_examples=200, deadline=None)
@given(
    batches=st.lists(
        st.tuples(
            st.lists(
                st.tuples(
                    st.integers(0, 12),  # sensor
                    st.sampled_from(["s1", "s1", "s1", "s2", "", None]),  # site
                    st.integers(0, 30),  # time step
                ),
                max_size=40,
            ),
            st.booleans(),  # time-ordered (the usual) or as drawn
            st.permutations([0, 1, 2]),  # which learner observes it first, second, ...
            st.sampled_from(["same", "skip", "part", "append", *CHANGES]),  # learner 2
        ),
        max_size=10,
    ),
    bounds=st.lists(st.tuples(st.integers(1, 15), st.integers(1, 3)), min_size=3, max_size=3),
)
def test_learners_sharing_a_batch_learn_as_each_alone(
    batches: list[tuple[list[tuple[int, Any, int]], bool, list[int], str]],
    bounds: list[tuple[int, int]],
) -> None:
    learners = [Learner(k, v) for k, v in bounds]
    clock = 0
    for rows, in_order, turn, third in batches:
        rows = sorted(rows, key=lambda r: r[2]) if in_order else rows
        events = [event(SITE, f"k{k}", v, clock + t) for k, v, t in rows]
        for i in turn:
            if i < 2:
                learners[i].observe(events, in_order)
            elif third == "part" and events:  # its own list (late readings filtered)
                learners[i].observe(events[1:], in_order)
            elif third in CHANGES and events:  # an event changed in place, the same list
                CHANGES[third](events[-1])
                learners[i].observe(events, in_order)
            elif third == "append":  # the same list, grown in place
                events.append(event(SITE, "k0", "s2", clock + 30))
                learners[i].observe(events, in_order)
            elif third == "same":
                learners[i].observe(events, in_order)
        for learner in learners:
            learner.check()
        clock += 20


def test_a_changed_event_is_summed_up_again() -> None:
    """Two learners, one list: the second sees an event that changed in between."""
    first, second = Learner(10, 2), Learner(10, 2)
    events = [event(SITE, "k1", "s1", 1), event(SITE, "k2", "s1", 2)]
    first.observe(events, True)
    events[1].site = "s2"
    second.observe(events, True)
    first.check()
    second.check()
    assert second.learner.seen["site"]["k2"] == {"s2": 2}


def test_only_the_same_list_shares_its_summary() -> None:
    """Equal columns from another list are summed up again: the summary holds the first
    list's objects (here an int time where the second list has a float)."""
    first, second = Learner(10, 2), Learner(10, 2)
    first.observe([event(SITE, "k1", "s1", 1)], False)
    second.observe([event(SITE, "k1", "s1", 1.0)], False)
    assert type(second.learner.seen["site"]["k1"]["s1"]) is float


def test_a_caller_changing_its_lists_afterwards_changes_nothing() -> None:
    """The summary shared with the next learner holds lists of its own: the first
    caller's columns, changed after its call, neither reach nor mislead the second."""
    first, second = Learner(10, 2), Learner(10, 2)
    events = [event(SITE, "k1", "s1", 1), event(SITE, "k2", "s1", 2)]
    times = [e.ts for e in events]
    first.learner.observe(SITE.source, events, times)
    times[1] = 50  # the caller's list, reused
    second.observe(events, True)
    assert second.learner.seen["site"]["k2"] == {"s1": 2}


def test_the_batch_compared_with_is_the_one_summed_up() -> None:
    """A caller's list changed after its call, then the same columns handed on: the
    next learner is compared with the batch as it was summed up, and sums its own."""
    first, second = Learner(10, 2), Learner(10, 2)
    events = [event(SITE, "k1", "s1", 1), event(SITE, "k2", "s1", 2)]
    times = [e.ts for e in events]
    first.learner.observe(SITE.source, events, times)
    times[1] = 50
    second.learner.observe(SITE.source, events, times)
    assert second.learner.seen["site"]["k2"] == {"s1": 50}
