"""Every runnable example in the docstrings of operators/, schemas/ and streams/ runs as
part of the suite (pytest does not collect doctests by default), found automatically: a
module that gains examples is covered without being listed (issue 12, point 6)."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def modules_with_examples() -> list[str]:
    found = []
    for package in ("operators", "schemas", "streams"):
        for path in sorted((REPO / package).rglob("*.py")):
            if ">>> " in path.read_text(encoding="utf-8"):
                found.append(".".join(path.relative_to(REPO).with_suffix("").parts))
    return found


MODULES = modules_with_examples()


def test_the_examples_are_found() -> None:
    assert {"operators.stats", "operators.rules", "schemas.tables"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_run(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result
