"""`operators.rolling.EventTimeBuffer` (bucketed by event time) against the plain
reference it replaced: one list, sorted at every release, cut at the watermark."""

from __future__ import annotations

from bisect import bisect_left

from hypothesis import given, settings
from hypothesis import strategies as st

from operators.rolling import BUCKET_MS, EventTimeBuffer

Entry = tuple[int, str, float]

entries = st.tuples(
    st.integers(-3 * BUCKET_MS, 20 * BUCKET_MS), st.sampled_from("abc"), st.floats(-5, 5)
)
steps = st.lists(
    st.one_of(
        st.lists(entries, max_size=30).map(lambda es: ("push", es)),
        st.integers(-4 * BUCKET_MS, 22 * BUCKET_MS).map(lambda w: ("release", w)),
        st.just(("reload", None)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_the_buffer_releases_what_a_sorted_list_releases(plan: list) -> None:
    buffer: EventTimeBuffer[Entry] = EventTimeBuffer()
    reference: list[Entry] = []
    for op, arg in plan:
        if op == "push":
            for e in arg:
                buffer.push(e)
                reference.append(e)
        elif op == "release":
            reference.sort()
            i = bisect_left(reference, (arg,))
            want, reference[:] = reference[:i], reference[i:]
            assert buffer.release(arg) == want
        else:  # a checkpoint's round trip
            restored: EventTimeBuffer[Entry] = EventTimeBuffer()
            restored.load(buffer.state())
            buffer = restored
        assert len(buffer) == len(reference)
        assert buffer.state() == sorted(reference) == buffer.entries
