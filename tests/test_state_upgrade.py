"""Checkpoints written by older versions restore into the current code: the run continues
exactly as the uninterrupted run of the current code, rows, observations and alerts. Each
set is made by `python -m tests.state_fixtures DIR` at a commit:
tests/artifacts/state_format1/ at adfee79 (state format 1 throughout), and
tests/artifacts/state_f4ccd19/ at f4ccd19 (format 2; the last before the sensor monitor's
format 3, packed arrays). This is the upgrade policy of `operators/state.py`: an older
format is upgraded where the operator declares how, else refused with a clear
`StateFormatError`, never half-used.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from operators.state import StateFormatError
from streams.runtime.monitors import OPERATORS
from tests.conformance import drive, task_factory
from tests.conformance_inputs import GENERATORS
from tests.state_fixtures import split_batch
from tests.test_conformance import uninterrupted

ARTIFACTS = Path(__file__).parent / "artifacts"
FIXTURE_SETS = ("state_format1", "state_f4ccd19")

# Monitors whose checkpoint holds floats computed by code whose last bits depend on the
# CPU, continued after the restore from the fixture's values (written on another machine):
# - the autoencoder's network (numpy's vectorised tanh/exp and its BLAS can take
#   CPU-specific code paths, AVX-512 or not; which operation differs first was not
#   traced): on another kind of CPU the uninterrupted run trains weights that differ in
#   the last bits (seen: 315 weights of the fixture, ~1e-16 relative, on an AVX-512 Xeon),
#   and so do the scores computed from them;
# - the SRM monitor's CUSUMs, sums of binomial log-likelihood ratios from numpy's `log` and
#   `log1p`, which numpy computes with its own AVX-512 code where the CPU has it: on an AMD
#   EPYC without AVX-512 (2026-12-02; there np.log equals math.log on 100,000 draws) the
#   restored run's `p_sequential` was ~1e-13 relative off the uninterrupted run's.
# Their floats are compared to 1e-9 relative; everything else of theirs (keys, times,
# counts, which alerts) and every other monitor exactly.
CPU_DEPENDENT_FLOATS = {"autoencoder", "srm"}


def same(got: Any, want: Any, rel: float) -> bool:
    """`got == want`, floats within `rel` relative (0: exactly) of each other."""
    if isinstance(got, float) and isinstance(want, float):
        return got == want or math.isclose(got, want, rel_tol=rel, abs_tol=0.0)
    if isinstance(got, list | tuple) and isinstance(want, list | tuple):
        return len(got) == len(want) and all(
            same(g, w, rel) for g, w in zip(got, want, strict=True)
        )
    return bool(got == want)


@pytest.mark.parametrize("fixtures", FIXTURE_SETS)
def test_every_monitor_has_an_older_checkpoint(fixtures: str) -> None:
    assert {p.stem for p in (ARTIFACTS / fixtures).glob("*.msgpack")} == set(OPERATORS)


@pytest.mark.parametrize("name", sorted(OPERATORS))
@pytest.mark.parametrize("fixtures", FIXTURE_SETS)
def test_an_older_checkpoint_is_upgraded_and_the_run_continues_exactly(
    fixtures: str, name: str
) -> None:
    case = GENERATORS[name]()
    blob = (ARTIFACTS / fixtures / f"{name}.msgpack").read_bytes()
    try:
        got, _ = drive(
            task_factory(name, case), case.events, split_at=split_batch(name), restore_from=blob
        )
    except StateFormatError as exc:  # refusing is allowed only with a clear message
        pytest.fail(f"{name}: {fixtures} is refused, but every monitor upgrades it: {exc}")
    want = uninterrupted(name).canon()
    rel = 1e-9 if name in CPU_DEPENDENT_FLOATS else 0.0
    for what, g, w in zip(("rows", "observations", "alerts"), got.canon(), want, strict=True):
        assert same(g, w, rel), f"{name}: {what} differ after restoring {fixtures}"


def test_same_compares_floats_to_the_tolerance_and_the_rest_exactly() -> None:
    assert same((("score", 8.07104675753056),), (("score", 8.071046757530567),), 1e-9)
    assert not same((("score", 8.07104675753056),), (("score", 8.071046757530567),), 0.0)
    assert not same((("score", 8.0),), (("score", 8.1),), 1e-9)
    assert not same((("n", 3),), (("n", 4),), 1e-9)
    assert not same((("a", 1.0),), (("a", 1.0), ("b", 2.0)), 1e-9)
