"""Opening the store, and the transaction helpers every writer uses: the one façade over both engines.

The store is SQLite (a file: the embedded default) or PostgreSQL (a ``postgresql://`` URL: the shared
store for several hosts, ``feedback/db_postgres.py``, the only module that imports psycopg). Application
code never asks which: it takes a ``db`` handle (``execute``, ``executemany``, ``query``), writes portable
SQL with ``?`` placeholders, and writes through :func:`write_transaction` and :func:`savepoint`. Why a thin
seam and not SQLAlchemy: docs/architecture.md ("One store, two engines").

``open_db(path_or_url)`` is the only way in. On SQLite it sets the connection pragmas (WAL, a busy
timeout, foreign keys, ``synchronous=NORMAL``, ``secure_delete``) and applies any pending named
migrations, so every process — gateway, scheduler, CLI, tests — sees the same
schema. The web layer migrates once at start-up and then opens cheap
per-request connections with ``migrate=False``.

Read-then-write work goes through :func:`write_transaction`, which starts with
``BEGIN IMMEDIATE``: with deferred transactions, 4 concurrent writers failed with
"database is locked" 5,422 times out of 8,000 (measured while designing this),
because a reader that later wants to write cannot wait its way out of a deadlock.

Waiting for the write lock happens in Python, not in SQLite: its busy handler
sleeps inside C, where a gevent worker cannot switch greenlets, so one request
waiting for another process's lock froze every stream of its worker for up to
the busy timeout (issue 14; ``bench/write_lock.py`` measured +958 ms at
inter-token p99). ``BEGIN IMMEDIATE`` is tried with no busy timeout and retried
after ``time.sleep`` — a yield to the other greenlets under gevent's patching, a
plain sleep elsewhere — on SQLite's own schedule, until the connection's busy
timeout. Every commit is remembered per database file (:func:`last_write_age`),
so ``/readyz`` can prove writability without taking the lock on every probe.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import sqlite3
import threading
import time
import weakref
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import sqlite_utils

from config.errors import StorageError
from config.settings import Settings, is_postgres_url, sqlite_url_path
from feedback.migrations import MIGRATIONS

SQLITE = "sqlite"
POSTGRESQL = "postgresql"


def dialect(db) -> str:
    """``"sqlite"`` or ``"postgresql"``: which engine the handle ``db`` talks to."""
    return getattr(db, "dialect", SQLITE)


def open_db(
    target: str | Path,
    *,
    busy_timeout_ms: int = 5000,
    migrate: bool = True,
    connect_timeout_s: float = 10.0,
):
    """Open the store at ``target`` and bring its schema up to date (unless ``migrate`` is false).

    ``target`` is a SQLite file (a path, or ``sqlite:///path``; created if needed) or a
    ``postgresql://`` URL. A PostgreSQL server that cannot be reached, or a role without the
    rights the store needs, raises :class:`ConfigError` naming ``database.url``.
    """
    if is_postgres_url(str(target)):
        from feedback import db_postgres  # only a PostgreSQL store loads psycopg

        return db_postgres.open_db(
            str(target), busy_timeout_ms=busy_timeout_ms, migrate=migrate, connect_timeout_s=connect_timeout_s
        )
    return _open_sqlite(Path(sqlite_url_path(str(target))), busy_timeout_ms=busy_timeout_ms, migrate=migrate)


def open_pool(target: str | Path, *, busy_timeout_ms: int = 5000, size: int = 10, connect_timeout_s: float = 10.0):
    """This process's pool of connections to the (already migrated) store at ``target``.

    Create it in the process that uses it (a gateway worker, after the fork): a PostgreSQL
    pool's connections and threads do not survive ``fork``. ``size`` bounds a PostgreSQL pool;
    a SQLite pool keeps up to 32 idle connections, opening more as needed.
    """
    if is_postgres_url(str(target)):
        from feedback import db_postgres

        return db_postgres.PgPool(
            str(target), size=size, busy_timeout_ms=busy_timeout_ms, connect_timeout_s=connect_timeout_s
        )
    return ConnectionPool(sqlite_url_path(str(target)), busy_timeout_ms=busy_timeout_ms)


def open_store(settings: Settings, *, migrate: bool = True):
    """The store ``settings`` name (``database.url``, else the SQLite file under ``paths``), opened and migrated."""
    return open_db(
        settings.store,
        busy_timeout_ms=settings.database.busy_timeout_ms,
        migrate=migrate,
        connect_timeout_s=settings.database.connect_timeout_s,
    )


def open_store_pool(settings: Settings):
    """This process's connection pool to the store ``settings`` name (see :func:`open_pool`)."""
    database = settings.database
    return open_pool(
        settings.store,
        busy_timeout_ms=database.busy_timeout_ms,
        size=database.pool_size,
        connect_timeout_s=database.connect_timeout_s,
    )


def _open_sqlite(path: Path, *, busy_timeout_ms: int, migrate: bool) -> sqlite_utils.Database:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=busy_timeout_ms / 1000, check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        raise StorageError(f"cannot open database {path}: {exc}") from exc
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = NORMAL")
    # Deleted and overwritten rows are zeroed in the file, not left in its free space (erasure must reach the
    # bytes: feedback/privacy/disk.py). Debian's SQLite has it on by default, others do not; the cost is in
    # docs/benchmarks.md ("Privacy").
    conn.execute("PRAGMA secure_delete = ON")
    db = sqlite_utils.Database(conn)
    _OPENED[db] = _Opened(str(path.resolve()), int(busy_timeout_ms))
    if migrate:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise StorageError(f"cannot switch {path} to WAL mode (got {mode})")
        _apply_migrations(db)
    return db


def _apply_migrations(db: sqlite_utils.Database) -> None:
    # Several processes (gunicorn workers, the scheduler) may open a fresh file
    # at once. Applying under one BEGIN IMMEDIATE makes exactly one of them run
    # each migration; the others wait, then find nothing pending.
    if not MIGRATIONS.pending(db):
        return
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        MIGRATIONS.apply(db)  # each migration becomes a savepoint inside our transaction
        db.conn.execute("COMMIT")
    except BaseException:
        db.conn.rollback()
        raise


@dataclass(frozen=True)
class _Opened:
    path: str  # the database file, resolved: the key of its last write
    busy_timeout_ms: int


# What open_db knows about each Database it made (sqlite3 connections take no weak reference).
_OPENED: "weakref.WeakKeyDictionary[sqlite_utils.Database, _Opened]" = weakref.WeakKeyDictionary()
_LAST_WRITE: dict[str, float] = {}  # database file → time.monotonic() of this process's last commit to it
# SQLite's own busy-handler schedule (sqliteDefaultBusyCallback), in seconds; the last step repeats.
_BUSY_STEPS_S = (0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.025, 0.025, 0.05, 0.05, 0.1)


def is_busy(exc: sqlite3.OperationalError) -> bool:
    """True when the error says another connection holds the lock (rather than the disk failing)."""
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def begin_immediate(db: sqlite_utils.Database, *, wait: bool = True) -> None:
    """``BEGIN IMMEDIATE``, waiting for another writer in sleeps that other greenlets can run in.

    Raises :class:`sqlite3.OperationalError` ("database is locked") when the lock is still
    taken after the connection's busy timeout, like SQLite's own wait would — or at once
    when ``wait`` is false.
    """
    conn = db.conn
    opened = _OPENED.get(db)
    timeout_ms = opened.busy_timeout_ms if opened else conn.execute("PRAGMA busy_timeout").fetchone()[0]
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        deadline = time.monotonic() + (timeout_ms / 1000 if wait else 0)
        for step in itertools.chain(_BUSY_STEPS_S, itertools.repeat(_BUSY_STEPS_S[-1])):
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                left = deadline - time.monotonic()
                if not is_busy(exc) or left <= 0:
                    raise
                time.sleep(min(step, left))
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(timeout_ms)}")


def database_path(db) -> str | None:
    """The resolved file of a SQLite database :func:`open_db` opened; None for one opened elsewhere or a server."""
    opened = _OPENED.get(db) if dialect(db) == SQLITE else None
    return opened.path if opened else None


def _store_key(db) -> str | None:
    # What a commit is remembered under: the SQLite file, or the PostgreSQL server and database.
    if dialect(db) == POSTGRESQL:
        return db.store_key
    opened = _OPENED.get(db)
    return opened.path if opened else None


def last_write_age(db) -> float | None:
    """Seconds since this process last committed a write to ``db``'s store; None if it has not."""
    key = _store_key(db)
    at = _LAST_WRITE.get(key) if key else None
    return None if at is None else time.monotonic() - at


def note_write(db) -> None:
    """Remember that a write to ``db``'s store just committed (proof that it takes writes)."""
    key = _store_key(db)
    if key:
        _LAST_WRITE[key] = time.monotonic()


def write_transaction(db, *, lock: str | None = "store", durable: bool = True):
    """A write transaction: committed on success, rolled back on any error; nested use becomes a savepoint.

    SQLite: ``BEGIN IMMEDIATE``, one writer at a time for the whole file (``lock`` and
    ``durable`` change nothing). PostgreSQL: ``BEGIN`` and a transaction-scoped advisory lock
    named ``lock`` ("store", the default, serialises writers as SQLite does; a narrower name
    such as ``f"vote:{message_id}"`` lets unrelated writers run side by side; None takes no lock,
    for a single atomic statement). ``durable=False`` commits without waiting for the WAL flush
    (counters a crash may lose). A full disk, a read-only store or a lock wait past the busy
    timeout surfaces as :class:`StorageError`, so callers answer 503 instead of a stack trace.
    """
    if dialect(db) == POSTGRESQL:
        return _postgres_write_transaction(db, lock=lock, durable=durable)
    return _sqlite_write_transaction(db)


@contextlib.contextmanager
def _postgres_write_transaction(db, *, lock: str | None, durable: bool):
    nested = db.in_transaction
    with db.write_transaction(lock=lock, durable=durable):
        yield db
    if not nested:
        note_write(db)


def column_names(db, table: str) -> list[str]:
    """The columns of ``table``, in order, on either engine ([] when there is no such table)."""
    if dialect(db) == POSTGRESQL:
        return [
            name
            for (name,) in db.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position",
                [table],
            )
        ]
    return [row[1] for row in db.execute("SELECT * FROM pragma_table_info(?)", [table])]


def savepoint(db):
    """``with savepoint(db):`` — statements whose failure the caller catches and survives.

    On PostgreSQL an error aborts the whole transaction unless it happened inside a savepoint;
    on SQLite the savepoint rolls back the failed statements' partial work the same way.
    Outside a transaction it is a transaction of its own.
    """
    if dialect(db) == POSTGRESQL:
        return db.savepoint()
    return _sqlite_savepoint(db)


@contextlib.contextmanager
def _sqlite_savepoint(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    name = f"tuneloop_{secrets.token_hex(8)}"
    conn = db.conn
    conn.execute(f"SAVEPOINT {name}")
    try:
        yield db
    except BaseException:
        if conn.in_transaction:  # a RAISE(ROLLBACK) may have ended everything already
            conn.execute(f"ROLLBACK TO {name}")
            conn.execute(f"RELEASE {name}")
        raise
    conn.execute(f"RELEASE {name}")


@contextlib.contextmanager
def _sqlite_write_transaction(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    conn = db.conn
    if conn.in_transaction:
        with db.atomic():
            yield db
        return
    try:
        begin_immediate(db)
    except sqlite3.OperationalError as exc:
        raise StorageError(f"database is not writable: {exc}") from exc
    try:
        yield db
    except sqlite3.OperationalError as exc:
        conn.rollback()
        if _is_storage_failure(exc):
            raise StorageError(f"could not write to the database: {exc}") from exc
        raise
    except BaseException:
        conn.rollback()
        raise
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        conn.rollback()
        raise StorageError(f"could not commit to the database: {exc}") from exc
    note_write(db)


def _is_storage_failure(exc: sqlite3.OperationalError) -> bool:
    # The disk or the file failed us (full, read-only, locked past the busy timeout,
    # I/O error) — answer 503 and say so. Anything else (a bad statement) is a bug
    # and must stay loud.
    text = str(exc).lower()
    return any(word in text for word in ("full", "readonly", "read-only", "locked", "disk i/o", "unable to open"))


def utc_now() -> str:
    """Current time as ISO-8601 UTC with milliseconds, e.g. ``2026-11-21T05:44:39.123Z``."""
    return utc_text(datetime.now(timezone.utc))


def utc_text(moment: datetime) -> str:
    """``moment`` as stored: ISO-8601 UTC with milliseconds and a ``Z`` (text order is time order)."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id(prefix: str) -> str:
    """An opaque, unguessable id such as ``msg_3kq9...``."""
    return f"{prefix}_{secrets.token_urlsafe(12)}"


class ConnectionPool:
    """Reusable connections to one (already migrated) database file.

    Why not open one per request: when the last connection to a WAL database
    closes, SQLite checkpoints the WAL back into the main file with an fsync, on
    that request's time. Measured in the gateway: 7.3 ms per close, 38% of a chat
    request, and a quarter of worker time under rating load (docs/benchmarks.md).
    Connections are handed out one per request (greenlet or thread) and returned
    afterwards; at least one stays open for the life of the process.
    """

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 5000, max_idle: int = 32):
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self.max_idle = max_idle
        self._idle: list[sqlite_utils.Database] = []
        self._lock = threading.Lock()

    def acquire(self) -> sqlite_utils.Database:
        """A connection for the caller's exclusive use until :meth:`release`."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return open_db(self.path, busy_timeout_ms=self.busy_timeout_ms, migrate=False)

    def release(self, db: sqlite_utils.Database) -> None:
        """Give a connection back (an open transaction is rolled back first)."""
        if db.conn.in_transaction:
            db.conn.rollback()
        with self._lock:
            if len(self._idle) < self.max_idle:
                self._idle.append(db)
                return
        db.close()

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite_utils.Database]:
        """``with pool.connection() as db:`` — acquire and always release."""
        db = self.acquire()
        try:
            yield db
        finally:
            self.release(db)

    def close_all(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for db in idle:
            db.close()
