"""The cluster kernel's recent distances (`operators.cluster_kernel.recent_add`: a ring of
times and values with a sorted copy, its shifts one C `memmove` each since issue 18)
against `operators.rolling.RecentQuantile` (Python lists, `insort` and `del`), value for
value after every add: the ring, the sorted copy and the quantile, with ties, growing,
full, and full at more than `size` (a checkpoint that held more: the ring stays that
long)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from operators import cluster_kernel as ck
from operators.rolling import RecentQuantile, RecentState

VALUES = st.one_of(st.sampled_from([0.0, 1.0, 2.5, 2.5, 7.0]), st.floats(-1e6, 1e6))


def _arrays(cap: int) -> tuple[np.ndarray, np.ndarray]:
    """An entity's mi and mf with a ring of `cap` (and a held run of 2)."""
    mi = np.zeros(ck.N_IV + cap + 2, dtype=np.int64)
    mi[ck.CAP], mi[ck.HCAP] = cap, 2
    return mi, np.zeros(2 * cap + 2 * 2)


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(1, 30),
    extra=st.integers(0, 5),  # a ring longer than `size` (restored), full from the start
    first=st.lists(VALUES, min_size=35, max_size=35),
    values=st.lists(VALUES, max_size=120),
    q=st.sampled_from([0.0, 0.5, 0.995, 1.0]),
)
def test_recent_add_is_recent_quantile(
    size: int, extra: int, first: list[float], values: list[float], q: float
) -> None:
    cap = size + extra
    mi, mf = _arrays(cap)
    if extra:  # restored full at cap > size, as `EntityModel.from_state` fills it
        held = first[:cap]
        ref = RecentQuantile.from_snapshot(cap, RecentState(list(range(cap)), held))
        mi[ck.N_IV : ck.N_IV + cap], mf[:cap] = range(cap), held
        mf[cap : 2 * cap] = sorted(held)
        mi[ck.COUNT] = cap
    else:
        ref = RecentQuantile(size)
    for t, x in enumerate(values, start=cap):
        ck.recent_add(t, x, mi, mf, size)
        ref.add(t, x)
        n, head = int(mi[ck.COUNT]), int(mi[ck.HEAD])
        order = (head + np.arange(n)) % cap
        assert mf[cap : cap + n].tolist() == ref.sorted
        assert mf[order].tolist() == list(ref.values)
        assert mi[ck.N_IV + order].tolist() == list(ref.times)
        assert ck.quantile_sorted(mf, cap, n, q) == ref.quantile(q)
