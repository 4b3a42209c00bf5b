"""Admin browser sessions, kept in the store so that logging out ends them everywhere.

A signed, expiring cookie alone cannot be taken back: whoever copied it (a shared
machine, a proxy log, a stolen laptop) could replay it until it expired, logout
or not (issue 14). So a sign-in creates a row here and the cookie carries a random
session secret; the row stores only the secret's SHA-256, so reading the database
does not hand out live sessions. A request is signed in while its row exists, has
not ended and has not expired; logout ends the row, so the same cookie replayed
afterwards is refused by every gateway process and host sharing the store.

A session belongs to an account (issue 23): disabling the account or changing its
role ends its sessions here, in the same transaction as the change, so the person's
next request on any gateway is signed out. Sessions opened with the admin token (no
account; allowed only until an admin account exists) end when the token is rotated.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlite_utils import Database

from feedback.db import utc_now, utc_text, write_transaction

# Ended and expired rows are kept this long (to tell "logged out" from "never existed" when debugging), then pruned.
KEEP_ENDED = timedelta(days=1)


def _row_id(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


METHODS = ("token", "password", "sso")


@dataclass(frozen=True)
class Session:
    """An open session: whose it is (None: the admin token's, before any admin account existed) and how it began."""

    user_id: str | None
    method: str
    expires_at: str


def create_session(
    db: Database, *, hours: float, client: str | None = None, user_id: str | None = None, method: str = "token"
) -> str:
    """Start a session valid for ``hours``; returns its secret (for the cookie, never stored)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}")
    secret = secrets.token_urlsafe(32)
    now = datetime.now(timezone.utc)
    with write_transaction(db):
        db.execute(
            "INSERT INTO admin_sessions (id, created_at, expires_at, client, user_id, method)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [_row_id(secret), utc_text(now), utc_text(now + timedelta(hours=hours)), client, user_id, method],
        )
        # Sign-ins are rare, so this is where old rows go.
        db.execute(
            "DELETE FROM admin_sessions WHERE expires_at < :cutoff OR ended_at < :cutoff",
            {"cutoff": utc_text(now - KEEP_ENDED)},
        )
    return secret


def find_session(db: Database, secret: str) -> Session | None:
    """The session while it exists, has not ended and has not expired; else None."""
    row = db.execute(
        "SELECT user_id, method, expires_at FROM admin_sessions WHERE id = ? AND ended_at IS NULL AND expires_at > ?",
        [_row_id(secret), utc_now()],
    ).fetchone()
    return Session(*row) if row else None


def session_active(db: Database, secret: str) -> bool:
    """True while the session exists, has not ended and has not expired."""
    return find_session(db, secret) is not None


def end_session(db: Database, secret: str) -> bool:
    """End the session (logout); True when it was active."""
    with write_transaction(db):
        cursor = db.execute(
            "UPDATE admin_sessions SET ended_at = ? WHERE id = ? AND ended_at IS NULL", [utc_now(), _row_id(secret)]
        )
    return cursor.rowcount == 1


def end_user_sessions(db: Database, user_id: str, *, keep: str | None = None) -> int:
    """End every open session of one account (disabled, role or password changed), but ``keep``'s; returns how many."""
    with write_transaction(db):
        cursor = db.execute(
            "UPDATE admin_sessions SET ended_at = ? WHERE user_id = ? AND ended_at IS NULL AND id != ?",
            [utc_now(), user_id, _row_id(keep) if keep else ""],
        )
    return cursor.rowcount


def end_token_sessions(db: Database) -> int:
    """End every open session signed in with the admin token (it was rotated, or an admin account now exists)."""
    with write_transaction(db):
        cursor = db.execute(
            "UPDATE admin_sessions SET ended_at = ? WHERE user_id IS NULL AND ended_at IS NULL", [utc_now()]
        )
    return cursor.rowcount
