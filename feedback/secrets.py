"""Instance-wide secrets kept in the database, so every gateway process agrees on them (and on a rotation)."""

from __future__ import annotations

import secrets

from sqlite_utils import Database

from feedback.db import utc_now, write_transaction


def instance_secret(db: Database, name: str) -> str:
    """The secret called ``name``, generated on first use and never changed afterwards."""
    row = db.execute("SELECT value FROM instance_secrets WHERE name = ?", [name]).fetchone()
    if row:
        return row[0]
    with write_transaction(db):
        db.execute(
            "INSERT INTO instance_secrets (name, value, created_at) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
            [name, secrets.token_urlsafe(32), utc_now()],
        )
        return db.execute("SELECT value FROM instance_secrets WHERE name = ?", [name]).fetchone()[0]


def rotate_instance_secret(db: Database, name: str) -> str:
    """Replace the secret called ``name`` with a new random one; returns it (the old one stops working at once)."""
    value = secrets.token_urlsafe(32)
    with write_transaction(db):
        db.execute(
            "INSERT INTO instance_secrets (name, value, created_at) VALUES (?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET value = excluded.value, created_at = excluded.created_at",
            [name, value, utc_now()],
        )
    return value
