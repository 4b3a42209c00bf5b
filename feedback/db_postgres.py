"""The store on PostgreSQL: the handle, the pool and the transactions behind ``feedback/db.py``'s façade.

The only module that imports psycopg, and only when ``database.url`` names a PostgreSQL server, so the
embedded SQLite platform never loads it. What it makes PostgreSQL behave like, so one set of SQL serves both:

- SQL keeps SQLite's ``?`` and ``:name`` placeholders; :func:`translate` rewrites them to psycopg's ``%s`` /
  ``%(name)s`` (and doubles a literal ``%``) once per distinct statement.
- ``db.execute`` returns a cursor of tuples, ``db.query`` yields dicts, as sqlite-utils does. A Python ``bool``
  is sent as 0/1 (the schema keeps SQLite's integer flags) and a ``numeric`` result (``SUM`` of integers)
  comes back as ``int`` — or ``float`` when it has a fraction — never as ``Decimal``.
- Connections are in autocommit: a statement outside a transaction commits by itself, as in sqlite-utils.
  :meth:`PgDatabase.write_transaction` is ``BEGIN`` plus a transaction-scoped advisory lock: SQLite's
  ``BEGIN IMMEDIATE`` has no PostgreSQL equivalent, and READ COMMITTED without it lost 106–111 of 1,600 turns
  to unique violations with 4 writers, SERIALIZABLE failed 376 (docs/architecture.md).
- The server or the disk failing (SQLSTATE classes 08, 53, 57P0x, 58; lock and statement timeouts; a
  read-only server; serialization failures and deadlocks; no pooled connection in time) raises
  :class:`StorageError` (503), like a full or locked SQLite file. Constraint violations stay psycopg's
  ``IntegrityError`` subclasses (``feedback/sql.py`` names them for callers).
- Under gevent, psycopg must be imported after the monkey-patching, or it picks its C wait function, which
  blocks the whole worker while a query runs (measured: 4 × 0.3 s queries took 1.21 s instead of 0.3 s).
  :func:`check_gevent_wait` refuses to start a pool in that state.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import threading
import time
from typing import Any, Iterator, Sequence

import psycopg
from psycopg import waiting
from psycopg.adapt import Dumper, Loader
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from config.errors import ConfigError, StorageError
from config.settings import redact_url
from feedback import migrations_postgres

log = logging.getLogger(__name__)

DIALECT = "postgresql"
APPLICATION_NAME = "tuneloop"
IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000  # a worker stuck inside a transaction must not hold its locks for ever
CHECK_IDLE_S = 5.0  # a pooled connection idle longer than this is checked before it is handed out

# SQLSTATEs that mean the store, not the statement, failed (classes by prefix).
_STORAGE_SQLSTATES = (
    "08",  # connection exception
    "53",  # insufficient resources: disk full, out of memory, too many connections
    "57P0",  # operator intervention: admin/crash shutdown, cannot connect now, database dropped
    "58",  # system error: I/O
    "55P03",  # lock not available: lock_timeout (a writer waited past database.busy_timeout_ms)
    "57014",  # query cancelled: statement_timeout
    "25006",  # read-only SQL transaction: a standby, or default_transaction_read_only
    "40001",  # serialization failure
    "40P01",  # deadlock detected
)


def storage_failure(exc: BaseException) -> StorageError | None:
    """The :class:`StorageError` that ``exc`` (a psycopg error) amounts to; None when it is the statement's fault."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, PoolTimeout):
        return StorageError("no database connection became free in time (database.pool_size, busy_timeout_ms)")
    if not isinstance(exc, psycopg.Error):
        return None
    state = exc.sqlstate or ""
    lost = not state and isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError))
    if not lost and not state.startswith(_STORAGE_SQLSTATES):
        return None
    # The client sees a 503 with the SQLSTATE; the server's own words (which may name hosts) go to the log.
    first_line = next(iter(str(exc).strip().splitlines()), type(exc).__name__)
    log.warning("database failure %s: %s", state or "connection lost", first_line)
    reason = _REASONS.get(state[:2], _REASONS.get(state, "the database failed"))
    return StorageError(f"the database is unavailable: {reason} (SQLSTATE {state or 'none: connection lost'})")


@contextlib.contextmanager
def storage_errors() -> Iterator[None]:
    """Re-raise a psycopg error that means the store failed as :class:`StorageError`; others unchanged."""
    try:
        yield
    except (psycopg.Error, PoolTimeout) as exc:
        failure = storage_failure(exc)
        if failure is None:
            raise
        raise failure from exc


_REASONS = {
    "08": "the connection failed",
    "53": "the server is out of disk, memory or connections",
    "57P01": "the server is shutting down",
    "57P02": "the server is restarting",
    "57P03": "the server does not accept connections now",
    "58": "the server's disk failed",
    "55P03": "a lock was held longer than database.busy_timeout_ms",
    "57014": "the statement took too long",
    "25006": "the server is read-only",
    "40001": "a concurrent write conflicted",
    "40P01": "a deadlock was detected",
}


@functools.lru_cache(maxsize=4096)
def translate(sql: str) -> str:
    """SQLite placeholders → psycopg's: ``?`` → ``%s``, ``:name`` → ``%(name)s``, ``%`` → ``%%``.

    Quoted text ('…', "…") and comments keep their ``?`` and ``:``; a ``%`` is doubled everywhere,
    because psycopg reads ``%`` in the whole statement once parameters are passed. ``::type`` casts stay.
    """
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"":
            end = i + 1
            while end < n:
                if sql[end] == ch:
                    if end + 1 < n and sql[end + 1] == ch:  # a doubled quote inside the literal
                        end += 2
                        continue
                    break
                end += 1
            out.append(sql[i : end + 1].replace("%", "%%"))
            i = end + 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        elif ch == "?":
            out.append("%s")
            i += 1
        elif ch == "%":
            out.append("%%")
            i += 1
        elif ch == ":" and sql.startswith("::", i):
            out.append("::")
            i += 2
        elif ch == ":" and i + 1 < n and (sql[i + 1].isalpha() or sql[i + 1] == "_"):
            end = i + 1
            while end < n and (sql[end].isalnum() or sql[end] == "_"):
                end += 1
            out.append(f"%({sql[i + 1 : end]})s")
            i = end
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _params(params: Any) -> Sequence | dict:
    # Always a sequence or mapping, so psycopg reads placeholders (and the doubled %) the same way every time.
    if params is None:
        return ()
    if isinstance(params, dict):
        return params
    return tuple(params)


class _BoolAsInt(Dumper):
    """Python booleans go in as 0/1: the schema keeps SQLite's integer flags (``CHECK (x IN (0, 1))``)."""

    oid = psycopg.adapters.types["int8"].oid

    def dump(self, obj: bool) -> bytes:
        return b"1" if obj else b"0"


class _NumericAsNumber(Loader):
    """``numeric`` (what ``SUM`` of integers gives) as ``int``, or ``float`` with a fraction — never ``Decimal``."""

    def load(self, data) -> int | float:
        text = bytes(data)
        try:
            return int(text)
        except ValueError:
            return float(text)


class StoreConnection(psycopg.Connection):
    """psycopg's connection, plus the two ``sqlite3.Connection`` members application code reaches via ``db.conn``.

    ``db.conn.in_transaction`` and ``db.conn.executemany(sql, rows)`` (``?`` placeholders, translated) work
    as on SQLite; anything else on ``db.conn`` is psycopg's own, so portable code calls ``db.execute`` etc.
    """

    @property
    def in_transaction(self) -> bool:
        return self.info.transaction_status != TransactionStatus.IDLE

    def executemany(self, sql: str, seq_of_params) -> psycopg.Cursor:
        cursor = self.cursor()
        with storage_errors():
            cursor.executemany(translate(sql), [_params(p) for p in seq_of_params])
        return cursor


def _configure(conn: psycopg.Connection) -> None:
    conn.adapters.register_dumper(bool, _BoolAsInt)
    conn.adapters.register_loader("numeric", _NumericAsNumber)


def connect_kwargs(*, busy_timeout_ms: int, connect_timeout_s: float) -> dict:
    """The connection options every tuneloop connection to PostgreSQL uses."""
    options = " ".join(
        (
            f"-c lock_timeout={int(busy_timeout_ms)}",
            f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT_MS}",
            "-c TimeZone=UTC",
        )
    )
    return {
        "autocommit": True,
        "connect_timeout": max(1, round(connect_timeout_s)),
        "application_name": APPLICATION_NAME,
        "options": options,
        "keepalives": 1,
        "keepalives_idle": 30,
    }


def _connect_failure(url: str, exc: BaseException) -> ConfigError:
    # libpq's first line says what went wrong (never the password): "connection to server … failed: …".
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    reason = lines[0].removeprefix("connection failed: ") if lines else type(exc).__name__
    return ConfigError(f"database.url: cannot connect to {redact_url(url)}: {reason}", field="database.url")


class PgDatabase:
    """One PostgreSQL connection with the interface application code uses on a sqlite-utils ``Database``."""

    dialect = DIALECT

    def __init__(self, conn: StoreConnection, store_key: str):
        self.conn = conn
        self.store_key = store_key  # the redacted URL: where this process's last commit is remembered

    def execute(self, sql: str, params: Any = None) -> psycopg.Cursor:
        """Run one statement written with ``?`` / ``:name`` placeholders; a DB-API cursor of tuples."""
        cursor = self.conn.cursor()
        with storage_errors():
            cursor.execute(translate(sql), _params(params))
        return cursor

    def executemany(self, sql: str, seq_of_params) -> psycopg.Cursor:
        """Run one statement once per parameter set."""
        return self.conn.executemany(sql, seq_of_params)

    def query(self, sql: str, params: Any = None) -> Iterator[dict]:
        """The rows of a query as dicts, as sqlite-utils' ``Database.query`` yields them."""
        cursor = self.conn.cursor(row_factory=dict_row)
        with storage_errors():
            cursor.execute(translate(sql), _params(params))
        yield from cursor

    def table_names(self) -> list[str]:
        """The store's tables, by name."""
        return [
            row[0]
            for row in self.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name"
            )
        ]

    @property
    def in_transaction(self) -> bool:
        """True while a transaction is open on this connection."""
        return self.conn.in_transaction

    @contextlib.contextmanager
    def write_transaction(self, *, lock: str | None = "store", durable: bool = True) -> Iterator["PgDatabase"]:
        """``BEGIN`` + ``pg_advisory_xact_lock(lock)``; nested: a savepoint (see ``feedback.db.write_transaction``)."""
        nested = self.in_transaction
        with storage_errors(), self.conn.transaction():
            if lock:
                # The lock is the transaction's: released by COMMIT or ROLLBACK, never left behind.
                self.conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"tuneloop:{lock}"])
            if not durable and not nested:
                self.conn.execute("SET LOCAL synchronous_commit = off")
            yield self

    @contextlib.contextmanager
    def savepoint(self) -> Iterator["PgDatabase"]:
        """A savepoint (or, outside a transaction, a transaction): a failure inside leaves the rest usable."""
        with storage_errors(), self.conn.transaction():
            yield self

    def writable(self) -> dict:
        """``{"ok": True, "proof": …}`` or ``{"ok": False, "error": …}``: can this store take writes now?"""
        try:
            row = self.execute(
                "SELECT pg_is_in_recovery(), current_setting('transaction_read_only'),"
                " has_table_privilege('messages', 'INSERT')"
            ).fetchone()
        except StorageError as exc:
            return {"ok": False, "error": exc.message}
        in_recovery, read_only, may_insert = row
        if in_recovery:
            return {"ok": False, "error": "the PostgreSQL server is a standby (read-only)"}
        if read_only == "on":
            return {"ok": False, "error": "the PostgreSQL session is read-only (default_transaction_read_only)"}
        if not may_insert:
            return {"ok": False, "error": "the database role may not insert into the store's tables"}
        return {"ok": True, "proof": "the PostgreSQL server accepts writes"}

    def close(self) -> None:
        """Close the connection (a pooled one goes back with ``pool.release`` instead)."""
        self.conn.close()


def open_db(url: str, *, busy_timeout_ms: int, migrate: bool, connect_timeout_s: float) -> PgDatabase:
    """One connection of its own to the PostgreSQL store at ``url``, migrated unless ``migrate`` is false."""
    try:
        conn = StoreConnection.connect(
            url, **connect_kwargs(busy_timeout_ms=busy_timeout_ms, connect_timeout_s=connect_timeout_s)
        )
    except psycopg.Error as exc:
        raise _connect_failure(url, exc) from None
    _configure(conn)
    db = PgDatabase(conn, redact_url(url))
    try:
        if migrate:  # then also prove the role may use what it migrated: start-up fails here, not on a request
            migrations_postgres.apply_migrations(db)
            migrations_postgres.check_rights(db, url)
    except BaseException:
        conn.close()
        raise
    return db


def check_gevent_wait() -> None:
    """Refuse to run when gevent patched this process but psycopg was imported first (it would block the worker)."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey and monkey.is_module_patched("select") and waiting.wait is getattr(waiting, "wait_c", None):
        raise RuntimeError(
            "psycopg was imported before gevent's monkey-patching: its queries would block every greenlet of this"
            " worker. Import it only through feedback.db_postgres, after the worker has patched."
        )


class PgPool:
    """A gateway worker's pool of PostgreSQL connections (``psycopg_pool``), with the SQLite pool's interface.

    Made after the fork, in the worker. ``size`` bounds it: hosts × workers × size must stay under
    the server's ``max_connections``. A connection idle for over :data:`CHECK_IDLE_S` seconds is
    checked before it is handed out, so a restarted server costs no request a 503.
    """

    dialect = DIALECT

    def __init__(self, url: str, *, size: int, busy_timeout_ms: int, connect_timeout_s: float):
        check_gevent_wait()
        self.store_key = redact_url(url)
        self._last_used: dict[int, float] = {}
        self._out: set[int] = set()  # ids of the connections handed out and not yet back
        self._lock = threading.Lock()
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=size,
            timeout=max(busy_timeout_ms / 1000, 0.1),
            max_idle=300,
            max_lifetime=3600,
            kwargs=connect_kwargs(busy_timeout_ms=busy_timeout_ms, connect_timeout_s=connect_timeout_s),
            configure=_configure,
            connection_class=StoreConnection,
            check=self._check_if_idle,
            name=APPLICATION_NAME,
            open=False,
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout_s)
        except PoolTimeout as exc:
            self._pool.close()
            raise ConfigError(
                f"database.url: cannot connect to {self.store_key} within {connect_timeout_s:g} s", field="database.url"
            ) from exc

    def _check_if_idle(self, conn: psycopg.Connection) -> None:
        with self._lock:
            last = self._last_used.get(id(conn))
        if last is None or time.monotonic() - last > CHECK_IDLE_S:
            ConnectionPool.check_connection(conn)

    def acquire(self) -> PgDatabase:
        """A connection for the caller's exclusive use until :meth:`release`."""
        with storage_errors():
            conn = self._pool.getconn()
        with self._lock:
            self._out.add(id(conn))
        return PgDatabase(conn, self.store_key)

    def release(self, db: PgDatabase) -> None:
        """Give a connection back (an open transaction is rolled back first); one ``open_db`` made is closed."""
        conn = db.conn
        with self._lock:
            ours = id(conn) in self._out
            self._out.discard(id(conn))
        if not ours:  # the start-up connection (server/app.py): the pool keeps only its own
            conn.close()
            return
        if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
        with self._lock:
            self._last_used[id(conn)] = time.monotonic()
        self._pool.putconn(conn)

    @contextlib.contextmanager
    def connection(self) -> Iterator[PgDatabase]:
        """``with pool.connection() as db:`` — acquire and always release."""
        db = self.acquire()
        try:
            yield db
        finally:
            self.release(db)

    def close_all(self) -> None:
        """Close every connection (the process is ending)."""
        self._pool.close()
