"""``tuneloop users add|list|role|disable|enable|link`` and ``tuneloop admin token``: who may open /admin.

The first admin account is made here (``tuneloop users add EMAIL --role admin``); the
command prints a one-time sign-in link that sets the person's password. From then on
the admin token authenticates only the admin API (scripts), and people sign in with
their own accounts (docs/accounts.md).
"""

from __future__ import annotations

import json

import click

from cli.context import CliContext, pass_cli
from config.settings import ROLES, Settings
from feedback import accounts
from server.admin.auth import admin_token, rotate_admin_token


def gateway_url(settings: Settings) -> str:
    """Where people open the gateway: ``report.public_url``, else the configured host and port."""
    if settings.report.public_url:
        return settings.report.public_url.rstrip("/")
    host = settings.gateway.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{host}:{settings.gateway.port}"


def _print_link(ctx: CliContext, account: accounts.Account) -> None:
    settings = ctx.settings
    base = gateway_url(settings)
    if settings.admin.password_signin:
        hours = settings.admin.signin_link_hours
        secret = accounts.create_signin_link(ctx.db, account.id, actor=ctx.actor("admin"), hours=hours)
        click.echo(f"one-time sign-in link (works once, for {hours:g} h; it sets {account.email}'s password):")
        click.echo(f"  {base}/admin/welcome/{secret}")
    if settings.sso.enabled:
        click.echo(f"or sign in with single sign-on: {base}/admin/login")
    if not settings.admin.password_signin and not settings.sso.enabled:
        click.secho("warning: admin.password_signin is off and [sso] is not enabled: nobody can sign in", fg="yellow")


@click.group("users")
def users() -> None:
    """Accounts of the admin pages: viewer, reviewer or admin."""


@users.command("add")
@click.argument("email")
@click.option("--role", type=click.Choice(ROLES), default="viewer", show_default=True)
@click.option("--name", help="Display name (default: the part of the address before @).")
@pass_cli
def add(ctx: CliContext, email: str, role: str, name: str | None) -> None:
    """Add an account and print a one-time sign-in link for it."""
    account = accounts.add_user(ctx.db, email, role=role, name=name, actor=ctx.actor("admin"))
    click.echo(f"added {account.role} {account.email} ({account.name})")
    _print_link(ctx, account)
    if account.role == "admin":
        click.echo("the admin token now opens only the admin API (/admin/api/...); people sign in with accounts")


@users.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the accounts as JSON.")
@pass_cli
def list_command(ctx: CliContext, as_json: bool) -> None:
    """Every account with its role and state."""
    rows = accounts.list_users(ctx.db)
    if as_json:
        click.echo(json.dumps([a.to_dict() for a in rows], ensure_ascii=False, indent=2))
        return
    if not rows:
        click.echo("no accounts yet: tuneloop users add EMAIL --role admin")
        return
    for a in rows:
        state = f"disabled {a.disabled_at[:10]}" if a.disabled_at else "active"
        ways = "+".join(w for w, on in (("password", a.has_password), ("sso", a.sso_subject)) if on) or "-"
        last = (a.last_signin_at or "never")[:16].replace("T", " ")
        click.echo(f"{a.email:<32} {a.role:<9} {state:<20} {ways:<13} last sign-in {last}  {a.name}")


@users.command("role")
@click.argument("email")
@click.argument("role", type=click.Choice(ROLES))
@pass_cli
def role(ctx: CliContext, email: str, role: str) -> None:
    """Give an account another role (its open sessions end at once)."""
    account = accounts.set_role(ctx.db, email, role, actor=ctx.actor("admin"))
    click.echo(f"{account.email} is now a {account.role}; their open sessions ended")


@users.command("disable")
@click.argument("email")
@pass_cli
def disable(ctx: CliContext, email: str) -> None:
    """Take access away: the account cannot sign in and its open sessions end at once."""
    account = accounts.set_disabled(ctx.db, email, True, actor=ctx.actor("admin"))
    click.echo(f"disabled {account.email}; their open sessions ended")


@users.command("enable")
@click.argument("email")
@pass_cli
def enable(ctx: CliContext, email: str) -> None:
    """Let a disabled account sign in again."""
    account = accounts.set_disabled(ctx.db, email, False, actor=ctx.actor("admin"))
    click.echo(f"enabled {account.email}")


@users.command("link")
@click.argument("email")
@pass_cli
def link(ctx: CliContext, email: str) -> None:
    """Print a new one-time sign-in link (a forgotten password); earlier links stop working."""
    _print_link(ctx, accounts.get_user(ctx.db, email))


@click.group()
def admin() -> None:
    """The admin token (scripts and first start)."""


@admin.command("token")
@click.option("--rotate", is_flag=True, help="Replace the token; the old one is refused at once on every gateway.")
@pass_cli
def token(ctx: CliContext, rotate: bool) -> None:
    """Print the admin token (generated and stored on first use unless admin.token is set)."""
    if rotate:
        click.echo(rotate_admin_token(ctx.settings, ctx.db, actor=ctx.actor("admin")))
        return
    click.echo(admin_token(ctx.settings, ctx.db))


COMMANDS = [users, admin]
