"""Trailing baselines of a rate (clicks per impression), per key, as typed state."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec


class RateBlock(msgspec.Struct, gc=False):
    """Committed windows summed: hits and trials of `windows` consecutive windows."""

    hits: int
    trials: int
    windows: int = 1


class HeldWindow(msgspec.Struct, gc=False):
    """One window held until its detector commits or discards it."""

    hits: int
    trials: int


class ClearedRateState(msgspec.Struct):
    """What a `ClearedRate` keeps (its totals are rebuilt from the blocks on `load`)."""

    #: per key: the committed blocks, oldest first, the last one being filled
    windows: dict[str, list[RateBlock]] = {}
    #: per key: the held windows, oldest first
    pending: dict[str, list[HeldWindow]] = {}


def cleared_rate_from_format_1(old: dict[str, Any]) -> dict[str, Any]:
    """A `ClearedRate` of state format 1 (blocks as [hits, trials, windows], held
    windows as [hits, trials]) as the plain data of `ClearedRateState`."""
    return {
        "windows": {
            key: [{"hits": b[0], "trials": b[1], "windows": b[2]} for b in blocks]
            for key, blocks in old["windows"].items()
        },
        "pending": {
            key: [{"hits": w[0], "trials": w[1]} for w in held]
            for key, held in old["pending"].items()
        },
    }


class ClearedRate:
    """The pooled rate of the last windows per key that a detector has cleared, so
    that an incident does not leak into its own baseline.

    A new window is first *held* (pending); the detector then either *commits*
    the held windows to the baseline (its evidence of a change has returned to
    zero, so they were ordinary) or *discards* them (it raised an alarm, so they
    belong to the incident). Held windows beyond `max_pending` enter the
    baseline oldest first, so a key whose detector never settles still learns a
    slow level change. `get` pools what was committed:

        baseline = sum(hits) / sum(trials) over the last `size` committed windows

    and answers only once at least `min_windows` windows, `min_trials` trials and
    `min_hits` hits are in it. Committed windows are summed in blocks of `block`
    windows (the span is `size` windows rounded up to whole blocks, plus the
    block being filled), so a long span costs size / block entries per key.
    Pooling over a long span (four hours by default for CTR) rather than a few
    windows keeps the estimate's own noise small for small keys and the slow
    decline of a campaign visible against it; the gate (not trimming) is what
    makes it robust to the incident itself.

    >>> r = ClearedRate(size=3, min_windows=2, min_trials=10, max_pending=5)
    >>> _ = r.hold("k", 1, 10); r.commit("k"); _ = r.hold("k", 2, 10); r.get("k") is None
    True
    >>> r.commit("k"); r.get("k")
    (3, 20)
    >>> _ = r.hold("k", 0, 10); r.discard("k"); r.get("k")  # an incident's window
    (3, 20)
    """

    def __init__(
        self,
        size: int,
        min_windows: int,
        min_trials: int,
        max_pending: int,
        min_hits: int = 0,
        block: int = 1,
    ) -> None:
        self.size = size
        self.block = block
        self.min_windows = min_windows
        self.min_trials = min_trials
        self.min_hits = min_hits
        self.max_pending = max_pending
        # whole blocks covering `size`, plus the one being filled
        self.span = -(-size // block) + 1
        # the state (`ClearedRateState`): per key the committed blocks, the last one
        # being filled, and the held windows
        self.windows: dict[str, list[RateBlock]] = {}
        self.pending: dict[str, list[HeldWindow]] = {}
        # derived: per key the sums over its blocks (rebuilt by `load`)
        self.totals: dict[str, RateBlock] = {}

    def get(self, key: str) -> tuple[int, int] | None:
        """(hits, trials) of the committed baseline, or None while too small."""
        total = self.totals.get(key)
        if total is None:
            return None
        hits, trials = total.hits, total.trials
        if total.windows < self.min_windows or trials < self.min_trials or hits < self.min_hits:
            return None
        return hits, trials

    def base_or_learn(self, key: str, hits: int, trials: int) -> tuple[int, int] | None:
        """`get(key)`, and when that is None, `learn(key, hits, trials)` too: what a
        judge does with each window (one call, not two: with many keys nearly every
        window is a new key's, issue 18). Returns the baseline before this window.

        >>> a, b = ClearedRate(3, 2, 0, 5), ClearedRate(3, 2, 0, 5)
        >>> a.base_or_learn("k", 1, 10), a.base_or_learn("k", 2, 10), a.base_or_learn("k", 0, 9)
        (None, None, (3, 20))
        >>> b.learn("k", 1, 10); b.learn("k", 2, 10); b.get("k"), a.snapshot() == b.snapshot()
        ((3, 20), True)
        """
        total = self.totals.get(key)
        if total is None:
            # a key never seen (nothing held nor committed): `learn`'s first `_add`
            if key not in self.pending:
                self.windows[key] = [RateBlock(hits, trials)]
                self.totals[key] = RateBlock(hits, trials)
                return None
        elif (
            total.windows >= self.min_windows
            and total.trials >= self.min_trials
            and total.hits >= self.min_hits
        ):
            return total.hits, total.trials
        elif key not in self.pending:
            # a key still learning, nothing held (the usual one: a judge holds windows
            # only once a key has its baseline): `learn` comes down to `_add`
            self._add(key, hits, trials)
            return None
        self.learn(key, hits, trials)
        return None

    def learn_until_based(
        self, keys: Sequence[str], hits: Sequence[int], trials: Sequence[int], first: int = 0
    ) -> tuple[int, tuple[int, int] | None]:
        """`base_or_learn` of windows first, first + 1, ... (window i: keys[i], hits[i],
        trials[i]) in order while it returns None (each learns its window); stops at
        the first window whose key has a baseline, and returns (its index, the
        baseline), or (len(keys), None). A judge does that window's judgement, which
        may change the key's baseline, before the windows after it are looked at, so
        the order of every change is `base_or_learn`'s per window; with many keys
        nearly every window learns, and a call per window was a fifth of judging it
        (issue 18, point 3).

        >>> a, b = ClearedRate(3, 2, 0, 5), ClearedRate(3, 2, 0, 5)
        >>> a.learn_until_based(["k", "j", "k", "k"], [1, 0, 2, 0], [10, 5, 10, 9])
        (3, (3, 20))
        >>> [b.base_or_learn(k, h, t) for k, h, t in [("k", 1, 10), ("j", 0, 5), ("k", 2, 10)]]
        [None, None, None]
        >>> a.snapshot() == b.snapshot()
        True
        """
        totals, windows, pending = self.totals, self.windows, self.pending
        get_total = totals.get
        min_windows, min_trials, min_hits = self.min_windows, self.min_trials, self.min_hits
        block = self.block
        for i in range(first, len(keys)):
            key, k, n = keys[i], hits[i], trials[i]
            total = get_total(key)
            if total is None:
                if key not in pending:  # a key never seen: `base_or_learn`'s first branch
                    windows[key] = [RateBlock(k, n)]
                    totals[key] = RateBlock(k, n)
                    continue
            elif (
                total.windows >= min_windows
                and total.trials >= min_trials
                and total.hits >= min_hits
            ):
                return i, (total.hits, total.trials)
            elif key not in pending:
                # `_add` in line when the key's last block has room (nine windows in
                # ten with blocks of ten): no call, the total already at hand, one
                # look-up fewer (issue 18, point 3)
                blocks = windows.get(key)
                if blocks and (last := blocks[-1]).windows < block:
                    last.hits += k
                    last.trials += n
                    last.windows += 1
                    total.hits += k
                    total.trials += n
                    total.windows += 1
                else:
                    self._add(key, k, n)
                continue
            self.learn(key, k, n)
        return len(keys), None

    def _add(self, key: str, hits: int, trials: int) -> None:
        blocks = self.windows.get(key)
        if blocks is None:
            self.windows[key] = [RateBlock(hits, trials)]
            self.totals[key] = RateBlock(hits, trials)
            return
        total = self.totals[key]
        last = blocks[-1] if blocks else None
        if last is not None and last.windows < self.block:
            last.hits += hits
            last.trials += trials
            last.windows += 1
        else:
            if len(blocks) >= self.span:  # the oldest block leaves the span
                old = blocks.pop(0)  # a list of size / block + 1 entries: cheap
                total.hits -= old.hits
                total.trials -= old.trials
                total.windows -= old.windows
            blocks.append(RateBlock(hits, trials))
        total.hits += hits
        total.trials += trials
        total.windows += 1

    def hold(self, key: str, hits: int, trials: int) -> HeldWindow:
        """Hold a window until the detector commits or discards it; returns its entry
        (for `drop`)."""
        entry = HeldWindow(hits, trials)
        pending = self.pending.setdefault(key, [])
        pending.append(entry)
        if len(pending) > self.max_pending:
            oldest = pending.pop(0)
            self._add(key, oldest.hits, oldest.trials)
        return entry

    def learn(self, key: str, hits: int, trials: int) -> None:
        """`hold` then `commit` in one step (what a key without a baseline does with
        each window): the held windows, then this one, enter the baseline in order.

        >>> a, b = ClearedRate(3, 1, 0, 5), ClearedRate(3, 1, 0, 5)
        >>> _ = a.hold("k", 1, 10); _ = b.hold("k", 1, 10)
        >>> _ = a.hold("k", 2, 10); a.commit("k"); b.learn("k", 2, 10)
        >>> a.snapshot() == b.snapshot(), b.get("k")
        (True, (3, 20))
        """
        pending = self.pending.pop(key, None)
        if pending:
            for held in pending:
                self._add(key, held.hits, held.trials)
        self._add(key, hits, trials)

    def drop(self, key: str, entry: HeldWindow) -> None:
        """Forget one held window (judged anomalous on its own), if still held."""
        pending = self.pending.get(key)
        if pending:
            for i, held in enumerate(pending):
                if held is entry:
                    del pending[i]
                    break

    def commit(self, key: str) -> None:
        pending = self.pending.pop(key, None)
        if pending:
            for held in pending:
                self._add(key, held.hits, held.trials)

    def discard(self, key: str) -> None:
        self.pending.pop(key, None)

    def state(self) -> ClearedRateState:
        """The typed state (not a copy): a field of its owner's state."""
        return ClearedRateState(self.windows, self.pending)

    def load(self, state: ClearedRateState) -> None:
        """Take `state` (e.g. as restored) as this baseline's; the totals are rebuilt."""
        self.windows, self.pending = state.windows, state.pending
        self.totals = {
            key: RateBlock(
                sum(b.hits for b in blocks),
                sum(b.trials for b in blocks),
                sum(b.windows for b in blocks),
            )
            for key, blocks in self.windows.items()
        }

    def snapshot(self) -> dict[str, Any]:
        """`state()` as plain data (a copy), for a baseline checkpointed on its own."""
        return msgspec.to_builtins(self.state())

    def restore(self, plain: Any) -> None:
        self.load(msgspec.convert(plain, ClearedRateState))


__all__ = [
    "ClearedRate",
    "ClearedRateState",
    "HeldWindow",
    "RateBlock",
    "cleared_rate_from_format_1",
]
