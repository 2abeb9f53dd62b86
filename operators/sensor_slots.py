"""Every sensor series' compiled-run state in shared arrays, one row per series slot.

The sensor monitor runs a whole release in one compiled call
(`operators.sensor_run.run_all`, issue 18 point 3): each series' state is
where that call can reach it without Python per series.

- `states[slot]`: the series' scalars (`operators.sensor_run.ST_*`);
- `gaps[slot]`: its cadence warm-up gaps;
- `data[offsets[slot, j]:offsets[slot, j] + sizes[slot, j]]`: its float64 buffers,
  j = 0 the sliding window (`operators.detectors.window`), 1 and 2 the z-score and
  IQR tail rings (`operators.detectors.tail`), in one arena.

A live `Series` (`operators.sensor`) holds views of its rows and regions, so its
Python paths and the compiled run read and write the same memory. A key gets a
slot (`slot_of`) when it first appears; an expired series frees its slot for
reuse. The arrays grow by doubling; the arena hands out regions from its top
and, when full, is compacted into a new array at least twice its live size
(every holder's views are re-pointed then), so the copying is amortised O(1)
per float allocated. A buffer the Python path replaced (a window or ring that
had to grow, a restored one) is copied in by `bind` after that path.

Nothing here is checkpointed: the snapshot is the series' typed state, and the
slots are rebuilt on restore (derived layout, `operators.state`).

>>> import numpy as np
>>> class H:  # a holder: its row, its gap row, its slot, its three buffers
...     def __init__(self):
...         self.row, self.gap_row = np.zeros(4), np.zeros(2, np.int64)
...         self.slot, self.bound = -1, None
...         self.bufs = (np.ones(3), np.full(2, 2.0), np.full(5, 3.0))
...     def buffers(self):
...         return self.bufs
...     def set_buffers(self, a, b, c):
...         self.bufs = self.bound = (a, b, c)
>>> t = SeriesSlots(width=4, gap_width=2, capacity=1, arena=8)
>>> a, b = H(), H()
>>> t.attach(("s1", "t"), a); t.attach(("s2", "t"), b)
>>> a.slot, b.slot, float(t.data[t.offsets[b.slot, 2]]), float(b.bufs[2][0])
(0, 1, 3.0, 3.0)
>>> b.bufs[2][0] = 7.0   # a view: the arena sees the holder's writes
>>> float(t.data[t.offsets[b.slot, 2]])
7.0
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

BUFFERS = 3  # window, z-score tail ring, IQR tail ring


class Holder(Protocol):
    """A series as the slots see it (`operators.sensor.Series`)."""

    row: np.ndarray
    gap_row: np.ndarray
    slot: int
    bound: tuple[np.ndarray, ...] | None  # its buffers as last bound (arena views)

    def buffers(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def set_buffers(self, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None: ...


class SeriesSlots:
    """Slots, their state rows and buffer regions (see the module's docstring)."""

    def __init__(
        self, width: int, gap_width: int, capacity: int = 64, arena: int = 1 << 16
    ) -> None:
        self.width = width
        self.gap_width = gap_width
        self.slot_of: dict[Any, int] = {}
        self.key_of: list[Any] = []
        self.holders: list[Holder | None] = []
        self.free: list[int] = []
        self.states = np.zeros((capacity, width))
        self.gaps = np.zeros((capacity, gap_width), dtype=np.int64)
        self.offsets = np.zeros((capacity, BUFFERS), dtype=np.int64)
        self.sizes = np.zeros((capacity, BUFFERS), dtype=np.int64)
        self.data = np.zeros(arena)
        self.top = 0  # the arena's first free float

    def __len__(self) -> int:
        return len(self.slot_of)

    def slot(self, key: Any) -> int:
        """The slot of `key`, a free one taken (or the arrays doubled) if it has none."""
        slot = self.slot_of.get(key)
        if slot is not None:
            return slot
        if self.free:
            slot = self.free.pop()
            self.key_of[slot] = key
        else:
            slot = len(self.key_of)
            if slot == len(self.states):
                self._grow_slots()
            self.key_of.append(key)
            self.holders.append(None)
        self.slot_of[key] = slot
        return slot

    def attach(self, key: Any, s: Holder) -> None:
        """Make s the live series of key: its row and buffers move into the shared
        arrays (copied), and s keeps views of them."""
        slot = self.slot(key)
        self.states[slot] = s.row
        s.row = self.states[slot]
        self.gaps[slot] = s.gap_row
        s.gap_row = self.gaps[slot]
        s.slot = slot
        s.bound = None
        self.holders[slot] = s
        self.bind(s)

    def release(self, key: Any) -> None:
        """key's series is gone (expired): its slot is free (its arena regions are
        dropped at the next compaction)."""
        slot = self.slot_of.pop(key)
        self.key_of[slot] = None
        self.holders[slot] = None
        self.free.append(slot)

    def bind(self, s: Holder) -> None:
        """Copy into the arena the buffers of s that are not its views (grown or
        replaced by the Python path), and give s views of them."""
        cur = s.buffers()
        bound = s.bound
        if bound is not None and cur[0] is bound[0] and cur[1] is bound[1] and cur[2] is bound[2]:
            return
        need = sum(len(b) for j, b in enumerate(cur) if bound is None or b is not bound[j])
        if self.top + need > len(self.data):
            self._compact(need)
            cur, bound = s.buffers(), s.bound  # its bound views re-pointed
        data = self.data
        views = []
        for j, b in enumerate(cur):
            if bound is not None and b is bound[j]:
                views.append(b)
                continue
            n = len(b)
            off = self.top
            data[off : off + n] = b
            self.top = off + n
            self.offsets[s.slot, j] = off
            self.sizes[s.slot, j] = n
            views.append(data[off : off + n])
        s.set_buffers(*views)

    def _compact(self, need: int) -> None:
        """A new arena of at least twice the live regions plus `need`, the live regions
        copied to its start, every holder's views re-pointed."""
        live = [h for h in self.holders if h is not None and h.bound is not None]
        used = sum(int(self.sizes[h.slot].sum()) for h in live)
        data = np.zeros(max(2 * (used + need), 1024))
        top = 0
        old = self.data
        for h in live:
            slot = h.slot
            cur = h.buffers()
            views = []
            for j in range(BUFFERS):
                off, n = int(self.offsets[slot, j]), int(self.sizes[slot, j])
                data[top : top + n] = old[off : off + n]
                self.offsets[slot, j] = top
                views.append(data[top : top + n])
                top += n
            bound = h.bound
            assert bound is not None
            # buffers the Python path replaced stay as they are (bound later)
            h.set_buffers(*(v if c is b else c for v, c, b in zip(views, cur, bound, strict=True)))
            h.bound = tuple(views)
        self.data = data
        self.top = top

    def _grow_slots(self) -> None:
        cap = 2 * len(self.states)
        self.states = _grown(self.states, cap)
        self.gaps = _grown(self.gaps, cap)
        self.offsets = _grown(self.offsets, cap)
        self.sizes = _grown(self.sizes, cap)
        for h in self.holders:
            if h is not None:
                h.row = self.states[h.slot]
                h.gap_row = self.gaps[h.slot]


def _grown(a: np.ndarray, rows: int) -> np.ndarray:
    new = np.zeros((rows, *a.shape[1:]), dtype=a.dtype)
    new[: len(a)] = a
    return new
