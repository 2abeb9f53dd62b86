"""The sensor monitor's pending readings, held as columns (issue 18, point 2).

A sensor reading of m metrics is m entries `(ts, sensor_id, metric, value, m)` (the
operator's `Entry`: its checkpoint format, and the order a release is judged in when
it is sorted). Built as tuples at every feed and taken apart again into numpy
columns at every release, they cost more than the judging of most readings; so a
feed's readings are held as one chunk of columns instead: per entry its time, its
(sensor_id, metric) key, its value and its reading's metric count, made with C-level
passes over the batch (`PendingReadings.add`).

A release (`release_unordered`) takes, in arrival order, every entry whose time is
before the watermark: a chunk the watermark passed whole as it is, the one it falls in
split by a mask (both parts keep arrival order), so an entry is released once and
exactly when `operators.rolling.EventTimeBuffer` releases it. The operator groups the
release by series itself and sorts it only where arrival order does not give the sorted
release's grouping (`operators.sensor.SensorOperator._grouped`); `Released` also reads
as the sequence of its entries, so every path that looks an entry up gets its tuple.

The entries are the checkpoint (`state`: sorted tuples, as `EventTimeBuffer.state`
gave them, so the snapshot's bytes are unchanged); the columns are derived and rebuilt
from them on restore (`load`).

>>> from schemas.events import SensorReading
>>> T = 1_700_000_000_000
>>> p = PendingReadings()
>>> p.add([SensorReading(sensor_id="s", ts=T + 20, values={"a": 1.0, "b": 2.0}),
...        SensorReading(sensor_id="t", ts=T + 10, values={"a": 3})])
>>> len(p), [(t - T, *rest) for t, *rest in p.entries]
(3, [(10, 't', 'a', 3.0, 1), (20, 's', 'a', 1.0, 2), (20, 's', 'b', 2.0, 2)])
>>> r = p.release_unordered(T + 15)
>>> [(t - T, *rest) for t, *rest in r], len(p)
([(10, 't', 'a', 3.0, 1)], 2)
>>> [(t - T, *rest) for t, *rest in p.release(T + 100)], len(p)
([(20, 's', 'a', 1.0, 2), (20, 's', 'b', 2.0, 2)], 0)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import chain, compress, repeat
from operator import attrgetter
from typing import Any

import numpy as np

# (ts, sensor_id, metric, value, metrics of its reading), as `operators.sensor.Entry`
Entry = tuple[int, str, str, float, int]

# a feed of fewer entries than SMALL joins the last chunk while that holds fewer than
# CHUNK: many small feeds (a slow poll) make few chunks, so a release's scan of the
# chunks and the copy of the one it splits stay bounded, as `EventTimeBuffer`'s buckets
# bound them; a batch of SMALL or more is a chunk of its own, never copied
SMALL = 512
CHUNK = 4096

_ts = attrgetter("ts")
_sensor = attrgetter("sensor_id")
_values = attrgetter("values")


class Released:
    """Entries as columns, in arrival order: ts (int64), sids and metrics (lists of
    str), xs (float64 values), counts (int64 metric counts). Indexed or iterated it
    reads as the list of its entries (tuples made on demand). `ordered`: ts never
    decreases (a feed's batch in time order, the usual one), so a split is a slice."""

    __slots__ = ("_lists", "counts", "metrics", "ordered", "sids", "ts", "xs")

    def __init__(
        self,
        ts: np.ndarray,
        sids: list[str],
        metrics: list[str],
        xs: np.ndarray,
        counts: np.ndarray,
        ordered: bool | None = None,
    ) -> None:
        self.ts, self.sids, self.metrics, self.xs, self.counts = ts, sids, metrics, xs, counts
        self.ordered = bool((ts[1:] >= ts[:-1]).all()) if ordered is None else ordered
        # ts, xs and counts as lists, made at the first look-up: the judging looks up
        # a few hundred entries of a release (a list's item is cheaper than numpy's)
        self._lists: tuple[list[int], list[float], list[int]] | None = None

    def __len__(self) -> int:
        return len(self.sids)

    def __getitem__(self, i: int) -> Entry:
        lists = self._lists
        if lists is None:
            lists = self._lists = (self.ts.tolist(), self.xs.tolist(), self.counts.tolist())
        return lists[0][i], self.sids[i], self.metrics[i], lists[1][i], lists[2][i]

    def __iter__(self) -> Iterator[Entry]:
        return zip(
            self.ts.tolist(),
            self.sids,
            self.metrics,
            self.xs.tolist(),
            self.counts.tolist(),
            strict=True,
        )

    def keys(self) -> Iterator[tuple[str, str]]:
        """Each entry's (sensor_id, metric), made as it is read (zip reuses its tuple
        when the reader keeps none, as a dict look-up does)."""
        return zip(self.sids, self.metrics, strict=True)

    def split(self, watermark: int) -> tuple[Released, Released]:
        """(the entries before watermark, the rest), each in arrival order."""
        ts, sids, metrics, xs, counts = self.ts, self.sids, self.metrics, self.xs, self.counts
        if self.ordered:
            i = int(np.searchsorted(ts, watermark))
            return (
                Released(ts[:i], sids[:i], metrics[:i], xs[:i], counts[:i], True),
                Released(ts[i:], sids[i:], metrics[i:], xs[i:], counts[i:], True),
            )
        before = ts < watermark
        parts = []
        for mask in (before, ~before):
            flags = mask.tolist()
            parts.append(
                Released(
                    ts[mask],
                    list(compress(sids, flags)),
                    list(compress(metrics, flags)),
                    xs[mask],
                    counts[mask],
                )
            )
        return parts[0], parts[1]


def _joined(parts: list[Released]) -> Released:
    """The parts' entries, one after another."""
    if len(parts) == 1:
        return parts[0]
    sids: list[str] = []
    metrics: list[str] = []
    for p in parts:  # (a list's += of a list is a copy in C)
        sids += p.sids
        metrics += p.metrics
    return Released(
        np.concatenate([p.ts for p in parts]),
        sids,
        metrics,
        np.concatenate([p.xs for p in parts]),
        np.concatenate([p.counts for p in parts]),
    )


class PendingReadings:
    """Sensor readings held as chunks of columns until the watermark passes them."""

    __slots__ = ("_chunks", "_n", "chunk", "small")

    def __init__(self, small: int = SMALL, chunk: int = CHUNK) -> None:
        # (earliest time, latest time, the chunk's entries), in arrival order
        self._chunks: list[tuple[int, int, Released]] = []
        self._n = 0
        self.small, self.chunk = small, chunk  # (`SMALL`, `CHUNK`; tests set others)

    def __len__(self) -> int:
        return self._n

    def add(self, events: Sequence[Any]) -> None:
        """Hold the entries of `events` (`SensorReading`s), a chunk for the batch, made
        by C-level passes over it (no Python per entry): per reading its time, sensor
        and metric count, repeated per metric, per metric its name and value (`float`
        of it, as numpy's float64 makes it)."""
        values = list(map(_values, events))
        per_reading = list(map(len, values))
        metrics = list(chain.from_iterable(values))
        if not metrics:
            return
        counts = np.array(per_reading, dtype=np.int64)
        self._push(
            Released(
                np.repeat(np.fromiter(map(_ts, events), np.int64, len(events)), counts),
                list(chain.from_iterable(map(repeat, map(_sensor, events), per_reading))),
                metrics,
                np.fromiter(
                    chain.from_iterable(map(dict.values, values)), np.float64, len(metrics)
                ),
                np.repeat(counts, counts),
            )
        )

    def _push(self, chunk: Released) -> None:
        chunks = self._chunks
        self._n += len(chunk)
        lo, hi = int(chunk.ts.min()), int(chunk.ts.max())
        if len(chunk) < self.small and chunks and len(chunks[-1][2]) < self.chunk:
            last_lo, last_hi, last = chunks[-1]
            chunks[-1] = (min(lo, last_lo), max(hi, last_hi), _joined([last, chunk]))
        else:
            chunks.append((lo, hi, chunk))

    def release_unordered(self, watermark: int) -> Released | list[Entry]:
        """Remove and return every entry with ts < watermark, in arrival order (empty:
        an empty list)."""
        out: list[Released] = []
        kept: list[tuple[int, int, Released]] = []
        for held in self._chunks:
            lo, hi, chunk = held
            if hi < watermark:
                out.append(chunk)
            elif lo >= watermark:
                kept.append(held)
            else:
                before, after = chunk.split(watermark)
                out.append(before)
                kept.append((int(after.ts.min()), hi, after))
        if not out:
            return []
        self._chunks = kept
        released = _joined(out)
        self._n -= len(released)
        return released

    def release(self, watermark: int) -> list[Entry]:
        """Remove and return, sorted, every entry with ts < watermark."""
        return sorted(self.release_unordered(watermark))

    @property
    def entries(self) -> list[Entry]:
        """The held entries, sorted (a new list)."""
        return sorted(chain.from_iterable(chunk for _, _, chunk in self._chunks))

    def state(self) -> list[Entry]:
        """The held entries (a sorted copy), for the operator's typed state."""
        return self.entries

    def load(self, entries: Iterable[Entry]) -> None:
        """Hold `entries` (as `state()` gave them), replacing what was held."""
        self._chunks, self._n = [], 0
        held = list(entries)
        if held:
            self._push(
                Released(
                    np.array([e[0] for e in held], dtype=np.int64),
                    [e[1] for e in held],
                    [e[2] for e in held],
                    np.array([e[3] for e in held], dtype=np.float64),
                    np.array([e[4] for e in held], dtype=np.int64),
                )
            )
