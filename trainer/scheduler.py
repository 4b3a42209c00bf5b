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

Persistence: the job store is :class:`StoreJobStore`, APScheduler's job store interface over the
store's ``scheduler_jobs`` table (migration ``m014_scheduler_state``), on either engine. APScheduler 3
ships a persistent store only for SQLAlchemy (and server databases); SQLAlchemy would be the largest
dependency we have for one table, so its table layout (id, next run time, pickled job state) is kept
here over ``feedback.db``. In the store, not in a file of its own (``<data_dir>/scheduler.db`` before):
on PostgreSQL every scheduler process, on whatever host, must see one schedule; on SQLite the same
table keeps one code path, and a job store write is one short statement a few times a week, so
waiting for the product's write lock costs nothing. A ``scheduler.db`` left by an older release is
read once into the empty table, so an upgrade keeps each job's next run time. Jobs are kept under
fixed ids and added only when missing or when their trigger changed in the settings, so a restart
keeps each job's stored next run time; a run missed while the scheduler was down is then run once
(``coalesce``), if it is at most ``misfire_grace_s`` late.

One leader: :func:`take_leadership` takes the leader lock, and only its holder schedules. On SQLite
(one host) it is an exclusive, non-blocking ``filelock`` on ``<data_dir>/scheduler.lock``. On
PostgreSQL it is a session advisory lock (``pg_try_advisory_lock`` on the key ``tuneloop:scheduler``,
derived like ``write_transaction``'s keys) held by a connection of its own, with TCP keepalives on
both ends: it is freed the moment the leader's session ends, a ``kill -9`` or a dead host included.
The leader checks every :data:`CHECK_EVERY_S` seconds that it still holds it (a restarted server or
a cut network drops the session) and, if not, stops and exits non-zero; its supervisor restarts it
as a standby. Whoever takes the lock records itself in ``scheduler_leader`` (host, pid, since, and on
PostgreSQL the server process of the lock's session), which :func:`current_leader` — ``tuneloop
scheduler status`` — reports while the lock is held. A second ``tuneloop scheduler`` says who leads
and exits 0, or with ``--wait`` stands by, trying again every :data:`STANDBY_POLL_S` seconds.

"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import pickle
import socket
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo

from apscheduler.job import Job
from apscheduler.jobstores.base import BaseJobStore, ConflictingIdError, JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from filelock import FileLock, Timeout

from config.errors import Conflict
from config.settings import Settings, redact_url
from feedback.db import open_db, open_store, utc_now, write_transaction
from feedback.knowledge.seed import ensure_seeded
from feedback.privacy import retention
from feedback.sql import integrity_errors
from trainer.pipeline import PipelineRun, retrain_due, run_pipeline

log = logging.getLogger("tuneloop.scheduler")

# The settings the jobs run with: one scheduler per process, set by build_scheduler.
_SETTINGS: dict[str, Settings] = {}


class SchedulerBusy(Conflict):
    """Another scheduler holds the leader lock (``leader`` says who, when the store knows)."""

    def __init__(self, message: str, *, leader: "Leader | None" = None):
        super().__init__(message, code="scheduler_running")
        self.leader = leader


class StoreJobStore(BaseJobStore):
    """APScheduler job store in the store's ``scheduler_jobs`` table (the layout of its SQLAlchemy store)."""

    def __init__(self, settings: Settings, pickle_protocol: int = pickle.HIGHEST_PROTOCOL):
        super().__init__()
        self.settings, self.pickle_protocol = settings, pickle_protocol
        self._lock = threading.RLock()
        self._db = None

    def start(self, scheduler, alias):
        super().start(scheduler, alias)
        self._db = open_store(self.settings)  # a connection of its own: APScheduler's thread uses it too
        if not self.settings.database.is_postgres:
            _import_legacy_jobs(self._db, self.settings.data_dir / LEGACY_JOB_FILE)

    def _rows(self, sql: str, params=()) -> list:
        with self._lock:
            if self._db is None:
                # APScheduler's thread may ask once more for due jobs while it shuts
                # down, after shutdown() closed the connection: there are none.
                return []
            return self._db.execute(sql, params).fetchall()

    def _write(self, sql: str, params=()) -> int:
        with self._lock, write_transaction(self._db, lock=None):
            return self._db.execute(sql, params).rowcount

    def _state(self, job: Job) -> str:
        return base64.b64encode(pickle.dumps(job.__getstate__(), self.pickle_protocol)).decode("ascii")

    def _jobs(self, where: str = "TRUE", params=()) -> list[Job]:
        jobs, broken = [], []
        for job_id, state in self._rows(
            f"SELECT id, job_state FROM scheduler_jobs WHERE {where} ORDER BY next_run_time NULLS LAST, id",
            params,
        ):
            try:
                jobs.append(self._reconstitute(state))
            except Exception:  # a job whose function moved is dropped, as APScheduler's stores do
                log.exception("unable to restore job %r; removing it", job_id)
                broken.append(job_id)
        for job_id in broken:
            self._write("DELETE FROM scheduler_jobs WHERE id = ?", [job_id])
        return jobs

    def _reconstitute(self, state: str) -> Job:
        job = Job.__new__(Job)
        job.__setstate__(pickle.loads(base64.b64decode(state)))
        job._scheduler, job._jobstore_alias = self._scheduler, self._alias
        return job

    def lookup_job(self, job_id):
        jobs = self._jobs("id = ?", [job_id])
        return jobs[0] if jobs else None

    def get_due_jobs(self, now):
        return self._jobs("next_run_time <= ?", [now.timestamp()])

    def get_next_run_time(self):
        rows = self._rows("SELECT MIN(next_run_time) FROM scheduler_jobs WHERE next_run_time IS NOT NULL")
        return datetime.fromtimestamp(rows[0][0], timezone.utc) if rows and rows[0][0] is not None else None

    def get_all_jobs(self):
        jobs = self._jobs()
        self._fix_paused_jobs_sorting(jobs)
        return jobs

    def add_job(self, job):
        try:
            self._write(
                "INSERT INTO scheduler_jobs (id, next_run_time, job_state) VALUES (?, ?, ?)",
                [job.id, _ts(job.next_run_time), self._state(job)],
            )
        except integrity_errors():
            raise ConflictingIdError(job.id) from None

    def update_job(self, job):
        updated = self._write(
            "UPDATE scheduler_jobs SET next_run_time = ?, job_state = ? WHERE id = ?",
            [_ts(job.next_run_time), self._state(job), job.id],
        )
        if updated == 0:
            raise JobLookupError(job.id)

    def remove_job(self, job_id):
        if self._write("DELETE FROM scheduler_jobs WHERE id = ?", [job_id]) == 0:
            raise JobLookupError(job_id)

    def remove_all_jobs(self):
        self._write("DELETE FROM scheduler_jobs")

    def shutdown(self):
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def _ts(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment else None


def _import_legacy_jobs(db, path: Path) -> None:
    """Copy the jobs of an older release's ``scheduler.db`` into the empty table (their next run times survive)."""
    if not path.is_file() or db.execute("SELECT COUNT(*) FROM scheduler_jobs").fetchone()[0]:
        return
    legacy = sqlite3.connect(str(path))
    try:
        rows = legacy.execute("SELECT id, next_run_time, job_state FROM apscheduler_jobs").fetchall()
    except sqlite3.Error:
        rows = []
    finally:
        legacy.close()
    with write_transaction(db):
        for job_id, next_run_time, state in rows:
            db.execute(
                "INSERT INTO scheduler_jobs (id, next_run_time, job_state) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                [job_id, next_run_time, base64.b64encode(state).decode("ascii")],
            )
    if rows:
        log.info("moved %d job(s) from %s into the store; the file is no longer used", len(rows), path)


# --- the leader lock ---


@dataclass(frozen=True)
class Leader:
    """The scheduler that holds the leader lock: its host, process id and since when (ISO-8601 UTC)."""

    host: str
    pid: int
    since: str

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}, since {self.since}"


class Leadership:
    """The leader lock, held by this process: :meth:`held` checks it, :meth:`release` gives it up."""

    def __init__(self, db, leader: Leader, lock: FileLock | None = None):
        self.db, self.leader, self._lock = db, leader, lock

    def held(self) -> bool:
        """True while this process still holds the lock (on PostgreSQL: its session lives and owns the lock)."""
        if self._lock is not None:
            return self._lock.is_locked
        try:
            (count,) = self.db.execute(
                f"SELECT COUNT(*) FROM pg_locks l WHERE {_HOLDS_LEADER_LOCK} AND l.pid = pg_backend_pid()",
                [LEADER_LOCK],
            ).fetchone()
        except Exception:  # noqa: BLE001 — any failure to ask means the session (and so the lock) may be gone
            log.exception("cannot check the scheduler leader lock")
            return False
        return count == 1

    def release(self) -> None:
        """Give the lock up (closing the PostgreSQL session frees its advisory lock)."""
        with contextlib.suppress(Exception):
            self.db.close()
        if self._lock is not None:
            self._lock.release()


LEADER_LOCK = "tuneloop:scheduler"  # the advisory lock's name, hashed like write_transaction's keys
CHECK_EVERY_S = 10.0  # how often the leader checks that it still holds the lock
STANDBY_POLL_S = 2.0  # how often a standby (--wait) tries to take it
LEGACY_JOB_FILE = "scheduler.db"
# On PostgreSQL: the advisory lock named by the parameter, granted in this database (pg_locks lists the
# whole cluster's locks; a bigint key shows as classid = high 32 bits, objid = low 32 bits, objsubid 1).
_HOLDS_LEADER_LOCK = (
    "l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended(?, 0)"
)
# The leader's own connection notices a dead network within about 45 s (libpq's TCP settings on top of
# feedback.db_postgres's keepalives after 30 s idle; tcp_user_timeout bounds a query sent into a dead network),
# and the server notices a dead leader host as fast (its keepalive settings, set for this session).
_LEADER_CONNECTION = {"keepalives_interval": "5", "keepalives_count": "3", "tcp_user_timeout": "30000"}
_LEADER_SESSION = ("tcp_keepalives_idle = 30", "tcp_keepalives_interval = 5", "tcp_keepalives_count = 3")


def lock_path(settings: Settings) -> Path:
    """The scheduler's lock file (SQLite stores; a PostgreSQL store's lock is in the server)."""
    return settings.data_dir / "scheduler.lock"


def lock_name(settings: Settings) -> str:
    """Where the leader lock is, for people: the lock file, or the advisory lock in the PostgreSQL store."""
    if settings.database.is_postgres:
        return f"advisory lock {LEADER_LOCK!r} in {redact_url(settings.database.url)}"
    return str(lock_path(settings))


def take_leadership(
    settings: Settings, *, wait: bool = False, stop: threading.Event | None = None
) -> Leadership | None:
    """Take the leader lock; :class:`SchedulerBusy` (naming the leader) if another scheduler holds it.

    With ``wait``, stand by instead, trying every :data:`STANDBY_POLL_S` seconds until the lock is
    taken (returned) or ``stop`` is set (None).
    """
    stop = stop or threading.Event()
    # On PostgreSQL one connection of its own stands by and, once it has the lock, holds it.
    session = _leader_session(settings) if settings.database.is_postgres else None
    try:
        while True:
            taken = _try_postgres(session) if session is not None else _try_file(settings)
            if taken is not None:
                session = None  # the Leadership owns it now
                return taken
            if not wait:
                leader = current_leader(settings)
                held_by = f" ({leader.describe()})" if leader else ""
                raise SchedulerBusy(f"another scheduler holds {lock_name(settings)}{held_by}", leader=leader)
            if stop.wait(STANDBY_POLL_S):
                return None
    finally:
        if session is not None:
            session.close()


def _try_file(settings: Settings) -> Leadership | None:
    path = lock_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), is_singleton=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    try:
        db = open_store(settings)
        return Leadership(db, _record_leader(db, backend_pid=None), lock)
    except BaseException:
        lock.release()
        raise


def _leader_session(settings: Settings):
    db = open_db(
        _with_params(settings.database.url, _LEADER_CONNECTION),
        busy_timeout_ms=settings.database.busy_timeout_ms,
        connect_timeout_s=settings.database.connect_timeout_s,
    )
    try:
        for setting in _LEADER_SESSION:
            db.execute(f"SET {setting}")
    except BaseException:
        db.close()
        raise
    return db


def _try_postgres(db) -> Leadership | None:
    (taken,) = db.execute("SELECT pg_try_advisory_lock(hashtextextended(?, 0))", [LEADER_LOCK]).fetchone()
    if not taken:
        return None
    (backend_pid,) = db.execute("SELECT pg_backend_pid()").fetchone()
    return Leadership(db, _record_leader(db, backend_pid=backend_pid))


def _with_params(url: str, params: dict[str, str]) -> str:
    """``url`` with libpq ``params`` added to its query (those it sets already win)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit(parts._replace(query=urlencode({**params, **query})))


def _record_leader(db, *, backend_pid: int | None) -> Leader:
    leader = Leader(socket.gethostname(), os.getpid(), utc_now())
    with write_transaction(db, lock=None):
        db.execute(
            "INSERT INTO scheduler_leader (id, host, pid, started_at, backend_pid) VALUES (1, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid,"
            " started_at = excluded.started_at, backend_pid = excluded.backend_pid",
            [leader.host, leader.pid, leader.since, backend_pid],
        )
    return leader


def current_leader(settings: Settings) -> Leader | None:
    """The scheduler holding the leader lock now, or None when no scheduler runs.

    On SQLite this tries the lock file for an instant: a scheduler starting in that instant finds it
    taken (and, without ``--wait``, exits saying so).
    """
    if not settings.database.is_postgres:
        lock = FileLock(str(lock_path(settings)), is_singleton=False)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            pass
        else:
            lock.release()
            return None
    db = open_store(settings)
    try:
        if settings.database.is_postgres:
            rows = db.execute(
                "SELECT s.host, s.pid, s.started_at, l.pid FROM pg_locks l"
                f" LEFT JOIN scheduler_leader s ON s.backend_pid = l.pid WHERE {_HOLDS_LEADER_LOCK}",
                [LEADER_LOCK],
            ).fetchall()
            if not rows:
                return None
            host, pid, since, backend_pid = rows[0]
            if host is None:  # the lock was taken an instant ago and its holder is not recorded yet
                return Leader("(not recorded yet)", 0, f"PostgreSQL backend {backend_pid}")
            return Leader(host, pid, since)
        row = db.execute("SELECT host, pid, started_at FROM scheduler_leader WHERE id = 1").fetchone()
        return Leader(*row) if row else Leader("(not recorded)", 0, "unknown")
    finally:
        db.close()


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
        jobstores={"default": StoreJobStore(settings)},
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
