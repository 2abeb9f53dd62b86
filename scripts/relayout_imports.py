"""Rewrite references to the pre-split streams/ modules (issue 12 point 6) to their new paths.

For branches written before `streams/` was grouped into connectors/, runtime/ and cli/: after
`git merge main`, run it on the files the branch touched, then `ruff check --fix` to re-sort
imports. It rewrites in place and is idempotent (references already in the new layout stay);
it prints the bare `streams.runtime` / `streams.cli` references it cannot judge (the old module
or the new package?). A one-off: delete it once every such branch is merged.

    python scripts/relayout_imports.py $(git diff --name-only main...HEAD)
"""

import re
import sys
from pathlib import Path

MOVES = {
    "kafka": "connectors.kafka",
    "clickhouse": "connectors.clickhouse",
    "sqlguard": "connectors.sqlguard",
    "checkpoints": "connectors.checkpoints",
    "dead_letters": "connectors.dead_letters",
    "embedded": "connectors.embedded",
    "preflight": "connectors.preflight",
    "worker": "runtime.worker",
    "runtime": "runtime.cycle",
    "pipeline": "runtime.pipeline",
    "repartition": "runtime.repartition",
    "monitors": "runtime.monitors",
    "health": "runtime.health",
    "metrics": "runtime.metrics",
    "web": "runtime.web",
    "app": "runtime.app",
    "faults": "runtime.faults",
    "correlate": "runtime.correlate",
    "sql_rules": "runtime.sql_rules",
    "retrain": "runtime.retrain",
    "source": "runtime.source",
    "sinks": "runtime.sinks",
    "cli": "cli.commands",
    "simulate": "cli.simulate",
    "demo": "cli.demo",
    "console": "cli.console",
}
# names that are now subpackages: `streams.runtime.X` / `streams.cli.X` with X one of their
# modules is already the new layout
SUBMODULES = {
    "runtime": {m.split(".")[1] for m in MOVES.values() if m.startswith("runtime.")}
    | {"parts", "static"},
    "cli": {m.split(".")[1] for m in MOVES.values() if m.startswith("cli.")} | {"main"},
}
names = "|".join(sorted(MOVES, key=len, reverse=True))
from_pkg = re.compile(r"^(\s*)from streams\.(runtime|cli) import ([\w, ]+)$", re.M)
from_top = re.compile(r"^(\s*)from streams import ([\w, ]+)$", re.M)
dotted = re.compile(r"(?<![\w.])streams\.(" + names + r")(?!\w)(\.\w+)?")
slashed = re.compile(r"(?<![\w.])streams/(" + names + r")\.py\b")
static = re.compile(r"(?<![\w.])streams/static\b")


def fix_from_pkg(m: re.Match) -> str:
    indent, pkg, items = m.group(1), m.group(2), [s.strip() for s in m.group(3).split(",")]
    if pkg == "cli" and items == ["main"]:
        return m.group(0)  # streams.cli re-exports main
    subs = [i for i in items if i.split(" as ")[0] in SUBMODULES[pkg]]
    rest = [i for i in items if i not in subs]
    out = []
    if subs:
        out.append(f"{indent}from streams.{pkg} import {', '.join(subs)}")
    if rest:
        out.append(f"{indent}from streams.{MOVES[pkg]} import {', '.join(rest)}")
    return "\n".join(out)


def fix_from_top(m: re.Match) -> str:
    indent, items = m.group(1), [s.strip() for s in m.group(2).split(",")]
    groups: dict[str, list[str]] = {}
    for it in items:
        name, _, alias = it.partition(" as ")
        if name in MOVES:
            pkg, mod = MOVES[name].split(".")
            alias = alias or (name if mod != name else "")
            groups.setdefault("streams." + pkg, []).append(mod + (f" as {alias}" if alias else ""))
        else:
            groups.setdefault("streams", []).append(it)
    return "\n".join(
        f"{indent}from {p} import {', '.join(sorted(v))}" for p, v in sorted(groups.items())
    )


def fix_dotted(m: re.Match) -> str:
    name, tail = m.group(1), m.group(2) or ""
    if name in SUBMODULES and tail[1:] in SUBMODULES[name]:
        return m.group(0)  # already streams.runtime.<module> / streams.cli.<module>
    if name in SUBMODULES and not tail:
        # bare `streams.runtime` / `streams.cli`: the old module or the new package? `from
        # ... import` lines are handled by fix_from_pkg; `python -m streams.cli` still works
        # (streams/cli/__main__.py); anything else is left for a person to judge
        return m.group(0)
    return "streams." + MOVES[name] + tail


def fix(text: str) -> str:
    text = from_pkg.sub(fix_from_pkg, text)
    text = dotted.sub(fix_dotted, text)
    text = from_top.sub(fix_from_top, text)
    text = slashed.sub(lambda m: "streams/" + MOVES[m.group(1)].replace(".", "/") + ".py", text)
    return static.sub("streams/runtime/static", text)


if __name__ == "__main__":
    for f in sys.argv[1:]:
        p = Path(f)
        if not p.is_file() or p.suffix not in {".py", ".md", ".toml", ".yml", ".yaml", ".sh"}:
            continue  # deleted by the branch, or not text this could mean
        old = p.read_text(encoding="utf-8")
        new = fix(old)
        for n, line in enumerate(new.splitlines(), 1):
            if (
                re.search(r"(?<![\w.])streams\.(runtime|cli)(?![\w.])", line)
                and " import " not in line
                and "-m" not in line
                and "streams.cli:main" not in line
            ):
                print(f"check by hand {f}:{n}: {line.strip()}")
        if new != old:
            p.write_text(new, encoding="utf-8")
            print("updated", f)
