"""Docs that tests keep true: every CLI command is documented, every local link resolves."""

from __future__ import annotations

import re
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
