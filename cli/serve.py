"""``tuneloop serve``: the gateway under gunicorn with gevent workers."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import click

from cli.context import CliContext, pass_cli
from config.errors import ConfigError
from config.settings import PROJECT_ROOT

GUNICORN_CONF = PROJECT_ROOT / "config" / "gunicorn.conf.py"


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (checked by binding it briefly)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def gunicorn_argv(config_path: str | None) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run the gateway."""
    env = dict(os.environ)
    if config_path:
        env["TUNELOOP_CONFIG"] = str(Path(config_path).resolve())
    argv = [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "server.wsgi:app"]
    return argv, env


@click.command()
@click.option("--host", help="Override gateway.host.")
@click.option("--port", type=int, help="Override gateway.port.")
@click.option("--workers", type=int, help="Override gateway.workers.")
@pass_cli
def serve(ctx: CliContext, host: str | None, port: int | None, workers: int | None) -> None:
    """Run the gateway (gunicorn, gevent workers, warmed before taking traffic)."""
    for key, value in (("HOST", host), ("PORT", port), ("WORKERS", workers)):
        if value is not None:
            os.environ[f"TUNELOOP_GATEWAY__{key}"] = str(value)
    ctx.__dict__.pop("settings", None)
    settings = ctx.settings  # validates before gunicorn starts, so errors name the key
    # Reach, migrate and seed the store once, here: an unreachable server or a role without rights stops start-up
    # with one line naming database.url, and the workers find nothing left to migrate or seed (seeding the
    # knowledge base in every worker at once made them wait on one another's write lock past its timeout).
    ctx.check_host()  # paths.data_dir writable; on a shared store, this host's folder and secrets are the others'
    ctx.db.close()
    ctx.__dict__.pop("db", None)
    gw = settings.gateway
    if not port_is_free(gw.host, gw.port):
        raise ConfigError(
            f"port {gw.port} on {gw.host} is already in use (set gateway.port or --port)", field="gateway.port"
        )
    if gw.api_key_required:
        click.echo("API keys are required (gateway.require_api_key); create one with: tuneloop keys create NAME")
    argv, env = gunicorn_argv(ctx.config_path)
    os.chdir(Path.cwd())
    os.execve(argv[0], argv, env)


COMMANDS = [serve]
