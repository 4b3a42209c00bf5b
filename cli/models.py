"""``tuneloop models``: the model registry — list, show, deploy, promote, canary, rollback, retire.

Every move that puts a version in front of users deploys it first (loads its
adapter into the model server; idempotent), then flips the registry; gateways
pick the change up within ``gateway.model_cache_s`` seconds, without a restart.
"""

from __future__ import annotations

import json

import click

from cli.context import CliContext, pass_cli
from feedback.versions import live_version
from trainer import deploy, gate, registry
from trainer.evaluation.run import list_evaluations

_ACTOR = click.option(
    "--actor", metavar="EMAIL", help="The account recorded in the model history (same as the global --as)."
)
_REASON = click.option("--reason", help="Why; kept in the model history and shown in the weekly report.")
_FORCE = click.option("--force", is_flag=True, help="Also serve a version the gate rejected.")


def _pickup(ctx: CliContext) -> str:
    return f"gateways pick this up within {ctx.settings.gateway.model_cache_s:g} s (no restart)"


def _deployed(result: deploy.DeployResult) -> str:
    words = {
        "loaded": "adapter loaded",
        "already_loaded": "adapter already loaded",
        "nothing_to_load": "served by name, nothing to load",
        "rejected": "refused, so the version is rejected,",
    }
    detail = f" ({result.detail})" if result.detail else ""
    return f"{result.name}: {words.get(result.action, result.action)} on {result.server}{detail}"


@click.group("models")
def models_group() -> None:
    """Model versions: which one is live, canaries, promotion and rollback."""


@models_group.command("list")
@click.option("--active", is_flag=True, help="Only live, canary and candidate versions.")
@click.option("--json", "as_json", is_flag=True, help="Print the versions as JSON.")
@pass_cli
def list_command(ctx: CliContext, active, as_json) -> None:
    """Model versions, newest first."""
    rows = registry.list_versions(ctx.db, include_inactive=not active)
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    for row in rows:
        weight = f"{row['traffic_weight']:.0%}" if row["status"] in ("live", "canary") else ""
        when = (row["promoted_at"] or row["created_at"] or "")[:16].replace("T", " ")
        kept = f"  (fallback through {row['fallback_until']})" if row.get("fallback_until") else ""
        click.echo(f"{row['id']}  {row['status']:<9} {weight:>4}  {row['provider']:<8} {when}  {row['name']}{kept}")
    if not rows:
        click.echo("no model versions yet (the gateway registers the configured model when it starts)")


@models_group.command("show")
@click.argument("version")
@click.option("--json", "as_json", is_flag=True, help="Print the version, its history and evaluations as JSON.")
@pass_cli
def show(ctx: CliContext, version, as_json) -> None:
    """One version (id, name or 'live'): details, history and evaluations."""
    v = registry.resolve_version(ctx.db, version)
    row = next(r for r in registry.list_versions(ctx.db) if r["id"] == v.id)
    history = registry.events(ctx.db, v.id)
    evaluations = list_evaluations(ctx.db, v.id, limit=5)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "version": row,
                    "events": [e.__dict__ for e in history],
                    "evaluations": [
                        {k: e.__dict__[k] for k in ("id", "incumbent_id", "passed", "reasons", "metrics", "created_at")}
                        for e in evaluations
                    ],
                },
                ensure_ascii=False,
                indent=2,
            )
        )
        return
    for key, value in row.items():
        if value not in (None, ""):
            click.echo(f"{key:<16} {value}")
    click.echo("history:" if history else "history: none")
    for e in history:
        other = f" (replaced {e.previous_live_id})" if e.previous_live_id and e.version_id == v.id else ""
        if e.version_id != v.id:
            other = f" — {e.version_id} replaced it"
        click.echo(
            f"  {e.created_at[:19].replace('T', ' ')}  {e.event:<11} by {e.actor}{other}"
            + (f": {e.reason}" if e.reason else "")
        )
    for e in evaluations:
        verdict = gate.outcome_of(e)
        click.echo(f"evaluation {e.id} ({e.created_at[:16].replace('T', ' ')}) against {e.incumbent_id}: {verdict}")
        for reason in e.reasons:
            click.echo(f"  - {reason}")


@models_group.command("deploy")
@click.argument("version", required=False)
@_ACTOR
@pass_cli
def deploy_command(ctx: CliContext, version, actor) -> None:
    """Make VERSION servable (load its adapter) without making it live; with no VERSION, the live one and
    the canary (after the model server restarted)."""
    if version:
        results = [
            deploy.deploy(
                ctx.db, ctx.settings, registry.resolve_version(ctx.db, version), actor=ctx.actor("admin", actor)
            )
        ]
    else:
        results = deploy.deploy_serving(ctx.db, ctx.settings, actor=ctx.actor("admin", actor))
    for result in results:
        click.echo(_deployed(result))


@models_group.command("promote")
@click.argument("version")
@_REASON
@_FORCE
@_ACTOR
@pass_cli
def promote(ctx: CliContext, version, reason, force, actor) -> None:
    """Make VERSION live; the current live version is retired (and stays loaded, for rollback)."""
    target = registry.resolve_version(ctx.db, version)
    before = live_version(ctx.db)
    live = deploy.promote(ctx.db, ctx.settings, target, actor=ctx.actor("admin", actor), reason=reason, force=force)
    click.echo(f"{live.name} ({live.id}) is live" + (f"; {before.name} ({before.id}) retired" if before else ""))
    click.echo(_pickup(ctx) + ".  Undo: tuneloop models rollback")


@models_group.command("canary")
@click.argument("version")
@click.argument("weight", type=float)
@_REASON
@_FORCE
@_ACTOR
@pass_cli
def canary(ctx: CliContext, version, weight, reason, force, actor) -> None:
    """Let VERSION answer WEIGHT (0 < WEIGHT < 1, e.g. 0.1) of conversations, sticky per conversation."""
    target = registry.resolve_version(ctx.db, version)
    result = deploy.start_canary(
        ctx.db, ctx.settings, target, weight, actor=ctx.actor("admin", actor), reason=reason, force=force
    )
    click.echo(
        f"{result.name} ({result.id}) is the canary for {result.traffic_weight:.0%} of conversations; {_pickup(ctx)}"
    )
    click.echo(f"then: tuneloop models promote {result.id}   or   tuneloop models retire {result.id}")


@models_group.command("rollback")
@_REASON
@_ACTOR
@pass_cli
def rollback(ctx: CliContext, reason, actor) -> None:
    """Make the version that was live before the current one live again (the current one is retired)."""
    restored, withdrawn = deploy.rollback(ctx.db, ctx.settings, actor=ctx.actor("admin", actor), reason=reason)
    click.echo(f"{restored.name} ({restored.id}) is live again; {withdrawn.name} ({withdrawn.id}) retired")
    click.echo(_pickup(ctx) + ".")


@models_group.command("retire")
@click.argument("version")
@_REASON
@_ACTOR
@pass_cli
def retire(ctx: CliContext, version, reason, actor) -> None:
    """Take a candidate, canary or standby version out of service (unloading its adapter if gate.unload_retired)."""
    target = registry.resolve_version(ctx.db, version)
    retired, unloaded = deploy.retire(ctx.db, ctx.settings, target, actor=ctx.actor("admin", actor), reason=reason)
    click.echo(f"{retired.name} ({retired.id}) is retired")
    if unloaded and unloaded.action == "unloaded":
        click.echo(f"adapter unloaded from {unloaded.server}")
    elif unloaded and unloaded.detail and unloaded.action == "skipped":
        click.secho(f"warning: adapter not unloaded: {unloaded.detail}", fg="yellow", err=True)


COMMANDS = [models_group]
