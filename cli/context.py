"""What every CLI command shares: settings, loaded once, the database, and who is acting.

Changes made from the command line are attributed like changes made on the pages
(the audit log, review decisions, the model history): to the account named by the
global ``--as EMAIL`` option (or ``$TUNELOOP_AS``), which must exist, be enabled and
hold the role the command needs; without it, to the operating-system user, as
before accounts existed. :meth:`CliContext.actor` is that one resolver.
"""

from __future__ import annotations

import os
from functools import cached_property

import click
from sqlite_utils import Database

from config.errors import Forbidden
from config.settings import Settings, load_settings
from feedback import accounts
from feedback.audit import Actor
from feedback.db import open_store
from feedback.hosts import check_data_dir, check_shared_store
from feedback.knowledge.seed import ensure_seeded


class CliContext:
    """Lazily loaded settings and database for one CLI invocation, and the ``--as`` account."""

    def __init__(self, config_path: str | None, acting_as: str | None = None):
        self.config_path = config_path
        self.acting_as = acting_as

    @cached_property
    def settings(self) -> Settings:
        return load_settings(self.config_path)

    def settings_with(self, overrides: dict) -> Settings:
        """The settings with a command's flags on top (their origin is "flag"), loaded afresh."""
        return load_settings(self.config_path, overrides=overrides) if overrides else self.settings

    @cached_property
    def db(self) -> Database:
        """The migrated database; on the very first open, the knowledge base is seeded (knowledge.base_file)."""
        db = open_store(self.settings)
        ensure_seeded(db, self.settings.knowledge)
        return db

    def check_host(self) -> None:
        """Before a long-running command (serve, up, scheduler) starts: ``paths.data_dir`` takes writes, and on a
        shared store this host shares its folder and its secrets (``feedback.hosts``); else one line naming the key.
        """
        check_data_dir(self.settings)  # first: a SQLite store is a file in that folder
        check_shared_store(self.settings, self.db)

    def actor(self, role: str, named: str | None = None) -> Actor:
        """Who this command acts as, checked against ``role`` when it is an account.

        ``named`` is a command's own (older) ``--reviewer`` / ``--actor`` value; it means the
        same as ``--as``.
        """
        ref = named or self.acting_as
        if not ref:
            user = current_user()
            return Actor(user, name=user, via="cli")
        account = accounts.get_user(self.db, ref)
        if not account.active:
            raise Forbidden(f"the account {account.email} is disabled", code="account_disabled")
        if not account.can(role):
            raise Forbidden(
                f"{account.email} is a {account.role}; this command needs the {role} role", code="role_required"
            )
        return account.actor("cli")


pass_cli = click.make_pass_decorator(CliContext)


def current_user() -> str:
    """The operating-system user running this command: ``$USER``, else "cli"."""
    return os.environ.get("USER") or "cli"
