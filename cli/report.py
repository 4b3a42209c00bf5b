"""``tuneloop report`` and ``tuneloop worst``."""

from __future__ import annotations

import json
import sys
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import click

from cli.context import CliContext, pass_cli
from config.errors import ValidationFailed
from feedback.ranking import RankingOptions, rank_worst, version_to_rank
from feedback.report import generate_report
from feedback.report.deliver import deliver_report
from feedback.report.render import pct
from feedback.report.weeks import utc_text


@click.command()
@click.option("--week", help="ISO week to report on, e.g. 2026-W47 (default: the last complete week).")
@click.option(
    "--deliver/--no-deliver",
    default=True,
    show_default=True,
    help="Send it to the configured webhook and e-mail recipients (if any).",
)
@pass_cli
def report(ctx: CliContext, week: str | None, deliver: bool) -> None:
    """Write the weekly report (HTML, Markdown, JSON) to the reports folder."""
    built, paths = generate_report(ctx.db, ctx.settings, week=week)
    this = built["headline"]["this"]
    click.echo(
        f"weekly report {built['week']} ({built['first_day']} – {built['last_day']}, {built['timezone']}): "
        f"{this['answers']:,} answers, {this['ratings']:,} ratings, satisfaction {pct(this['satisfaction'])}"
    )
    for fmt, path in paths.items():
        click.echo(f"  {fmt:<4} {path}")
    for warning in built["warnings"]:
        click.secho(f"  warning: {warning['message']}", fg="yellow")
    if not deliver:
        return
    results = deliver_report(built, ctx.settings.report)
    if not results:
        click.echo("  not delivered: no report.webhook_url or report.smtp_host configured")
    for result in results:
        click.secho(
            f"  {result.channel}: {'sent' if result.ok else 'FAILED'} ({result.detail})",
            fg=None if result.ok else "red",
        )
    if any(not r.ok for r in results):
        sys.exit(1)


def _moment(text: str, tz: str) -> str:
    """``2026-11-16`` (midnight in ``tz``) or a full ISO timestamp, as stored UTC text."""
    try:
        if len(text) == 10:
            return utc_text(datetime.combine(date.fromisoformat(text), datetime.min.time(), tzinfo=ZoneInfo(tz)))
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationFailed(f"not a date or ISO timestamp: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(tz))
    return utc_text(moment)


@click.command()
@click.option("--version", "version_id", help="Model version id (default: the live version).")
@click.option("--since", help="Start: a date (midnight in report.timezone) or ISO timestamp. Default: 7 days ago.")
@click.option("--until", help="End (exclusive), same forms. Default: now.")
@click.option("--top", type=click.IntRange(1, 1000), help="How many groups (default: report.top_n).")
@click.option("--min-votes", type=click.IntRange(1), help="Votes a group needs (default: report.min_votes).")
@click.option("--json", "as_json", is_flag=True, help="Print the ranking, with evidence, as JSON.")
@pass_cli
def worst(ctx: CliContext, version_id, since, until, top, min_votes, as_json) -> None:
    """Rank the worst-answered questions of a model version."""
    settings, db = ctx.settings, ctx.db
    version = version_to_rank(db, version_id)
    tz = settings.report.timezone
    now = datetime.now(timezone.utc)
    since_text = _moment(since, tz) if since else utc_text(now - timedelta(days=7))
    until_text = _moment(until, tz) if until else utc_text(now)
    options = RankingOptions.from_settings(settings.report, top_n=top, min_votes=min_votes)
    ranking = rank_worst(db, model_version_id=version.id, since=since_text, until=until_text, options=options)
    if as_json:
        click.echo(json.dumps(ranking.to_dict(), ensure_ascii=False, indent=2))
        return
    click.echo(
        f"{version.name} ({version.id}), answers from {since_text} to {until_text}: "
        f"{ranking.candidate_groups} groups with {options.min_votes}+ votes "
        f"out of {ranking.rated_questions} rated questions"
    )
    if not ranking.groups:
        click.echo("nothing ranked")
    for i, group in enumerate(ranking.groups, 1):
        reasons = ", ".join(f"{r} {n}" for r, n in (group.evidence.reasons if group.evidence else {}).items())
        click.echo(
            f"{i:>3}. score {group.score:.3f}  {group.down:>4}/{group.votes:<4} down  asked {group.asked:<5} "
            f"{group.question}" + (f"  [{reasons}]" if reasons else "")
        )


COMMANDS = [report, worst]
