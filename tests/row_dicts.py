"""Typed rows (`schemas.rows`) in tests: read as dicts, and sample rows of every type."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec
import msgspec.inspect as mi

from schemas.rows import Row

T0 = 1_795_000_020_000  # 2026-11-18, a whole minute


def as_dicts(rows: Iterable[Row]) -> list[dict[str, Any]]:
    """Each row as a dict of its columns (`msgspec.structs.asdict`), in order."""
    return [msgspec.structs.asdict(row) for row in rows]


def sample_row(row_type: type[Row], seed: int = 0, nulls: bool = False) -> Row:
    """A row of `row_type` whose every column has a distinct value of its type (times as
    epoch ms after T0, counts within their bounds, JSON columns non-empty objects);
    nullable columns None when `nulls`."""
    fields: dict[str, Any] = {}
    for i, field in enumerate(mi.type_info(row_type).fields):
        fields[field.name] = _value(field.name, field.type, seed * 100 + i, nulls)
    return row_type(**fields)


def _value(name: str, kind: Any, n: int, nulls: bool) -> Any:
    if isinstance(kind, mi.Metadata):
        clickhouse = (kind.extra or {}).get("clickhouse", "")
        if clickhouse.startswith(("DateTime64", "Nullable(DateTime64")):
            inner = kind.type
            if isinstance(inner, mi.UnionType):
                return None if nulls else T0 + n * 1000
            return T0 + n * 1000
        kind = kind.type
    if isinstance(kind, mi.UnionType):
        if nulls:
            return None
        (kind,) = [t for t in kind.types if not isinstance(t, mi.NoneType)]
    if isinstance(kind, mi.BoolType):
        return True
    if isinstance(kind, mi.IntType):
        return 1 if kind.le == 1 else 1000 + n
    if isinstance(kind, mi.FloatType):
        return n + 0.25
    if isinstance(kind, mi.StrType):
        return f"{name}-{n}"
    if isinstance(kind, mi.DictType):
        value = 1 + n if isinstance(kind.value_type, mi.IntType) else n + 0.5
        return {"A": value, "B": value}
    raise AssertionError(f"no sample value for {name}: {kind}")
