"""``tuneloop starter build``: train the bundled-FAQ starter model (skipped when up to date)."""

from __future__ import annotations

import click

from cli.context import CliContext, pass_cli


@click.group()
def starter() -> None:
    """The starter model: a tiny model that memorizes the bundled FAQ (no GPU, no download)."""


@starter.command("build")
@click.option("--force", is_flag=True, help="Rebuild even when the model is up to date.")
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False), help="Output folder (default: the model server's model_dir)."
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@pass_cli
def build(ctx: CliContext, force: bool, out_dir: str | None, quiet: bool) -> None:
    """Train, verify and save the starter model; a no-op when data and settings are unchanged."""
    # Imported here, not at CLI start-up: torch + transformers take ~3 s to import,
    # which every other tuneloop command would pay.
    from trainer.starter import build_from_settings

    build_from_settings(ctx.settings, out_dir, force=force, progress=not quiet, echo=click.echo)


COMMANDS = [starter]
