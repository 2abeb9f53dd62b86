"""Checkpoints written by an older version (state format 1, tests/artifacts/state_format1/,
made by `python -m tests.state_fixtures` at adfee79) restore into the current code: the
run continues exactly as the uninterrupted run of the current code, rows, observations
and alerts (the upgrade policy of `operators/state.py`: an older format is upgraded where
the operator declares how, else refused with a clear `StateFormatError`, never half-used).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from operators.state import StateFormatError
from streams.runtime.monitors import OPERATORS
from tests.conformance import drive, task_factory
from tests.conformance_inputs import GENERATORS
from tests.state_fixtures import split_batch
from tests.test_conformance import uninterrupted

FORMAT1 = Path(__file__).parent / "artifacts" / "state_format1"


def test_every_monitor_has_a_format1_checkpoint() -> None:
    assert {p.stem for p in FORMAT1.glob("*.msgpack")} == set(OPERATORS)


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_a_format1_checkpoint_is_upgraded_and_the_run_continues_exactly(name: str) -> None:
    case = GENERATORS[name]()
    blob = (FORMAT1 / f"{name}.msgpack").read_bytes()
    try:
        got, _ = drive(
            task_factory(name, case), case.events, split_at=split_batch(name), restore_from=blob
        )
    except StateFormatError as exc:  # refusing is allowed only with a clear message
        pytest.fail(f"{name}: format 1 is refused, but every monitor upgrades it: {exc}")
    want = uninterrupted(name).canon()
    for what, g, w in zip(("rows", "observations", "alerts"), got.canon(), want, strict=True):
        assert g == w, f"{name}: {what} differ after restoring a format-1 checkpoint"
