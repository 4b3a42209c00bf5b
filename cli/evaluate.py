"""``tuneloop eval``: a candidate against the live model, suite by suite, with the gate's verdict."""

from __future__ import annotations

import json
import sys

import click

from cli.context import CliContext, pass_cli
from config.settings import EVALUATION_SUITES
from trainer import deploy, gate
from trainer.evaluation.metrics import METRIC_LABELS, METRICS
from trainer.evaluation.run import Evaluation, evaluate, read_rows
from trainer.registry import resolve_version


def print_evaluation(evaluation: Evaluation, *, worst: int = 0) -> None:
    """The per-suite table, the judge's summary and the verdict."""
    p = evaluation.params
    click.echo(
        f"evaluation {evaluation.id}: {p['candidate']} (candidate) vs {p['incumbent']} (live), "
        f"{evaluation.duration_s:.1f} s"
    )
    if p.get("dataset_version"):
        click.echo(f"test split of dataset v{p['dataset_version']} ({p['dataset_source']})")
    click.echo(f"{'suite':<12} {'rows':>5}  {'metric':<9} {'live':>7} {'cand.':>7} {'delta':>7}")
    for suite in evaluation.suites:
        entry = evaluation.metrics.get(suite, {})
        if not entry.get("rows"):
            click.echo(f"{suite:<12} {0:>5}  (no rows)")
            continue
        for i, metric in enumerate(METRICS):
            head = f"{suite:<12} {entry['rows']:>5}" if i == 0 else " " * 18
            click.echo(
                f"{head}  {METRIC_LABELS[metric]:<9} {entry['incumbent'][metric]:>7.3f} "
                f"{entry['candidate'][metric]:>7.3f} {entry['delta'][metric]:>+7.3f}"
            )
        errors = entry.get("errors") or {}
        if any(errors.values()):
            click.secho(
                f"{'':<18}  failed answers: candidate {errors['candidate']}, live {errors['incumbent']}", fg="yellow"
            )
    if evaluation.judge:
        click.echo(f"judge {evaluation.judge['model']} (1-5, not gating):")
        for suite, s in evaluation.judge["suites"].items():
            if s["scored"]:
                click.echo(
                    f"  {suite:<12} live {s['incumbent_mean']:.2f}  cand. {s['candidate_mean']:.2f}  "
                    f"wins {s['wins']} ties {s['ties']} losses {s['losses']}  ({s['scored']}/{s['rows']} scored)"
                )
            else:
                click.echo(f"  {suite:<12} nothing scored ({s['rows']} rows)")
    if worst:
        _print_worst(evaluation, worst)
    metric = METRIC_LABELS[evaluation.gate.get("metric", "chrf")]
    if evaluation.passed:
        click.secho(f"verdict: PASSED the gate ({metric})", fg="green")
    else:
        click.secho(f"verdict: FAILED the gate ({metric})", fg="red")
        for reason in evaluation.reasons:
            click.echo(f"  - {reason}")
    click.echo(f"answers and per-row scores: {evaluation.rows_path}")


def _print_worst(evaluation: Evaluation, count: int) -> None:
    metric = evaluation.gate.get("metric", "chrf")

    def delta(row: dict) -> float:
        return row["candidate"]["scores"][metric] - row["incumbent"]["scores"][metric]

    rows = sorted((r for r in read_rows(evaluation) if delta(r) < 0), key=delta)
    click.echo(
        f"where the candidate lost most ({METRIC_LABELS[metric]}):"
        if rows
        else f"the candidate scored lower than live on no question ({METRIC_LABELS[metric]})"
    )
    for row in rows[:count]:
        question = " ".join(row["messages"][-1]["content"].split())[:70]
        click.echo(f"  [{row['suite']}] {question}")
        click.echo(f"      live: {row['incumbent']['answer'][:100]!r}")
        click.echo(f"      cand: {row['candidate']['answer'][:100]!r}")


@click.command("eval")
@click.argument("candidate")
@click.option("--against", default="live", show_default=True, help="Version to compare with (id, name or 'live').")
@click.option(
    "--suite",
    "suites",
    multiple=True,
    type=click.Choice(EVALUATION_SUITES),
    help="Run only this suite (repeatable; default: evaluation.suites).",
)
@click.option(
    "--gate",
    "apply_gate",
    is_flag=True,
    help="Act on the verdict: promote (or canary, gate.canary_weight) or mark the candidate rejected.",
)
@click.option("--worst", type=click.IntRange(0, 1000), default=0, help="Also show the N rows the candidate lost most.")
@click.option("--json", "as_json", is_flag=True, help="Print the evaluation as JSON (no progress bar).")
@pass_cli
def eval_command(ctx: CliContext, candidate, against, suites, apply_gate, worst, as_json) -> None:
    """Evaluate CANDIDATE (id or name) against the live model on the test split, corrections and golden set.

    The candidate is deployed first (never made live). Exit code 1 when it fails the gate. When the model
    server refuses its adapter, --gate marks it rejected ("adapter did not load: …").
    """
    # With --gate a person chose to act on the verdict: the promotion or rejection is theirs.
    actor = ctx.actor("admin")
    try:
        evaluation = evaluate(
            ctx.db,
            ctx.settings,
            candidate,
            against,
            suites=list(suites) or None,
            progress=not as_json,
            actor=actor,
        )
    except deploy.AdapterRefused as exc:
        if not apply_gate or exc.version_id != resolve_version(ctx.db, candidate).id:
            raise
        outcome = gate.reject_unloadable(ctx.db, ctx.settings, exc.version_id, exc.reason, actor=actor)
        click.echo(f"gate: {outcome.version.name} ({outcome.version.id}) is marked rejected: {outcome.reasons[0]}")
        sys.exit(1)
    outcome = gate.apply(ctx.db, ctx.settings, evaluation, actor=actor) if apply_gate else None
    if as_json:
        body = {k: v for k, v in evaluation.__dict__.items() if k != "rows"}
        if outcome:
            body["gate_action"] = {"action": outcome.action, "version_id": outcome.version.id}
        click.echo(json.dumps(body, ensure_ascii=False, indent=2))
    else:
        print_evaluation(evaluation, worst=worst)
        if outcome:
            words = {
                "promoted": "is live now",
                "canary": f"is the canary ({outcome.version.traffic_weight:.0%})",
                "rejected": "is marked rejected; the live model is unchanged",
            }
            click.echo(f"gate: {outcome.version.name} ({outcome.version.id}) {words[outcome.action]}")
        elif evaluation.passed:
            click.echo(f"promote it: tuneloop models promote {evaluation.candidate_id}   (or run with --gate)")
    if not evaluation.passed:
        sys.exit(1)


COMMANDS = [eval_command]
