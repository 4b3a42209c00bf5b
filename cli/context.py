"""What every CLI command shares: settings, loaded once, and the database."""

from __future__ import annotations

import os
from functools import cached_property

import click
from sqlite_utils import Database

from config.settings import Settings, load_settings
from feedback.db import open_db
from feedback.knowledge.seed import ensure_seeded


class CliContext:
    """Lazily loaded settings and database for one CLI invocation."""

    def __init__(self, config_path: str | None):
        self.config_path = config_path

    @cached_property
    def settings(self) -> Settings:
        return load_settings(self.config_path)

    @cached_property
    def db(self) -> Database:
        """The migrated database; on the very first open, the knowledge base is seeded (knowledge.base_file)."""
        db = open_db(self.settings.db_path, busy_timeout_ms=self.settings.database.busy_timeout_ms)
        ensure_seeded(db, self.settings.knowledge)
        return db


pass_cli = click.make_pass_decorator(CliContext)


def current_user() -> str:
    """Who runs this command, as recorded in histories (reviewer, actor): ``$USER``, else "cli"."""
    return os.environ.get("USER") or "cli"
