"""The scheduler: jobs from settings in the store (on both engines), a simulated clock through weeks (missed
runs coalesced), a restart keeping the schedule, exactly one leading scheduler per store, and
`tuneloop scheduler status`. Two real scheduler processes on one PostgreSQL store: tests/test_scheduler_leader.py."""

from __future__ import annotations

import base64
import os
import sqlite3
import subprocess
import threading
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
import sqlite_utils

from config.settings import load_settings
from feedback.db import open_db, open_store, utc_text, write_transaction
from feedback.demo import seed_demo
from feedback.migrations import MIGRATIONS
from feedback.sql import integrity_errors, is_unique_violation
from tests.plugins.model import tuneloop_exe
from trainer.pipeline import get_pipeline_run, list_pipeline_runs, open_run
from trainer.scheduler import SchedulerBusy, build_scheduler, current_leader, run_due, take_leadership

pytestmark = pytest.mark.engines
SEOUL = ZoneInfo("Asia/Seoul")


def _settings(settings, **overrides):
    """``settings`` (the test's data folder and store) with ``overrides`` on top."""
    base = {"paths.data_dir": str(settings.data_dir)}
    if settings.database.url:
        base["database.url"] = settings.database.url
    return load_settings(env={}, overrides={**base, **overrides})


def cli_env(settings) -> dict:
    """The environment a `tuneloop` child needs to use the test's data folder and store."""
    env = dict(os.environ, TUNELOOP_PATHS__DATA_DIR=str(settings.data_dir))
    env.pop("TUNELOOP_CONFIG", None)
    env.pop("DATABASE_URL", None)
    if settings.database.url:
        env["TUNELOOP_DATABASE__URL"] = settings.database.url
    return env


@pytest.fixture
def demo(settings):
    # The loop's jobs; the retention job has its own tests (tests/test_privacy_retention.py).
    settings = _settings(settings, **{"scheduler.jobs": ["weekly", "monthly", "threshold"]})
    db = open_store(settings)
    seed_demo(db, settings, weeks=2)
    yield settings, db
    db.close()


def test_weeks_on_a_simulated_clock_coalesce_missed_runs_and_survive_a_restart(demo):
    settings, db = demo
    start = datetime.now(timezone.utc)
    scheduler = build_scheduler(settings, clock=lambda: start)
    jobs = {job.id: job for job in scheduler.get_jobs()}
    assert set(jobs) == {"weekly", "monthly"}  # threshold is off while retrain_threshold = 0
    weekly_at = jobs["weekly"].next_run_time.astimezone(SEOUL)
    assert (weekly_at.weekday(), weekly_at.hour, weekly_at.minute) == (0, 9, 0)  # Monday 09:00 Seoul
    monthly_at = jobs["monthly"].next_run_time.astimezone(SEOUL)
    assert (monthly_at.day, monthly_at.hour) == (1, 3)

    assert run_due(scheduler, start) == []
    fired = run_due(scheduler, weekly_at + timedelta(minutes=1))
    assert [job_id for job_id, _ in fired] == ["weekly"]
    run = fired[0][1]
    assert run.state == "succeeded", run.error
    assert [s.step for s in run.steps] == ["collect", "report"]
    assert run.context.collected, "the demo's worst questions were queued for review"
    assert all(os.path.exists(p) for p in run.context.report.paths.values())
    (queued,) = db.execute("SELECT COUNT(*) FROM review_items WHERE status = 'pending'").fetchone()
    assert queued == len(run.context.collected)

    # The scheduler is down for three weeks, then restarts: the stored schedule survives, and the three
    # missed weekly runs become one.
    scheduler.shutdown()
    later = weekly_at + timedelta(weeks=3, hours=1)
    scheduler = build_scheduler(settings, clock=lambda: later)
    assert scheduler.get_job("weekly").next_run_time == weekly_at + timedelta(weeks=1)
    fired = run_due(scheduler, later)
    kinds = sorted(job_id for job_id, _ in fired)
    assert kinds.count("weekly") == 1
    weekly_runs = list_pipeline_runs(db, kind="weekly")
    assert len(weekly_runs) == 2
    assert scheduler.get_job("weekly").next_run_time == weekly_at + timedelta(weeks=4)
    if "monthly" in kinds:  # a month boundary fell in the gap; nothing was approved, so nothing trains
        monthly = list_pipeline_runs(db, kind="monthly")[0]
        assert monthly.outcome("build").detail == "skipped: no approved corrections since the last dataset"
        assert monthly.outcome("train").state == "skipped"
    scheduler.shutdown()


def test_a_missed_run_past_the_grace_is_skipped_not_run(demo):
    settings, db = demo
    settings = _settings(settings, **{"scheduler.misfire_grace_s": 3600, "scheduler.jobs": ["weekly"]})
    start = datetime.now(timezone.utc)
    scheduler = build_scheduler(settings, clock=lambda: start)
    due = scheduler.get_job("weekly").next_run_time
    assert run_due(scheduler, due + timedelta(hours=2)) == []
    assert list_pipeline_runs(db) == []
    assert scheduler.get_job("weekly").next_run_time == due + timedelta(weeks=1)
    scheduler.shutdown()


def test_changed_schedule_replaces_the_stored_job(settings):
    start = datetime(2026, 11, 18, 0, 1, tzinfo=timezone.utc)
    build_scheduler(settings, clock=lambda: start).shutdown()
    faster = _settings(settings, **{"scheduler.weekly_cron": "*/5 * * * *", "scheduler.retrain_threshold": 3})
    scheduler = build_scheduler(faster, clock=lambda: start)
    assert scheduler.get_job("weekly").next_run_time == start + timedelta(minutes=4)
    assert scheduler.get_job("threshold") is not None
    scheduler.shutdown()


def test_only_one_scheduler_leads_and_status_says_which(settings):
    status = [tuneloop_exe(), "scheduler", "status"]
    idle = subprocess.run(status, env=cli_env(settings), capture_output=True, text=True, timeout=60)
    assert idle.returncode == 1, idle.stderr
    assert "no scheduler running" in idle.stdout
    assert current_leader(settings) is None

    leadership = take_leadership(settings)
    try:
        assert leadership.held()
        assert current_leader(settings) == leadership.leader
        assert leadership.leader.pid == os.getpid()
        with pytest.raises(SchedulerBusy, match="another scheduler holds") as busy:
            take_leadership(settings)
        assert busy.value.leader == leadership.leader
        second = subprocess.run(
            [tuneloop_exe(), "scheduler"], env=cli_env(settings), capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 0, second.stderr
        assert "another scheduler holds" in second.stdout
        assert f"pid {os.getpid()}" in second.stdout  # it says who leads
        leading = subprocess.run(status, env=cli_env(settings), capture_output=True, text=True, timeout=60)
        assert leading.returncode == 0, leading.stderr
        assert leading.stdout.strip() == f"scheduler leading: {leadership.leader.describe()}"
    finally:
        leadership.release()
    assert current_leader(settings) is None
    take_leadership(settings).release()  # free again once the first one stopped


def test_jobs_live_in_the_store_and_an_older_scheduler_db_is_carried_over(settings, db):
    start = datetime(2026, 11, 18, 0, 1, tzinfo=timezone.utc)
    build_scheduler(settings, clock=lambda: start).shutdown()
    stored = dict(db.execute("SELECT id, next_run_time FROM scheduler_jobs").fetchall())
    assert set(stored) == {"weekly", "monthly", "retention"}
    assert not (settings.data_dir / "scheduler.db").exists()
    if settings.database.is_postgres:
        return
    # An older release kept the jobs in <data_dir>/scheduler.db: their next run times survive the upgrade.
    moved = start + timedelta(days=2, hours=5)
    scheduler = build_scheduler(settings, clock=lambda: start)
    scheduler.modify_job("weekly", next_run_time=moved)
    scheduler.shutdown()
    with sqlite3.connect(settings.data_dir / "scheduler.db") as old:
        old.execute("CREATE TABLE apscheduler_jobs (id TEXT PRIMARY KEY, next_run_time REAL, job_state BLOB)")
        for row in db.execute("SELECT id, next_run_time, job_state FROM scheduler_jobs").fetchall():
            old.execute("INSERT INTO apscheduler_jobs VALUES (?, ?, ?)", [*row[:2], base64.b64decode(row[2])])
    old.close()
    with write_transaction(db):
        db.execute("DELETE FROM scheduler_jobs")
    scheduler = build_scheduler(settings, clock=lambda: start)
    assert scheduler.get_job("weekly").next_run_time == moved
    assert {job.id for job in scheduler.get_jobs()} == set(stored)
    scheduler.shutdown()


# --- pipeline state: at most one open run per kind, whoever opens it ---


def test_the_store_refuses_a_second_open_run_of_a_kind(db):
    now = datetime(2026, 11, 18, tzinfo=timezone.utc)
    run, resumed = open_run(db, "weekly", now=now)
    assert not resumed
    with pytest.raises(integrity_errors()) as refused, write_transaction(db):
        db.execute(
            "INSERT INTO pipeline_runs (id, kind, state, started_at) VALUES ('pl_second', 'weekly', 'running', ?)",
            [utc_text(now)],
        )
    assert is_unique_violation(refused.value)
    assert open_run(db, "weekly", now=now) == (run, True)
    assert open_run(db, "monthly", now=now)[1] is False  # another kind is another run


def test_concurrent_openers_on_their_own_connections_share_one_run(settings, db):
    now = datetime(2026, 11, 18, tzinfo=timezone.utc)
    opened, errors = [], []

    def opener():
        own = open_store(settings, migrate=False)
        try:
            opened.append(open_run(own, "threshold", now=now))
        except Exception as exc:  # noqa: BLE001 — collected, asserted below
            errors.append(exc)
        finally:
            own.close()

    threads = [threading.Thread(target=opener) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len({run.id for run, _ in opened}) == 1
    assert sorted(resumed for _, resumed in opened) == [False] + [True] * 5
    assert len(list_pipeline_runs(db, kind="threshold")) == 1


@pytest.mark.engines("sqlite")
def test_the_migration_closes_all_but_the_newest_open_run_of_a_kind(tmp_path):
    older = sqlite_utils.Database(tmp_path / "old.db")
    MIGRATIONS.apply(older, stop_before="m015_one_open_pipeline_run_per_kind")
    for run_id, kind, started in (
        ("pl_a", "weekly", "2026-11-01T00:00:00.000Z"),
        ("pl_b", "weekly", "2026-11-08T00:00:00.000Z"),
        ("pl_c", "monthly", "2026-11-01T00:00:00.000Z"),
    ):
        older.execute(
            "INSERT INTO pipeline_runs (id, kind, state, started_at) VALUES (?, ?, 'running', ?)",
            [run_id, kind, started],
        )
    older.conn.commit()
    older.close()
    db = open_db(tmp_path / "old.db")
    states = dict(db.execute("SELECT id, state FROM pipeline_runs").fetchall())
    assert states == {"pl_a": "failed", "pl_b": "running", "pl_c": "running"}
    assert "newer run of this kind" in get_pipeline_run(db, "pl_a").error
    db.close()
