"""The package's import graph (imports inside functions included): no cycles, and the return
path stays one-way. Pure: reads the source, imports nothing."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "clusterjupyter"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _typing_only(tree: ast.Module) -> set[int]:
    """Line numbers of imports under ``if TYPE_CHECKING:`` (no edge at run time)."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            lines |= {n.lineno for n in ast.walk(node) if isinstance(n, ast.ImportFrom)}
    return lines


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        skip = _typing_only(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.lineno not in skip:
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                subs = {f"{target}.{a.name}" for a in node.names} & set(mods)
                deps |= subs if len(subs) == len(node.names) else ({target} & set(mods)) | subs
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names} & set(mods)
        graph[name] = deps - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for w in graph[todo.pop()] - seen:
            seen.add(w)
            todo.append(w)
    return seen


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_return_path_is_one_way():
    graph = import_graph()
    upper = {"clusterjupyter.api", "clusterjupyter.backends", "clusterjupyter.magics",
             "clusterjupyter.jobs", "clusterjupyter.widgets", "clusterjupyter.server"}
    for low in ("monitor", "journal", "serialize", "jobdir", "metrics"):
        assert not reaches(graph, f"clusterjupyter.{low}") & upper, low
    assert "clusterjupyter.api" not in reaches(graph, "clusterjupyter.backends")


def test_everything_the_runner_imports_is_shipped_with_it():
    from clusterjupyter.backends import RUNTIME_MODULES

    graph = import_graph()
    needed = reaches(graph, "clusterjupyter.runner") | {"clusterjupyter.runner"}
    shipped = {"clusterjupyter." + name.removesuffix(".py") for name in RUNTIME_MODULES}
    assert needed <= shipped | {"clusterjupyter"}, sorted(needed - shipped)
