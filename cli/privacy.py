"""``tuneloop privacy``: retention purge, erasure and export on request, the erasure log (docs/privacy.md).

Every command needs the admin role when run ``--as`` an account, and is recorded in the audit log. Nothing here
prints a person's words or identifier, except ``export``, whose whole point is to.
"""

from __future__ import annotations

import json
import sys

import click

from cli.context import CliContext, pass_cli
from config.errors import ValidationFailed
from feedback.privacy import log, retention
from feedback.privacy.erase import erase as erase_subject
from feedback.privacy.export import export as export_subject
from feedback.privacy.subjects import Subject

_SUBJECT = [
    click.option("--user", "user", metavar="REF", help="The person, as the API's `user` field names them."),
    click.option("--key", "key", metavar="KEY", help="Only the user's calls with this API key (id or prefix)."),
    click.option("--conversation", "conversation", metavar="ID", help="One conversation (a widget visitor's)."),
]


def _subject_options(command):
    for option in reversed(_SUBJECT):
        command = option(command)
    return command


def _counts(counts: dict) -> None:
    for name, value in counts.items():
        if value:
            click.echo(f"  {name.replace('_', ' ')}: {value:,}")
    if not any(counts.values()):
        click.echo("  nothing")


def _files(result) -> None:
    for version, info in sorted(result.datasets.items()):
        rows = ", ".join(f"{name} {n}" for name, n in info["rows_removed"].items())
        click.echo(f"  dataset v{version}: {rows}")
    for evaluation, n in sorted(result.evaluations.items()):
        click.echo(f"  evaluation {evaluation}: {n} row(s)")
    if result.reports:
        click.echo(f"  weekly reports: {', '.join(result.reports)}")
    for problem in result.problems:
        click.secho(f"  problem: {problem}", fg="yellow")


def _disk(disk: dict) -> None:
    if not disk:
        return
    wal = "truncated" if disk["wal_truncated"] else f"NOT truncated ({disk['wal_frames_left']} frames left)"
    click.echo(f"disk: {'VACUUM, ' if disk['vacuumed'] else ''}WAL {wal} in {disk['seconds']} s")


@click.group("privacy")
def privacy_group() -> None:
    """Personal data: retention purge, erasure and export on request (docs/privacy.md)."""


@privacy_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_cli
def status_command(ctx: CliContext, as_json: bool) -> None:
    """Retention settings, whether the purge may delete, the last purge."""
    state = retention.status(ctx.db, ctx.settings)
    if as_json:
        click.echo(json.dumps(state.to_dict(), indent=2))
        return
    days = state.retention_days
    click.echo(f"retention: {f'{days} days' if days else 'forever (privacy.retention_days = 0)'}")
    click.echo(f"purge: {'allowed' if state.allowed else 'deletes nothing'} — {state.reason}")
    click.echo(
        f"last purge: {state.last_purge_at or 'never'}"
        + (f" (cutoff {state.last_purge_cutoff})" if state.last_purge_at else "")
    )


@privacy_group.command("purge")
@click.option("--dry-run", is_flag=True, help="Print what would be deleted; delete nothing. Allows the purge.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_cli
def purge_command(ctx: CliContext, dry_run: bool, as_json: bool) -> None:
    """Delete conversations idle for longer than privacy.retention_days (with their messages and ratings).

    Nothing is deleted until someone has seen a dry run for the configured retention: --dry-run shows it and
    allows the purge (the scheduler's retention job then runs it); without --dry-run, a purge not yet allowed
    shows the dry run and asks.
    """
    actor = ctx.actor("admin")
    settings = ctx.settings
    if settings.privacy.retention_days == 0:
        click.echo("privacy.retention_days is 0: everything is kept; nothing to purge")
        return
    state = retention.status(ctx.db, settings)
    if dry_run or not state.allowed:
        preview = retention.purge(ctx.db, settings, actor=actor, dry_run=True)
        _print_purge(preview, as_json)
        if dry_run:
            retention.mark_seen(ctx.db, settings, actor=actor)
            if not as_json:
                click.echo(
                    "The purge is allowed from now: the retention job (privacy.purge_cron) deletes these, "
                    "or run `tuneloop privacy purge`."
                )
            return
        if not sys.stdin.isatty() or not click.confirm(f"The purge {state.reason}. Delete these now?", default=False):
            click.secho(f"nothing deleted: {state.reason}", fg="yellow", err=True)
            sys.exit(1)
        retention.mark_seen(ctx.db, settings, actor=actor)
    _print_purge(retention.purge(ctx.db, settings, actor=actor), as_json)


def _print_purge(result: retention.Purge, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
        return
    verb = "would delete" if result.dry_run else "deleted"
    click.echo(f"retention {result.retention_days} days: {verb} what has been idle since {result.cutoff}")
    _counts(result.counts)
    _files(result)
    _disk(result.disk)
    if result.id:
        click.echo(f"logged as {result.id}")


@privacy_group.command("erase")
@_subject_options
@click.option("--requested-by", metavar="TEXT", help="Who asked, and how (e.g. 'the customer, ticket 4411').")
@click.option("--dry-run", is_flag=True, help="Print what would be erased; erase nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_cli
def erase_command(ctx: CliContext, user, key, conversation, requested_by, dry_run, yes, as_json) -> None:
    """Erase one person's data (--user REF, across every API key unless --key) or one conversation everywhere:
    the store, review evidence, knowledge-base phrasings, datasets, evaluation rows, reports, the disk."""
    actor = ctx.actor("admin")
    subject = Subject.of(user=user, conversation=conversation, key=key)
    if not dry_run and not (requested_by or "").strip():
        raise ValidationFailed("say who asked for the erasure: --requested-by TEXT", field="requested_by")
    if not dry_run and not yes:
        preview = erase_subject(
            ctx.db, ctx.settings, subject, requested_by=requested_by or "", actor=actor, dry_run=True
        )
        _print_erasure(preview, False)
        click.confirm("Erase all of this? It cannot be undone", default=False, abort=True)
    result = erase_subject(ctx.db, ctx.settings, subject, requested_by=requested_by or "", actor=actor, dry_run=dry_run)
    _print_erasure(result, as_json)


def _print_erasure(result, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
        return
    click.echo(f"{'would erase' if result.dry_run else 'erased'} {result.subject}:")
    _counts(result.counts)
    _files(result)
    _disk(result.disk)
    if result.left_machine:
        click.echo("already outside this machine (act on these yourself):")
        for copy in result.left_machine:
            click.echo(f"  - {copy['what']} — {copy['where']}: {copy['action']}")
    if result.id:
        click.echo(f"logged as {result.id}")


@privacy_group.command("export")
@_subject_options
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), help="Write to FILE (default: stdout).")
@pass_cli
def export_command(ctx: CliContext, user, key, conversation, output) -> None:
    """Everything stored about one person (--user REF) or one conversation, as JSON."""
    data = export_subject(
        ctx.db, ctx.settings, Subject.of(user=user, conversation=conversation, key=key), actor=ctx.actor("admin")
    )
    text = json.dumps(data, ensure_ascii=False, indent=2) + "\n"
    if output:
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(text)
        click.echo(f"wrote {len(data['conversations'])} conversation(s) to {output}", err=True)
    else:
        click.echo(text, nl=False)


@privacy_group.command("log")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_cli
def log_command(ctx: CliContext, limit: int, as_json: bool) -> None:
    """The erasure log: erasures on request and retention purges, newest first (counts, never content)."""
    runs = log.recent(ctx.db, limit=limit)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in runs], ensure_ascii=False, indent=2))
        return
    if not runs:
        click.echo("nothing erased or purged yet")
    for run in runs:
        total = sum(v for k, v in run.counts.items() if k in ("conversations", "messages", "ratings"))
        click.echo(
            f"{run.id}  {run.started_at[:19]}  {run.kind:<12} {run.state:<13} by {run.run_by_name} "
            f"(asked: {run.requested_by})  {total:,} conversation/message/rating rows"
        )


COMMANDS = [privacy_group]
