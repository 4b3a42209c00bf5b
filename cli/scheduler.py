"""``tuneloop scheduler``: run the loop's jobs on their schedule, one scheduler process at a time."""

from __future__ import annotations

import logging
import signal
import threading

import click

from cli.context import CliContext, pass_cli


@click.command("scheduler")
@click.option(
    "--wait",
    is_flag=True,
    help="If another scheduler holds the lock, stand by until it frees (default: say so and exit 0).",
)
@pass_cli
def scheduler_command(ctx: CliContext, wait: bool) -> None:
    """Run the weekly, monthly and threshold jobs ([scheduler] settings) until stopped (Ctrl-C / SIGTERM)."""
    from trainer.scheduler import SchedulerBusy, build_scheduler, hold_lock, lock_path

    settings = ctx.settings
    ctx.check_host()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        lock = hold_lock(settings, wait=wait)
    except SchedulerBusy:
        click.echo(f"another scheduler holds {lock_path(settings)}; not starting a second one")
        return
    _ = ctx.db  # migrate before the first job, not inside it
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    scheduler = build_scheduler(settings)
    try:
        for job in scheduler.get_jobs():
            click.echo(f"job {job.id:<9} {job.trigger}  next run {job.next_run_time}")
        if not scheduler.get_jobs():
            click.echo("no jobs enabled (scheduler.jobs); waiting anyway")
        click.echo(
            f"scheduler running ({settings.scheduler.timezone}), lock {lock_path(settings)}",
        )
        scheduler.resume()  # jobs missed while no scheduler ran are due now: each runs once (coalesced)
        stop.wait()
    finally:
        scheduler.shutdown(wait=True)
        lock.release()
        click.echo("scheduler stopped")


COMMANDS = [scheduler_command]
