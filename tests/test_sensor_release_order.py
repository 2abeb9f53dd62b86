"""The sensor monitor's event-time buffer path (issue 18, point 3) against the sorted
reference it replaced: `EventTimeBuffer.extend` (slices per bucket) and
`release_unordered` (the bucket the watermark falls in kept in time order and bisected,
not re-sorted whole at every release) against one list in arrival order cut at the
watermark. Sorted (stably, as the monitor sorts a release), the released entries are
the reference's to the sign of a zero: equal entries keep their arrival order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from operators.rolling import BUCKET_MS, EventTimeBuffer

Entry = tuple[int, str, str, float, int]

entries = st.tuples(
    st.integers(-3 * BUCKET_MS, 6 * BUCKET_MS),
    st.sampled_from(["s-1", "s-10", "s-2", "a"]),
    st.sampled_from(["t", "p", "a"]),
    st.sampled_from([0.0, -0.0, 1.5, -2.0, 1e300, -1e-300, 3.0]),
    st.integers(0, 3),
)
in_time_order = st.lists(entries, max_size=40).map(lambda es: sorted(es, key=lambda e: e[0]))
steps = st.lists(
    st.one_of(
        st.lists(entries, max_size=30).map(lambda es: ("push", es)),
        st.lists(entries, max_size=30).map(lambda es: ("extend", es)),
        in_time_order.map(lambda es: ("extend", es)),
        st.integers(-4 * BUCKET_MS, 8 * BUCKET_MS).map(lambda w: ("release", w)),
        st.just(("reload", None)),
    ),
    max_size=30,
)


def _exact(es: list[Entry]) -> list[tuple[int, str, str, str, int]]:
    """Entries with their values' signs visible (0.0 == -0.0 otherwise)."""
    return [(t, s, m, repr(x), n) for t, s, m, x, n in es]


def _by_time(es: list[Entry]) -> list[Entry]:
    return sorted(es, key=lambda e: e[0])  # stable: arrival order among equal times


@settings(max_examples=300, deadline=None)
@given(steps)
def test_release_unordered_releases_the_sorted_references_entries(plan: list) -> None:
    buffer: EventTimeBuffer[Entry] = EventTimeBuffer()
    arrived: list[Entry] = []  # the reference: held entries in arrival order
    for op, arg in plan:
        if op == "push":
            for e in arg:
                buffer.push(e)
            arrived += arg
        elif op == "extend":
            buffer.extend(arg)
            arrived += arg
        elif op == "release":
            want = [e for e in arrived if e[0] < arg]
            arrived = [e for e in arrived if e[0] >= arg]
            got = buffer.release_unordered(arg)
            # the same entries, equal times in arrival order: sorted stably, `release`'s
            assert _exact(_by_time(got)) == _exact(_by_time(want))
            assert _exact(sorted(got)) == _exact(sorted(want))
        else:  # a checkpoint's round trip (held sorted: the arrival order is that)
            restored: EventTimeBuffer[Entry] = EventTimeBuffer()
            restored.load(buffer.state())
            buffer = restored
            arrived = sorted(arrived)
        assert len(buffer) == len(arrived)
        assert _exact(buffer.state()) == _exact(sorted(arrived))
