"""``tuneloop db copy``: a store filled by the app moves SQLite → PostgreSQL → SQLite and reads the same.

Real parts: SQLite files, the session's throw-away PostgreSQL server (tests/plugins/postgres.py), the
demo seeder, the knowledge base and the rating code writing the rows, the CLI as a user runs it.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest
from click.testing import CliRunner

from cli.main import cli
from config.settings import load_settings
from feedback import accounts, apikeys, store_copy
from feedback.db import open_db, write_transaction
from feedback.demo import seed_demo
from feedback.knowledge import lineage
from feedback.knowledge import store as kb
from feedback.knowledge.prompt import Snippet
from feedback.report import build_report
from feedback.secrets import instance_secret
from tests.test_ranking import ask, make_version

NOW = datetime(2026, 11, 23, 0, 30, tzinfo=timezone.utc)
W47 = "2026-W47"
THIS_WEEK = "2026-11-18T03:00:00.000Z"


@pytest.fixture
def settings(tmp_path):
    return load_settings(env={}, overrides={"paths.data_dir": str(tmp_path / "var"), "report.min_votes": 1})


@pytest.fixture
def filled(settings, tmp_path):
    """A SQLite store written by the app: two weeks of demo traffic, a knowledge-base change, a rating."""
    path = tmp_path / "source.db"
    db = open_db(path)
    seed_demo(db, settings, weeks=2, turns_per_week=150, now=NOW)
    entry = kb.add_entry(db, questions="How much is shipping?", answer="2,500 won.", actor="ana")
    kb.update_entry(db, entry.id, answer="3,000 won from December.", actor="ana", reason="price change")
    message_id = ask(
        db, make_version(db, "extra"), "Is 오늘 배송 possible?", at=THIS_WEEK, down=1, comment="틀렸어 | no"
    )
    with write_transaction(db):
        lineage.record_sources(db, message_id, [Snippet(entry.id, entry.question, entry.answer, 0.6, 2)])
    apikeys.create_key(db, "website")
    accounts.add_user(db, "ana@example.com", role="admin", actor="cli")
    instance_secret(db, "feedback_token")
    db.close()
    return path


@pytest.fixture
def blank_postgres(postgres_server):
    """A PostgreSQL database with nothing in it (not even the schema): the copy migrates it."""
    name = f"copy_{datetime.now().strftime('%H%M%S%f')}"
    postgres_server.admin(f'CREATE DATABASE "{name}"')
    url = postgres_server.url(name)
    yield url
    postgres_server.drop_database(url)


def run_copy(*args: str, env: dict):
    return CliRunner().invoke(cli, ["db", "copy", *args], env=env)


@pytest.fixture
def env(tmp_path):
    return {"TUNELOOP_PATHS__DATA_DIR": str(tmp_path / "cli")}


def sums(target: str) -> dict[str, tuple[int, str]]:
    """Every table's row count and checksum, as the copy computes them."""
    db = open_db(target, migrate=False)
    try:
        return {name: store_copy.checksum(db, store_copy.shape(db, db, name)) for name in store_copy.table_names(db)}
    finally:
        db.close()


def report_of(target: str, settings) -> dict:
    db = open_db(target, migrate=False)
    try:
        return build_report(db, settings, week=W47, now=NOW)
    finally:
        db.close()


def test_sqlite_to_postgresql_and_back_loses_nothing_and_the_app_reads_it(
    filled, blank_postgres, settings, tmp_path, env
):
    before = sums(str(filled))
    source = open_db(filled, migrate=False)
    last_audit_id = source.execute("SELECT MAX(id) FROM audit_log").fetchone()[0]
    source.close()
    assert before["messages"][0] > 500 and before["feedback"][0] > 100 and before["kb_history"][0] == 2
    assert all(before[t][0] > 0 for t in ("api_keys", "users", "instance_secrets", "message_sources", "audit_log"))
    report = report_of(str(filled), settings)

    there = run_copy(str(filled), blank_postgres, "--batch-size", "97", env=env)
    assert there.exit_code == 0, there.output
    assert re.search(r"all \d+ tables equal", there.output)
    assert re.search(r"^messages +\d+ +\d+ +[0-9a-f]{12} +[0-9a-f]{12} +ok$", there.output, re.M)

    back_path = tmp_path / "back.db"
    back = run_copy(blank_postgres, f"sqlite:///{back_path}", env=env)
    assert back.exit_code == 0, back.output

    assert sums(blank_postgres) == before
    assert sums(str(back_path)) == before
    for target in (blank_postgres, str(back_path)):
        copied = report_of(target, settings)
        assert copied["headline"] == report["headline"] and copied["trend"] == report["trend"]
        assert copied["worst"] == report["worst"] and copied["knowledge"] == report["knowledge"]

    # PostgreSQL's identity sequences were set past the copied values: the app writes new rows at once.
    db = open_db(blank_postgres)
    try:
        kb.add_entry(db, questions="Do points expire?", answer="After a year.", actor="ana")  # audit_log identity
        highest = db.execute("SELECT MAX(id) FROM audit_log").fetchone()[0]
        assert highest == last_audit_id + 1
        assert db.execute("SELECT to_regclass('_copy_progress')").fetchone()[0] is None
    finally:
        db.close()


def test_a_non_empty_target_is_refused_unless_overwritten(filled, tmp_path, settings, env):
    target = tmp_path / "busy.db"
    db = open_db(target)
    ask(db, make_version(db, "theirs"), "their own question", up=1)
    db.close()
    theirs = sums(str(target))

    refused = run_copy(str(filled), str(target), env=env)
    assert refused.exit_code == 1
    assert "DST is not empty: " in refused.output and "--overwrite" in refused.output
    assert sums(str(target)) == theirs  # nothing touched

    replaced = run_copy(str(filled), str(target), "--overwrite", env=env)
    assert replaced.exit_code == 0, replaced.output
    assert sums(str(target)) == sums(str(filled))


def test_an_interrupted_copy_resumes_without_duplicates(filled, blank_postgres, monkeypatch, env):
    write = store_copy._write_batch
    written = []  # rows per batch that went in

    def failing_after_five(db, table, rows):
        if len(written) == 5:
            raise RuntimeError("the network went away")
        write(db, table, rows)
        written.append(len(rows))

    monkeypatch.setattr(store_copy, "_write_batch", failing_after_five)
    broken = run_copy(str(filled), blank_postgres, "--batch-size", "40", env=env)
    assert broken.exit_code != 0 and "the network went away" in str(broken.exception)
    db = open_db(blank_postgres, migrate=False)
    try:
        recorded = db.execute("SELECT SUM(rows) FROM _copy_progress").fetchone()[0]
    finally:
        db.close()
    assert recorded == sum(written) > 0  # five batches committed, the sixth rolled back

    fresh = run_copy(str(filled), blank_postgres, env=env)
    assert fresh.exit_code == 1 and "DST is not empty" in fresh.output  # a half copy is not silently redone

    monkeypatch.setattr(store_copy, "_write_batch", write)
    resumed = run_copy(str(filled), blank_postgres, "--resume", "--batch-size", "40", env=env)
    assert resumed.exit_code == 0, resumed.output
    total = sum(n for n, _ in sums(str(filled)).values())
    copied = int(re.search(r"copied (\d+) row", resumed.output).group(1))
    assert copied == total - recorded  # only what the first run had not committed
    assert sums(blank_postgres) == sums(str(filled))


def test_stores_with_different_migrations_are_refused_by_name(filled, tmp_path, env):
    db = open_db(filled, migrate=False)
    last = db.execute("SELECT name FROM _sqlite_migrations ORDER BY rowid DESC LIMIT 1").fetchone()[0]
    db.execute("DELETE FROM _sqlite_migrations WHERE name = ?", [last])
    db.conn.commit()
    db.close()

    refused = run_copy(str(filled), str(tmp_path / "new.db"), env=env)
    assert refused.exit_code == 1
    assert f"error: the two stores' migration ledgers differ: SRC lacks {last}" in refused.output


def test_bad_arguments_get_one_clear_line(tmp_path, env):
    missing = run_copy(str(tmp_path / "nothing.db"), str(tmp_path / "new.db"), env=env)
    assert missing.exit_code == 2 and "SRC: no SQLite store at" in missing.output
    assert not (tmp_path / "new.db").exists()
    same = run_copy(str(tmp_path / "a.db"), f"sqlite:///{tmp_path / 'a.db'}", env=env)
    assert same.exit_code == 2 and "SRC and DST are the same store" in same.output
    nothing = run_copy(str(tmp_path / "a.db"), str(tmp_path / "b.db"), "--resume", "--overwrite", env=env)
    assert nothing.exit_code == 2 and "exclude each other" in nothing.output


def test_a_copy_that_differs_exits_1_naming_the_table(filled, tmp_path, monkeypatch, env):
    write = store_copy._write_batch

    def losing_a_vote(db, table, rows):
        write(db, table, rows[:-1] if table.name == "feedback" else rows)

    monkeypatch.setattr(store_copy, "_write_batch", losing_a_vote)
    lost = run_copy(str(filled), str(tmp_path / "lossy.db"), env=env)
    assert lost.exit_code == 1
    assert re.search(r"^feedback +(\d+) +(\d+) .* DIFFERS$", lost.output, re.M)
    assert "error: the copy differs from the source in: feedback\n" in lost.output
    assert re.search(r"^messages .* ok$", lost.output, re.M)


def test_a_row_the_target_cannot_hold_stops_the_copy_with_its_table_and_key(filled, blank_postgres, env):
    db = open_db(filled, migrate=False)
    # The fourth row in the copy's order (SQLite's rowid: the order rows were written).
    conversation = db.execute("SELECT id FROM conversations ORDER BY rowid LIMIT 1 OFFSET 3").fetchone()[0]
    db.execute("UPDATE conversations SET metadata = ? WHERE id = ?", ['{"note": "nul \x00 inside"}', conversation])
    db.conn.commit()
    db.close()

    refused = run_copy(str(filled), blank_postgres, "--batch-size", "2", env=env)
    assert refused.exit_code == 1, refused.output
    assert "error: DST refused a row of conversations in the batch from key ['" in refused.output
    assert f"'{conversation}']" in refused.output and "--resume" in refused.output
    db = open_db(blank_postgres, migrate=False)
    try:  # the batches before it stayed: a resume after the fix continues from there
        assert db.execute("SELECT rows FROM _copy_progress WHERE table_name = 'conversations'").fetchone()[0] == 2
    finally:
        db.close()


def test_rows_arrive_in_postgresql_in_the_order_they_were_written(filled, blank_postgres, env):
    # A week's rows must lie together in the table, as in a live store, not spread by random ids: the weekly
    # report reads them by time (docs/benchmarks.md "PostgreSQL (issue 18)").
    source = open_db(filled, migrate=False)
    written = [row[0] for row in source.execute("SELECT id FROM messages ORDER BY rowid").fetchall()]
    source.close()
    assert written != sorted(written)  # ids are not in time order, so primary-key order would scatter them

    copied = run_copy(str(filled), blank_postgres, "--batch-size", "50", env=env)
    assert copied.exit_code == 0, copied.output
    db = open_db(blank_postgres, migrate=False)
    try:
        db.execute("ANALYZE messages")
        # How closely the table's physical order follows each column (1: the same order; ~0: unrelated).
        correlation = dict(
            db.execute(
                "SELECT attname, correlation FROM pg_stats WHERE tablename = 'messages' AND attname IN ('rowid', 'id')"
            ).fetchall()
        )
    finally:
        db.close()
    assert correlation["rowid"] > 0.99 and abs(correlation["id"]) < 0.5, correlation
