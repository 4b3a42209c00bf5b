"""Is the store writable? Proved from this process's own recent writes, so a probe seldom takes the lock.

``/readyz`` used to run ``BEGIN IMMEDIATE`` + ``ROLLBACK`` on every probe: one write
lock per probe per worker, queued behind every real writer, and while another
process held the lock each probe waited up to the busy timeout and then reported
the database unwritable (issue 14). Now:

- every probe checks what needs no lock: the database file and its folder can be
  written (SQLite puts the WAL and the shared-memory file next to it) and the
  disk has room;
- a commit this process made within :data:`PROOF_S` seconds proves the rest —
  a gateway taking traffic never probes the lock at all;
- only without such a proof does the probe take the lock, without waiting, and
  its success counts as a proof for the next :data:`PROOF_S` seconds. If another
  writer holds the lock, that writer shows the database takes writes: the check
  passes and says so, rather than pulling a gateway out of a load balancer
  because the scheduler is writing.

On PostgreSQL a recent commit is proof too; without one the probe asks the server whether it takes
writes (``PgDatabase.writable``: not a standby, not read-only, the role may insert).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import sqlite_utils

from feedback.db import POSTGRESQL, begin_immediate, database_path, dialect, is_busy, last_write_age, note_write

PROOF_S = 30.0  # how long a commit (or a successful lock probe) counts as proof of writability
MIN_FREE_BYTES = 16 * 1024 * 1024  # below this the next write may fail with "database or disk is full"


def database_check(db: sqlite_utils.Database) -> dict:
    """``{"ok": True, "proof": …}`` or ``{"ok": False, "error": …}`` for the database behind ``db``."""
    if dialect(db) == POSTGRESQL:
        return _server_check(db)
    path = database_path(db)
    if path is not None:
        problem = _file_problem(Path(path))
        if problem:
            return {"ok": False, "error": problem}
    age = last_write_age(db)
    if age is not None and age < PROOF_S:
        return {"ok": True, "proof": f"a write committed {age:.1f} s ago"}
    try:
        begin_immediate(db, wait=False)
    except sqlite3.OperationalError as exc:
        if is_busy(exc):
            return {"ok": True, "proof": "another writer holds the write lock"}
        return {"ok": False, "error": str(exc)}
    db.conn.execute("ROLLBACK")
    note_write(db)
    return {"ok": True, "proof": "took the write lock"}


def _server_check(db) -> dict:
    # PostgreSQL: no file to look at and no lock to probe. A recent commit is proof; otherwise ask the server
    # whether it takes writes (not a standby, not read-only, the role may insert) — one cheap query.
    age = last_write_age(db)
    if age is not None and age < PROOF_S:
        return {"ok": True, "proof": f"a write committed {age:.1f} s ago"}
    return db.writable()


def _file_problem(path: Path) -> str | None:
    if path.exists() and not os.access(path, os.W_OK):
        return f"{path} is read-only"
    if not os.access(path.parent, os.W_OK):
        return f"{path.parent} is read-only (SQLite writes its journal files there)"
    free = shutil.disk_usage(path.parent).free
    if free < MIN_FREE_BYTES:
        return f"only {free // (1024 * 1024)} MiB free on the disk of {path.parent}"
    return None
