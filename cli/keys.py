"""``tuneloop keys create|list|revoke``."""

from __future__ import annotations

import json

import click

from cli.context import CliContext, pass_cli
from feedback import apikeys


@click.group()
def keys() -> None:
    """Manage API keys (stored hashed; the raw key is shown once)."""


@keys.command("create")
@click.argument("name")
@click.option(
    "--publishable",
    is_flag=True,
    help="A key safe to embed in a web page: it can only chat and rate.",
)
@pass_cli
def create(ctx: CliContext, name: str, publishable: bool) -> None:
    """Create a key called NAME and print it once."""
    key, raw = apikeys.create_key(
        ctx.db, name, kind="publishable" if publishable else "secret", actor=ctx.actor("admin")
    )
    click.echo(f"created {key.kind} key {key.id} ({key.name})")
    click.echo("store it now; it cannot be shown again:")
    click.echo(raw)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_cli
def list_(ctx: CliContext, as_json: bool) -> None:
    """List keys (never their secret part)."""
    rows = apikeys.list_keys(ctx.db)
    if as_json:
        click.echo(json.dumps([r.__dict__ for r in rows], indent=2))
        return
    if not rows:
        click.echo("no keys yet: tuneloop keys create NAME")
        return
    for r in rows:
        state = f"revoked {r.revoked_at}" if r.revoked_at else "active"
        click.echo(f"{r.id}  {r.prefix}…  {r.kind:<11}  {r.name:<24}  created {r.created_at}  {state}")


@keys.command("revoke")
@click.argument("key")
@pass_cli
def revoke(ctx: CliContext, key: str) -> None:
    """Revoke KEY (its id or its prefix)."""
    row = apikeys.revoke_key(ctx.db, key, actor=ctx.actor("admin"))
    click.echo(f"revoked {row.id} ({row.name}) at {row.revoked_at}")


COMMANDS = [keys]
