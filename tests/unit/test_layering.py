"""The package import graph of dmnflow/ is acyclic, and dmnflow/ never imports nodes/.

Parses source with ``ast`` only (no dmnflow import), so it is fast and cannot be
fooled by import side effects. Module-level and function-level imports both count;
imports under ``if TYPE_CHECKING:`` are excluded because they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[2] / "dmnflow"


def _unit(module: str) -> str | None:
    """Map a dotted module name to its dmnflow unit (top-level subpackage or module)."""
    parts = module.split(".")
    if parts[0] != "dmnflow":
        return None
    if len(parts) == 1:
        return "dmnflow"
    return "dmnflow." + parts[1]


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every absolute module name imported by ``path`` (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for inner in node.body:
                for sub in ast.walk(inner):
                    skip.add(id(sub))
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, node.lineno))
            # ``from dmnflow import observe`` imports the subpackage itself.
            if target == "dmnflow":
                found.extend((f"dmnflow.{alias.name}", node.lineno) for alias in node.names)
    return found


def package_graph() -> tuple[nx.DiGraph, list[str]]:
    """The unit-level import graph of dmnflow/, and every place that imports ``nodes``."""
    graph: nx.DiGraph = nx.DiGraph()
    nodes_imports: list[str] = []
    for path in sorted(ROOT.rglob("*.py")):
        src = _unit(_module_name(path))
        assert src is not None
        graph.add_node(src)
        for target, line in _imports(path):
            if target.split(".")[0] == "nodes":
                nodes_imports.append(f"{path.relative_to(ROOT.parent)}:{line}: imports {target}")
            dst = _unit(target)
            if dst is None or dst == src or dst == "dmnflow":
                continue
            where = f"{path.relative_to(ROOT.parent)}:{line}"
            if graph.has_edge(src, dst):
                graph[src][dst]["where"].append(where)
            else:
                graph.add_edge(src, dst, where=[where])
    return graph, nodes_imports


def _describe(graph: nx.DiGraph, cycle: list[str]) -> str:
    lines = [" -> ".join([*cycle, cycle[0]])]
    for a, b in zip(cycle, [*cycle[1:], cycle[0]], strict=True):
        lines.append(f"  {a} -> {b}: {', '.join(graph[a][b]['where'][:5])}")
    return "\n".join(lines)


def test_package_graph_is_acyclic() -> None:
    graph, _ = package_graph()
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, "import cycles between dmnflow packages:\n" + "\n".join(
        _describe(graph, c) for c in sorted(cycles, key=len)
    )


def test_dmnflow_never_imports_nodes() -> None:
    _, nodes_imports = package_graph()
    assert not nodes_imports, "\n".join(nodes_imports)


if __name__ == "__main__":
    g, _ = package_graph()
    for c in sorted(nx.simple_cycles(g), key=len):
        print(_describe(g, c))
