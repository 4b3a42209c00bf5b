"""``tuneloop up``: the whole platform on the embedded defaults (what ``make run`` calls).

Builds the starter model if it is missing (or its data changed), then starts, in
order and each only once the previous one is healthy: the built-in model server
(unless ``model.provider`` points elsewhere), the gateway, and the scheduler.
Prints the URLs and the admin token, then watches: Ctrl-C/SIGTERM stops all; a
child that dies is restarted with backoff while the others keep running
(:mod:`cli.supervisor`), and its state goes to ``<data_dir>/run/processes.<host>.json``
for ``/readyz``. Each time the built-in model server is up — at start and after
a restart, which empties it — the live and canary adapters are loaded into it
again. A child that fails while the platform is starting stops it all.
"""

from __future__ import annotations

import sys

import click

from cli.context import CliContext, pass_cli
from cli.serve import port_is_free
from cli.supervisor import Child, ChildFailed, Supervisor, tuneloop_argv
from config.errors import ConfigError, TuneloopError
from config.settings import Settings
from feedback import accounts
from feedback.db import open_store
from feedback.process_status import write_status
from server.admin.auth import admin_token
from trainer.deploy import deploy_serving
from trainer.starter.build import build_from_settings


def _scheduler_child(config_path: str | None, settings: Settings) -> Child:
    # --wait: if a scheduler already runs on this data_dir, stand by instead of exiting (which would stop `up`).
    return Child("scheduler", tuneloop_argv(config_path, "scheduler", "--wait"), health_url=None)


# Optional children register here as later issues add them.
EXTRA_CHILDREN: list = [_scheduler_child]


def _check_ports(settings: Settings, with_model_server: bool) -> None:
    wanted = [("gateway", settings.gateway.host, settings.gateway.port, "gateway.port")]
    if with_model_server:
        ms = settings.model_server
        wanted.insert(0, ("model server", ms.host, ms.port, "model_server.port"))
    for what, host, port, key in wanted:
        if not port_is_free(host, port):
            raise ConfigError(
                f"port {port} on {host} is taken, so the {what} cannot start; free it or set {key}", field=key
            )


def _uses_builtin_model(settings: Settings) -> bool:
    return settings.model.provider == "builtin"


def _redeploy(settings: Settings) -> None:
    """Load the live and canary adapters into the (re)started model server; a failure is logged, not fatal."""
    db = open_store(settings, migrate=False)
    try:
        loaded = [r for r in deploy_serving(db, settings, actor="tuneloop up") if r.action == "loaded"]
    except TuneloopError as exc:
        click.echo(f"warning: could not load the serving adapters into the model server: {exc.message}")
        return
    finally:
        db.close()
    for result in loaded:
        click.echo(f"loaded {result.name} into the model server")


@click.command()
@click.option("--rebuild", is_flag=True, help="Rebuild the starter model even when it is up to date.")
@pass_cli
def up(ctx: CliContext, rebuild: bool) -> None:
    """Start the platform: model server, gateway and scheduler (Ctrl-C stops all)."""
    settings = ctx.settings
    ctx.check_host()  # before any child starts: each would refuse the same way
    builtin = _uses_builtin_model(settings)
    _check_ports(settings, builtin)
    token = admin_token(settings, ctx.db)
    has_admin = accounts.admin_exists(ctx.db)  # then the token is for scripts; people use their accounts
    supervisor = Supervisor(
        echo=lambda line: click.echo(line), on_change=lambda children: write_status(settings.data_dir, children)
    )
    gw = settings.gateway
    try:
        if builtin:
            if not settings.model_server.model_dir:
                click.echo("checking the starter model (built from the bundled FAQ on first run)…")
                build_from_settings(settings, force=rebuild, echo=click.echo)
            ms = settings.model_server
            supervisor.start(
                Child(
                    "model",
                    tuneloop_argv(ctx.config_path, "model-server"),
                    health_url=f"http://{ms.host}:{ms.port}/health",
                    startup_timeout_s=300,
                    on_ready=lambda: _redeploy(settings),
                )
            )
        # With the built-in model we know the model is up, so wait for full readiness;
        # an external vLLM or OpenAI model may legitimately come up later.
        probe = "readyz" if builtin else "healthz"
        supervisor.start(
            Child(
                "gateway",
                tuneloop_argv(ctx.config_path, "serve"),
                health_url=f"http://{_local(gw.host)}:{gw.port}/{probe}",
            )
        )
        for make_child in EXTRA_CHILDREN:
            supervisor.start(make_child(ctx.config_path, settings))
    except (ChildFailed, KeyboardInterrupt) as exc:
        supervisor.stop_all()
        if isinstance(exc, KeyboardInterrupt):
            sys.exit(130)
        raise
    base = f"http://{_local(gw.host)}:{gw.port}"
    click.secho(
        "\n".join(
            [
                "",
                "tuneloop is up.",
                f"  chat page      {base}/",
                f"  API            {base}/api/chat   (OpenAI-compatible: {base}/v1)",
                f"  admin          {base}/admin/     "
                + (f"sign in with your account (API token: {token})" if has_admin else f"token: {token}"),
                f"  try            curl -s {base}/api/chat -H 'content-type: application/json'"
                ' -d \'{"message": "How long does standard delivery take?"}\'',
                "A process that dies is restarted; Ctrl-C stops everything.",
                "",
            ]
        ),
        fg="green",
    )
    sys.exit(supervisor.watch())


def _local(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


COMMANDS = [up]
