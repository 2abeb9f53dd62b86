"""numba's cache is named by the kernels' sources (operators/numba_cache.py): a kernel
that inlines another module's kernel is recompiled when that module changes."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
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


def _run_kern(root: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`kern.caller.g()` in a fresh interpreter with `root` on its path (numba's cache
    and HOME as in `env`, no inherited NUMBA_CACHE_DIR)."""
    base = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    base["PYTHONPATH"] = os.pathsep.join([str(root), str(REPO)])
    return subprocess.run(
        [sys.executable, "-c", "from kern.caller import g; print(g())"],
        env=base | env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _run_g(tmp: Path) -> int:
    run = _run_kern(tmp)
    assert run.returncode == 0, run.stderr[-2000:]
    return int(run.stdout.strip())


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


def test_an_unwritable_place_falls_back_to_the_temporary_directory(tmp_path: Path, monkeypatch):
    """A read-only install (here: `__pycache__` is a file, so nothing can be made in it)
    caches in the temporary directory instead of numba failing at import."""
    pkg = _package(tmp_path, INIT_CONFIGURED)
    (pkg / "__pycache__").write_text("not a directory")
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    from numba.core import config

    # (configure sets numba's directory in this process: put it back afterwards)
    monkeypatch.setattr(config, "CACHE_DIR", config.CACHE_DIR)
    where = numba_cache.configure(pkg)
    digest = numba_cache.sources_digest(numba_cache.kernel_sources(pkg), pkg)
    assert where == str(Path(tempfile.gettempdir()) / f"{numba_cache.MARK}{digest}")
    assert numba_cache.writable(where) and not numba_cache.writable(str(pkg / "__pycache__" / "x"))


def test_numba_alone_fails_at_import_where_nothing_is_writable(tmp_path: Path):
    """The hazard the fallback removes: with no writable place (NUMBA_CACHE_DIR, the
    package's `__pycache__` and HOME are files), plain numba raises at import ("no
    locator available"); configured, the kernels are cached in the temporary directory
    and run (this fails with the fallback removed: numba then finds no place either)."""
    for configured in (False, True):
        root = tmp_path / str(configured)
        root.mkdir()
        pkg = _package(root, INIT_CONFIGURED if configured else "")
        (pkg / "__pycache__").write_text("not a directory")
        nowhere = str(pkg / "__init__.py")  # a file: no directory can be made under it
        run = _run_kern(root, NUMBA_CACHE_DIR=nowhere, HOME=nowhere, PYTHONDONTWRITEBYTECODE="1")
        if configured:
            assert run.returncode == 0 and run.stdout.strip() == "1", run.stderr[-2000:]
        else:
            assert run.returncode != 0 and "no locator available" in run.stderr, run.stderr[-2000:]
