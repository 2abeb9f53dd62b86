"""numba's cache is named by the kernels' sources (operators/numba_cache.py): a kernel
that inlines another module's kernel is recompiled when that module changes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from operators import numba_cache

REPO = Path(__file__).resolve().parents[1]

INLINED = "from numba import njit\n\n\n@njit(cache=True)\ndef f():\n    return {value}\n"
CALLER = (
    "from numba import njit\n\nfrom kern.inlined import f\n\n\n"
    "@njit(cache=True)\ndef g():\n    return f()\n"
)
INIT_CONFIGURED = (
    "from pathlib import Path\n\nfrom operators.numba_cache import configure\n\n"
    "configure(Path(__file__).parent)\n"
)


def _package(tmp: Path, init: str) -> Path:
    pkg = tmp / "kern"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(init)
    (pkg / "inlined.py").write_text(INLINED.format(value=1))
    (pkg / "caller.py").write_text(CALLER)
    return pkg


def _run_g(tmp: Path) -> int:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp), str(REPO)])
    out = subprocess.run(
        [sys.executable, "-c", "from kern.caller import g; print(g())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return int(out.stdout.strip())


@pytest.mark.parametrize("configured", [True, False])
def test_a_changed_inlined_kernel_is_not_served_from_the_cache(tmp_path: Path, configured: bool):
    """numba alone keeps the caller's cached code after the inlined module changes (the
    second case shows the hazard is real, so the first can fail); with the directory
    named by the sources the caller sees the change."""
    pkg = _package(tmp_path, INIT_CONFIGURED if configured else "")
    assert _run_g(tmp_path) == 1
    (pkg / "inlined.py").write_text(INLINED.format(value=2))
    assert _run_g(tmp_path) == (2 if configured else 1)


def test_digest_follows_the_kernel_modules_only(tmp_path: Path):
    (tmp_path / "kernel.py").write_text("import numba\n")
    (tmp_path / "plain.py").write_text("x = 1\n")
    before = numba_cache.sources_digest(numba_cache.kernel_sources(tmp_path), tmp_path)
    assert numba_cache.kernel_sources(tmp_path) == [tmp_path / "kernel.py"]
    (tmp_path / "plain.py").write_text("x = 2\n")
    assert numba_cache.sources_digest(numba_cache.kernel_sources(tmp_path), tmp_path) == before
    (tmp_path / "kernel.py").write_text("import numba  # changed\n")
    assert numba_cache.sources_digest(numba_cache.kernel_sources(tmp_path), tmp_path) != before


def test_the_operators_kernels_are_cached_in_the_named_directory():
    """Importing the operators points numba at this tree's directory, and a kernel
    module's compiled code is written there."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    code = (
        "import operators.detectors.window, numba.core.config as c, os;"
        "print(c.CACHE_DIR); print(any(os.scandir(c.CACHE_DIR)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout.split()
    digest = numba_cache.sources_digest(numba_cache.kernel_sources())
    assert out == [str(numba_cache.PACKAGE / "__pycache__" / f"{numba_cache.MARK}{digest}"), "True"]
