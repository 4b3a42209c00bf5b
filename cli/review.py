"""``tuneloop review``: the review queue from the command line (collect, list, show, decide, CSV/JSONL)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import click

from cli.context import CliContext, pass_cli
from config.errors import ValidationFailed
from feedback import review
from feedback.ranking import RankingOptions, version_to_rank
from feedback.report.weeks import utc_text
from feedback.review_io import FORMATS, export_items, import_items, write_items
from trainer.review_drafts import draft_answers

_REVIEWER = click.option(
    "--reviewer", metavar="EMAIL", help="The account recorded as the reviewer (same as the global --as)."
)


def _short(text: str | None, width: int = 70) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


@click.group("review")
def review_group() -> None:
    """The review queue: worst-answered questions waiting for a corrected answer."""


@review_group.command("collect")
@click.option("--days", type=click.IntRange(1, 366), help="Days of answers to rank (default: review.window_days).")
@click.option("--top", type=click.IntRange(1, 1000), help="Most groups to add (default: review.top_n).")
@click.option("--version", "version_id", help="Model version id (default: the live version).")
@click.option(
    "--draft/--no-draft",
    default=False,
    show_default=True,
    help="Ask the teacher model (review.teacher_model) for drafts of the new items.",
)
@pass_cli
def collect(ctx: CliContext, days, top, version_id, draft) -> None:
    """Queue the worst-answered questions of the live model (already pending or approved ones are skipped)."""
    settings, db = ctx.settings, ctx.db
    version = version_to_rank(db, version_id)
    now = datetime.now(timezone.utc)
    days = days or settings.review.window_days
    options = RankingOptions.from_settings(settings.report, top_n=top or settings.review.top_n)
    result = review.collect_worst(
        db,
        model_version_id=version.id,
        since=utc_text(now - timedelta(days=days)),
        until=utc_text(now),
        options=options,
        actor=ctx.actor("reviewer"),
    )
    click.echo(f"{version.name}, last {days} days: added {len(result.added)}, skipped {len(result.skipped)}")
    for item in result.added:
        ev = item.evidence
        click.echo(f"  + {item.id}  {ev.get('down', 0):>3}/{ev.get('votes', 0):<3} down  {_short(item.question)}")
    for skipped in result.skipped:
        click.echo(f"  = {_short(skipped['question'], 50)}  ({skipped['reason']})")
    if draft and result.added:
        _report_drafts(draft_answers(db, settings, item_ids=[i.id for i in result.added], progress=True))
    click.echo("next: tuneloop review list   (or open /admin/review)")


@review_group.command("list")
@click.option("--status", type=click.Choice(review.STATUSES), help="Only items with this status.")
@click.option("--search", help="Text in the question or answer (or an item id).")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the items as JSON.")
@pass_cli
def list_command(ctx: CliContext, status, search, limit, as_json) -> None:
    """List review items, newest first."""
    items = review.list_items(ctx.db, status=status, search=search, limit=limit)
    if as_json:
        click.echo(json.dumps([i.to_dict() for i in items], ensure_ascii=False, indent=2))
        return
    counts = review.status_counts(ctx.db)
    click.echo(", ".join(f"{n} {s}" for s, n in counts.items()))
    for item in items:
        ev = item.evidence
        votes = f"{ev.get('down', '')}/{ev.get('votes', '')}" if ev.get("votes") else "-"
        marks = ("D" if item.draft else " ") + ("S" if item.suggestions else " ")
        click.echo(f"{item.id}  {item.status:<8} {votes:>7} {marks} {_short(item.question)}")
    if items:
        click.echo("D: teacher draft, S: user suggestion.  tuneloop review show ID")


@review_group.command("show")
@click.argument("item_id")
@click.option("--json", "as_json", is_flag=True, help="Print the item, with its evidence, as JSON.")
@pass_cli
def show(ctx: CliContext, item_id, as_json) -> None:
    """One item with its evidence."""
    item = review.get_item(ctx.db, item_id)
    if as_json:
        click.echo(json.dumps(item.to_dict(), ensure_ascii=False, indent=2))
        return
    ev = item.evidence
    click.echo(f"{item.id}  [{item.status}]  {item.question}")
    if ev.get("votes"):
        click.echo(
            f"votes: {ev['down']} down of {ev['votes']}, asked {ev.get('asked', '?')} times; "
            f"reasons: {', '.join(f'{r} {n}' for r, n in ev.get('reasons', {}).items()) or '-'}"
        )
    for answer in ev.get("answers", []):
        click.echo(f"answered ({answer['up']} up, {answer['down']} down): {answer['answer']}")
    for suggestion in item.suggestions:
        click.echo(f"user suggested: {suggestion}")
    for comment in ev.get("comments", []):
        click.echo(f"comment ({comment.get('reason') or '-'}): {comment['comment']}")
    for variant in ev.get("variants", []):
        click.echo(f"phrasing: {variant['question']}  ({variant['votes']} votes)")
    if item.draft:
        click.echo(f"teacher draft ({item.draft_model}): {item.draft}")
    if item.answer:
        click.echo(f"approved answer ({item.answer_source}, by {item.reviewer} at {item.decided_at}): {item.answer}")
    if item.note:
        click.echo(f"note: {item.note}")


@review_group.command("approve")
@click.argument("item_id")
@click.option("--answer", help="The corrected answer.")
@click.option("--use-suggestion", is_flag=True, help="Approve the users' most suggested correction as is.")
@click.option("--use-draft", is_flag=True, help="Approve the teacher's draft as is.")
@click.option(
    "--kb-entry",
    help="Knowledge-base entry to put the answer in, or 'new' (default: the entry of the same question, else the "
    "one most thumbs-down answers were built on, else a new one).",
)
@_REVIEWER
@pass_cli
def approve(ctx: CliContext, item_id, answer, use_suggestion, use_draft, kb_entry, reviewer) -> None:
    """Approve a corrected answer; it is served at once from the knowledge base (again: replace its answer)."""
    if sum(bool(x) for x in (answer, use_suggestion, use_draft)) != 1:
        raise ValidationFailed("give exactly one of --answer, --use-suggestion, --use-draft", field="answer")
    item = review.get_item(ctx.db, item_id)
    if use_suggestion:
        if not item.suggestions:
            raise ValidationFailed(f"{item_id} has no suggested correction; give --answer", field="answer")
        answer = item.suggestions[0]
    if use_draft:
        if not item.draft:
            raise ValidationFailed(
                f"{item_id} has no teacher draft; run 'tuneloop review draft' or give --answer", field="answer"
            )
        answer = item.draft
    item = review.approve(ctx.db, item_id, answer=answer, reviewer=ctx.actor("reviewer", reviewer), kb_entry=kb_entry)
    click.echo(f"approved {item.id} ({item.answer_source}): {_short(item.answer, 100)}")
    click.echo(f"live now in knowledge-base entry {item.kb_entry_id} (tuneloop kb show {item.kb_entry_id})")


@review_group.command("reject")
@click.argument("item_id")
@click.option("--note", help="Why (kept with the item).")
@_REVIEWER
@pass_cli
def reject(ctx: CliContext, item_id, note, reviewer) -> None:
    """Reject an item: nothing from it is trained on."""
    item = review.reject(ctx.db, item_id, reviewer=ctx.actor("reviewer", reviewer), note=note)
    click.echo(f"rejected {item.id}")


@review_group.command("edit")
@click.argument("item_id")
@click.option("--question", help="New wording of the question (what the model is trained to answer).")
@click.option("--answer", help="New answer of an approved item.")
@_REVIEWER
@pass_cli
def edit(ctx: CliContext, item_id, question, answer, reviewer) -> None:
    """Change an item's question, or an approved item's answer."""
    if question is None and answer is None:
        raise ValidationFailed("give --question and/or --answer")
    item = review.edit_item(ctx.db, item_id, reviewer=ctx.actor("reviewer", reviewer), question=question, answer=answer)
    click.echo(f"edited {item.id} [{item.status}]: {_short(item.question)}")


@review_group.command("draft")
@click.argument("item_ids", nargs=-1)
@click.option("--limit", type=click.IntRange(1), help="Draft at most this many items.")
@click.option("--redraft", is_flag=True, help="Also items that already have a draft.")
@pass_cli
def draft(ctx: CliContext, item_ids, limit, redraft) -> None:
    """Ask the teacher model (review.teacher_model) to draft answers for pending items."""
    summary = draft_answers(
        ctx.db, ctx.settings, item_ids=list(item_ids) or None, limit=limit, redraft=redraft, progress=True
    )
    _report_drafts(summary)


def _report_drafts(summary) -> None:
    click.echo(f"drafted {len(summary.drafted)}, approved {len(summary.approved)}, failed {len(summary.failed)}")
    for item_id, why in summary.failed:
        click.secho(f"  {item_id}: {why}", fg="red")


@review_group.command("export")
@click.option("--format", "fmt", type=click.Choice(FORMATS), help="Default: from the file name, else csv.")
@click.option("--status", type=click.Choice(review.STATUSES), help="Only items with this status.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="File to write (default: standard output).")
@pass_cli
def export(ctx: CliContext, fmt, status, output) -> None:
    """Write the queue as CSV or JSONL, to fill in answers in a spreadsheet or editor and import back."""
    if output:
        count = export_items(ctx.db, output, fmt=fmt, status=status)
        click.echo(f"wrote {count} items to {output}", err=True)
        return
    items = review.list_items(ctx.db, status=status, limit=1_000_000)
    items.reverse()
    write_items(items, click.get_text_stream("stdout"), fmt or "csv")


@review_group.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(FORMATS), help="Default: from the file name.")
@click.option("--dry-run", is_flag=True, help="Check the file and say what would change; change nothing.")
@_REVIEWER
@pass_cli
def import_command(ctx: CliContext, path, fmt, dry_run, reviewer) -> None:
    """Apply a CSV/JSONL file of decisions (all rows or none; problems are listed by line)."""
    summary = import_items(ctx.db, path, reviewer=ctx.actor("reviewer", reviewer), fmt=fmt, dry_run=dry_run)
    verb = "would import" if dry_run else "imported"
    click.echo(
        f"{verb}: {summary.created} new, {summary.approved} approved, {summary.rejected} rejected, "
        f"{summary.edited} edited, {summary.unchanged} unchanged"
    )


COMMANDS = [review_group]
