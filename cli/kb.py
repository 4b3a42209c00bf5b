"""``tuneloop kb``: the knowledge base answers are grounded in — list, search, add, edit, retire, import, export.

Every change is recorded with who (``--actor`` or ``--as``: an account, checked for the reviewer role; else
``$USER``) and why (``--reason``) in the entry's history and the audit log, and every gateway worker serves it
within ``knowledge.refresh_ms``. ``search`` ranks entries exactly as the gateway does.
"""

from __future__ import annotations

import json
import sys

import click

from cli.context import CliContext, pass_cli
from config.errors import ValidationFailed
from feedback.knowledge import io, lineage, store
from feedback.knowledge.live import LiveIndex
from feedback.review_io import FORMATS
from modelclient.embeddings import embeddings_from_settings

_ACTOR = click.option(
    "--actor", default=None, help="The account that makes the change (same as --as; default: --as, else $USER)."
)
_REASON = click.option("--reason", help="Why (kept in the entry's history).")


def _short(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@click.group("kb")
def kb_group() -> None:
    """The knowledge base: entries the gateway grounds answers in (docs/knowledge.md)."""


@kb_group.command("list")
@click.option("--state", type=click.Choice(store.STATES), help="Only entries in this state.")
@click.option("--search", help="Text in a question or the answer (or an entry id).")
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
@pass_cli
def list_command(ctx: CliContext, state, search, limit, as_json) -> None:
    """List entries, last changed first."""
    entries = store.list_entries(ctx.db, state=state, search=search, limit=limit)
    if as_json:
        click.echo(json.dumps([e.to_dict() for e in entries], ensure_ascii=False, indent=2))
        return
    counts = store.state_counts(ctx.db)
    click.echo(", ".join(f"{n} {s}" for s, n in counts.items()) + f" (change counter {store.current_seq(ctx.db)})")
    for entry in entries:
        more = f" (+{len(entry.questions) - 1})" if len(entry.questions) > 1 else ""
        click.echo(f"{entry.id}  {entry.state:<7} v{entry.version:<3} {entry.lang}  {_short(entry.question)}{more}")


@kb_group.command("show")
@click.argument("entry_id")
@click.option("--json", "as_json", is_flag=True, help="Print the entry and its history as JSON.")
@pass_cli
def show(ctx: CliContext, entry_id, as_json) -> None:
    """One entry: its questions, answer, source, the answers built on it, and every version."""
    entry = store.get_entry(ctx.db, entry_id)
    versions = store.history(ctx.db, entry_id)
    rated = lineage.entry_ratings(ctx.db, entry_id)
    if as_json:
        data = {**entry.to_dict(), "ratings": rated, "history": [h.to_dict() for h in versions]}
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
        return
    click.echo(
        f"{entry.id}  [{entry.state}]  v{entry.version}  {entry.lang}  "
        f"from {entry.source_kind} {entry.source_ref or ''}"
    )
    for n, question in enumerate(entry.questions):
        click.echo(f"{'Q' if n == 0 else ' '}: {question}")
    click.echo(f"A: {entry.answer}")
    click.echo(f"answers built on it: {rated['answers']} ({rated['down']} rated down, {rated['up']} up)")
    for h in versions:
        click.echo(f"  v{h.version} {h.at} {h.actor}: {h.reason or ''} [{h.state}] {_short(h.answer, 50)}")


@kb_group.command("search")
@click.argument("question")
@click.option("-k", "top", type=click.IntRange(1, 50), help="How many entries (default: knowledge.top_k).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@pass_cli
def search(ctx: CliContext, question, top, as_json) -> None:
    """The entries the gateway would give the model for QUESTION, with their scores."""
    knowledge = ctx.settings.knowledge
    index = LiveIndex.over(ctx.db, knowledge, embed=embeddings_from_settings(knowledge))
    found = index.search(question, k=top or knowledge.top_k, min_score=0.0)
    results = [
        {
            "id": s.entry_id,
            "score": s.score,
            "given": s.score >= knowledge.min_score,
            "question": s.question,
            "answer": s.answer,
        }
        for s in found
    ]
    if as_json:
        click.echo(json.dumps(results, ensure_ascii=False, indent=2))
        return
    if not results:
        click.echo("no entry shares a word with that question")
    for r in results:
        mark = "" if r["given"] else f"  (below knowledge.min_score {knowledge.min_score}: not given to the model)"
        click.echo(f"{r['score']:.3f}  {r['id']}  {_short(r['question'])}{mark}")


@kb_group.command("add")
@click.option(
    "--question",
    "questions",
    multiple=True,
    required=True,
    help="A question (repeat for phrasings; the first is shown).",
)
@click.option("--answer", required=True, help="The answer.")
@click.option("--lang", type=click.Choice(store.LANGS), help="Default: detected from the first question.")
@_ACTOR
@_REASON
@pass_cli
def add(ctx: CliContext, questions, answer, lang, actor, reason) -> None:
    """Add an entry; it is served within knowledge.refresh_ms."""
    actor = ctx.actor("reviewer", actor)
    entry = store.add_entry(ctx.db, questions=questions, answer=answer, lang=lang, actor=actor, reason=reason)
    click.echo(f"added {entry.id}: {_short(entry.question)}")


@kb_group.command("edit")
@click.argument("entry_id")
@click.option("--question", "questions", multiple=True, help="Replace the questions (repeat; the first is shown).")
@click.option("--add-question", "extra", multiple=True, help="Add a phrasing (repeat).")
@click.option("--answer", help="New answer.")
@click.option("--lang", type=click.Choice(store.LANGS))
@_ACTOR
@_REASON
@pass_cli
def edit(ctx: CliContext, entry_id, questions, extra, answer, lang, actor, reason) -> None:
    """Change an entry's questions, answer or language (a new version)."""
    actor = ctx.actor("reviewer", actor)
    if not (questions or extra or answer is not None or lang):
        raise ValidationFailed("give --question, --add-question, --answer and/or --lang")
    current = store.get_entry(ctx.db, entry_id)
    new_questions = list(questions or current.questions) + list(extra) if (questions or extra) else None
    entry = store.update_entry(
        ctx.db, entry_id, actor=actor, reason=reason, questions=new_questions, answer=answer, lang=lang
    )
    click.echo(
        f"{entry.id} is at version {entry.version}" + ("" if entry.version > current.version else " (no change)")
    )


@kb_group.command("retire")
@click.argument("entry_id")
@_ACTOR
@_REASON
@pass_cli
def retire(ctx: CliContext, entry_id, actor, reason) -> None:
    """Stop serving an entry (kept with its history; `kb restore` brings it back)."""
    actor = ctx.actor("reviewer", actor)
    entry = store.retire_entry(ctx.db, entry_id, actor=actor, reason=reason)
    click.echo(f"retired {entry.id} (version {entry.version})")


@kb_group.command("restore")
@click.argument("entry_id")
@click.option(
    "--version", "version", type=click.IntRange(1), help="Bring back this version (default: serve it again as it is)."
)
@_ACTOR
@_REASON
@pass_cli
def restore(ctx: CliContext, entry_id, version, actor, reason) -> None:
    """Serve a retired entry again, or make an earlier version current."""
    actor = ctx.actor("reviewer", actor)
    if version:
        entry = store.revert_entry(
            ctx.db, entry_id, version, actor=actor, reason=reason or f"restored version {version}"
        )
    else:
        entry = store.restore_entry(ctx.db, entry_id, actor=actor, reason=reason)
    click.echo(f"{entry.id} is {entry.state} at version {entry.version}")


@kb_group.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(FORMATS), help="Default: from the file name.")
@click.option("--dry-run", is_flag=True, help="Check the file and say what would change; change nothing.")
@_ACTOR
@_REASON
@pass_cli
def import_command(ctx: CliContext, path, fmt, dry_run, actor, reason) -> None:
    """Add or update entries from a CSV/JSONL file (all rows or none; problems listed by line and field)."""
    actor = ctx.actor("reviewer", actor)
    summary = io.import_file(ctx.db, path, actor=actor, fmt=fmt, dry_run=dry_run, reason=reason)
    verb = "would import" if dry_run else "imported"
    click.echo(
        f"{verb}: {summary.created} new, {summary.updated} updated, {summary.retired} retired, "
        f"{summary.unchanged} unchanged"
    )


@kb_group.command("export")
@click.option("--format", "fmt", type=click.Choice(FORMATS), help="Default: from the file name, else csv.")
@click.option("--state", type=click.Choice(store.STATES), help="Only entries in this state.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="File to write (default: standard output).")
@pass_cli
def export(ctx: CliContext, fmt, state, output) -> None:
    """Write the knowledge base as CSV or JSONL (edit it anywhere and import it back)."""
    if output:
        count = io.export_file(ctx.db, output, fmt=fmt, state=state)
        click.echo(f"wrote {count} entries to {output}", err=True)
        return
    io.write_entries(store.all_entries(ctx.db, state=state), sys.stdout, fmt or "csv")


COMMANDS = [kb_group]
