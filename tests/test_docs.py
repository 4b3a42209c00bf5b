"""Docs that tests keep true: every CLI command is documented, every local link resolves, and every file a
comment or docstring in our code cites exists."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import click

from cli.main import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _commands(group: click.Group, prefix: str = "tuneloop") -> list[str]:
    names = []
    for name, command in group.commands.items():
        full = f"{prefix} {name}"
        names.append(full)
        if isinstance(command, click.Group):
            names += _commands(command, full)
    return names


def test_every_cli_command_is_documented():
    text = "\n".join(path.read_text() for path in DOCS)
    missing = [name for name in _commands(cli) if name not in text]
    assert missing == [], f"commands without documentation in README.md or docs/: {missing}"


def test_local_links_in_docs_resolve():
    broken = []
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            if not (path.parent / target).exists():
                broken.append(f"{path.relative_to(ROOT)} -> {target}")
    assert broken == []


# What a citation looks like: a path into the repository (``docs/loop.md``, ``tests/test_pipeline.py``,
# ``config/default.toml``), a root-level document (``README.md``) or a module named by its file
# (``sources.py``: found next to the citing file or anywhere in our tree). Runtime paths (``<data_dir>/…``,
# ``var/…``, ``2026-W47.md``) and URLs are not citations.
CODE_DIRS = ("config", "feedback", "modelclient", "server", "trainer", "cli", "tests", "bench")
REPO_DIRS = (*CODE_DIRS, "docs", "data")
_CITED = re.compile(
    r"(?<![\w/.<>{}~$-])((?:[\w.-]+/)*[\w.-]*\w\.(?:md|py|toml|txt|jsonl|json|html|js|css|yaml|yml|lock|in|csv|png))"
    r"(?![\w/])"
)


def comments_and_docstrings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every comment and every module, class and function docstring in a Python file."""
    source = path.read_text()
    found = [
        (tok.start[0], tok.string)
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            docstring = ast.get_docstring(node, clean=False)
            if docstring:
                found.append((node.body[0].lineno, docstring))
    return found


def broken_citations(root: Path, files: list[Path]) -> list[str]:
    """``file:line: cited`` for each file a comment or docstring in ``files`` cites that is not there."""
    names = {p.name for d in CODE_DIRS if (root / d).is_dir() for p in (root / d).rglob("*.py")}
    broken = []
    for path in files:
        for line, text in comments_and_docstrings(path):
            for cited in _CITED.findall(text):
                if "/" in cited:
                    checked, there = cited.split("/")[0] in REPO_DIRS, (root / cited).exists()
                elif cited.endswith(".md"):
                    checked = re.fullmatch(r"[A-Z][A-Z0-9_-]*\.md", cited) is not None
                    there = (root / cited).exists() or (path.parent / cited).exists()
                else:
                    checked = cited.endswith(".py")
                    there = (path.parent / cited).exists() or cited in names
                if checked and not there:
                    broken.append(f"{path.relative_to(root)}:{line}: {cited}")
    return broken


def test_every_file_our_code_cites_exists():
    files = sorted(p for d in CODE_DIRS for p in (ROOT / d).rglob("*.py"))
    assert len(files) > 100
    assert broken_citations(ROOT, files) == []


def test_the_citation_check_tells_citations_from_runtime_paths(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "loop.md").write_text("# The loop\n")
    (tmp_path / "server").mkdir()
    (tmp_path / "server" / "serving.py").write_text("")
    cites = tmp_path / "server" / "cites.py"
    cites.write_text(
        '''"""Resumes as docs/loop.md says; the design is in DESIGN.md (step 5) and docs/gone.md.

Writes ``<data_dir>/reports/2026-W47.md`` and var/tuneloop.db; see https://example.org/docs/x.md.
"""


def f():
    """Like serving.py, unlike missing.py."""
    return 1  # tests/test_nothing.py proves it; data/faq.jsonl feeds it
'''
    )
    assert broken_citations(tmp_path, [cites]) == [
        "server/cites.py:9: tests/test_nothing.py",
        "server/cites.py:9: data/faq.jsonl",
        "server/cites.py:1: DESIGN.md",
        "server/cites.py:1: docs/gone.md",
        "server/cites.py:8: missing.py",
    ]
