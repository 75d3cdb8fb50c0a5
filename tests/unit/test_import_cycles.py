"""No import cycles among Attune's modules (issue 13): read statically, every ``import``
of an ``attune.*`` module anywhere in a file (at the top, inside a function, under
``TYPE_CHECKING``) is an edge, and the graph of those edges has no cycle.

A cycle that only works because one side imports late (inside a function) still ties
the two modules together: neither can be read, tested or moved without the other.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def source_packages(root: Path) -> dict[str, str]:
    """Source folder -> the package it installs as, from pyproject.toml's package-dir
    (flows/ -> attune.flows, ...): every folder that ships Python code."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    package_dir: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    return {folder: package for package, folder in package_dir.items()}


def module_files(root: Path, packages: Mapping[str, str]) -> dict[str, Path]:
    """Every module's installed name -> its file."""
    found: dict[str, Path] = {}
    for folder, package in packages.items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = path.relative_to(root / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


def _resolve(name: str, known: Iterable[str]) -> str | None:
    """The known module ``name`` refers to: itself, or the package it is an attribute of."""
    modules = set(known)
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, known: Iterable[str]) -> set[str]:
    """The known modules that ``module`` imports anywhere in its file."""
    modules = set(known)
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, up level - 1 packages
                package = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            # ``from attune.flows import settings`` imports the submodule; ``from
            # attune.flows import tune_gc`` the package.
            names = [f"{base}.{alias.name}" for alias in node.names] or [base]
            names = [n if n in modules else base for n in names]
        for name in names:
            target = _resolve(name, modules)
            if target is not None and target != module:
                targets.add(target)
    return targets


def import_graph(root: Path, packages: Mapping[str, str]) -> dict[str, set[str]]:
    files = module_files(root, packages)
    return {name: imports_of(name, path, files) for name, path in files.items()}


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One cycle per back edge of a depth-first search, each as ``[a, b, ..., a]``;
    empty if and only if the graph has no cycle."""
    done: set[str] = set()
    cycles: list[list[str]] = []
    for start in sorted(graph):
        if start in done:
            continue
        # Iterative DFS: the path being explored, and for each of its nodes what is left.
        path = [start]
        on_path = {start}
        todo = [iter(sorted(graph.get(start, ())))]
        while todo:
            nxt = next(todo[-1], None)
            if nxt is None:
                done.add(path[-1])
                on_path.discard(path.pop())
                todo.pop()
            elif nxt in on_path:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in done:
                path.append(nxt)
                on_path.add(nxt)
                todo.append(iter(sorted(graph.get(nxt, ()))))
    return cycles


def test_no_import_cycles_among_attune_modules() -> None:
    packages = source_packages(ROOT)
    assert {"flows", "operators", "clients", "bench"} <= set(packages)
    graph = import_graph(ROOT, packages)
    assert len(graph) > 40  # every package was read
    assert "attune.flows.settings" in graph["attune.flows.personalize"]  # edges were found
    cycles = find_cycles(graph)
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_finder_sees_imports_anywhere(tmp_path: Path) -> None:
    """Late (in-function), ``from package import module``, relative and ``TYPE_CHECKING``
    imports are edges; a cycle is named, and a tree without one passes."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from attune.pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from .c import thing\n    return thing\n")
    (pkg / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import attune.pkg.a.x\n"
    )
    (pkg / "d.py").write_text("import attune.pkg\nfrom attune.pkg import a\nimport os\n")
    graph = import_graph(tmp_path, {"pkg": "attune.pkg"})
    assert graph == {
        "attune.pkg": set(),
        "attune.pkg.a": {"attune.pkg.b"},
        "attune.pkg.b": {"attune.pkg.c"},
        "attune.pkg.c": {"attune.pkg.a"},
        "attune.pkg.d": {"attune.pkg", "attune.pkg.a"},
    }
    assert find_cycles(graph) == [["attune.pkg.a", "attune.pkg.b", "attune.pkg.c", "attune.pkg.a"]]
    (pkg / "c.py").write_text("thing = 1\n")
    assert find_cycles(import_graph(tmp_path, {"pkg": "attune.pkg"})) == []
