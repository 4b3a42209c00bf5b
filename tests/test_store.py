"""The store: migrations (SQLite files here; PostgreSQL in test_store_postgres.py), and turns, ratings, keys —
on a real SQLite file and on a real PostgreSQL database (the ``db`` tests run on both engines)."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from config.errors import Conflict, NotFound
from feedback import apikeys, ratings, turns, versions
from feedback.db import open_db, savepoint, write_transaction
from feedback.migrations import MIGRATIONS
from feedback.sql import integrity_errors

pytestmark = pytest.mark.engines


def test_migrations_from_empty_create_every_table(tmp_path):
    db = open_db(tmp_path / "a.db")
    assert {"api_keys", "model_versions", "conversations", "messages", "feedback"} <= set(db.table_names())
    assert [m.name for m in MIGRATIONS.applied(db)] == [m.name for m in MIGRATIONS._migrations]
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_reopening_applies_nothing_twice(tmp_path):
    open_db(tmp_path / "a.db").close()
    db = open_db(tmp_path / "a.db")
    assert MIGRATIONS.pending(db) == []
    assert len(MIGRATIONS.applied(db)) == len(MIGRATIONS._migrations)


def test_migrating_from_previous_schema_keeps_rows(tmp_path):
    """Stop before the newest migration, write a row, then migrate: the row survives."""
    names = [m.name for m in MIGRATIONS._migrations]
    path = tmp_path / "old.db"
    import sqlite_utils

    raw = sqlite_utils.Database(sqlite3.connect(path))
    if len(names) > 1:
        MIGRATIONS.apply(raw, stop_before=names[-1])
    else:
        MIGRATIONS.apply(raw)
    raw.execute("INSERT INTO api_keys (id, name, prefix, hash, created_at) VALUES ('k1', 'old', 'tl_sk_x', 'h', 't')")
    raw.conn.commit()
    raw.close()
    db = open_db(path)
    assert MIGRATIONS.pending(db) == []
    assert db.execute("SELECT name FROM api_keys WHERE id = 'k1'").fetchone()[0] == "old"


def test_concurrent_first_opens_migrate_once(tmp_path):
    path = tmp_path / "race.db"
    errors = []

    def opener():
        try:
            open_db(path).close()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    db = open_db(path)
    assert len(MIGRATIONS.applied(db)) == len(MIGRATIONS._migrations)


def _turn(db, question="q", answer="a", conversation_id=None, error=None):
    live = versions.ensure_live_version(db, name="m", provider="builtin")
    t = turns.Turn(
        conversation_id=conversation_id or turns.new_conversation_id(),
        question=question,
        answer=answer,
        model_version_id=live.id,
        error=error,
    )
    turns.record_turn(db, t)
    return t


def test_turn_records_both_messages_with_model_version(db):
    t = _turn(db, "How long is delivery?", "2-3 days")
    conv = turns.get_conversation(db, t.conversation_id)
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant"]
    assert conv["messages"][1]["model_version_id"] == versions.live_version(db).id
    assert conv["messages"][1]["model"] == "m"


def test_history_skips_failed_turns_and_keeps_order(db):
    first = _turn(db, "q1", "a1")
    _turn(db, "q2", "", conversation_id=first.conversation_id, error="upstream down")
    _turn(db, "q3", "a3", conversation_id=first.conversation_id)
    assert turns.history(db, first.conversation_id, 5) == [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q3"},
        {"role": "assistant", "content": "a3"},
    ]
    assert turns.history(db, first.conversation_id, 1) == [
        {"role": "user", "content": "q3"},
        {"role": "assistant", "content": "a3"},
    ]


def test_failed_insert_leaves_nothing_behind(db):
    t = _turn(db)
    clash = turns.Turn(conversation_id=turns.new_conversation_id(), question="x", answer="y", model_version_id=None)
    clash.assistant_message_id = t.assistant_message_id  # primary-key clash on the second insert
    with pytest.raises(integrity_errors()):
        turns.record_turn(db, clash)
    assert db.execute("SELECT COUNT(*) FROM conversations WHERE id = ?", [clash.conversation_id]).fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM messages WHERE id = ?", [clash.user_message_id]).fetchone()[0] == 0


def test_a_voter_changes_a_vote_instead_of_adding_one(db):
    t = _turn(db)
    first = ratings.record_rating(db, message_id=t.assistant_message_id, voter_ref="v1", rating="up")
    second = ratings.record_rating(db, message_id=t.assistant_message_id, voter_ref="v1", rating="down", reason="wrong")
    other = ratings.record_rating(db, message_id=t.assistant_message_id, voter_ref="v2", rating="down")
    assert (first.updated, second.updated, other.updated) == (False, True, False)
    assert first.feedback_id == second.feedback_id
    rows = db.execute("SELECT voter_ref, rating, reason FROM feedback ORDER BY voter_ref").fetchall()
    assert rows == [("v1", -1, "wrong"), ("v2", -1, None)]


def test_rating_user_message_or_failed_answer_is_refused(db):
    t = _turn(db)
    with pytest.raises(NotFound):
        ratings.record_rating(db, message_id=t.user_message_id, voter_ref="v", rating="up")
    failed = _turn(db, error="boom", answer="")
    with pytest.raises(Conflict):
        ratings.record_rating(db, message_id=failed.assistant_message_id, voter_ref="v", rating="down")


def test_api_keys_are_stored_hashed_and_revocable(db):
    key, raw = apikeys.create_key(db, "shop")
    stored = db.execute("SELECT hash, prefix FROM api_keys").fetchone()
    assert raw not in stored and stored[1] == raw[:12]
    assert apikeys.verify_key(db, raw).id == key.id
    assert apikeys.verify_key(db, raw + "x") is None
    apikeys.revoke_key(db, key.prefix)
    assert apikeys.verify_key(db, raw) is None


def test_only_one_live_version(db):
    versions.ensure_live_version(db, name="a", provider="builtin")
    again = versions.ensure_live_version(db, name="b", provider="builtin")
    assert again.name == "a"  # a live version is never replaced by configuration
    with pytest.raises(integrity_errors()):
        with write_transaction(db):
            db.execute(
                "INSERT INTO model_versions (id, name, provider, base_model, status, created_at) "
                "VALUES ('x', 'x', 'p', 'x', 'live', 't')"
            )


def test_a_question_as_long_as_the_gateway_allows_is_recorded_and_rated(db):
    """4,000 Korean characters (~12 KB): no index entry may hold it whole (PostgreSQL's must fit in a page)."""
    question = "".join(chr(0xAC00 + (i * 7919) % 11172) for i in range(4000))
    t = _turn(db, question, "답변")
    ratings.record_rating(db, message_id=t.assistant_message_id, voter_ref="v", rating="down")
    stored = db.execute("SELECT question_key FROM feedback WHERE message_id = ?", [t.assistant_message_id]).fetchone()
    assert len(stored[0]) == 4000


def test_a_failed_statement_in_a_savepoint_leaves_the_transaction_usable(db):
    with write_transaction(db):
        db.execute("INSERT INTO instance_secrets (name, value, created_at) VALUES ('a', 'v', 't')")
        with pytest.raises(integrity_errors()), savepoint(db):
            db.execute("INSERT INTO instance_secrets (name, value, created_at) VALUES ('b', 'v', 't')")
            db.execute("INSERT INTO instance_secrets (name, value, created_at) VALUES ('a', 'w', 't')")
        db.execute("INSERT INTO instance_secrets (name, value, created_at) VALUES ('c', 'v', 't')")
    rows = db.execute("SELECT name, value FROM instance_secrets ORDER BY name").fetchall()
    assert [tuple(r) for r in rows] == [("a", "v"), ("c", "v")]  # b went with the failed savepoint


def test_db_status_and_migrate_on_the_sqlite_file(tmp_path):
    from click.testing import CliRunner

    from cli.main import cli

    env = {"TUNELOOP_PATHS__DATA_DIR": str(tmp_path / "var"), "TUNELOOP_DATABASE__URL": None, "DATABASE_URL": None}
    runner = CliRunner()
    before = runner.invoke(cli, ["db", "status"], env=env)
    assert before.exit_code == 0 and "created on first start" in before.output
    assert not (tmp_path / "var" / "tuneloop.db").exists()  # status changes nothing
    done = runner.invoke(cli, ["db", "migrate"], env=env)
    assert done.exit_code == 0 and f"applied {len(MIGRATIONS._migrations)} migration(s): m001_core" in done.output
    again = runner.invoke(cli, ["db", "migrate"], env=env)
    assert "applied 0 migration(s); already up to date" in again.output
    after = runner.invoke(cli, ["db", "status"], env=env)
    assert f"store: SQLite {tmp_path / 'var' / 'tuneloop.db'}" in after.output
    assert f"{len(MIGRATIONS._migrations)} applied, 0 pending" in after.output
