"""Every sensor series' compiled-run state in shared arrays, one row per series slot.

The sensor monitor runs a whole release in one compiled call
(`operators.sensor_run.run_all`, issue 18 point 3): each series' state is
where that call can reach it without Python per series.

- `states[slot]`: the series' scalars (`operators.sensor_run.ST_*`);
- `gaps[slot]`: its cadence warm-up gaps;
- `chunks[where[slot, j]][offsets[slot, j]:offsets[slot, j] + sizes[slot, j]]`: its
  float64 buffers, j = 0 the sliding window (`operators.detectors.window`), 1 and 2
  the z-score and IQR tail rings (`operators.detectors.tail`);
- `rises[slot]`: its rise test's buffer (`operators.sensor_rise.RiseBuffer`, which the
  series replaces when it grows or resizes: set again by `set_rise`).

A live `Series` (`operators.sensor`) holds views of its rows and regions, so its
Python paths and the compiled run read and write the same memory. A key gets a
slot (`slot_of`) when it first appears; an expired series frees its slot for
reuse. The row arrays grow by doubling (every holder's row views re-pointed). The
buffers live in chunks (a numba typed list of float64 arrays) that never move, so
a holder's views stay valid: a new chunk, twice the last, is added when one is
full. A region freed (its series forgotten or replaced, or its buffer grown and
copied to a new region) goes to a free list by size and is the next region of
that size handed out (the sizes are few: the buffers double from 64 slots), so
the chunks hold at most the peak of live buffers. A buffer the Python path
replaced (a window or ring that had to grow, a restored one) is copied in by
`bind` after that path.

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
>>> t = SeriesSlots(width=4, gap_width=2, capacity=1, chunk=8)
>>> a, b = H(), H()
>>> t.attach(("s1", "t"), a); t.attach(("s2", "t"), b)
>>> a.slot, b.slot, len(t.chunks)
(0, 1, 2)
>>> def region(h, j):
...     off = t.offsets[h.slot, j]
...     return t.chunks[t.where[h.slot, j]][off : off + t.sizes[h.slot, j]]
>>> region(b, 2).tolist()
[3.0, 3.0, 3.0, 3.0, 3.0]
>>> b.bufs[2][0] = 7.0   # a view: the shared region sees the holder's writes
>>> float(region(b, 2)[0])
7.0
>>> places = t.where[a.slot].tolist(), t.offsets[a.slot].tolist()
>>> t.release(("s1", "t"))  # a's slot and regions free: a new key of the same sizes reuses them
>>> c = H()
>>> t.attach(("s3", "t"), c)
>>> c.slot, (t.where[c.slot].tolist(), t.offsets[c.slot].tolist()) == places
(0, True)
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from numba import njit, types
from numba.typed import List

BUFFERS = 3  # window, z-score tail ring, IQR tail ring
CHUNK = 1 << 16  # floats in the first chunk (512 KiB)


class Holder(Protocol):
    """A series as the slots see it (`operators.sensor.Series`)."""

    row: np.ndarray
    gap_row: np.ndarray
    slot: int
    bound: tuple[np.ndarray, ...] | None  # its buffers as last bound (region views)

    def buffers(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def set_buffers(self, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None: ...


class SeriesSlots:
    """Slots, their state rows and buffer regions (see the module's docstring)."""

    def __init__(self, width: int, gap_width: int, capacity: int = 64, chunk: int = CHUNK) -> None:
        warm_lists()
        self.width = width
        self.gap_width = gap_width
        self.slot_of: dict[Any, int] = {}
        self.key_of: list[Any] = []
        self.holders: list[Holder | None] = []
        self.free: list[int] = []
        self.states = np.zeros((capacity, width))
        self.gaps = np.zeros((capacity, gap_width), dtype=np.int64)
        self.where = np.zeros((capacity, BUFFERS), dtype=np.int64)
        self.offsets = np.zeros((capacity, BUFFERS), dtype=np.int64)
        self.sizes = np.zeros((capacity, BUFFERS), dtype=np.int64)
        # the rise tests' buffers by slot (a free slot's is left as it was: unread)
        self.rises: Any = List.empty_list(types.float64[::1])
        # the chunks, as the compiled run takes them and as Python lists them
        self.chunks: Any = List.empty_list(types.float64[::1])
        self._chunks: list[np.ndarray] = []
        self._chunk = chunk
        self._top = 0  # the first free float of the last chunk
        self._freed: dict[int, list[tuple[int, int]]] = {}  # size -> (chunk, offset)

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
        """Make s the live series of key (the one it had, if any, gives its regions
        back): its row and buffers are copied into the shared arrays, and s keeps
        views of them."""
        slot = self.slot(key)
        old = self.holders[slot]
        if old is not None and old is not s:
            self._give_back(old)
        self.states[slot] = s.row
        s.row = self.states[slot]
        self.gaps[slot] = s.gap_row
        s.gap_row = self.gaps[slot]
        s.slot = slot
        s.bound = None
        self.holders[slot] = s
        self.bind(s)

    def set_rise(self, slot: int, buf: np.ndarray) -> None:
        """`buf` is the rise test buffer of the series in `slot`."""
        _put(self.rises, slot, buf)

    def release(self, key: Any) -> None:
        """key's series is gone (expired): its slot and its regions are free."""
        slot = self.slot_of.pop(key)
        old = self.holders[slot]
        if old is not None:
            self._give_back(old)
        self.key_of[slot] = None
        self.holders[slot] = None
        self.free.append(slot)

    def bind(self, s: Holder) -> None:
        """Copy the buffers of s that are not its region views (grown or replaced by
        the Python path) into regions (the old ones freed), and give s views of them."""
        cur = s.buffers()
        bound = s.bound
        if bound is not None and cur[0] is bound[0] and cur[1] is bound[1] and cur[2] is bound[2]:
            return
        slot = s.slot
        views = []
        for j, b in enumerate(cur):
            if bound is not None:
                if b is bound[j]:
                    views.append(b)
                    continue
                self._free_region(slot, j)
            n = len(b)
            c, off = self._alloc(n)
            chunk = self._chunks[c]
            chunk[off : off + n] = b
            self.where[slot, j] = c
            self.offsets[slot, j] = off
            self.sizes[slot, j] = n
            views.append(chunk[off : off + n])
        s.set_buffers(*views)

    def _give_back(self, h: Holder) -> None:
        if h.bound is not None:
            for j in range(BUFFERS):
                self._free_region(h.slot, j)
            h.bound = None

    def _free_region(self, slot: int, j: int) -> None:
        n = int(self.sizes[slot, j])
        self._freed.setdefault(n, []).append((int(self.where[slot, j]), int(self.offsets[slot, j])))

    def _alloc(self, n: int) -> tuple[int, int]:
        """(chunk, offset) of a region of n floats: a freed one of that size, or the
        top of the last chunk (a new chunk, twice the last, when it is full)."""
        freed = self._freed.get(n)
        if freed:
            return freed.pop()
        chunks = self._chunks
        if not chunks or self._top + n > len(chunks[-1]):
            size = max(2 * len(chunks[-1]) if chunks else self._chunk, n)
            chunk = np.zeros(size)
            chunks.append(chunk)
            self.chunks.append(chunk)
            self._top = 0
        off = self._top
        self._top = off + n
        return len(chunks) - 1, off

    def _grow_slots(self) -> None:
        cap = 2 * len(self.states)
        self.states = _grown(self.states, cap)
        self.gaps = _grown(self.gaps, cap)
        self.where = _grown(self.where, cap)
        self.offsets = _grown(self.offsets, cap)
        self.sizes = _grown(self.sizes, cap)
        for h in self.holders:
            if h is not None:
                h.row = self.states[h.slot]
                h.gap_row = self.gaps[h.slot]


@njit(types.void(types.ListType(types.float64[::1]), types.int64, types.float64[::1]), cache=True)
def _put(rises: Any, slot: int, buf: np.ndarray) -> None:
    """rises[slot] = buf, the list extended to reach it (compiled and cached on disk: the
    typed list's own Python methods are compiled at their first use in every process,
    ~0.25 s for setting an item)."""
    while len(rises) <= slot:
        rises.append(buf)
    rises[slot] = buf


def _grown(a: np.ndarray, rows: int) -> np.ndarray:
    new = np.zeros((rows, *a.shape[1:]), dtype=a.dtype)
    new[: len(a)] = a
    return new


# numba compiles a typed list's methods at their first use in a process (they are not
# in its on-disk cache): done by `warm_lists`, which the worker calls at its start (while
# its group join waits) and the first `SeriesSlots` calls, so a worker pays it at start
# (~0.2 s) and not on its first reading, and a process that only imports this module
# (the CLI reading the configuration) never does
_warm = False


def warm_lists() -> None:
    """Compile the typed-list methods `SeriesSlots` uses (once per process)."""
    global _warm
    if not _warm:
        _warm = True  # first: the warm-up's own SeriesSlots comes back here
        SeriesSlots(1, 1, capacity=1, chunk=1)._alloc(1)
