"""The package's import graph: no cycles (module-level or inside functions), and only ``ptydose.`` names."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "ptydose"


def module_files(root: Path) -> dict[str, Path]:
    """``ptydose.<dotted>`` -> file, for every module under ``root`` (the tools/ folder)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join([PACKAGE, *parts])] = path
    return modules


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(root: Path) -> tuple[dict[str, set[str]], list[str]]:
    """Edges module -> package module it imports (anywhere in the file), and any ``tools.`` imports.

    Importing ``a.b.c`` runs ``a.b`` first, so the packages above an imported module count as
    imported too, unless they already enclose the importer (they are initialised by then).
    """
    modules = module_files(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    foreign: list[str] = []
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "tools" or alias.name.startswith("tools."):
                        foreign.append(f"{name}: import {alias.name}")
                    targets.add(alias.name)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                    if base == "tools" or base.startswith("tools."):
                        foreign.append(f"{name}: from {base} import ...")
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names)  # submodules named in the list
        for target in targets:
            if target not in modules:
                continue
            for module in (*_ancestors(target), target):
                if module != name and module in modules and not name.startswith(module + "."):
                    graph[name].add(module)
    return graph, foreign


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle ``[a, b, ..., a]`` of the graph, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycles_and_no_tools_imports(repo_root):
    """No module of the package imports itself back, at any depth; none imports `tools.` instead of `ptydose.`."""
    graph, foreign = import_graph(repo_root / "tools")
    assert len(graph) > 20 and "ptydose.core.run.runner" in graph
    assert "ptydose.core.jobs" in graph["ptydose.core.run.runner"]  # relative imports resolved
    assert foreign == [], foreign
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_finds_cycles_and_tools_imports(tmp_path):
    """A function-level import closing a circle and an import of `tools.` are both caught."""
    (tmp_path / "core").mkdir()
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "core" / "__init__.py").write_text("")
    (tmp_path / "core" / "a.py").write_text("from .b import thing\n")
    (tmp_path / "core" / "b.py").write_text("def thing():\n    from . import a\n    import tools.core.c\n")
    (tmp_path / "core" / "c.py").write_text("from ..core import a\n")
    graph, foreign = import_graph(tmp_path)
    assert foreign == ["ptydose.core.b: import tools.core.c"]
    assert find_cycle(graph) == ["ptydose.core.a", "ptydose.core.b", "ptydose.core.a"]
    (tmp_path / "core" / "b.py").write_text("thing = 1\n")
    assert find_cycle(import_graph(tmp_path)[0]) is None
    # Importing a module runs its package's __init__ first: an __init__ that imports back is a cycle too.
    (tmp_path / "core" / "run").mkdir()
    (tmp_path / "core" / "run" / "__init__.py").write_text("from .runner import go\n")
    (tmp_path / "core" / "run" / "runner.py").write_text("from ..jobs import plan\n")
    (tmp_path / "core" / "run" / "registry.py").write_text("X = 1\n")
    (tmp_path / "core" / "jobs.py").write_text("from .run.registry import X\n")
    assert find_cycle(import_graph(tmp_path)[0]) == [
        "ptydose.core.jobs", "ptydose.core.run", "ptydose.core.run.runner", "ptydose.core.jobs"]
