"""Typed rows (`schemas.rows`) read as dicts, for tests written against the row dicts."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from schemas.rows import Row


def as_dicts(rows: Iterable[Row]) -> list[dict[str, Any]]:
    """Each row as a dict of its columns (`msgspec.structs.asdict`), in order."""
    return [msgspec.structs.asdict(row) for row in rows]


def tables_as_dicts(rows: dict[str, list[Row]]) -> dict[str, list[dict[str, Any]]]:
    """`Output.rows` (table -> typed rows) as table -> row dicts."""
    return {table: as_dicts(typed) for table, typed in rows.items()}
