"""The layout of `streams/` (issue 12, point 6): grouped by job, imports in one direction.

The import graph is read from the source with `ast` (nothing is imported): an edge A -> B
for every `import`/`from ... import` of module A that runs when A is imported, that is in
its body, including `if TYPE_CHECKING:` and `try:` blocks (a type-only import still ties two
modules together for a reader); imports inside functions are deferred on purpose (the
worker loads the faust app and its pages only when it starts one) and are not edges.
Importing a submodule also imports its package (`streams.runtime.worker` runs
`streams/runtime/__init__.py`), so that is an edge too. A second check counts the deferred
imports as well: those may break the layering nowhere either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: the subpackages of streams/ and the job each one's docstring must name
SUBPACKAGES = {
    "streams.connectors": "Kafka and ClickHouse",
    "streams.runtime": "worker",
    "streams.cli": "command line",
    "streams.delivery": "Alert delivery",
}

#: the order imports may go in, between subpackages: each may import those before it
ORDER = [
    "streams.config",
    "streams.connectors",
    "streams.delivery",
    "streams.runtime",
    "streams.cli",
]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: str) -> dict[str, Path]:
    return {module_name(p): p for p in sorted((REPO / package).rglob("*.py"))}


def body_imports(name: str, path: Path, deferred: bool = False) -> set[str]:
    """Every module named by an import that runs when `name` is imported (`deferred`:
    also those inside functions and classes)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolved against this module's package
                    base = name.split(".")
                    base = base[: len(base) - node.level + (1 if is_package else 0)]
                    module = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    module = node.module or ""
                found.add(module)
                # `from streams.runtime import worker` imports the module streams.runtime.worker
                found.update(f"{module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.If | ast.Try):
                visit(node.body)
                visit(node.orelse)
                if isinstance(node, ast.Try):
                    for handler in node.handlers:
                        visit(handler.body)
                    visit(node.finalbody)
            elif deferred:
                visit([n for n in ast.iter_child_nodes(node) if isinstance(n, ast.stmt)])

    visit(tree.body)
    return found


def import_graph(deferred: bool = False) -> dict[str, set[str]]:
    """Module -> the streams modules (and packages) its import runs first (`deferred`:
    or any of its functions may import)."""
    known = modules("streams")
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        edges = {m for m in body_imports(name, path, deferred) if m in known}
        # importing a.b.c first imports a.b (its __init__) and a
        for m in list(edges):
            parts = m.split(".")
            edges.update(".".join(parts[:i]) for i in range(1, len(parts)))
        # its own packages are already being imported when a module runs: not edges
        graph[name] = {m for m in edges if m != name and not name.startswith(m + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    # the check is live: a graph with a cycle is reported, one without is not
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_type_checking_and_package_imports() -> None:
    graph = import_graph()
    # web imports WorkerParts under TYPE_CHECKING only; a submodule import runs its package
    assert "streams.runtime.parts" in graph["streams.runtime.web"]
    assert "streams.runtime" in graph["streams.cli.demo"]
    assert "streams.connectors.kafka" in graph["streams.runtime.worker"]
    # the worker imports its pages only when it builds a faust app: a deferred edge
    assert "streams.runtime.web" not in graph["streams.runtime.worker"]
    assert "streams.runtime.web" in import_graph(deferred=True)["streams.runtime.worker"]


@pytest.mark.parametrize("deferred", [False, True], ids=["module-body", "with-deferred"])
def test_no_import_cycle_among_streams_modules(deferred: bool) -> None:
    cycle = find_cycle(import_graph(deferred))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def subpackage_of(module: str) -> str:
    return next((p for p in ORDER if module == p or module.startswith(p + ".")), module)


@pytest.mark.parametrize("deferred", [False, True], ids=["module-body", "with-deferred"])
def test_subpackages_import_only_those_before_them(deferred: bool) -> None:
    # config <- connectors <- delivery <- runtime <- cli: a subpackage never imports a later one
    wrong = []
    for module, edges in import_graph(deferred).items():
        mine = subpackage_of(module)
        if mine not in ORDER:
            continue
        for target in edges:
            theirs = subpackage_of(target)
            if theirs in ORDER and ORDER.index(theirs) > ORDER.index(mine):
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong


def test_only_config_and_the_package_init_are_left_at_the_top() -> None:
    top = {p.name for p in (REPO / "streams").glob("*.py")}
    assert top == {"__init__.py", "config.py"}


@pytest.mark.parametrize("package", sorted(SUBPACKAGES))
def test_each_subpackage_says_its_job(package: str) -> None:
    path = REPO / package.replace(".", "/") / "__init__.py"
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    assert SUBPACKAGES[package] in docstring, f"{path}: {docstring[:80]!r}"


def test_operators_never_import_streams_or_kafka() -> None:
    # operators are pure: no service code, no Kafka client, at any depth (deferred imports too)
    wrong = []
    for name, path in modules("operators").items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                named = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                named = [node.module or ""]
            else:
                continue
            wrong += [
                f"{name}: {n}"
                for n in named
                if n.split(".")[0] in {"streams", "confluent_kafka", "aiokafka", "faust"}
            ]
    assert not wrong, wrong


def test_the_worker_has_every_part_its_add_ons_use() -> None:
    # web, correlate and sql_rules are typed against WorkerParts (not Worker, which imports
    # them): the Worker must set every part, and they may use no attribute outside it
    parts_tree = ast.parse((REPO / "streams/runtime/parts.py").read_text(encoding="utf-8"))
    protocol = next(
        n for n in parts_tree.body if isinstance(n, ast.ClassDef) and n.name == "WorkerParts"
    )
    parts = {
        n.target.id
        for n in protocol.body
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
    }
    assert {"settings", "app", "sinks"} <= parts
    worker_tree = ast.parse((REPO / "streams/runtime/worker.py").read_text(encoding="utf-8"))
    worker_class = next(
        n for n in worker_tree.body if isinstance(n, ast.ClassDef) and n.name == "Worker"
    )
    assigned = {
        target.attr
        for node in ast.walk(worker_class)
        for target in (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        if isinstance(target, ast.Attribute)
        and isinstance(target.value, ast.Name)
        and target.value.id == "self"
    }
    assert parts <= assigned, parts - assigned
    for add_on in ("web", "correlate", "sql_rules"):
        tree = ast.parse((REPO / f"streams/runtime/{add_on}.py").read_text(encoding="utf-8"))
        used = {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "worker"
        }
        assert used and used <= parts, (add_on, used - parts)
