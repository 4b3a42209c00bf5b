"""``tuneloop pipeline``: run the loop now (or resume it), and see where each run is."""

from __future__ import annotations

import json
import sys

import click

from cli.context import CliContext, pass_cli

_STEPS = ("collect", "build", "train", "evaluate", "gate", "deploy", "report")


@click.group("pipeline")
def pipeline_group() -> None:
    """The loop's runs: weekly collect + report, monthly build → train → evaluate → gate → deploy → report."""


@pipeline_group.command("run")
@click.option(
    "--kind",
    type=click.Choice(["weekly", "monthly", "threshold", "manual"]),
    default="monthly",
    show_default=True,
    help="Which pipeline; an unfinished run of this kind is resumed.",
)
@click.option(
    "--step",
    "steps",
    multiple=True,
    type=click.Choice(_STEPS),
    help="Run only this step (repeatable); the others wait for the next run.",
)
@pass_cli
def run_command(ctx: CliContext, kind, steps) -> None:
    """Run a pipeline now (resuming an unfinished one of the same kind)."""
    from trainer.pipeline import run_pipeline

    run = run_pipeline(ctx.db, ctx.settings, kind, steps=list(steps) or None)
    _print(run)
    if run.context.evaluation_id and run.outcome("evaluate") and run.outcome("evaluate").state == "succeeded":
        from cli.evaluate import print_evaluation
        from trainer.evaluation.run import get_evaluation

        click.echo("")
        print_evaluation(get_evaluation(ctx.db, run.context.evaluation_id))
    if run.state == "failed":
        sys.exit(1)


@pipeline_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON.")
@click.option("--limit", default=10, show_default=True, help="How many runs.")
@pass_cli
def status_command(ctx: CliContext, as_json, limit) -> None:
    """Where each run is: its step, state and every step's outcome."""
    from trainer.pipeline import list_pipeline_runs

    runs = list_pipeline_runs(ctx.db, limit=limit)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in runs], ensure_ascii=False, indent=2))
        return
    if not runs:
        click.echo("no pipeline runs yet: tuneloop pipeline run")
    for run in runs:
        _print(run)


def _print(run) -> None:
    color = {"failed": "red", "succeeded": "green"}.get(run.state)
    click.secho(f"{run.id}  {run.kind:<9} {run.state:<9} step {run.step or '-':<8} {run.started_at[:19]}", fg=color)
    for outcome in run.steps:
        click.echo(f"  {outcome.step:<8} {outcome.state:<9} {outcome.detail}")
    if run.error:
        click.secho(f"  error: {run.error}", fg="red")


COMMANDS = [pipeline_group]
