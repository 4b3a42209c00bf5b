"""``tuneloop scheduler``: run the loop's jobs on their schedule, one leading scheduler at a time;
``tuneloop scheduler status``: who leads.

Exit codes of ``tuneloop scheduler``: 0 stopped (Ctrl-C / SIGTERM), or another scheduler leads and
``--wait`` is off; 1 this leader lost the leader lock (its store session ended) and stopped scheduling,
so a supervisor restarts it as a standby. ``tuneloop scheduler status``: 0 a scheduler leads, 1 none
(compose's healthcheck of the scheduler calls it).
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import click

from cli.context import CliContext, pass_cli

LOST_LOCK_EXIT = 1


@click.group("scheduler", invoke_without_command=True)
@click.option(
    "--wait",
    is_flag=True,
    help="If another scheduler leads, stand by until its lock frees (default: say who leads and exit 0).",
)
@click.pass_context
def scheduler_command(click_ctx: click.Context, wait: bool) -> None:
    """Run the weekly, monthly and threshold jobs ([scheduler] settings) until stopped (Ctrl-C / SIGTERM).

    Any number of schedulers may run on one store: one leads (holds the leader lock) and runs the
    jobs; with --wait the others stand by and one takes over when the leader stops or dies.
    """
    if click_ctx.invoked_subcommand is None:
        _run(click_ctx.find_object(CliContext), wait)


def _run(ctx: CliContext, wait: bool) -> None:
    from trainer.scheduler import CHECK_EVERY_S, SchedulerBusy, build_scheduler, lock_name, take_leadership

    settings = ctx.settings
    ctx.check_host()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _ = ctx.db  # migrate (and seed) before taking the lock and before the first job, not inside it
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if wait:
        click.echo(f"waiting for the scheduler leader lock ({lock_name(settings)})")
    try:
        leadership = take_leadership(settings, wait=wait, stop=stop)
    except SchedulerBusy as exc:
        click.echo(f"{exc.message}; not starting a second one")
        return
    if leadership is None:  # stopped while standing by
        click.echo("scheduler stopped (never led)")
        return
    scheduler = build_scheduler(settings)
    try:
        for job in scheduler.get_jobs():
            click.echo(f"job {job.id:<9} {job.trigger}  next run {job.next_run_time}")
        if not scheduler.get_jobs():
            click.echo("no jobs enabled (scheduler.jobs); waiting anyway")
        click.echo(
            f"scheduler leading ({settings.scheduler.timezone}; {leadership.leader.describe()}),"
            f" lock {lock_name(settings)}",
        )
        scheduler.resume()  # jobs missed while no scheduler ran are due now: each runs once (coalesced)
        while not stop.wait(CHECK_EVERY_S):
            if not leadership.held():
                # Another scheduler may take the lock now: stop at once, a job mid-run included (the
                # pipeline resumes it from the store), so no job ever runs under two leaders.
                click.echo(f"lost the scheduler leader lock ({lock_name(settings)}); stopping", err=True)
                scheduler.pause()
                os._exit(LOST_LOCK_EXIT)
    finally:
        scheduler.shutdown(wait=True)
        leadership.release()
        click.echo("scheduler stopped")


@scheduler_command.command("status")
@pass_cli
def status_command(ctx: CliContext) -> None:
    """Say which scheduler leads (host, pid, since); exit 0 when one does, 1 when none runs."""
    from trainer.scheduler import current_leader, lock_name

    leader = current_leader(ctx.settings)
    if leader is None:
        click.echo(f"no scheduler running ({lock_name(ctx.settings)} is free)")
        raise SystemExit(1)
    click.echo(f"scheduler leading: {leader.describe()}")


COMMANDS = [scheduler_command]
