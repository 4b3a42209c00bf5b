"""Two real `tuneloop scheduler` processes on one PostgreSQL store: one leads and runs each due job once,
the other stands by (`--wait`); `kill -9` the leader and the standby takes over within seconds, running
the next due job once and never the one already run. `tuneloop scheduler status` says who leads."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from datetime import datetime, timedelta, timezone

import pytest

from config.settings import load_settings
from feedback.db import open_store
from feedback.demo import seed_demo
from tests.plugins.common import wait_for
from tests.plugins.model import tuneloop_exe
from tests.test_scheduler import cli_env
from trainer.pipeline import list_pipeline_runs
from trainer.scheduler import STANDBY_POLL_S, build_scheduler, current_leader

TAKEOVER_BOUND_S = STANDBY_POLL_S + 10  # a poll, and a standby's start of its jobs on a shared machine


@pytest.fixture
def store(tmp_path, postgres_url):
    settings = load_settings(
        env={},
        overrides={
            "paths.data_dir": str(tmp_path / "var"),
            "database.url": postgres_url,
            "scheduler.jobs": ["weekly", "monthly"],
        },
    )
    db = open_store(settings)
    seed_demo(db, settings, weeks=2, turns_per_week=60)
    yield settings, db
    db.close()


def _start(settings, log_path, *args: str) -> subprocess.Popen:
    env = cli_env(settings)
    env["TUNELOOP_SCHEDULER__JOBS"] = "weekly,monthly"
    with open(log_path, "w") as log:
        return subprocess.Popen(
            [tuneloop_exe(), "scheduler", *args], env=env, stdout=log, stderr=subprocess.STDOUT, text=True
        )


def _status(settings) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tuneloop_exe(), "scheduler", "status"], env=cli_env(settings), capture_output=True, text=True, timeout=60
    )


def _leader_pid(settings) -> int | None:
    leader = current_leader(settings)  # what `tuneloop scheduler status` prints (checked through the CLI below)
    return leader.pid if leader else None


def _runs(db, kind: str) -> list:
    return list_pipeline_runs(db, kind=kind)


def _reschedule(settings, **due: datetime) -> None:
    # The schedule lives in the store: a paused scheduler in this process moves the jobs' next run times there.
    scheduler = build_scheduler(settings)
    for job_id, moment in due.items():
        scheduler.modify_job(job_id, next_run_time=moment)
    scheduler.shutdown()


def test_two_schedulers_one_leads_each_due_job_runs_once_and_the_standby_takes_over(store, tmp_path):
    settings, db = store
    assert _status(settings).returncode == 1  # no scheduler yet
    now = datetime.now(timezone.utc)
    _reschedule(settings, weekly=now - timedelta(minutes=5), monthly=now + timedelta(days=20))

    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = _start(settings, first_log)
    second = None
    try:
        wait_for(
            lambda: _leader_pid(settings) == first.pid,
            what="the first scheduler to lead",
            timeout_s=60,
            logs=[first_log],
        )
        status = _status(settings)
        assert status.returncode == 0, status.stderr
        assert status.stdout.startswith(f"scheduler leading: host {socket.gethostname()}, pid {first.pid}, since ")
        second = _start(settings, second_log, "--wait")
        wait_for(
            lambda: "waiting for" in second_log.read_text(),
            what="the second to stand by",
            timeout_s=60,
            logs=[second_log],
        )
        weekly = wait_for(
            lambda: [r for r in _runs(db, "weekly") if r.finished_at],
            what="the due weekly job",
            timeout_s=60,
            logs=[first_log],
        )
        assert [r.state for r in weekly] == ["succeeded"], weekly[0].error
        time.sleep(STANDBY_POLL_S * 2)  # the standby had time to run it too, had it not been standing by
        assert len(_runs(db, "weekly")) == 1
        assert second.poll() is None and "scheduler leading" not in second_log.read_text()
        assert _leader_pid(settings) == first.pid

        # The leader dies mid-schedule: the monthly job falls due a few seconds later.
        _reschedule(settings, monthly=datetime.now(timezone.utc) + timedelta(seconds=4))
        first.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        first.wait(timeout=10)
        wait_for(
            lambda: _leader_pid(settings) == second.pid,
            what="the standby to lead",
            timeout_s=TAKEOVER_BOUND_S,
            logs=[second_log],
        )
        took_over_s = time.monotonic() - killed_at
        assert took_over_s < TAKEOVER_BOUND_S
        assert f"pid {second.pid}," in _status(settings).stdout
        monthly = wait_for(
            lambda: [r for r in _runs(db, "monthly") if r.finished_at],
            what="the monthly job",
            timeout_s=60,
            logs=[second_log],
        )
        assert [r.state for r in monthly] == ["succeeded"], monthly[0].error
        time.sleep(STANDBY_POLL_S)
        assert len(_runs(db, "monthly")) == 1
        assert len(_runs(db, "weekly")) == 1  # the new leader did not run the weekly job's due time again
        assert "weekly pipeline" in first_log.read_text() and "monthly pipeline" not in first_log.read_text()
        assert "monthly pipeline" in second_log.read_text() and "weekly pipeline" not in second_log.read_text()
        (leader,) = db.execute("SELECT pid FROM scheduler_leader").fetchone()
        assert leader == second.pid

        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
        assert "scheduler stopped" in second_log.read_text()
        assert _status(settings).returncode == 1  # its session ended: the lock is free
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def test_a_leader_that_loses_its_session_stops_and_exits_non_zero(store, tmp_path, postgres_server):
    settings, db = store
    log_path = tmp_path / "leader.log"
    leader = _start(settings, log_path)
    try:
        wait_for(
            lambda: _leader_pid(settings) == leader.pid, what="the scheduler to lead", timeout_s=60, logs=[log_path]
        )
        # What a restarted server or a cut network does to the leader's session: the server ends it.
        (backend,) = db.execute("SELECT backend_pid FROM scheduler_leader").fetchone()
        db.execute("SELECT pg_terminate_backend(?)", [backend])
        assert leader.wait(timeout=30) == 1
        assert "lost the scheduler leader lock" in log_path.read_text()
        assert _status(settings).returncode == 1
    finally:
        if leader.poll() is None:
            os.kill(leader.pid, signal.SIGKILL)
            leader.wait(timeout=10)
