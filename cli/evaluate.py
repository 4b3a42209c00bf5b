"""``tuneloop eval``: a candidate against the live model, suite by suite, with the gate's verdict."""

from __future__ import annotations

import json
import sys

import click

from cli.context import CliContext, pass_cli
from config.settings import EVALUATION_SUITES, VIEWS
from trainer import deploy, gate
from trainer.evaluation.metrics import METRIC_LABELS, view_metrics
from trainer.evaluation.run import Evaluation, evaluate, read_rows
from trainer.gate import VIEW_WORDS
from trainer.registry import resolve_version


def print_evaluation(evaluation: Evaluation, *, worst: int = 0) -> None:
    """The per-suite table (one line per view), the judge's summary, the gate's checks and its verdict."""
    p = evaluation.params
    metric = evaluation.gate.get("metric", "chrf")
    click.echo(
        f"evaluation {evaluation.id}: {p['candidate']} (candidate) vs {p['incumbent']} (live), "
        f"{evaluation.duration_s:.1f} s"
    )
    if p.get("dataset_version"):
        click.echo(f"test split of dataset v{p['dataset_version']} ({p['dataset_source']})")
    if p.get("knowledge_seq") is not None:
        click.echo(f"as served: with the knowledge base as the gateway retrieves it (change {p['knowledge_seq']})")
    label = METRIC_LABELS[metric]
    click.echo(
        f"{'suite':<21} {'view':<11} {'rows':>4}  {'exact live→cand':>15}  {label + ' live':>9} {'cand.':>6} "
        f"{'delta':>7}  interval"
    )
    for suite in evaluation.suites:
        views = view_metrics(evaluation.metrics.get(suite))
        for i, (view, entry) in enumerate(views.items()):
            head = f"{suite if i == 0 else '':<21} {VIEW_WORDS[view]:<11} {entry.get('rows', 0):>4}"
            if not entry.get("rows"):
                click.echo(f"{head}  (no rows)")
                continue
            low, high = (entry.get("interval") or {}).get(metric) or (entry["delta"][metric],) * 2
            click.echo(
                f"{head}  {entry['incumbent']['exact_match']:>7.3f} → {entry['candidate']['exact_match']:.3f}  "
                f"{entry['incumbent'][metric]:>9.3f} {entry['candidate'][metric]:>6.3f} {entry['delta'][metric]:>+7.3f}"
                f"  {low:+.3f} to {high:+.3f}"
            )
            errors = entry.get("errors") or {}
            if any(errors.values()):
                click.secho(
                    f"{'':<38}failed answers: candidate {errors['candidate']}, live {errors['incumbent']}", fg="yellow"
                )
    if evaluation.judge:
        click.echo(f"judge {evaluation.judge['model']} (1-5, not gating):")
        for suite, by_view in evaluation.judge["suites"].items():
            for view, s in ({"closed_book": by_view} if "rows" in by_view else by_view).items():
                where = f"{suite} ({VIEW_WORDS[view]})"
                if s["scored"]:
                    click.echo(
                        f"  {where:<32} live {s['incumbent_mean']:.2f}  cand. {s['candidate_mean']:.2f}  "
                        f"wins {s['wins']} ties {s['ties']} losses {s['losses']}  ({s['scored']}/{s['rows']} scored)"
                    )
                else:
                    click.echo(f"  {where:<32} nothing scored ({s['rows']} rows)")
    if worst:
        _print_worst(evaluation, worst)
    outcome = gate.outcome_of(evaluation)
    color = {"passed": "green", "failed": "red"}.get(outcome, "yellow")
    words = {"passed": "PASSED the gate", "failed": "FAILED the gate", "inconclusive": "INCONCLUSIVE"}[outcome]
    click.secho(f"verdict: {words} ({METRIC_LABELS[metric]})", fg=color)
    if outcome == "inconclusive":
        click.echo("  too few questions to tell a real difference from noise: neither promoted nor rejected")
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
        view = VIEW_WORDS[row.get("view", "closed_book")]
        click.echo(f"  [{row['suite']}, {view}] {question}")
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
    "--view",
    "views",
    multiple=True,
    type=click.Choice(VIEWS),
    help="Ask only this way: closed_book or as_served (repeatable; default: evaluation.views).",
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
def eval_command(ctx: CliContext, candidate, against, suites, views, apply_gate, worst, as_json) -> None:
    """Evaluate CANDIDATE (id or name) against the live model, closed book and as served, suite by suite.

    The candidate is deployed first (never made live). Exit code 1 when it fails the gate, 2 when the gate
    cannot tell (too few questions: it is held, neither promoted nor rejected). When the model server refuses
    its adapter, --gate marks it rejected ("adapter did not load: …").
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
            views=list(views) or None,
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
                "held": "is held: still a candidate, the live model is unchanged "
                "(`tuneloop models promote` or `models retire` it)",
            }
            click.echo(f"gate: {outcome.version.name} ({outcome.version.id}) {words[outcome.action]}")
        elif evaluation.passed:
            click.echo(f"promote it: tuneloop models promote {evaluation.candidate_id}   (or run with --gate)")
    if not evaluation.passed:
        sys.exit(2 if gate.outcome_of(evaluation) == "inconclusive" else 1)


COMMANDS = [eval_command]
