"""Imports point down the floors, with no exceptions (docs/architecture.md):

    cli                       the top floor: wires everything, imported by nothing
    server   trainer          the gateway (and the built-in model server, a process of its own) | the loop's work
    modelclient               the one OpenAI-protocol client both of them use
    feedback                  the store and what is read from it
    config                    settings and the error tree

A package may import its own floor's package and the floors below it, never a sibling on its floor
(``server`` and ``trainer`` never import each other) and never a floor above. Every import counts:
module level, inside a function, and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
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
