"""``tuneloop train``: fine-tune a built dataset into a candidate model version, and follow the run.

``start`` waits with a progress bar by default (Ctrl-C stops waiting, not the
training: the run goes on, ``tuneloop train status`` picks it up); ``--detach``
returns at once. Every command works on the rows in ``training_runs``, so any of
them may run in another process than the one that started the run.
"""

from __future__ import annotations

import json
import sys

import click

from cli.context import CliContext, pass_cli

# trainer.training is imported inside the commands: it pulls in the openai SDK (~0.6 s),
# which every other tuneloop command would pay at start-up.


@click.group("train")
def train_group() -> None:
    """Fine-tuning runs: local (transformers + LoRA) or OpenAI; each success becomes a candidate model."""


@train_group.command("start")
@click.option(
    "--dataset", default="latest", show_default=True, help="Dataset to train on: latest, vN, or a dataset id."
)
@click.option("--provider", type=click.Choice(["local", "openai"]), help="Who trains (default: training.provider).")
@click.option("--force", is_flag=True, help="Train again even if this dataset and configuration already succeeded.")
@click.option("--detach", is_flag=True, help="Return once submitted; follow with `tuneloop train status RUN_ID`.")
@click.option("--quiet", is_flag=True, help="No progress bar or log lines while waiting.")
@click.option(
    "--dry-run", is_flag=True, help="Print the settings the run would use and where each came from; train nothing."
)
@pass_cli
def start(ctx: CliContext, dataset, provider, force, detach, quiet, dry_run) -> None:
    """Submit a fine-tuning run for a dataset, then wait for it (unless --detach)."""
    from trainer.training import plan_run, start_run

    # The flag is a setting like any other: the base model's profile applies only when the local provider trains.
    settings = ctx.settings_with({"training.provider": provider} if provider else {})
    if dry_run:
        _print_plan(plan_run(ctx.db, settings, dataset, provider))
        return
    started = start_run(ctx.db, settings, dataset, provider, force=force)
    run = started.run
    if started.created:
        click.echo(
            f"started {run.id}: dataset v{run.dataset_version}, provider {run.provider}, "
            f"base model {run.base_model} ({run.external_job_id})"
        )
    else:
        click.echo(
            f"{run.id} already trained dataset v{run.dataset_version} with this configuration "
            f"({run.state}); use --force to train again"
        )
    if detach or run.finished:
        _print_run(run, detail=False)
        return
    _follow(ctx, run.id, run.provider, quiet=quiet)


def _print_plan(plan) -> None:
    click.echo("dry run: nothing is trained")
    if plan.dataset is None:
        click.echo(
            f"no dataset built yet (`tuneloop dataset build`); provider {plan.provider}, base model {plan.base_model}"
        )
    else:
        click.echo(f"dataset v{plan.dataset['version']} → provider {plan.provider}, base model {plan.base_model}")
    if plan.existing is not None:
        click.echo(
            f"{plan.existing.id} already trained it with these settings ({plan.existing.state}): "
            "`train start` returns that run; --force trains again"
        )
    if plan.profile is not None:
        click.echo(f"fine-tuning profile {plan.profile.path}: {plan.profile.about}")
    width = max(len(key) for key, _, _ in plan.training + plan.dataset_settings)
    for title, values in (
        ("settings of the run:", plan.training),
        ("settings of the next `tuneloop dataset build`:", plan.dataset_settings),
    ):
        click.echo(title)
        for key, value, origin in values:
            shown = json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict, str)) else str(value)
            click.echo(f"  {key:<{width}}  {shown:<24}  {origin}")


def _follow(ctx: CliContext, run_id: str, provider: str, *, quiet: bool) -> None:
    from tqdm.auto import tqdm

    from trainer.providers.runs import list_events
    from trainer.training import wait_for_run

    bar = tqdm(
        total=100,
        desc=run_id,
        unit="%",
        disable=quiet,
        dynamic_ncols=True,
        bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]",
    )
    seen = [0]

    def on_poll(run) -> None:
        for event in list_events(ctx.db, run_id, after_id=seen[0]):
            seen[0] = event["id"]
            if not quiet:
                bar.write(f"{event['created_at'][11:19]} {event['level']:<7} {event['message']}")
        if run.progress is not None:
            bar.update(round(run.progress * 100) - bar.n)
        bar.set_postfix_str(run.state)

    # A local run's progress is a database read away: follow it more often than a remote job is polled.
    interval = min(2.0, ctx.settings.training.poll_interval_s) if provider == "local" else None
    try:
        run = wait_for_run(ctx.db, ctx.settings, run_id, on_poll=on_poll, interval_s=interval)
    except KeyboardInterrupt:
        bar.close()
        click.echo(f"\nstopped waiting; {run_id} goes on. Follow it with `tuneloop train status {run_id}`.")
        return
    finally:
        bar.close()
    _print_run(run, detail=True)
    if run.state != "succeeded":
        sys.exit(1)


@train_group.command("status")
@click.argument("run_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the run(s) as JSON.")
@click.option("--limit", default=20, show_default=True, help="Runs listed without RUN_ID.")
@pass_cli
def status(ctx: CliContext, run_id, as_json, limit) -> None:
    """Poll and show one run, or poll unfinished runs and list the latest ones."""
    from trainer.providers.runs import list_runs
    from trainer.training import poll_run, resume_runs

    if run_id:
        runs = [poll_run(ctx.db, ctx.settings, run_id)]
    else:
        resume_runs(ctx.db, ctx.settings)
        runs = list_runs(ctx.db, limit=limit)
    if as_json:
        click.echo(json.dumps([_run_dict(r) for r in runs], ensure_ascii=False, indent=2))
        return
    if not runs:
        click.echo("no training runs yet: tuneloop train start")
    for run in runs:
        _print_run(run, detail=bool(run_id))


@train_group.command("resume")
@pass_cli
def resume(ctx: CliContext) -> None:
    """Poll every unfinished run (after a restart): nothing is submitted twice."""
    from trainer.training import resume_runs

    runs = resume_runs(ctx.db, ctx.settings)
    if not runs:
        click.echo("no unfinished runs")
    for run in runs:
        _print_run(run, detail=False)


@train_group.command("events")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_cli
def events(ctx: CliContext, run_id, as_json) -> None:
    """The run's log: progress, losses, provider events."""
    from trainer.providers.runs import get_run, list_events

    get_run(ctx.db, run_id)  # NotFound for a wrong id, not an empty log
    for event in list_events(ctx.db, run_id):
        if as_json:
            click.echo(json.dumps(event, ensure_ascii=False))
        else:
            click.echo(f"{event['created_at']}  {event['level']:<7}  {event['message']}")


@train_group.command("cancel")
@click.argument("run_id")
@pass_cli
def cancel(ctx: CliContext, run_id) -> None:
    """Stop a queued or running run."""
    from trainer.training import cancel_run

    run = cancel_run(ctx.db, ctx.settings, run_id)
    click.echo(f"{run.id} cancelled")


@train_group.command("checkpoints")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the checkpoints as JSON.")
@pass_cli
def checkpoints(ctx: CliContext, run_id, as_json) -> None:
    """Checkpoints a run saved (local: one per epoch; OpenAI: the job's checkpoints)."""
    from trainer.training import run_checkpoints

    found = run_checkpoints(ctx.db, ctx.settings, run_id)
    if as_json:
        click.echo(json.dumps(found, ensure_ascii=False, indent=2))
        return
    if not found:
        click.echo("no checkpoints")
    for c in found:
        metrics = c.get("metrics") or ({"eval_loss": c["eval_loss"]} if c.get("eval_loss") is not None else {})
        shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        where = c.get("name") or c.get("path")
        click.echo(f"step {c['step']:>6}  {shown or '-'}{'  (best)' if c.get('best') else ''}  {where}")


def _run_dict(run) -> dict:
    keys = (
        "id",
        "dataset_id",
        "dataset_version",
        "provider",
        "base_model",
        "state",
        "progress",
        "external_job_id",
        "output",
        "error",
        "candidate_version_id",
        "metrics",
        "hyperparameters",
        "work_dir",
        "created_at",
        "started_at",
        "finished_at",
    )
    return {k: getattr(run, k) for k in keys}


def _print_run(run, *, detail: bool) -> None:
    progress = f" {run.progress * 100:3.0f}%" if run.progress is not None and not run.finished else ""
    click.echo(
        f"{run.id}  {run.state}{progress}  v{run.dataset_version}  {run.provider}  {run.created_at[:19]}"
        + (f"  → {run.output}" if run.output else "")
    )
    m = run.metrics
    if detail:
        facts = [f"{k} {m[k]:.4f}" for k in ("initial_eval_loss", "eval_loss", "train_loss") if m.get(k) is not None]
        facts += (
            [f"epochs {m['epochs_run']:g}" + (" (stopped early)" if m.get("stopped_early") else "")]
            if m.get("epochs_run") is not None
            else []
        )
        facts += [f"{m['tokens_per_s']:,.0f} tokens/s"] if m.get("tokens_per_s") else []
        facts += [f"trained tokens {m['trained_tokens']:,}"] if m.get("trained_tokens") else []
        if facts:
            click.echo("  " + ", ".join(facts))
    if run.candidate_version_id:
        click.echo(
            f"  candidate model version {run.candidate_version_id}: "
            f"evaluate it with `tuneloop eval {run.candidate_version_id}`"
        )
    if run.error:
        click.secho(f"  error: {run.error}", fg="red")


COMMANDS = [train_group]
