"""Imports point down the floors, with no exceptions (docs/architecture.md):

    cli                       the top floor: wires everything, imported by nothing
    server   trainer          the gateway (and the built-in model server, a process of its own) | the loop's work
    modelclient               the one OpenAI-protocol client both of them use
    feedback                  the store and what is read from it
    config                    settings and the error tree

A package may import its own floor's package and the floors below it, never a sibling on its floor
(``server`` and ``trainer`` never import each other) and never a floor above. Every import counts:
module level, inside a function, and under ``TYPE_CHECKING``.

Within and across floors, no two modules import each other, directly or round a loop: a cycle means some code
sits in the wrong module. ``from package import name`` depends on ``package/name.py`` when that is a module,
else on the package's ``__init__``; the ``__init__`` a submodule's import runs first is not counted, so a package
may re-export its modules' names and its modules may import one another.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# package -> the packages of ours it may import (besides itself)
MAY_IMPORT = {
    "config": set(),
    "feedback": {"config"},
    "modelclient": {"config"},
    "trainer": {"config", "feedback", "modelclient"},
    "server": {"config", "feedback", "modelclient"},
    "cli": {"config", "feedback", "modelclient", "trainer", "server"},
}
OURS = set(MAY_IMPORT)


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, wherever the import statement sits."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def module_files(root: Path, packages: set[str]) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``packages`` under ``root`` (``pkg/__init__.py`` is ``pkg``)."""
    modules = {}
    for package in packages:
        for path in (root / package).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def module_dependencies(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ours that module ``name`` (at ``path``) imports, wherever the import statement sits."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in modules:
                    found.add(submodule)
                elif source in modules:
                    found.add(source)
    found.discard(name)
    return found


def import_cycles(root: Path, packages: set[str]) -> list[list[str]]:
    """Every group of modules that import each other round a loop (strongly connected, Tarjan), sorted."""
    modules = module_files(root, packages)
    graph = {name: module_dependencies(name, path, modules) for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return sorted(cycles)


def describe(cycle: list[str], root: Path, packages: set[str]) -> str:
    """A cycle with the imports that close it, e.g. ``a.b -> a.c, a.c -> a.b``."""
    modules = module_files(root, packages)
    edges = defaultdict(list)
    for name in cycle:
        edges[name] = sorted(module_dependencies(name, modules[name], modules) & set(cycle))
    return ", ".join(f"{a} -> {b}" for a in cycle for b in edges[a])


def test_every_package_of_ours_has_a_floor():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench"}
    assert packages == OURS


def test_imports_point_down_the_floors():
    problems = []
    for package, allowed in MAY_IMPORT.items():
        for path in (ROOT / package).rglob("*.py"):
            for module in imported_modules(path):
                top = module.split(".")[0]
                if top in OURS and top != package and top not in allowed:
                    problems.append(f"{path.relative_to(ROOT)} imports {module}")
    assert problems == []


def test_nothing_imports_the_cli():
    offenders = [
        str(path.relative_to(ROOT))
        for package in OURS - {"cli"}
        for path in (ROOT / package).rglob("*.py")
        if any(m == "cli" or m.startswith("cli.") for m in imported_modules(path))
    ]
    assert offenders == []


def test_only_the_postgresql_engine_imports_psycopg():
    """psycopg stays out of every process on SQLite, and under gevent it must load after the patching:
    one module imports it, and only when the store is PostgreSQL (feedback/db.py imports that module lazily)."""
    importers = sorted(
        str(path.relative_to(ROOT))
        for package in OURS
        for path in (ROOT / package).rglob("*.py")
        if any(m.split(".")[0] in ("psycopg", "psycopg_pool") for m in imported_modules(path))
    )
    assert importers == ["feedback/db_postgres.py"]


def test_no_import_cycles_between_our_modules():
    cycles = import_cycles(ROOT, OURS)
    assert [describe(c, ROOT, OURS) for c in cycles] == []


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_cycle_check_finds_hidden_imports_and_spares_package_reexports(tmp_path):
    """The check itself: an import under TYPE_CHECKING or inside a function closes a loop; a package whose
    ``__init__`` re-exports its modules does not, unless a module imports a name defined in that ``__init__``."""
    root = _tree(
        tmp_path,
        {
            "typed/__init__.py": "",
            "typed/a.py": "from typed.b import B\n",
            "typed/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from typed.a import A\n",
            "late/__init__.py": "",
            "late/a.py": "import late.b\n",
            "late/b.py": "def f():\n    from . import a\n",
            "fine/__init__.py": "from fine.build import build\n",
            "fine/build.py": "from fine import parts\n",
            "fine/parts.py": "",
            "loop/__init__.py": "from loop.build import build\nLIMIT = 3\n",
            "loop/build.py": "from loop import LIMIT\n",
        },
    )
    assert import_cycles(root, {"typed", "late", "fine", "loop"}) == [
        ["late.a", "late.b"],
        ["loop", "loop.build"],
        ["typed.a", "typed.b"],
    ]
    assert describe(["typed.a", "typed.b"], root, {"typed"}) == "typed.a -> typed.b, typed.b -> typed.a"
