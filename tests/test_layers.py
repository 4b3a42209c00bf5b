"""Imports point one way: config ← feedback ← trainer, server; the CLI sits on top.

A cycle or a wrong-way import means a module is in the wrong layer (DESIGN.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# package -> packages it must never import
FORBIDDEN = {
    "config": {"feedback", "trainer", "server"},
    "feedback": {"trainer", "server"},
    "trainer": {"server.cli", "server.app", "server.routes", "server.admin"},
    "server": {"trainer"},  # except the CLI, checked separately
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_imports_point_one_way():
    problems = []
    for package, banned in FORBIDDEN.items():
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT)
            if package == "server" and rel.parts[1] == "cli":
                continue  # the CLI wires everything
            for module in imported_modules(path):
                if any(module == b or module.startswith(b + ".") for b in banned):
                    problems.append(f"{rel} imports {module}")
    assert problems == []


def test_nothing_imports_the_cli():
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("config", "feedback", "trainer", "server")
        for path in (ROOT / package).rglob("*.py")
        if "cli" not in path.relative_to(ROOT).parts and any(m.startswith("server.cli") for m in imported_modules(path))
    ]
    assert offenders == []
