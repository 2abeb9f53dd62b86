"""The runnable examples in the docstrings of the evidence statistics and the
freshness detector, run as part of the suite (pytest does not collect doctests
from operators/ by default)."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize(
    "module", ["operators.stats", "operators.sequential_rates", "operators.freshness"]
)
def test_docstring_examples_run(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
