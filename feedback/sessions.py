"""Admin browser sessions, kept in the store so that logging out ends them everywhere.

A signed, expiring cookie alone cannot be taken back: whoever copied it (a shared
machine, a proxy log, a stolen laptop) could replay it until it expired, logout
or not (issue 14). So a sign-in creates a row here and the cookie carries a random
session secret; the row stores only the secret's SHA-256, so reading the database
does not hand out live sessions. A request is signed in while its row exists, has
not ended and has not expired; logout ends the row, so the same cookie replayed
afterwards is refused by every gateway process and host sharing the store.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta, timezone

from sqlite_utils import Database

from feedback.db import utc_now, utc_text, write_transaction

# Ended and expired rows are kept this long (to tell "logged out" from "never existed" when debugging), then pruned.
KEEP_ENDED = timedelta(days=1)


def _row_id(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_session(db: Database, *, hours: float, client: str | None = None) -> str:
    """Start a session valid for ``hours``; returns its secret (for the cookie, never stored)."""
    secret = secrets.token_urlsafe(32)
    now = datetime.now(timezone.utc)
    with write_transaction(db):
        db.execute(
            "INSERT INTO admin_sessions (id, created_at, expires_at, client) VALUES (?, ?, ?, ?)",
            [_row_id(secret), utc_text(now), utc_text(now + timedelta(hours=hours)), client],
        )
        # Sign-ins are rare, so this is where old rows go.
        db.execute(
            "DELETE FROM admin_sessions WHERE expires_at < :cutoff OR ended_at < :cutoff",
            {"cutoff": utc_text(now - KEEP_ENDED)},
        )
    return secret


def session_active(db: Database, secret: str) -> bool:
    """True while the session exists, has not ended and has not expired."""
    row = db.execute(
        "SELECT 1 FROM admin_sessions WHERE id = ? AND ended_at IS NULL AND expires_at > ?",
        [_row_id(secret), utc_now()],
    ).fetchone()
    return row is not None


def end_session(db: Database, secret: str) -> bool:
    """End the session (logout); True when it was active."""
    with write_transaction(db):
        cursor = db.execute(
            "UPDATE admin_sessions SET ended_at = ? WHERE id = ? AND ended_at IS NULL", [utc_now(), _row_id(secret)]
        )
    return cursor.rowcount == 1
