"""Two checkouts' timed passes in lockstep: the driver of `keys_ab` and `runtime_ab`.

Each side is a process of its own running `serve` (a `python -c` program, since the
before side's checkout may not have the caller's module) with its checkout first on
`sys.path`; it prepares its input, runs a warm-up pass, prints `ready`, then answers each
line read from stdin with one timed pass as a line of fields. The driver asks each side
in turn, swapping who goes first every round, so both see the same load of a shared
machine within seconds of each other.
"""

from __future__ import annotations

import os
import subprocess
import sys


def run_lockstep(
    serve: str, argv: list[str], before: str, after: str, rounds: int
) -> dict[str, list[list[str]]]:
    """{"before": [...], "after": [...]}: each side's answers (the line's fields), one per
    round, after both printed `ready`."""
    sides: dict[str, subprocess.Popen[str]] = {}
    for name, path in (("before", before), ("after", after)):
        root = os.path.abspath(path)
        sides[name] = subprocess.Popen(
            [sys.executable, "-c", serve, *argv],
            cwd=root,
            env={**os.environ, "PYTHONPATH": root},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
    answers: dict[str, list[list[str]]] = {name: [] for name in sides}
    try:
        for name, proc in sides.items():
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", name
        for r in range(rounds):
            for name in list(sides) if r % 2 == 0 else list(reversed(sides)):
                proc = sides[name]
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write("pass\n")
                proc.stdin.flush()
                answers[name].append(proc.stdout.readline().split())
    finally:
        for proc in sides.values():
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait()
    return answers
