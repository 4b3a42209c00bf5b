"""The scheduler: jobs from settings in a persistent store, a simulated clock through weeks (missed runs
coalesced), a restart keeping the schedule, and exactly one scheduler per data folder."""

from __future__ import annotations

import os
import subprocess
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from config.settings import load_settings
from feedback.db import open_db
from feedback.demo import seed_demo
from tests.plugins.model import tuneloop_exe
from trainer.pipeline import list_pipeline_runs
from trainer.scheduler import SchedulerBusy, build_scheduler, hold_lock, run_due

SEOUL = ZoneInfo("Asia/Seoul")


@pytest.fixture
def demo(tmp_path):
    # The loop's jobs; the retention job has its own tests (tests/test_privacy_retention.py).
    overrides = {"paths.data_dir": str(tmp_path / "var"), "scheduler.jobs": ["weekly", "monthly", "threshold"]}
    settings = load_settings(env={}, overrides=overrides)
    db = open_db(settings.db_path)
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
    settings = load_settings(
        env={},
        overrides={
            "paths.data_dir": str(settings.data_dir),
            "scheduler.misfire_grace_s": 3600,
            "scheduler.jobs": ["weekly"],
        },
    )
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
    faster = load_settings(
        env={},
        overrides={
            "paths.data_dir": str(settings.data_dir),
            "scheduler.weekly_cron": "*/5 * * * *",
            "scheduler.retrain_threshold": 3,
        },
    )
    scheduler = build_scheduler(faster, clock=lambda: start)
    assert scheduler.get_job("weekly").next_run_time == start + timedelta(minutes=4)
    assert scheduler.get_job("threshold") is not None
    scheduler.shutdown()


def test_only_one_scheduler_runs(settings):
    lock = hold_lock(settings)
    try:
        with pytest.raises(SchedulerBusy, match="another scheduler holds"):
            hold_lock(settings)
        env = dict(os.environ, TUNELOOP_PATHS__DATA_DIR=str(settings.data_dir))
        env.pop("TUNELOOP_CONFIG", None)
        second = subprocess.run([tuneloop_exe(), "scheduler"], env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 0, second.stderr
        assert "another scheduler holds" in second.stdout
    finally:
        lock.release()
    hold_lock(settings).release()  # free again once the first one stopped
