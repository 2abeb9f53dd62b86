"""The CTR windows' bookkeeping of issue 18, point 3, session 10, against plain
references: a window bucket's keys in two stable sorts (`sorted_pairs`) and merged
with the keys added after they were first read, in `sorted` order whatever the
sequence of additions, removals and reads; and the impressions' times, held by the
join's index while running, in every snapshot as the per-event layout had them."""

from __future__ import annotations

import random
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.ctr import CtrConfig, CtrOperator, CtrState
from operators.windows import TumblingWindows, sorted_pairs
from tests.test_ctr_many_keys import LATENESS, MIN, configs, streams

pairs = st.tuples(st.text("ab\x00é", max_size=3), st.text("AB\x00", max_size=2))


@settings(max_examples=300, deadline=None)
@given(st.lists(pairs, max_size=40))
def test_sorted_pairs_is_sorted(keys: list[tuple[str, str]]) -> None:
    assert sorted_pairs(keys) == sorted(keys)
    assert sorted_pairs(set(keys)) == sorted(set(keys))


# one step on the windows: add a key at a start, read in order, remove a key in
# place (as the quality monitor does), pop the starts ending by then
ops = st.lists(
    st.tuples(st.sampled_from(["at", "insert", "read", "remove", "pop"]), st.integers(0, 2), pairs),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_bucket_order_is_sorted_after_any_additions_and_removals(steps: list[Any]) -> None:
    windows: TumblingWindows[list[int]] = TumblingWindows(10, list, sorted_pairs)
    for op, slot, key in steps:
        start = slot * 10
        bucket = windows.by_start.get(start, {})
        if op == "at":
            windows.at(key, start + 3).append(1)
        elif op == "insert" and key not in bucket:
            windows.insert(key, start, [2])
        elif op == "remove" and bucket:
            del bucket[sorted(bucket)[len(bucket) // 2]]
        elif op == "read":
            for s, keys, b in windows.buckets_ending_between(-10, 30):
                assert keys == sorted(b), (s, keys)
        elif op == "pop":
            for s, keys, b in windows.pop_buckets_until(start + 10):
                assert keys == sorted(b), (s, keys)
    rest = windows.pop_ending_until(100)
    assert [(s, k) for s, k, _ in rest] == sorted((s, k) for s, b in windows_by(steps) for k in b)


def windows_by(steps: list[Any]) -> list[tuple[int, dict[Any, Any]]]:
    """The buckets left after `steps` by a plain dict of dicts (the reference)."""
    by_start: dict[int, dict[Any, Any]] = {}
    for op, slot, key in steps:
        start = slot * 10
        if op in ("at", "insert"):
            by_start.setdefault(start, {}).setdefault(key, None)
        elif op == "remove" and by_start.get(start):
            bucket = by_start[start]
            del bucket[sorted(bucket)[len(bucket) // 2]]
        elif op == "pop":
            for s in [s for s in by_start if s + 10 <= start + 10]:
                del by_start[s]
    return list(by_start.items())


@settings(max_examples=60, deadline=None)
@given(streams(), configs, st.integers(1, 40))
def test_snapshot_times_are_the_impressions_times(
    stream: tuple[list[tuple[str, Any]], int], config: CtrConfig, batch: int
) -> None:
    """At every batch: each open window's `times` in the snapshot are its impressions'
    own times, in its ids' order (the first arrival of each id); a restore from it
    snapshots the same; and the live windows keep no times list of their own."""
    events, seed = stream
    first_ts: dict[str, int] = {}
    op = CtrOperator(config)
    newest = 0
    rng = random.Random(seed)
    for i in range(0, len(events), batch):
        chunk = events[i : i + batch]
        for source in op.sources:
            evs = [e for s, e in chunk if s == source]
            if evs:
                op.feed(source, evs)
        for s, e in chunk:
            if s == "impressions":
                first_ts.setdefault(e.impression_id, e.ts)
        newest = max([newest, *(e.ts for _, e in chunk)])
        op.advance(newest - LATENESS)
        op.collect()
        snapshot = msgspec.msgpack.decode(msgspec.msgpack.encode(op.snapshot()))
        state = msgspec.convert(snapshot["state"], CtrState)
        for bucket in state.windows.values():
            for w in bucket.values():
                assert w.times == [first_ts[imp_id] for imp_id in w.ids]
        assert all(not w.times for _, _, w in op.windows.items())
        if rng.random() < 0.3:
            again = CtrOperator(config)
            again.restore(snapshot)
            assert msgspec.msgpack.decode(msgspec.msgpack.encode(again.snapshot())) == snapshot
            assert all(not w.times for _, _, w in again.windows.items())
            op = again
    op.advance(newest + 100 * MIN)
