"""Where numba keeps this package's compiled kernels: a directory named by their sources.

numba's on-disk cache (`@njit(cache=True)`) checks only the file that defines a
function: a kernel that compiles another module's kernel into itself (the sensor run
inlines the sliding window's step and the tail's ring, `operators/sensor_run.py`) keeps
the old code of that module after it changes, silently, until its own file changes
too. Naming the cache directory by a digest of every module here that uses numba makes
any change to any of them start from an empty cache, so no stale machine code can be
loaded, whatever was edited, upgraded or checked out (a cold compile of all the kernels
takes ~20 s once).

The directory is `<operators>/__pycache__/streamwatch-numba-<digest>` (next to where
numba would put it), or `$NUMBA_CACHE_DIR/streamwatch-numba-<digest>` when the user chose
a place. numba uses a cache directory only if it can write to it, and raises at import
when it finds none ("no locator available": a read-only install under a read-only root
filesystem, as in deploy/k8s), so where the chosen directory cannot be written the
system's temporary directory is used (`tempfile.gettempdir()`), where the kernels compile
at the first start. Directories of older digests are left in place (a few MB each) and
can be removed at any time.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
MARK = "streamwatch-numba-"  # the name of our directories: the mark and the digest


def kernel_sources(root: Path = PACKAGE) -> list[Path]:
    """The package's modules that use numba, in a fixed order (`__pycache__`, where the
    caches of older digests lie, is not walked)."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            path = Path(folder) / name
            if name.endswith(".py") and b"numba" in path.read_bytes():
                found.append(path)
    return sorted(found)


def sources_digest(paths: list[Path], root: Path = PACKAGE) -> str:
    """A digest of the modules' relative names and bytes (16 hex digits of SHA-256)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def cache_dir(digest: str, user_dir: str = "", root: Path = PACKAGE) -> str:
    """The cache directory for kernels of this digest: under a user's NUMBA_CACHE_DIR,
    else in the package's __pycache__. A NUMBA_CACHE_DIR that is one of ours (a child
    process inherits the variable its parent set) is replaced by its sibling of this
    digest, not nested.

    >>> cache_dir("ab12", "/var/cache/numba")
    '/var/cache/numba/streamwatch-numba-ab12'
    >>> cache_dir("cd34", "/var/cache/numba/streamwatch-numba-ab12")
    '/var/cache/numba/streamwatch-numba-cd34'
    >>> cache_dir("ab12", "", Path("/opt/operators"))
    '/opt/operators/__pycache__/streamwatch-numba-ab12'
    """
    if user_dir:
        user = Path(user_dir)
        parent = user.parent if user.name.startswith(MARK) else user
        return str(parent / f"{MARK}{digest}")
    return str(root / "__pycache__" / f"{MARK}{digest}")


def writable(path: str) -> bool:
    """Whether `path` is, or can be made, a directory this process can write to (numba's
    own test: `_CacheLocator.ensure_cache_path`)."""
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    return True


def configure(root: Path = PACKAGE) -> str:
    """Point numba's cache at the directory of the kernels' sources under root (this
    package), or in the temporary directory where that cannot be written; returns it."""
    digest = sources_digest(kernel_sources(root), root)
    where = cache_dir(digest, os.environ.get("NUMBA_CACHE_DIR", ""), root)
    if not writable(where):
        where = str(Path(tempfile.gettempdir()) / f"{MARK}{digest}")
    if "numba" in sys.modules:  # numba read its configuration already: set it there
        from numba.core import config

        config.CACHE_DIR = where
    os.environ["NUMBA_CACHE_DIR"] = where
    return where
