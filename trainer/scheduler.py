"""The scheduler: APScheduler 3.x running the loop's jobs, one process at a time.

Jobs (``[scheduler]`` settings, cron expressions read in ``scheduler.timezone``):

- ``weekly`` (``weekly_cron``): the weekly pipeline — collect + report;
- ``monthly`` (``monthly_cron``): the retrain pipeline — build → train →
  evaluate → gate → deploy → report (skipped when nothing new was approved);
- ``threshold`` (every ``threshold_check_minutes``): the retrain pipeline, as
  soon as ``retrain_threshold`` approved corrections are not yet in a dataset;
- ``retention`` (``privacy.purge_cron``, while ``privacy.retention_days`` > 0): the
  privacy purge (``feedback/privacy/retention.py``), which deletes nothing — and
  says so in the log, every run — until an operator has seen a dry run.

Each job is a plain function over :func:`trainer.pipeline.run_pipeline`, which
``tuneloop pipeline run`` calls too.

Persistence: the job store is :class:`SqliteJobStore`, APScheduler's job store
interface over the standard library's ``sqlite3`` in ``<data_dir>/scheduler.db``.
APScheduler 3 ships a persistent store only for SQLAlchemy (and server
databases); SQLAlchemy would be the largest dependency we have for one table, so
the same table layout (id, next_run_time, pickled job state) is kept here in 80
lines. It is a separate file, not a table in ``tuneloop.db``: the pickled job
state is APScheduler's, not ours, and its writes never wait on the product's
``BEGIN IMMEDIATE`` transactions. Jobs are kept under fixed ids and added only
when missing or when their trigger changed in the settings, so a restart keeps
each job's stored next run time; a run missed while the scheduler was down is
then run once (``coalesce``), if it is at most ``misfire_grace_s`` late.

One scheduler at a time: :func:`hold_lock` takes an exclusive, non-blocking
``filelock`` on ``<data_dir>/scheduler.lock``; a second ``tuneloop scheduler``
says who holds it and exits 0 (or, with ``--wait``, stands by until it frees).

:func:`run_due` fires due jobs for a given moment with APScheduler's own rules
(coalesce, misfire grace, next fire time from the trigger); tests drive
simulated weeks with it, since APScheduler's loop reads the wall clock.
"""

from __future__ import annotations

import logging
import pickle
import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable
from zoneinfo import ZoneInfo

from apscheduler.job import Job
from apscheduler.jobstores.base import BaseJobStore, ConflictingIdError, JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from filelock import FileLock, Timeout

from config.errors import Conflict
from config.settings import Settings
from feedback.db import open_store
from feedback.knowledge.seed import ensure_seeded
from feedback.privacy import retention
from trainer.pipeline import PipelineRun, retrain_due, run_pipeline

log = logging.getLogger("tuneloop.scheduler")

# The settings the jobs run with: one scheduler per process, set by build_scheduler.
_SETTINGS: dict[str, Settings] = {}


class SchedulerBusy(Conflict):
    """Another scheduler holds the lock."""


class SqliteJobStore(BaseJobStore):
    """APScheduler job store in a SQLite file (the layout of its SQLAlchemy store, on ``sqlite3``)."""

    def __init__(self, path: Path | str, pickle_protocol: int = pickle.HIGHEST_PROTOCOL):
        super().__init__()
        self.path, self.pickle_protocol = str(path), pickle_protocol
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None

    def start(self, scheduler, alias):
        super().start(scheduler, alias)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS apscheduler_jobs (id TEXT PRIMARY KEY, "
            "next_run_time REAL, job_state BLOB NOT NULL)"
        )
        self._conn.execute("CREATE INDEX IF NOT EXISTS apscheduler_jobs_next ON apscheduler_jobs(next_run_time)")

    def _sql(self, sql: str, params=()) -> list:
        with self._lock:
            if self._conn is None:
                # APScheduler's thread may ask once more for due jobs while it shuts
                # down, after shutdown() closed the connection: there are none.
                return []
            return self._conn.execute(sql, params).fetchall()

    def _state(self, job: Job) -> bytes:
        return pickle.dumps(job.__getstate__(), self.pickle_protocol)

    def _jobs(self, where: str = "1", params=()) -> list[Job]:
        jobs, broken = [], []
        for job_id, state in self._sql(
            f"SELECT id, job_state FROM apscheduler_jobs WHERE {where} ORDER BY next_run_time IS NULL, next_run_time",
            params,
        ):
            try:
                jobs.append(self._reconstitute(state))
            except Exception:  # a job whose function moved is dropped, as APScheduler's stores do
                log.exception("unable to restore job %r; removing it", job_id)
                broken.append(job_id)
        for job_id in broken:
            self._sql("DELETE FROM apscheduler_jobs WHERE id = ?", [job_id])
        return jobs

    def _reconstitute(self, state: bytes) -> Job:
        job = Job.__new__(Job)
        job.__setstate__(pickle.loads(state))
        job._scheduler, job._jobstore_alias = self._scheduler, self._alias
        return job

    def lookup_job(self, job_id):
        jobs = self._jobs("id = ?", [job_id])
        return jobs[0] if jobs else None

    def get_due_jobs(self, now):
        return self._jobs("next_run_time <= ?", [now.timestamp()])

    def get_next_run_time(self):
        rows = self._sql("SELECT MIN(next_run_time) FROM apscheduler_jobs WHERE next_run_time IS NOT NULL")
        return datetime.fromtimestamp(rows[0][0], timezone.utc) if rows and rows[0][0] is not None else None

    def get_all_jobs(self):
        jobs = self._jobs()
        self._fix_paused_jobs_sorting(jobs)
        return jobs

    def add_job(self, job):
        try:
            self._sql(
                "INSERT INTO apscheduler_jobs (id, next_run_time, job_state) VALUES (?, ?, ?)",
                [job.id, _ts(job.next_run_time), self._state(job)],
            )
        except sqlite3.IntegrityError:
            raise ConflictingIdError(job.id) from None

    def update_job(self, job):
        with self._lock:
            cursor = self._conn.execute(
                "UPDATE apscheduler_jobs SET next_run_time = ?, job_state = ? WHERE id = ?",
                [_ts(job.next_run_time), self._state(job), job.id],
            )
            if cursor.rowcount == 0:
                raise JobLookupError(job.id)

    def remove_job(self, job_id):
        with self._lock:
            if self._conn.execute("DELETE FROM apscheduler_jobs WHERE id = ?", [job_id]).rowcount == 0:
                raise JobLookupError(job_id)

    def remove_all_jobs(self):
        self._sql("DELETE FROM apscheduler_jobs")

    def shutdown(self):
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _ts(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment else None


def lock_path(settings: Settings) -> Path:
    """The scheduler's lock file."""
    return settings.data_dir / "scheduler.lock"


def hold_lock(settings: Settings, *, wait: bool = False) -> FileLock:
    """Take the one-scheduler lock (:class:`SchedulerBusy` if another process holds it and ``wait`` is off)."""
    path = lock_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), is_singleton=False)
    try:
        lock.acquire(timeout=-1 if wait else 0)
    except Timeout:
        raise SchedulerBusy(f"another scheduler holds {path}", code="scheduler_running") from None
    return lock


# --- jobs: plain functions; each opens its own database connection ---


def _run(kind: str, now: datetime | None) -> PipelineRun:
    settings = _SETTINGS["settings"]
    db = open_store(settings)
    try:
        # A scheduler started alone on a fresh data folder seeds the knowledge base, as any process working on
        # the database does: the retrain's dataset and evaluation read it.
        ensure_seeded(db, settings.knowledge)
        clock = (lambda: now) if now else None
        run = run_pipeline(db, settings, kind, **({"clock": clock} if clock else {}))
        log.info("%s pipeline %s: %s%s", kind, run.id, run.state, f" ({run.error})" if run.error else "")
        return run
    finally:
        db.close()


def weekly_job(now: datetime | None = None) -> PipelineRun:
    """Collect the worst-answered questions and write the weekly report."""
    return _run("weekly", now)


def monthly_job(now: datetime | None = None) -> PipelineRun:
    """Retrain: build → train → evaluate → gate → deploy → report."""
    return _run("monthly", now)


def threshold_job(now: datetime | None = None) -> PipelineRun | None:
    """Retrain when ``scheduler.retrain_threshold`` approved corrections wait for a dataset (else nothing)."""
    settings = _SETTINGS["settings"]
    db = open_store(settings)
    try:
        due = retrain_due(db, settings)
    finally:
        db.close()
    return _run("threshold", now) if due else None


def retention_job(now: datetime | None = None) -> retention.Purge | None:
    """Delete what is older than ``privacy.retention_days`` (None, and a loud log line, while not allowed)."""
    settings = _SETTINGS["settings"]
    db = open_store(settings)
    try:
        state = retention.status(db, settings)
        if not state.allowed:
            preview = retention.purge(db, settings, actor="retention job", now=now, dry_run=True)
            log.warning(
                "retention purge deleted nothing: %s. It would delete %s. Run `tuneloop privacy purge --dry-run` "
                "to see the list and allow it.",
                state.reason,
                ", ".join(f"{n} {k}" for k, n in preview.counts.items() if n) or "nothing yet",
            )
            return None
        result = retention.purge(db, settings, actor="retention job", now=now)
        log.info("retention purge %s: %s", result.id, ", ".join(f"{n} {k}" for k, n in result.counts.items() if n))
        return result
    finally:
        db.close()


JOB_FUNCTIONS = {"weekly": weekly_job, "monthly": monthly_job, "threshold": threshold_job, "retention": retention_job}


def triggers(settings: Settings) -> dict:
    """The trigger of each enabled job (the threshold job only when ``retrain_threshold`` > 0)."""
    s = settings.scheduler
    tz = ZoneInfo(s.timezone)
    found = {}
    if "weekly" in s.jobs:
        found["weekly"] = CronTrigger.from_crontab(s.weekly_cron, timezone=tz)
    if "monthly" in s.jobs:
        found["monthly"] = CronTrigger.from_crontab(s.monthly_cron, timezone=tz)
    if "threshold" in s.jobs and s.retrain_threshold > 0:
        found["threshold"] = IntervalTrigger(minutes=s.threshold_check_minutes, timezone=tz)
    if "retention" in s.jobs and settings.privacy.retention_days > 0:
        found["retention"] = CronTrigger.from_crontab(settings.privacy.purge_cron, timezone=tz)
    return found


def build_scheduler(settings: Settings, *, clock: Callable[[], datetime] | None = None) -> BackgroundScheduler:
    """A started, **paused** scheduler with the jobs from ``settings`` in its persistent store.

    Call ``resume()`` to let APScheduler run them in its thread (``tuneloop scheduler`` does),
    or :func:`run_due` to fire them for a given moment. A job already stored
    keeps its next run time unless its trigger changed; jobs no longer enabled
    are removed. ``clock`` gives the first run time of a new job (default: now).
    """
    _SETTINGS["settings"] = settings
    s = settings.scheduler
    scheduler = BackgroundScheduler(
        jobstores={"default": SqliteJobStore(settings.data_dir / "scheduler.db")},
        executors={"default": {"type": "threadpool", "max_workers": 1}},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": s.misfire_grace_s or None},
        timezone=ZoneInfo(s.timezone),
    )
    scheduler.start(paused=True)
    now = (clock or (lambda: datetime.now(timezone.utc)))()
    wanted = triggers(settings)
    for job in scheduler.get_jobs():
        if job.id not in wanted:
            scheduler.remove_job(job.id)
    for job_id, trigger in wanted.items():
        stored = scheduler.get_job(job_id)
        if stored is not None and str(stored.trigger) == str(trigger):
            continue
        scheduler.add_job(
            JOB_FUNCTIONS[job_id],
            trigger,
            id=job_id,
            name=f"{job_id} pipeline" if job_id != "retention" else "retention purge",
            replace_existing=True,
            next_run_time=trigger.get_next_fire_time(None, now.astimezone(trigger.timezone)),
        )
    return scheduler


def run_due(scheduler: BaseScheduler, now: datetime) -> list[tuple[str, object]]:
    """Fire every job due at ``now`` once (coalesced; skipped past the misfire grace) and store its next run.

    Returns (job id, what the job returned) for each job run, in order.
    """
    fired = []
    for job in scheduler.get_jobs():
        if job.next_run_time is None or job.next_run_time > now:
            continue
        last, upcoming = job.next_run_time, job.next_run_time
        while upcoming is not None and upcoming <= now:
            last = upcoming
            upcoming = job.trigger.get_next_fire_time(upcoming, upcoming + timedelta(microseconds=1))
        grace = job.misfire_grace_time
        if grace is None or (now - last).total_seconds() <= grace:
            fired.append((job.id, job.func(*job.args, **job.kwargs, now=now)))
        else:
            log.warning("job %s missed its run at %s by more than %s s; skipped", job.id, last, grace)
        scheduler.modify_job(job.id, next_run_time=upcoming)
    return fired
