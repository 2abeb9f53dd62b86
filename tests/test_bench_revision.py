"""`bench.py --before REV`: the earlier revision's tree, how its contenders are started, the order.

No broker here: what is checked is that the "before" really is the other
revision (its own files, no other checkout importable), that its worktree goes
away whatever happens, and that before and after alternate fairly.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchmarks import revision
from tests.benchmarks.bench import MAIN, Contender, run_order, with_before


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout


def checkout(path: Path, marker: str) -> Path:
    """A minimal tree of the project's shape: pyproject.toml, streams/, a probe module."""
    (path / "streams").mkdir(parents=True)
    (path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (path / "streams" / "__init__.py").write_text(f"TREE = {marker!r}\n")
    (path / "probe.py").write_text(
        "import json, sys\nimport streams\n"
        "print(json.dumps({'tree': streams.TREE, 'argv': sys.argv, 'path': sys.path,"
        " 'name': __name__}))\n"
    )
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with two commits: `old` has streams/old.py, HEAD streams/new.py."""
    root = checkout(tmp_path / "repo", "repo")
    git(root, "init", "-q")
    git(root, "config", "user.email", "t@example.org")
    git(root, "config", "user.name", "t")
    (root / "streams" / "old.py").write_text("")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "old layout")
    git(root, "tag", "old")
    git(root, "mv", "streams/old.py", "streams/new.py")
    git(root, "commit", "-qm", "new layout")
    return root


def worktrees(repo: Path) -> list[str]:
    return [line for line in git(repo, "worktree", "list", "--porcelain").splitlines() if line]


def test_checked_out_is_that_revision_and_is_removed(repo: Path, tmp_path: Path) -> None:
    before = worktrees(repo)
    with revision.checked_out(repo, "old", tmp_path / "work") as rev:
        assert rev.sha == git(repo, "rev-parse", "old^{commit}").strip()
        assert rev.subject == "old layout"
        assert (rev.root / "streams" / "old.py").exists()
        assert not (rev.root / "streams" / "new.py").exists()
        assert len(worktrees(repo)) > len(before)
    assert not rev.root.exists()
    assert worktrees(repo) == before


def test_checked_out_is_removed_on_an_exception(repo: Path, tmp_path: Path) -> None:
    before = worktrees(repo)
    with pytest.raises(KeyboardInterrupt), revision.checked_out(repo, "old", tmp_path) as rev:
        raise KeyboardInterrupt  # Ctrl-C in the middle of the runs
    assert not rev.root.exists()
    assert worktrees(repo) == before


def test_a_stale_worktree_of_a_killed_run_is_replaced(repo: Path, tmp_path: Path) -> None:
    sha = git(repo, "rev-parse", "old").strip()
    stale = tmp_path / f"before-{sha[:7]}"
    git(repo, "worktree", "add", "--detach", str(stale), sha)
    shutil.rmtree(stale)  # the run's workdir was wiped; git still records the worktree
    with revision.checked_out(repo, "old", tmp_path) as rev:
        assert (rev.root / "streams" / "old.py").exists()


def test_an_unknown_revision_is_refused_clearly(repo: Path, tmp_path: Path) -> None:
    with (
        pytest.raises(SystemExit, match="--before nope: not a commit"),
        revision.checked_out(repo, "nope", tmp_path),
    ):
        pass


def test_the_contender_sees_its_own_tree_and_no_other_checkout(tmp_path: Path) -> None:
    """The shared venv's editable install appends the main checkout to sys.path: a module
    only that checkout has would be found there. The bootstrap drops it (and any other)."""
    other = checkout(tmp_path / "other", "other")
    mine = checkout(tmp_path / "mine", "mine")
    env = revision.environment(mine)
    # as the editable install does it, the other checkout comes after ours on sys.path
    env["PYTHONPATH"] = f"{mine}:{other}"
    done = subprocess.run(
        revision.command(sys.executable, mine, "probe", "spec.json"),
        cwd=mine,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    seen = json.loads(done.stdout)
    assert seen["tree"] == "mine"
    assert seen["name"] == "__main__"
    assert seen["argv"][1:] == ["spec.json"]
    assert str(other) not in seen["path"]
    assert str(mine.resolve()) in seen["path"]
    plain = subprocess.run(  # without the bootstrap the other tree is importable
        [sys.executable, "-c", "import sys; print(sys.path)"],
        cwd=mine,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert str(other) in plain.stdout


def test_foreign_names_modules_outside_the_tree(tmp_path: Path) -> None:
    inside = str(tmp_path / "t" / "streams" / "a.py")
    outside = "/elsewhere/streams/b.py"
    files = {"streams.a": [inside], "streams.b": [outside]}
    assert revision.foreign(files, tmp_path / "t") == [f"streams.b: {outside}"]


def test_before_and_after_alternate_run_by_run(tmp_path: Path) -> None:
    rev = revision.Revision("old", "a" * 40, "old layout", tmp_path)
    contenders = with_before(MAIN[4:8], rev)  # ceiling, sensor; ceiling, drift
    labels = [c.label for c in contenders]
    assert labels == [
        "ceiling, sensor data",
        "streamwatch sensor + cluster (before: aaaaaaa)",
        "streamwatch sensor + cluster",
        "ceiling, inference data",
        "streamwatch drift + service (before: aaaaaaa)",
        "streamwatch drift + service",
    ]
    assert [c.label for c in run_order(contenders, 0)] == labels
    assert [c.label for c in run_order(contenders, 2)] == labels
    swapped = [labels[0], labels[2], labels[1], labels[3], labels[5], labels[4]]
    assert [c.label for c in run_order(contenders, 1)] == swapped
    before = contenders[1]
    assert isinstance(before, Contender)
    assert before.root == tmp_path and before.revision == "aaaaaaa"
    assert contenders[2].root != tmp_path and contenders[2].revision is None
