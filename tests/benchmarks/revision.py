"""An earlier revision of the project, checked out beside the current one for `bench.py --before`.

Issue 12, point 7 asks that a refactor leave the throughput where it was,
"measured before and after in one run": the same broker, the same datasets,
the two versions interleaved so a slow moment of the machine hits both. This
module gives the harness the "before":

- `checked_out(rev, into)`: a temporary detached `git worktree` of `rev`, removed
  again (`git worktree remove --force`, then `git worktree prune`) when the
  block ends, also on Ctrl-C or an exception;
- `command(python, root, module, spec)`: how to start a contender *of that tree*.
  The revision runs its OWN copy of the contender script
  (`tests/benchmarks/contenders/...` of the checkout), so it imports the module
  paths of its own time (e.g. `streams.worker` before `streams/` was split into
  subpackages) and the harness never has to know them;
- `imported_from(...)`: the files a contender's imports resolve to, to check
  that nothing leaks in from another tree.

Why a bootstrap rather than `python -m` with `PYTHONPATH`: the shared venv has
the project installed in editable mode, a `.pth` that appends the main
checkout to `sys.path`. `PYTHONPATH` comes first, so a module both trees have
resolves to the revision; but a module only the other tree has (a new
subpackage, a `try: import new.path except ImportError: import old.path`)
would be found there, silently mixing two versions. The bootstrap drops every
other checkout of the project (a `sys.path` entry holding `pyproject.toml` and
`streams/`) before running the module as `__main__`, as `-m` would.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# the project's top-level packages: where a contender's imports must come from
PACKAGES = ("streams", "operators", "schemas", "tests")

# run as `python -c BOOTSTRAP ROOT MODE MODULE [ARGS...]`: stdlib only, the same in any tree
BOOTSTRAP = f"""\
import json, os, runpy, sys
root, mode, module = sys.argv[1:4]
del sys.argv[1:4]
def other_checkout(entry):
    path = os.path.realpath(entry or ".")
    return path != root and os.path.isfile(os.path.join(path, "pyproject.toml")) \\
        and os.path.isdir(os.path.join(path, "streams"))
sys.path[:] = [entry for entry in sys.path if not other_checkout(entry)]
if mode == "check":
    __import__(module)
    top = {PACKAGES!r}
    files = {{}}
    for name, mod in sorted(sys.modules.items()):
        if name.split(".")[0] in top:
            where = getattr(mod, "__file__", None) or list(getattr(mod, "__path__", []))
            files[name] = where if isinstance(where, list) else [where]
    print(json.dumps(files))
else:
    sys.argv[0] = module
    runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


@dataclass(frozen=True)
class Revision:
    """A checked-out revision: what the user asked for, the commit it names, its tree."""

    asked: str
    sha: str
    subject: str
    root: Path

    @property
    def short(self) -> str:
        return self.sha[:7]


def git(repo: Path, *args: str) -> str:
    """`git -C repo args...`; its stdout, stripped; raises with git's message on failure."""
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def resolve(repo: Path, rev: str) -> tuple[str, str]:
    """The full commit id `rev` names in `repo`, and its subject line."""
    sha = git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    return sha, git(repo, "log", "-1", "--format=%s", sha)


@contextlib.contextmanager
def checked_out(repo: Path, rev: str, into: Path) -> Iterator[Revision]:
    """A detached worktree of `rev` at `into/before-SHA`, removed when the block ends."""
    try:
        sha, subject = resolve(repo, rev)
    except RuntimeError as error:
        raise SystemExit(f"--before {rev}: not a commit of {repo} ({error})") from None
    root = (into / f"before-{sha[:7]}").resolve()
    remove(repo, root)  # one a killed run left (files, or git's record of a deleted one)
    git(repo, "worktree", "add", "--detach", str(root), sha)
    try:
        yield Revision(rev, sha, subject, root)
    finally:
        remove(repo, root)


def remove(repo: Path, root: Path) -> None:
    """Take the worktree out (files and git's record of it), whatever state it is in."""
    with contextlib.suppress(RuntimeError):
        git(repo, "worktree", "remove", "--force", str(root))
    shutil.rmtree(root, ignore_errors=True)  # e.g. a half-made checkout git never recorded
    with contextlib.suppress(RuntimeError):
        git(repo, "worktree", "prune")


def command(python: str, root: Path, module: str, *args: str) -> list[str]:
    """The command that runs `module` of the tree `root` as `__main__`, no other tree visible."""
    return [python, "-c", BOOTSTRAP, str(root.resolve()), "run", module, *args]


def environment(root: Path) -> dict[str, str]:
    """The contender's environment: this one, with only `root` on `PYTHONPATH`."""
    return {**os.environ, "PYTHONPATH": str(root.resolve())}


def imported_from(python: str, root: Path, module: str) -> dict[str, list[str]]:
    """Import `module` as a contender of `root` would be started (same bootstrap, cwd and
    environment) and say where each of the project's modules it pulled in came from."""
    done = subprocess.run(
        [python, "-c", BOOTSTRAP, str(root.resolve()), "check", module],
        cwd=root,
        env=environment(root),
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if done.returncode:
        raise RuntimeError(f"importing {module} from {root} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def foreign(files: dict[str, list[str]], root: Path) -> list[str]:
    """The modules of `files` (from `imported_from`) whose files lie outside `root`."""
    base = root.resolve()
    return sorted(
        f"{name}: {path}"
        for name, paths in files.items()
        for path in paths
        if not Path(path).resolve().is_relative_to(base)
    )
