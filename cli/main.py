"""The ``tuneloop`` command: the top layer, wiring every package; nothing imports it.

Each command group lives in its own module beside this one. Domain errors are
turned into a one-line message and an exit code here, in one place.
"""

from __future__ import annotations

import sys

import click

from cli import (
    context,
    dataset,
    db,
    demo,
    evaluate,
    kb,
    keys,
    migrate,
    model_server,
    models,
    pipeline,
    privacy,
    report,
    review,
    scheduler,
    serve,
    starter,
    train,
    up,
    users,
)
from config.errors import ConfigError, InvalidRequest, TuneloopError


class _Group(click.Group):
    """Translates tuneloop's errors into ``error: …`` and an exit code; takes ``--as`` anywhere on the line."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # `tuneloop review approve X --as ana@example.com` reads naturally; the option belongs to the
        # top group, so it is moved there (never past a "--", after which everything is an argument).
        moved, rest, i = [], [], 0
        while i < len(args):
            arg = args[i]
            if arg == "--":
                rest += args[i:]
                break
            if arg == "--as" and i + 1 < len(args):
                moved += args[i : i + 2]
                i += 2
                continue
            if arg.startswith("--as="):
                moved.append(arg)
            else:
                rest.append(arg)
            i += 1
        return super().parse_args(ctx, moved + rest)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TuneloopError as exc:
            where = f" ({exc.where})" if getattr(exc, "where", None) else ""  # a model server's address
            click.secho(f"error: {exc.message}{where}", fg="red", err=True)
            code = 2 if isinstance(exc, (ConfigError, InvalidRequest)) else 1
            sys.exit(code)


@click.group(cls=_Group)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="TUNELOOP_CONFIG",
    help="TOML file with your settings (defaults: config/default.toml).",
)
@click.option(
    "--as",
    "acting_as",
    metavar="EMAIL",
    envvar="TUNELOOP_AS",
    help="Record the changes this command makes as this account (default: your operating-system user).",
)
@click.version_option(package_name="tuneloop")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, acting_as: str | None) -> None:
    """tuneloop: serve a chat model, collect thumbs, retrain, gate and promote."""
    ctx.obj = context.CliContext(config_path, acting_as)


for _command in (
    *keys.COMMANDS,
    *serve.COMMANDS,
    *model_server.COMMANDS,
    *starter.COMMANDS,
    *report.COMMANDS,
    *demo.COMMANDS,
    *up.COMMANDS,
    *review.COMMANDS,
    *kb.COMMANDS,
    *dataset.COMMANDS,
    *models.COMMANDS,
    *evaluate.COMMANDS,
    *train.COMMANDS,
    *migrate.COMMANDS,
    *pipeline.COMMANDS,
    *scheduler.COMMANDS,
    *users.COMMANDS,
    *privacy.COMMANDS,
    *db.COMMANDS,
):
    cli.add_command(_command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="tuneloop")


if __name__ == "__main__":
    main()
