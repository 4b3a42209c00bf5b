"""API keys: created once, shown once, stored only as a SHA-256 hash.

Two kinds: ``secret`` keys (server-to-server; every API) and ``publishable``
keys (safe to embed in a web page with the widget: they can only chat and rate).
A key looks like ``tl_sk_<random>`` / ``tl_pk_<random>``; the first characters are
kept as ``prefix`` so a person can tell keys apart in a listing.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlite_utils import Database

from config.errors import NotFound, ValidationFailed
from feedback import audit
from feedback.db import new_id, utc_now, write_transaction

KINDS = {"secret": "tl_sk_", "publishable": "tl_pk_"}


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    prefix: str
    kind: str
    created_at: str
    revoked_at: str | None


def _hash(raw_key: str) -> str:
    # Keys are 32 random bytes, so a fast hash is enough: nothing to brute-force.
    return hashlib.sha256(raw_key.encode()).hexdigest()


def create_key(db: Database, name: str, *, kind: str = "secret", actor: str = "system") -> tuple[ApiKey, str]:
    """Create a key; returns its row and the raw key, which is never stored or shown again (nor audited)."""
    if kind not in KINDS:
        raise ValidationFailed(f"kind must be one of {', '.join(KINDS)}", field="kind")
    if not name.strip():
        raise ValidationFailed("a key needs a name", field="name")
    raw = KINDS[kind] + secrets.token_urlsafe(32)
    key = ApiKey(new_id("key"), name.strip(), raw[:12], kind, utc_now(), None)
    with write_transaction(db):
        db.execute(
            "INSERT INTO api_keys (id, name, prefix, hash, kind, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            [key.id, key.name, key.prefix, _hash(raw), key.kind, key.created_at],
        )
        audit.record(db, actor, "key.create", key.id, {"name": key.name, "kind": key.kind})
    return key, raw


def list_keys(db: Database) -> list[ApiKey]:
    """All keys, revoked ones included, oldest first."""
    rows = db.execute(
        "SELECT id, name, prefix, kind, created_at, revoked_at FROM api_keys ORDER BY created_at"
    ).fetchall()
    return [ApiKey(*row) for row in rows]


def revoke_key(db: Database, key_id: str, *, actor: str = "system") -> ApiKey:
    """Revoke a key by id or prefix; revoking twice keeps the first time."""
    with write_transaction(db):
        row = db.execute(
            "SELECT id, name, revoked_at FROM api_keys WHERE id = ? OR prefix = ?", [key_id, key_id]
        ).fetchone()
        if row is None:
            raise NotFound(f"no API key {key_id!r}", field="key")
        db.execute("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?", [utc_now(), row[0]])
        if row[2] is None:
            audit.record(db, actor, "key.revoke", row[0], {"name": row[1]})
    return next(k for k in list_keys(db) if k.id == row[0])


def verify_key(db: Database, raw_key: str) -> ApiKey | None:
    """The active key matching ``raw_key``, or None."""
    row = db.execute(
        "SELECT id, name, prefix, kind, created_at, revoked_at FROM api_keys WHERE hash = ? AND revoked_at IS NULL",
        [_hash(raw_key)],
    ).fetchone()
    return ApiKey(*row) if row else None
