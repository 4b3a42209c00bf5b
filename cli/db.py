"""``tuneloop db``: which store this configuration uses, its migrations (``status``, ``migrate``), ``copy``, and
``forget-secrets`` (after changing a secret on every host).

``tuneloop db migrate`` is for deployments that migrate in a step of their own (an init container, a
release job) before the gateways start; every process also migrates on start-up, one at a time.
"""

from __future__ import annotations

import click

from cli.context import CliContext, pass_cli
from config.errors import InvalidRequest
from config.settings import Settings, redact_url
from feedback import store_copy
from feedback.db import POSTGRESQL, dialect, open_db, open_store
from feedback.migrations import MIGRATIONS
from feedback.secrets import forget_fingerprints


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


@db_group.command("copy")
@click.argument("src")
@click.argument("dst")
@click.option("--overwrite", is_flag=True, help="Replace the rows DST already holds.")
@click.option("--resume", is_flag=True, help="Continue an interrupted copy into DST where it stopped.")
@click.option(
    "--batch-size", type=int, default=store_copy.DEFAULT_BATCH, show_default=True, help="Rows per committed batch."
)
def copy(src: str, dst: str, overwrite: bool, resume: bool, batch_size: int) -> None:
    """Copy the store SRC into DST (each a SQLite path or a store URL), then compare every table on both sides.

    DST is migrated first; both must have applied the same migrations. Exit 1 names any table whose
    row count or checksum differs.
    """
    from tqdm.auto import tqdm

    if overwrite and resume:
        raise InvalidRequest("--overwrite and --resume exclude each other", field="--resume")
    if store_copy.describe(src) == store_copy.describe(dst):
        raise InvalidRequest("SRC and DST are the same store", field="DST")
    source = store_copy.open_source(src)
    try:
        target = open_db(dst)
        try:
            bar = tqdm(unit="row", unit_scale=True, dynamic_ncols=True, desc="copy")
            with bar:

                def on_batch(table: str, rows: int) -> None:
                    bar.set_description_str(table)
                    bar.update(rows)

                result = store_copy.copy_store(
                    source,
                    target,
                    overwrite=overwrite,
                    resume=resume,
                    batch_size=batch_size,
                    progress=on_batch,
                    on_total=lambda total: setattr(bar, "total", total),
                )
        finally:
            target.close()
    finally:
        source.close()
    click.echo(f"copied {sum(result.copied.values())} row(s): {store_copy.describe(src)} → {store_copy.describe(dst)}")
    width = max(len(c.name) for c in result.checks) if result.checks else 5
    click.echo(f"{'table':<{width}}  {'rows SRC':>9}  {'rows DST':>9}  {'sha256 SRC':<12}  {'sha256 DST':<12}  ")
    for check in result.checks:
        verdict = "ok" if check.equal else "DIFFERS"
        click.echo(
            f"{check.name:<{width}}  {check.source_rows:>9}  {check.target_rows:>9}  "
            f"{check.source_sha256[:12]:<12}  {check.target_sha256[:12]:<12}  {verdict}"
        )
    if result.mismatched:
        click.echo(f"error: the copy differs from the source in: {', '.join(result.mismatched)}", err=True)
        raise SystemExit(1)
    click.echo(f"all {len(result.checks)} tables equal (row counts and sha256)")


@db_group.command("forget-secrets")
@pass_cli
def forget_secrets(ctx: CliContext) -> None:
    """Drop the recorded fingerprints of admin.token and gateway.secret_key, after changing them on every host.

    Each host's first start records them, and a host whose value differs is refused; the next start after
    this records the new values.
    """
    dropped = forget_fingerprints(ctx.db)
    click.echo(f"store: {_where(ctx.settings)}")
    if not dropped:
        click.echo("no secret fingerprints recorded")
        return
    click.echo(f"forgot the fingerprints of {', '.join(dropped)}; the next host to start records its values")


COMMANDS = [db_group]
