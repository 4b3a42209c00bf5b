"""``tuneloop demo seed``: realistic demo traffic, so a report can be looked at right away."""

from __future__ import annotations

import click

from cli.context import CliContext, pass_cli
from feedback.demo import has_demo, remove_demo, seed_demo


@click.group()
def demo() -> None:
    """Demo data for trying tuneloop without users."""


@demo.command("seed")
@click.option(
    "--weeks",
    type=click.IntRange(1, 104),
    default=12,
    show_default=True,
    help="Complete weeks of traffic to write (plus the current week so far).",
)
@click.option(
    "--turns-per-week",
    type=click.IntRange(10, 100_000),
    default=900,
    show_default=True,
    help="Questions asked per week at the start (traffic grows a little each week).",
)
@click.option("--reset", is_flag=True, help="Remove earlier demo data first.")
@click.option("--seed", type=int, default=7, show_default=True, help="Random seed (same seed, same story).")
@pass_cli
def seed(ctx: CliContext, weeks: int, turns_per_week: int, reset: bool, seed: int) -> None:
    """Write demo conversations, answers and ratings into the database."""
    if reset and has_demo(ctx.db):
        click.echo(f"removed {remove_demo(ctx.db):,} demo conversations")
    summary = seed_demo(ctx.db, ctx.settings, weeks=weeks, turns_per_week=turns_per_week, seed=seed)
    click.echo(
        f"wrote {summary.conversations:,} conversations, {summary.answers:,} answers and "
        f"{summary.ratings:,} ratings from {summary.first[:10]} to {summary.last[:10]} "
        f"into {ctx.settings.db_path}"
    )
    click.echo("next: tuneloop report   (or open /admin/reports)")


@demo.command("remove")
@pass_cli
def remove(ctx: CliContext) -> None:
    """Delete the demo data (conversations marked as demo and the demo model version)."""
    click.echo(f"removed {remove_demo(ctx.db):,} demo conversations")


COMMANDS = [demo]
