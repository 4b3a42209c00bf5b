"""``tuneloop model-server``: the built-in OpenAI-protocol model server under gunicorn.

One gthread worker process, so the model is loaded once and shared by
``model_server.threads`` request threads; generation itself is serialized per
model by the engine's worker thread. The gunicorn arbiter is this process: it
turns SIGTERM into a graceful stop (in-flight answers finish) and SIGINT (Ctrl-C)
into a quick one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
from gunicorn.app.base import BaseApplication

from cli.context import CliContext, pass_cli
from cli.serve import port_is_free
from config.errors import ConfigError
from config.settings import Settings


class _ModelServerApp(BaseApplication):
    def __init__(self, settings: Settings):
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        ms = self.settings.model_server
        options = {
            "bind": f"{ms.host}:{ms.port}",
            "workers": 1,
            "worker_class": "gthread",
            "threads": ms.threads,
            # The worker loads the model before it answers anything: give a big model time to load.
            "timeout": 600,
            "graceful_timeout": 15,
            "keepalive": 5,
            "accesslog": "-",
            "access_log_format": '%(h)s "%(r)s" %(s)s %(b)s %(M)sms',
            "errorlog": "-",
            "proc_name": "tuneloop-model-server",
            # gunicorn 27's control socket is one path per user; two servers would fight over it.
            "control_socket_disable": True,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self):
        # Imported in the worker, not at CLI start-up: torch + transformers take ~3 s to import,
        # which every other tuneloop command would pay.
        from server.model_server.app import create_app

        return create_app(self.settings)


@click.command("model-server")
@click.option(
    "--model",
    "model_dir",
    type=click.Path(file_okay=False),
    help="Model folder (default: model_server.model_dir, else the starter model).",
)
@click.option("--name", help="Name the model is served under (default: model_server.served_name).")
@click.option("--host", help="Override model_server.host.")
@click.option("--port", type=int, help="Override model_server.port.")
@pass_cli
def model_server(ctx: CliContext, model_dir: str | None, name: str | None, host: str | None, port: int | None) -> None:
    """Serve a model over the OpenAI protocol (chat completions, vLLM's LoRA adapter endpoints)."""
    settings = with_overrides(ctx.settings, model_dir=model_dir, served_name=name, host=host, port=port)
    ms = settings.model_server
    folder = settings.model_dir
    if not (folder / "config.json").is_file():
        hint = "build the starter model with: tuneloop starter build" if not ms.model_dir else "pass --model DIR"
        raise ConfigError(f"no model in {folder} (config.json is missing); {hint}", field="model_server.model_dir")
    if not port_is_free(ms.host, ms.port):
        raise ConfigError(
            f"port {ms.port} on {ms.host} is already in use (another model server?); set model_server.port or --port",
            field="model_server.port",
        )
    click.echo(f"serving {folder} as {ms.served_name!r} on http://{ms.host}:{ms.port}/v1")
    _ModelServerApp(settings).run()


def with_overrides(settings: Settings, **values) -> Settings:
    """``settings`` with the given ``model_server`` keys replaced (None: keep); re-validated."""
    changes = {k: v for k, v in values.items() if v is not None}
    if "model_dir" in changes:
        changes["model_dir"] = str(Path(changes["model_dir"]).expanduser().resolve())
    return dataclasses.replace(settings, model_server=dataclasses.replace(settings.model_server, **changes))


COMMANDS = [model_server]
