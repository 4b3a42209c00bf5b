"""Named, append-only schema migrations (sqlite-utils ``Migrations``).

A migration's function name is its identity: once shipped it is never edited,
only followed by a new one. ``open_db`` applies whatever is pending wherever the
database is opened, never inside a request handler. ``docs/schema.md`` is
generated from the migrated schema and ``tests/test_schema_doc.py`` fails when it
drifts (regenerate with ``python -m feedback.schema_doc``).

Design notes that shaped the tables:
- every assistant message carries ``model_version_id``: the loop ranks and
  retrains per model version, so an answer must know who wrote it;
- ``feedback`` is unique on (message_id, voter_ref): a voter changes a vote, it
  cannot stuff the ballot;
- a failed turn is stored on purpose (``error`` set, empty content) rather than
  leaving a user message without an answer.
"""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

MIGRATIONS = Migrations("tuneloop")


@MIGRATIONS()
def m001_core(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            prefix TEXT NOT NULL,
            hash TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL DEFAULT 'secret' CHECK (kind IN ('secret', 'publishable')),
            created_at TEXT NOT NULL,
            revoked_at TEXT
        )
        """
    )
    db.execute(
        """
        CREATE TABLE model_versions (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            provider TEXT NOT NULL,
            base_model TEXT NOT NULL,
            base_url TEXT,
            adapter_path TEXT,
            training_run_id TEXT,
            status TEXT NOT NULL CHECK (status IN ('candidate', 'live', 'canary', 'retired', 'rejected', 'standby')),
            traffic_weight REAL NOT NULL DEFAULT 0,
            created_at TEXT NOT NULL,
            promoted_at TEXT,
            retired_at TEXT,
            notes TEXT
        )
        """
    )
    # At most one live version at a time, enforced by the database itself.
    db.execute("CREATE UNIQUE INDEX model_versions_one_live ON model_versions(status) WHERE status = 'live'")
    db.execute(
        """
        CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            created_at TEXT NOT NULL,
            api_key_id TEXT REFERENCES api_keys(id),
            user_ref TEXT,
            source TEXT NOT NULL DEFAULT 'api',
            metadata TEXT NOT NULL DEFAULT '{}'
        )
        """
    )
    db.execute(
        """
        CREATE TABLE messages (
            id TEXT PRIMARY KEY,
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
            content TEXT NOT NULL,
            model_version_id TEXT REFERENCES model_versions(id),
            created_at TEXT NOT NULL,
            latency_ms REAL,
            tokens_in INTEGER,
            tokens_out INTEGER,
            finish_reason TEXT,
            error TEXT,
            UNIQUE (conversation_id, seq)
        )
        """
    )
    db.execute("CREATE INDEX messages_version_time ON messages(model_version_id, created_at)")
    db.execute("CREATE INDEX messages_created ON messages(created_at)")
    db.execute(
        """
        CREATE TABLE feedback (
            id TEXT PRIMARY KEY,
            message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
            voter_ref TEXT NOT NULL,
            rating INTEGER NOT NULL CHECK (rating IN (-1, 1)),
            reason TEXT,
            comment TEXT,
            correction TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            UNIQUE (message_id, voter_ref)
        )
        """
    )
    db.execute("CREATE INDEX feedback_created ON feedback(created_at)")
    # Instance-wide secrets (feedback-token signing key) shared by every gateway on this database.
    db.execute(
        """
        CREATE TABLE instance_secrets (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            created_at TEXT NOT NULL
        )
        """
    )
