"""``tuneloop db``: which store this configuration uses, and its migrations (``status``, ``migrate``).

``tuneloop db migrate`` is for deployments that migrate in a step of their own (an init container, a
release job) before the gateways start; every process also migrates on start-up, one at a time.
"""

from __future__ import annotations

import click

from cli.context import CliContext, pass_cli
from config.settings import Settings, redact_url
from feedback.db import POSTGRESQL, dialect, open_store
from feedback.migrations import MIGRATIONS


@click.group("db")
def db_group() -> None:
    """The store: where it is, and its schema migrations."""


def _where(settings: Settings) -> str:
    if settings.database.is_postgres:
        return f"PostgreSQL {redact_url(settings.database.url)}"
    return f"SQLite {settings.db_path}"


def _applied_and_pending(db) -> tuple[list[str], list[str]]:
    if dialect(db) == POSTGRESQL:
        from feedback import migrations_postgres

        return migrations_postgres.applied(db), migrations_postgres.pending(db)
    return [m.name for m in MIGRATIONS.applied(db)], [m.name for m in MIGRATIONS.pending(db)]


@db_group.command("status")
@pass_cli
def status(ctx: CliContext) -> None:
    """Where the store is (password hidden), and its applied and pending migrations; changes nothing."""
    settings = ctx.settings
    click.echo(f"store: {_where(settings)} (database.url, from {settings.origin('database.url')})")
    db = open_store(settings, migrate=False) if settings.database.is_postgres else _open_sqlite_read(settings)
    if db is None:
        click.echo("migrations: none applied (the file does not exist yet; it is created on first start)")
        return
    try:
        applied, pending = _applied_and_pending(db)
    finally:
        db.close()
    click.echo(f"migrations: {len(applied)} applied, {len(pending)} pending")
    for name in pending:
        click.echo(f"  pending: {name}")


def _open_sqlite_read(settings: Settings):
    if not settings.db_path.exists():
        return None
    return open_store(settings, migrate=False)


@db_group.command("migrate")
@pass_cli
def migrate(ctx: CliContext) -> None:
    """Apply pending migrations (one process at a time, whatever else is starting), then say what ran."""
    settings = ctx.settings
    db = open_store(settings, migrate=False) if settings.database.is_postgres else None
    if db is not None:
        from feedback import migrations_postgres

        try:
            done = migrations_postgres.apply_migrations(db)
        finally:
            db.close()
    else:
        old = _open_sqlite_read(settings)
        before = set(_applied_and_pending(old)[0]) if old is not None else set()
        if old is not None:
            old.close()
        db = open_store(settings)
        done = [name for name in _applied_and_pending(db)[0] if name not in before]
        db.close()
    click.echo(f"store: {_where(settings)}")
    click.echo(f"applied {len(done)} migration(s)" + (f": {', '.join(done)}" if done else "; already up to date"))


COMMANDS = [db_group]
