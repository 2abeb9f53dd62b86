"""The cluster monitor's `PendingReadings` keeps the places of released readings at the
front of its list (None) and cuts them only once they are at least as many as the
readings held (issue 18, point 3: deleting them at every release moved every held
reading). Against a reference that sorts everything fed and drops what each release
gives: any interleaving of feeds, releases (watermarks going back included), snapshots
loaded into a fresh buffer and the list replaced from outside releases the same readings
in the same order, holds the same state, and keeps fewer released places than readings
held.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from operators.cluster import PendingReadings, items_of

READING = st.tuples(
    st.integers(0, 9),
    st.sampled_from(["a", "b", "c"]),
    st.dictionaries(st.sampled_from(["x", "y"]), st.sampled_from([0.0, 1.0, 2]), min_size=1),
    st.sampled_from(["", "site"]),
)
STEP = st.tuples(
    st.lists(READING, max_size=10),  # fed
    st.integers(0, 11),  # the watermark of the release after it
    # then: nothing, a restore into this buffer or a fresh one, the list replaced
    st.sampled_from(["", "", "", "load", "fresh", "replace"]),
)


def _entries(readings: list) -> list:
    return [(t, s, items_of(v), site) for t, s, v, site in readings]


@settings(max_examples=300, deadline=None)
@given(st.lists(STEP, max_size=14))
def test_released_places_are_cut_lazily_and_nothing_else_changes(steps) -> None:
    pending = PendingReadings()
    ref: list[tuple] = []  # (entry, arrival): everything held, sorted at each release
    arrivals = 0
    for readings, watermark, then in steps:
        pending.held += readings
        ref += [(e, arrivals + j) for j, e in enumerate(_entries(readings))]
        arrivals += len(readings)
        ref.sort()
        want = [e for e, _ in ref if e[0] < watermark]
        ref = [h for h in ref if h[0][0] >= watermark]
        assert _entries(pending.release(watermark)) == want
        assert len(pending) == len(ref)
        assert pending.state() == [e for e, _ in ref]
        assert pending.start <= len(pending)  # fewer released places than held
        if then == "load":  # a restore into this buffer (the operator's `restore`)
            pending.load(pending.state())
        elif then == "fresh":  # a restore into a new buffer
            fresh = PendingReadings()
            fresh.load(pending.state())
            pending = fresh
        elif then == "replace":  # the list replaced from outside: its readings, unsorted
            pending.held = list(reversed(pending.held[pending.start :]))
        if then:
            assert len(pending) == len(ref)
            assert sorted(pending.state()) == [e for e, _ in ref]
    assert _entries(pending.release(10**6)) == [e for e, _ in ref]
    assert len(pending) == 0 and pending.state() == []
