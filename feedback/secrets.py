"""Instance-wide secrets kept in the database, so every gateway process agrees on them (and on a rotation).

The same table keeps, under ``fingerprint:<setting key>``, an HMAC-SHA256 fingerprint of each secret a host
takes from its settings (``admin.token``, ``gateway.secret_key``): every host sharing the store must hold the
same value, and one that does not is refused at start-up (:func:`check_fingerprint`, ``feedback.hosts``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlite_utils import Database

from config.errors import ConfigError
from feedback.db import utc_now, write_transaction
from feedback.sql import escape_like, like


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


FINGERPRINT_PREFIX = "fingerprint:"  # + a setting key, e.g. "fingerprint:admin.token"
# Keys the HMAC: a fingerprint is this store's own, so it matches no precomputed table and no other store's. (It
# does not stop guessing by someone who can read the table: the key is there too, as is a generated admin token.)
FINGERPRINT_KEY = "fingerprint_key"
UNSET = "unset"


def fingerprint(db: Database, key: str, value: str) -> str:
    """The fingerprint of setting ``key``'s ``value`` on this store ("unset" when empty); never the value."""
    if not value:
        return UNSET
    mac = hmac.new(instance_secret(db, FINGERPRINT_KEY).encode(), f"{key}\0{value}".encode(), hashlib.sha256)
    return "hmac-sha256:" + mac.hexdigest()


def check_fingerprint(db: Database, key: str, value: str) -> None:
    """Record the fingerprint of setting ``key``'s ``value`` on first start; later, refuse a different one.

    Every host sharing the store must set a secret like ``admin.token`` to the same value (or leave it unset on
    all of them): :class:`ConfigError` naming ``key`` says so, without the value. After changing it on every
    host on purpose, ``tuneloop db forget-secrets`` drops the recorded fingerprints.
    """
    mine = fingerprint(db, key, value)
    name = FINGERPRINT_PREFIX + key
    with write_transaction(db, lock=name):
        db.execute(
            "INSERT INTO instance_secrets (name, value, created_at) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
            [name, mine, utc_now()],
        )
        stored, since = db.execute("SELECT value, created_at FROM instance_secrets WHERE name = ?", [name]).fetchone()
    if stored == mine:
        return
    if mine == UNSET:
        what = "is unset on this host but set on the hosts sharing this store"
    elif stored == UNSET:
        what = "is set on this host but unset on the hosts sharing this store"
    else:
        what = "on this host differs from the value the hosts sharing this store use"
    raise ConfigError(
        f"{key} {what} (recorded {since}); set the same value on every host, or after changing it on all of them "
        "run `tuneloop db forget-secrets` once",
        field=key,
    )


def forget_fingerprints(db: Database) -> list[str]:
    """Drop every recorded secret fingerprint (the next start records anew); returns the setting keys dropped."""
    with write_transaction(db):
        prefix = [escape_like(FINGERPRINT_PREFIX) + "%"]
        rows = db.execute(f"SELECT name FROM instance_secrets WHERE {like('name')} ORDER BY name", prefix).fetchall()
        db.execute(f"DELETE FROM instance_secrets WHERE {like('name')}", prefix)
    return [row[0][len(FINGERPRINT_PREFIX) :] for row in rows]
