"""``tuneloop dataset``: build versioned training sets, import a company FAQ, export preference pairs."""

from __future__ import annotations

import json
import sys

import click

from cli.context import CliContext, pass_cli
from config.errors import ValidationFailed
from trainer.dataset import (
    DatasetInvalid,
    build_dataset,
    import_base,
    lineage_text,
    list_bases,
    list_datasets,
    resolve_base_file,
)
from trainer.dataset.preferences import FORMATS, export_preferences
from trainer.dataset.sources import display_path


@click.group("dataset")
def dataset_group() -> None:
    """Training sets: base FAQ + approved corrections, cleaned, masked, split and validated."""


@dataset_group.command("build")
@click.option("--dry-run", is_flag=True, help="Run every step and show what would be written; write nothing.")
@click.option(
    "--include-upvoted",
    "include_upvoted",
    type=click.IntRange(0),
    help="Also answers rated up at least K times (default: dataset.include_upvoted_min; 0 = off).",
)
@click.option("--seed", type=int, help="Split seed (default: dataset.seed).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@pass_cli
def build(ctx: CliContext, dry_run, include_upvoted, seed, as_json) -> None:
    """Build the next dataset version into <data_dir>/datasets/v{n}/."""
    try:
        result = build_dataset(
            ctx.db, ctx.settings, include_upvoted=include_upvoted, seed=seed, dry_run=dry_run, progress=not as_json
        )
    except DatasetInvalid as exc:
        _print_summary(exc.result, as_json)  # lists every problem; the error below just closes it
        raise ValidationFailed(f"{len(exc.result.problems)} problem(s) found; nothing was written") from exc
    _print_summary(result, as_json)
    if dry_run and result.problems:
        sys.exit(1)


def _print_summary(result, as_json: bool) -> None:
    m = result.manifest
    if as_json:
        summary = {k: m[k] for k in ("params", "inputs", "counts", "files", "sha256", "tokens", "cost_estimate", "pii")}
        summary.update(
            dry_run=result.dry_run,
            version=result.version,
            path=str(result.path) if result.path else None,
            problems=result.problems,
        )
        click.echo(json.dumps(summary, ensure_ascii=False, indent=2))
        return
    c = m["counts"]
    head = (
        f"would write v{result.version}"
        if result.dry_run
        else (f"wrote v{result.version} to {result.path}" if result.path else "not written")
    )
    click.echo(head)
    click.echo(
        f"  base {m['inputs']['base_file']['path']} ({c['base_rows']} rows), {c['approved_corrections']} "
        f"approved corrections, {c['upvoted_answers']} up-voted answers considered"
    )
    click.echo(
        f"  replaced {c['replaced']} base rows with corrections, dropped {c['dropped']} "
        f"(duplicates, empty, questions under review), {c['conflicts']} near-duplicate conflicts kept"
    )
    click.echo(
        f"  train {c['train']}, val {c['val']}, test {c['test']}, preference pairs {c['preferences']}; "
        f"rows by source: {', '.join(f'{k} {v}' for k, v in sorted(c['sources'].items()))}"
    )
    served = m.get("as_served") or {}
    if served.get("rows"):
        why = "; ".join(f"{n} {reason}" for reason, n in served["skipped"].items())
        click.echo(
            f"  as served (with the knowledge block, knowledge base at change {served['knowledge_seq']}): "
            + ", ".join(f"{split} {n}" for split, n in served["rows"].items())
            + (f" (no twin: {why})" if why else "")
        )
    else:
        click.echo("  closed book only (dataset.views, or the knowledge base is off)")
    pii = m["pii"]
    masked = ", ".join(f"{t} {n}" for t, n in pii["total"].items()) or "nothing"
    click.echo(f"  personal data masked: {masked} in {pii['rows_masked']} rows")
    tokens = m["tokens"]
    click.echo(
        f"  tokens (estimated): train {tokens.get('train', 0):,}, val {tokens.get('val', 0):,}, "
        f"test {tokens.get('test', 0):,}; longest example {tokens['max_example']:,}"
    )
    if m["cost_estimate"]["models"]:
        click.echo("  training cost estimate (check current prices):")
        for row in m["cost_estimate"]["models"]:
            click.echo(
                f"    {row['model']:<28} ${row['usd']:>9.4f}  ({row['epochs']} epochs × "
                f"{row['billed_tokens'] // row['epochs']:,} tokens at ${row['usd_per_1m']}/1M)"
            )
    for problem in result.problems:
        where = problem["split"] + (f" row {problem['row']}" if problem.get("row") else "")
        origin = f" ({lineage_text(problem['lineage'])})" if problem.get("lineage") else ""
        click.secho(f"  problem: {where}: {problem['code']}: {problem['message']}{origin}", fg="red")


@dataset_group.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@pass_cli
def import_command(ctx: CliContext, path) -> None:
    """Make a company FAQ (CSV with question,answer columns, or chat JSONL) the base dataset."""
    record = import_base(ctx.db, ctx.settings, path)
    click.echo(f"imported {record['rows']} rows from {record['original_name']} as the base dataset: {record['path']}")


@dataset_group.command("list")
@pass_cli
def list_command(ctx: CliContext) -> None:
    """Built datasets (newest first) and the base file the next build starts from."""
    click.echo(f"next build starts from: {display_path(resolve_base_file(ctx.settings, ctx.db))}")
    for base in list_bases(ctx.db)[:5]:
        click.echo(f"  imported {base['created_at'][:19]}  {base['rows']:>6} rows  {base['original_name']}")
    datasets = list_datasets(ctx.db)
    if not datasets:
        click.echo("no datasets built yet: tuneloop dataset build")
    for ds in datasets:
        counts = ds["counts"]
        click.echo(
            f"v{ds['version']:<4} {ds['created_at'][:19]}  train {counts.get('train', 0):>5}  "
            f"val {counts.get('val', 0):>4}  test {counts.get('test', 0):>4}  {ds['sha256'][:12]}  {ds['path']}"
        )


@dataset_group.command("preferences")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="File to write (default: <data_dir>/datasets/preferences.jsonl).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="openai",
    show_default=True,
    help="openai: OpenAI preference fine-tuning; trl: prompt/chosen/rejected for TRL's DPOTrainer.",
)
@pass_cli
def preferences(ctx: CliContext, output, fmt) -> None:
    """Export DPO pairs: approved correction (chosen) vs the answer users voted down (rejected)."""
    path = output or ctx.settings.datasets_dir / "preferences.jsonl"
    count = export_preferences(ctx.db, ctx.settings, path, fmt=fmt)
    click.echo(f"wrote {count} preference pairs to {path}")


COMMANDS = [dataset_group]
