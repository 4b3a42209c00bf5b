"""Deleted means gone from disk — the one SQLite-specific step of an erasure or a purge.

Everything else deletes through plain SQL in storage functions that take ``db``; this module is what a single
SQLite file needs on top, kept in one function, :func:`wipe_sqlite_free_space`, so a PostgreSQL store knows
exactly what it must replace (docs/privacy.md, "On PostgreSQL").

Where deleted text could survive in SQLite's files, and what removes it (measured in ``bench/privacy.py``,
docs/benchmarks.md "Privacy"):

- **Free space inside the database file.** A deleted or overwritten row leaves its bytes in the page's free
  space or on a free page. ``PRAGMA secure_delete = ON`` on every connection (``feedback/db.py``) zeroes them as
  they are freed. A database that existed before it was on (an upgrade) may still hold old text there, so the
  first erasure or purge on it runs one ``VACUUM``, which rewrites the file from its live rows only; the store
  remembers it is clean (``privacy_state.free_space_clean``).
- **The write-ahead log.** In WAL mode every change is first appended to ``<db>-wal`` as whole page images,
  including the images from *before* the delete; they stay in the file after an ordinary checkpoint, until
  overwritten. ``PRAGMA wal_checkpoint(TRUNCATE)`` copies every page into the database and truncates the WAL to
  zero bytes. It needs every reader to be on the newest snapshot, so it is retried (sleeping, which a gevent
  worker yields in) for up to ``wait_s``; a long-running reader that outlasts it leaves the old frames until the
  next checkpoint, and the result says so.

Not covered by any of this, and said so in docs/privacy.md: copies of the files (backups, snapshots), and
blocks the file system or an SSD keeps after a file is rewritten — disk encryption is the answer to those.
"""

from __future__ import annotations

import time

from sqlite_utils import Database

from feedback.db import database_path, write_transaction
from feedback.sql import dialect


def wipe_sqlite_free_space(db: Database, *, wait_s: float = 10.0) -> dict:
    """Make rows deleted so far unrecoverable from the SQLite files (module docstring): VACUUM once if the
    file may hold text freed before ``secure_delete``, then checkpoint and truncate the WAL.

    Returns what was done: ``{"vacuumed", "wal_truncated", "wal_frames_left", "seconds"}``. Call outside any
    transaction. On PostgreSQL nothing, ``{}``: dead rows, WAL and backups there are the operator's
    (docs/privacy.md, "On PostgreSQL").
    """
    if dialect(db) == "postgresql":
        return {}
    started = time.monotonic()
    (clean,) = db.execute("SELECT free_space_clean FROM privacy_state WHERE id = 1").fetchone()
    vacuumed = False
    if not clean:
        db.execute("VACUUM")
        with write_transaction(db):
            db.execute("UPDATE privacy_state SET free_space_clean = 1 WHERE id = 1")
        vacuumed = True
    busy, frames = _truncate_wal(db, wait_s)
    return {
        "database": database_path(db),
        "vacuumed": vacuumed,
        "wal_truncated": not busy,
        "wal_frames_left": max(frames, 0) if busy else 0,
        "seconds": round(time.monotonic() - started, 3),
    }


def _truncate_wal(db: Database, wait_s: float) -> tuple[int, int]:
    # SQLite's busy handler would wait inside C, where a gevent worker cannot switch greenlets (the reason
    # feedback/db.py waits for locks in Python): try without it, sleep in Python between tries.
    (timeout_ms,) = db.execute("PRAGMA busy_timeout").fetchone()
    db.execute("PRAGMA busy_timeout = 0")
    try:
        deadline = time.monotonic() + wait_s
        while True:
            busy, frames, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy or time.monotonic() >= deadline:
                return busy, frames
            time.sleep(0.05)
    finally:
        db.execute(f"PRAGMA busy_timeout = {int(timeout_ms)}")
