"""``tuneloop migrate``: replace a hosted model (an OpenAI ``ft:`` model) with an open one before it shuts down.

plan → harvest → train → evaluate (--switch); docs/migrate-from-openai.md walks through it with real output.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

import click

from cli.context import CliContext, pass_cli
from cli.dataset import _print_summary
from cli.train import _follow
from config.settings import EVALUATION_SUITES
from trainer.evaluation.metrics import METRIC_LABELS
from trainer.gate import VIEW_WORDS


@click.group("migrate")
def migrate_group() -> None:
    """Move off a hosted model before its shutdown: distil it into an open model, gated against it."""


def _money(value) -> str:
    if value is None:
        return "unknown"
    return f"${value:,.2f}" if value >= 1 or value == 0 else f"${value:.4f}"


def _duration(seconds) -> str:
    if seconds is None:
        return "unknown"
    return (
        f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds} s"
    )


@migrate_group.command("plan")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@pass_cli
def plan_command(ctx: CliContext, as_json) -> None:
    """The hosted model's shutdown date, the data held, the open base, and each step's cost and time."""
    from trainer.migration.plan import make_plan

    plan = make_plan(ctx.db, ctx.settings)
    if as_json:
        click.echo(json.dumps(asdict(plan), ensure_ascii=False, indent=2))
        return
    t, d, o = plan.teacher, plan.data, plan.open_base
    when = (
        f"shuts down {t['shutdown_date']} ({t['days_left']} days left)"
        if t["shutdown_date"]
        else "no shutdown date known (report.shutdown_dates)"
    )
    click.echo(f"hosted model  {t['name']} ({t['status']}, {t['server']}): {when}")
    click.echo(f"              OpenAI takes no new fine-tuning jobs after {t['openai_training_cutoff']}")
    click.echo(
        f"data          {d['questions_answered']} distinct questions answered ({d['answers_served']} answers), "
        f"{d['questions_rated_up']} rated up, {d['questions_rated_down']} rated down, "
        f"{d['approved_corrections']} approved corrections"
    )
    ask = d["to_ask"]
    click.echo(
        f"              to ask the hosted model: {ask['user']} user questions, {ask['golden']} golden, "
        f"{ask['reworded']} rewordings, {' and '.join(VIEW_WORDS[v] for v in d['views'])} "
        f"({d['already_harvested']} prompts already answered; {d['kept_corrections']} kept as their approved "
        f"correction; {d['masked_questions']} masked)"
    )
    click.echo(f"              held out for the evaluation: {d['reworded_held_out']} reworded questions")
    exists = "" if o["folder_exists"] else " — folder missing"
    click.echo(f"open base     {o['name']} from {o['folder']}{exists}, served at {o['server']}")
    click.echo(f"{'step':<13} {'cost':>9} {'time':>9}  what")
    for step in plan.steps:
        basis = f" [time: {step['basis']}]" if step.get("basis") else ""
        click.echo(
            f"{step['step']:<13} {_money(step['cost_usd']):>9} {_duration(step['seconds']):>9}  {step['what']}{basis}"
        )
    click.echo("estimates: costs from migrate.teacher_prices, times from migrate.seconds_per_answer")
    for warning in plan.warnings:
        click.secho(f"warning: {warning}", fg="yellow")


@migrate_group.command("harvest")
@click.option("--no-build", is_flag=True, help="Only ask; build the dataset later (another harvest, or this one).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@pass_cli
def harvest_command(ctx: CliContext, no_build, quiet) -> None:
    """Ask the hosted model what users asked (masked), plus golden and rewordings; then build a dataset.

    Interrupted, it resumes: answers already in the journal are not asked again. Exit code 1 when some
    questions failed after their retries (nothing is built; run it again to ask just those).
    """
    from trainer.migration import harvest as harvesting
    from trainer.migration.teacher import teacher_version

    result = harvesting.harvest(ctx.db, ctx.settings, progress=not quiet)
    origins = ", ".join(f"{n} {origin}" for origin, n in sorted(result.by_origin.items()))
    click.echo(
        f"harvested {result.teacher}: {sum(result.by_origin.values())} questions ({origins}); {result.asked} "
        f"prompts asked now, {result.resumed} already in the journal; {result.corrected} kept as approved "
        f"corrections; {result.masked} questions masked; "
        f"{result.waits} waits on rate limits"
    )
    click.echo(f"journal: {result.journal}")
    if result.failed:
        click.secho(f"{len(result.failed)} question(s) failed after their retries, e.g.:", fg="red")
        for question, error in result.failed[:5]:
            click.echo(f"  {question[:60]!r}: {error}")
        click.echo("run `tuneloop migrate harvest` again: it asks only what is missing")
        sys.exit(1)
    if no_build:
        return
    built = harvesting.build(ctx.db, ctx.settings, teacher_version(ctx.db, ctx.settings), progress=not quiet)
    _print_summary(built, as_json=False)
    served = built.manifest["as_served"].get("teacher_rows")
    if served:
        click.echo(f"  the teacher's answers as served: {served} train rows for questions with no entry of their own")


@migrate_group.command("train")
@click.option("--dataset", default="latest", show_default=True, help="Dataset to train on: latest, vN, or an id.")
@click.option("--quiet", is_flag=True, help="No progress bar or log lines while waiting.")
@pass_cli
def train_command(ctx: CliContext, dataset, quiet) -> None:
    """Train a LoRA on the open base (local provider); the candidate is served by the open model server."""
    from trainer.migration.serving import pin_candidate
    from trainer.training import start_run

    # The local provider trains whatever training.provider says; the open base's profile then applies.
    settings = ctx.settings_with({"training.provider": "local"})
    started = start_run(ctx.db, settings, dataset, "local")
    run = started.run
    click.echo(
        f"{'started' if started.created else 'found'} {run.id}: dataset v{run.dataset_version} on {run.base_model}"
    )
    if not run.finished:
        _follow(ctx, run.id, run.provider, quiet=quiet)
    from trainer.providers.runs import get_run

    run = get_run(ctx.db, run.id)
    if run.state != "succeeded" or not run.candidate_version_id:
        sys.exit(1)
    from feedback.versions import get_version

    version = pin_candidate(ctx.db, settings, get_version(ctx.db, run.candidate_version_id), actor=ctx.actor("admin"))
    click.echo(f"candidate {version.name} ({version.id}) served at {version.base_url}")
    click.echo(f"next: tuneloop migrate evaluate {version.name}")


@migrate_group.command("evaluate")
@click.argument("candidate")
@click.option(
    "--switch", "do_switch", is_flag=True, help="Act on the verdict: promote (hosted model kept as fallback) or reject."
)
@click.option(
    "--worst",
    type=click.IntRange(0, 100),
    default=None,
    help="Lost answers per suite (default: migrate.worst_answers).",
)
@click.option(
    "--suite",
    "suites",
    multiple=True,
    type=click.Choice(EVALUATION_SUITES),
    help="Run only this suite (repeatable; default: evaluation.suites). Only the suites run are gated.",
)
@pass_cli
def evaluate_command(ctx: CliContext, candidate, do_switch, worst, suites) -> None:
    """Evaluate CANDIDATE against the hosted model it replaces, every suite, closed book and as served.

    Exit code 1 when it is worse beyond migrate.tolerance somewhere, 2 when too close to tell (held).
    """
    from trainer import gate
    from trainer.migration.gate import closeness, evaluate_replacement, switch

    actor = ctx.actor("admin")
    evaluation = evaluate_replacement(
        ctx.db, ctx.settings, candidate, suites=list(suites) or None, progress=True, actor=actor
    )
    p, g = evaluation.params, evaluation.gate
    label = METRIC_LABELS[g["metric"]]
    click.echo(
        f"evaluation {evaluation.id}: {p['candidate']} (candidate) vs {p['incumbent']} (replaced), "
        f"{evaluation.duration_s:.1f} s; {label}, tolerance {g['tolerance']:.3f}"
    )
    click.echo(
        f"{'suite':<21} {'view':<11} {'rows':>4}  {'replaced':>8} {'cand.':>6} {'delta':>7}  interval         result"
    )
    count = ctx.settings.migrate.worst_answers if worst is None else worst
    report = closeness(evaluation, count)
    for check in report:
        if not check.get("rows"):
            click.echo(f"{check['suite']:<21} {VIEW_WORDS[check['view']]:<11} {0:>4}  (no rows)")
            continue
        low, high = check["interval"]
        click.echo(
            f"{check['suite']:<21} {VIEW_WORDS[check['view']]:<11} {check['rows']:>4}  {check['incumbent']:>8.3f} "
            f"{check['candidate']:>6.3f} {check['delta']:>+7.3f}  {low:+.3f} to {high:+.3f}  {check['result']}"
        )
    for check in report:
        if check["lost"]:
            click.echo(f"lost most in {check['suite']} ({VIEW_WORDS[check['view']]}):")
            for lost in check["lost"]:
                click.echo(
                    f"  {' '.join(lost['question'].split())[:70]}\n"
                    f"      replaced ({lost['teacher_score']:.2f}): {lost['teacher'][:90]!r}\n"
                    f"      cand.    ({lost['candidate_score']:.2f}): {lost['candidate'][:90]!r}"
                )
    outcome = gate.outcome_of(evaluation)
    words = {"passed": "PASSED", "failed": "FAILED", "inconclusive": "INCONCLUSIVE"}[outcome]
    click.secho(f"verdict: {words}", fg={"passed": "green", "failed": "red"}.get(outcome, "yellow"))
    for reason in evaluation.reasons:
        click.echo(f"  - {reason}")
    click.echo(f"answers and per-row scores: {evaluation.rows_path}")
    if do_switch:
        done = switch(ctx.db, ctx.settings, evaluation, actor=actor)
        if done.action == "promoted":
            kept = (
                f"{p['incumbent']} answers as a fallback through {done.fallback_until}"
                if done.fallback_until
                else f"{p['incumbent']} is not kept as a fallback (its shutdown date is unknown or past)"
            )
            click.echo(f"switched: {done.version.name} is live; {kept}. Undo: tuneloop models rollback")
        else:
            click.echo(f"switch: {done.version.name} {done.action}; {p['incumbent']} keeps serving")
    elif evaluation.passed:
        click.echo(f"switch to it: tuneloop migrate evaluate {p['candidate']} --switch")
    if not evaluation.passed:
        sys.exit(2 if outcome == "inconclusive" else 1)


COMMANDS = [migrate_group]
