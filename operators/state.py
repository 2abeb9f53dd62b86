"""Typed, versioned operator state: the one way state is snapshotted and restored.

An operator keeps what must survive a restart in msgspec Structs (its *state type*)
and declares that type and its format number. Snapshot and restore are then generic:

    snapshot = {"format": N, "state": msgspec.to_builtins(state)}   # plain, msgpack-able
    state    = msgspec.convert(snapshot["state"], type=StateType)   # typed, checked

so no operator writes positional lists or string-joined keys by hand: a composite key
is a tuple (msgpack keeps it as an array; `convert` gives the tuple back), a window's
state is a Struct with named fields, and a snapshot that does not fit the type fails
loudly (`StateFormatError`) instead of restoring something half-right.

Upgrade policy (stated in docs/operations.md, "Upgrading"):

* a snapshot carries the format of the code that wrote it; snapshots written before
  this module existed carry none and count as format 1;
* a snapshot of the current format is restored;
* a snapshot of an older format is upgraded when the operator declares how
  (`upgrades[old] -> the plain state of format old + 1`, applied in turn), and refused
  otherwise with a `StateFormatError` that names the monitor, both formats and the
  way out (drain the topic with the old version, or start that monitor afresh with
  `streamwatch run --discard-state MONITOR`); a refused snapshot is never half-used;
* a snapshot of a newer format than the code knows (a rollback) is refused the same way.

Large numeric arrays may be held *packed*: a `bytes` field of little-endian float64
(`pack_f64`) or int64 (`pack_i64`) values, read back with `unpack_f64` / `unpack_i64`.
msgpack writes such a field as one bin (a copy of the array's memory), where a
`list[float]` costs a Python float per value to build, encode, decode and free: the
sensor monitor's series are ~3,600 floats each, and its checkpoint at many sensors
was bound by them (issue 18). The values are the same bits either way (float64 and
int64 round-trip exactly), so packing is a format change, not an arithmetic one.

>>> import msgspec
>>> class Counts(msgspec.Struct):
...     n: dict[tuple[str, int], int] = {}
>>> codec = StateCodec("demo", Counts, format=2)
>>> snap = codec.dump(Counts(n={("a", 1): 3}))
>>> snap
{'format': 2, 'state': {'n': {('a', 1): 3}}}
>>> codec.load(msgspec.msgpack.decode(msgspec.msgpack.encode(snap)))
Counts(n={('a', 1): 3})
>>> try:
...     codec.load({"n": [["a", 1, 3]]})   # an unversioned (format 1) snapshot
... except StateFormatError as exc:
...     print(exc.args[0][:68])
demo: a checkpoint in state format 1, which this version cannot read
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import msgspec
import numpy as np

S = TypeVar("S")

#: the key a versioned snapshot carries its format under
FORMAT_KEY = "format"

_MSGPACK = msgspec.msgpack.Encoder()
_F64 = np.dtype("<f8")
_I64 = np.dtype("<i8")


def pack_f64(values: np.ndarray | Sequence[float]) -> bytes:
    """Values as packed little-endian float64 bytes.

    >>> pack_f64([1.5, -0.0]) == np.array([1.5, -0.0]).astype("<f8").tobytes()
    True
    >>> unpack_f64(pack_f64([0.1, 2.0, float("inf")])).tolist()
    [0.1, 2.0, inf]
    """
    return np.asarray(values, dtype=_F64).tobytes()


def unpack_f64(packed: bytes) -> np.ndarray:
    """The float64 array of `pack_f64`'s bytes (read-only: a view of them)."""
    return np.frombuffer(packed, dtype=_F64)


def pack_i64(values: np.ndarray | Sequence[int]) -> bytes:
    """Integers (epoch milliseconds, say) as packed little-endian int64 bytes.

    >>> unpack_i64(pack_i64([1_700_000_000_000, -1])).tolist()
    [1700000000000, -1]
    """
    return np.asarray(values, dtype=_I64).tobytes()


def unpack_i64(packed: bytes) -> np.ndarray:
    """The int64 array of `pack_i64`'s bytes (read-only: a view of them)."""
    return np.frombuffer(packed, dtype=_I64)


class StateFormatError(RuntimeError):
    """A snapshot this code cannot restore: an unknown format or one that does not fit
    the state type. The worker stops with it rather than run on a wrong state."""


class StateCodec(Generic[S]):
    """Snapshot and restore of one state type: `dump` to plain data with its format,
    `load` back to the typed state (upgrading older formats where declared)."""

    def __init__(
        self,
        owner: str,
        state_type: type[S],
        *,
        format: int,
        upgrades: Mapping[int, Callable[[Any], Any]] | None = None,
    ) -> None:
        self.owner = owner
        self.state_type = state_type
        self.format = format
        #: format -> a function from that format's plain state to the next format's
        self.upgrades = dict(upgrades or {})

    def dump(self, state: S) -> dict[str, Any]:
        """The state as plain data (a copy: later changes to `state` do not reach it)."""
        return {
            FORMAT_KEY: self.format,
            "state": msgspec.to_builtins(state, builtin_types=(bytes,)),
        }

    def encode(self, state: S) -> msgspec.Raw:
        """`dump(state)` already encoded (msgpack), for a checkpoint: the bytes
        `msgspec.msgpack.encode(self.dump(state))` gives, written from the typed state in
        one pass, without the plain copy `dump` builds first (msgpack writes a Struct as
        the map `to_builtins` makes of it). A checkpoint embeds the `msgspec.Raw` as it
        is (`streams.connectors.checkpoints.encode`); it is a copy, as `dump`'s is. A
        checkpoint of the CTR task with 100 k campaigns (15.8 MB) cost 1.67 s through
        `dump` and 0.18 s this way, with 100 campaigns 55 against 29 ms (issue 18).

        >>> class Counts(msgspec.Struct):
        ...     n: dict[tuple[str, int], int] = {}
        >>> codec = StateCodec("demo", Counts, format=2)
        >>> state = Counts(n={("a", 1): 3})
        >>> bytes(codec.encode(state)) == msgspec.msgpack.encode(codec.dump(state))
        True
        """
        return msgspec.Raw(_MSGPACK.encode({FORMAT_KEY: self.format, "state": state}))

    def load(self, snapshot: Mapping[str, Any]) -> S:
        """The typed state of a snapshot; StateFormatError if it cannot be restored."""
        if isinstance(snapshot, Mapping) and FORMAT_KEY in snapshot and "state" in snapshot:
            found, plain = snapshot[FORMAT_KEY], snapshot["state"]
        else:  # written before states carried a format
            found, plain = 1, snapshot
        version = found
        while version < self.format:
            upgrade = self.upgrades.get(version)
            if upgrade is None:
                raise StateFormatError(self._refusal(found))
            try:
                plain = upgrade(plain)
            except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
                # a part the upgrade expects is missing or of another shape: a damaged
                # checkpoint, named as such (never a bare KeyError out of an upgrade)
                raise StateFormatError(
                    self._damaged(version, f"that format's layout ({type(exc).__name__}: {exc})")
                ) from exc
            version += 1
        if version != self.format:
            raise StateFormatError(self._refusal(found))
        try:
            return msgspec.convert(plain, type=self.state_type)
        except msgspec.ValidationError as exc:
            raise StateFormatError(
                self._damaged(self.format, f"{self.state_type.__name__} ({exc})")
            ) from exc

    def _damaged(self, version: int, fits: str) -> str:
        return (
            f"{self.owner}: a checkpoint in state format {version} that does not fit "
            f"{fits}; the checkpoint is damaged or was written by a build with the same "
            "format number but another layout. Start this monitor afresh: "
            "`streamwatch run --discard-state <monitor>` (its open windows are lost; see "
            "docs/operations.md, Upgrading)"
        )

    def _refusal(self, found: Any) -> str:
        return (
            f"{self.owner}: a checkpoint in state format {found}, which this version cannot "
            f"read (it writes format {self.format}"
            + (f" and upgrades formats {sorted(self.upgrades)}" if self.upgrades else "")
            + "). Drain the input with the version that wrote it, or start this monitor "
            "afresh: `streamwatch run --discard-state <monitor>` (its open windows are "
            "lost; see docs/operations.md, Upgrading)"
        )


__all__ = [
    "FORMAT_KEY",
    "StateCodec",
    "StateFormatError",
    "pack_f64",
    "pack_i64",
    "unpack_f64",
    "unpack_i64",
]
