"""Retention on real SQLite files, with timestamps in the past (never by waiting): what the purge deletes, what it
keeps without personal data (the report's counts, approved corrections), the files that follow, and the guard
that an upgraded database deletes nothing until an operator has seen a dry run."""

from __future__ import annotations

import json
import logging
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest
import sqlite_utils
from click.testing import CliRunner

from cli.main import cli
from config.settings import load_settings
from feedback import audit, ratings, review, turns, versions
from feedback.db import open_db, utc_text, write_transaction
from feedback.migrations import MIGRATIONS
from feedback.privacy import retention
from feedback.privacy.knowledge_base import ERASED
from feedback.report.build import build_report
from feedback.report.weeks import local_date, week_label
from tests.plugins.gateway import write_config
from trainer.dataset.build import build_dataset
from trainer.scheduler import build_scheduler, run_due

pytestmark = pytest.mark.engines  # the storage tests run on SQLite and on PostgreSQL

NOW = datetime.now(timezone.utc)
SEOUL_WEEK = lambda moment: week_label(local_date(utc_text(moment), "Asia/Seoul"))  # noqa: E731


def make_settings(tmp_path, **overrides):
    return load_settings(env={}, overrides={"paths.data_dir": str(tmp_path / "var"), **overrides})


@pytest.fixture
def settings(tmp_path, database_url):
    store = {"database.url": database_url} if database_url else {}  # the test's engine
    return make_settings(tmp_path, **{"privacy.retention_days": 30, "dataset.include_upvoted_min": 1, **store})


@pytest.fixture
def db(settings):
    database = open_db(settings.db_path)
    yield database
    database.close()


def talk(db, question: str, answer: str, *, rating: str | None = None, comment: str | None = None) -> turns.Turn:
    live = versions.ensure_live_version(db, name="starter", provider="builtin")
    turn = turns.Turn(
        conversation_id=turns.new_conversation_id(), question=question, answer=answer, model_version_id=live.id
    )
    turns.record_turn(db, turn)
    if rating:
        ratings.record_rating(db, message_id=turn.assistant_message_id, voter_ref="v1", rating=rating, comment=comment)
    return turn


def backdate(db, turn: turns.Turn, days: float, *, rated_days: float | None = None) -> str:
    """Move a conversation ``days`` into the past (its rating to ``rated_days``, default the same)."""
    at = utc_text(NOW - timedelta(days=days))
    voted = utc_text(NOW - timedelta(days=days if rated_days is None else rated_days))
    cid = turn.conversation_id
    with write_transaction(db):  # commits on either engine (a psycopg connection closes on exit)
        db.execute("UPDATE conversations SET created_at = ? WHERE id = ?", [at, cid])
        db.execute("UPDATE messages SET created_at = ? WHERE conversation_id = ?", [at, cid])
        db.execute(
            "UPDATE feedback SET created_at = ?, updated_at = ?, answered_at = ? WHERE message_id IN "
            "(SELECT id FROM messages WHERE conversation_id = ?)",
            [voted, voted, at, cid],
        )
    return at


def exists(db, turn: turns.Turn) -> bool:
    return db.execute("SELECT 1 FROM conversations WHERE id = ?", [turn.conversation_id]).fetchone() is not None


def week_numbers(db, settings, week: str) -> dict:
    total = build_report(db, settings, week=week)["trend"]["total"]
    return {k: total[k][-1] for k in ("answers", "failed", "ratings", "down")}


def test_the_purge_deletes_what_is_idle_past_retention_and_the_reports_numbers_stay(settings, db):
    old = talk(db, "Where is my refund, Hmark1?", "Soon.", rating="down", comment="too slow Hmark1")
    revived = talk(db, "Old question Hmark2", "Old answer.", rating="down")
    recent = talk(db, "New question Hmark3", "New answer.")
    at = backdate(db, old, 40)
    backdate(db, revived, 40, rated_days=2)  # rated again two days ago: still in use
    week = SEOUL_WEEK(NOW - timedelta(days=40))
    numbers = week_numbers(db, settings, week)
    assert numbers == {"answers": 2, "failed": 0, "ratings": 2, "down": 2}
    preview = retention.purge(db, settings, actor="ops", dry_run=True)
    assert exists(db, old) and preview.id is None
    assert preview.counts == {
        "conversations": 1, "messages": 2, "ratings": 1, "comments": 1, "corrections": 0, "review_items_deleted": 0,
        "review_items_stripped": 0, "dataset_rows": 0, "evaluation_rows": 0, "reports_rebuilt": 0,
    }  # fmt: skip
    done = retention.purge(db, settings, actor="ops")
    assert {k: done.counts[k] for k in preview.counts} == preview.counts
    assert done.counts["conversations"] == 1 and done.counts["messages"] == 2 and done.counts["comments"] == 1
    assert not exists(db, old) and exists(db, revived) and exists(db, recent)
    assert week_numbers(db, settings, week) == numbers, "the counts behind the trends outlive the rows"
    assert db.execute("SELECT hour, answers, ratings, down FROM activity_counts").fetchall() == [
        (at[:13] + ":00:00.000Z", 1, 1, 1)
    ]
    run = db.execute("SELECT kind, state, requested_by FROM erasures WHERE id = ?", [done.id]).fetchone()
    assert run == ("retention", "done", retention.REQUESTED_BY)
    assert audit.entries(db, audit.Filters(action="privacy.purge"))[0].details["conversations"] == 1
    assert retention.purge(db, settings, actor="ops").id is None, "nothing left to purge: nothing logged"


def test_approved_corrections_are_kept_without_personal_data_and_older_open_items_go(settings, db):
    evidence = {
        "votes": 6,
        "down": 5,
        "keys": ["call me at 010 2345 6789 about my refund", "where is my refund"],
        "variants": [{"question": "where is my refund", "key": "where is my refund", "votes": 3}],
        "comments": [{"comment": "Still nothing, Kim", "question": "where is my refund"}],
        "corrections": [{"correction": "Refunds take 3 days, Kim", "count": 1}],
        "answers": [{"answer": "We called 010-2345-6789.", "up": 0, "down": 5}],
        "message_ids": ["msg_1"],
    }
    kept = review.create_item(
        db, question="Call me at 010-2345-6789 about my refund", answer="Refunds take 3 business days.",
        reviewer="ana", evidence=evidence,
    )  # fmt: skip
    gone = review.create_item(db, question="Is my order from Jmark4 lost?")
    with write_transaction(db):  # commits on either engine (a psycopg connection closes on exit)
        db.execute("UPDATE review_items SET created_at = ?", [utc_text(NOW - timedelta(days=40))])
    result = retention.purge(db, settings, actor="ops")
    assert result.counts["review_items_stripped"] == 1 and result.counts["review_items_deleted"] == 1
    item = review.get_item(db, kept.id)
    assert item.question == "Call me at [PHONE] about my refund" and item.answer == "Refunds take 3 business days."
    assert set(item.evidence) == {"votes", "down", "keys", "variants", "answers", "retention"}
    assert (
        item.evidence["keys"] == ["where is my refund"]
        and item.evidence["answers"][0]["answer"] == "We called [PHONE]."
    )
    with pytest.raises(Exception, match="no review item"):
        review.get_item(db, gone.id)
    quotes = {e.target: e.details["question"] for e in audit.entries(db, audit.Filters(action="review.create"))}
    assert quotes == {kept.id: "Call me at [PHONE] about my refund", gone.id: ERASED}
    again = retention.purge(db, settings, actor="ops")
    assert again.id is None and review.get_item(db, kept.id).updated_at == item.updated_at


def test_dataset_rows_of_purged_answers_are_removed_and_the_manifest_says_so(settings, db):
    upvoted = talk(db, "Can I pay with points at the Rmark5 branch?", "Yes, at every branch.", rating="up")
    backdate(db, upvoted, 40)
    built = build_dataset(db, settings)
    files = lambda: "".join((built.path / f"{s}.jsonl").read_text() for s in ("train", "val", "test"))  # noqa: E731
    assert "Rmark5" in files()
    result = retention.purge(db, settings, actor="ops")
    assert list(result.datasets) == [built.version] and result.datasets[built.version]["dataset_id"] == built.dataset_id
    assert sum(result.datasets[built.version]["rows_removed"].values()) == 1 and "Rmark5" not in files()
    manifest = json.loads((built.path / "manifest.json").read_text())
    assert manifest["erasures"][-1]["why"] == "retention (30 days)"
    assert db.execute("SELECT sha256 FROM datasets").fetchone()[0] == manifest["sha256"]
    lineage = [row for split in manifest["rows"].values() for row in split]
    assert all(row["source"] != "feedback" for row in lineage)
    assert sum(manifest["counts"][s] for s in ("train", "val", "test")) == len(lineage)


def _upgraded_database(tmp_path, settings):
    """A database made by the release before retention, with an old conversation in it, then upgraded."""
    raw = sqlite_utils.Database(sqlite3.connect(settings.db_path))
    MIGRATIONS.apply(raw, stop_before="m011_privacy_lifecycle")
    raw.execute(
        "INSERT INTO conversations (id, created_at) VALUES ('conv_old', ?)", [utc_text(NOW - timedelta(days=400))]
    )
    raw.execute(
        "INSERT INTO messages (id, conversation_id, seq, role, content, created_at) VALUES "
        "('msg_old', 'conv_old', 1, 'user', 'my address is Smark6', ?)",
        [utc_text(NOW - timedelta(days=400))],
    )
    raw.conn.commit()
    raw.close()
    return open_db(settings.db_path)


def test_an_upgraded_database_deletes_nothing_until_someone_has_seen_a_dry_run(tmp_path, caplog):
    (tmp_path / "var").mkdir()
    # The retention job alone, so the simulated days fire nothing else.
    config = write_config(
        tmp_path / "t.toml", {"paths": {"data_dir": str(tmp_path / "var")}, "scheduler": {"jobs": ["retention"]}}
    )
    settings = load_settings(config, env={})
    db = _upgraded_database(tmp_path, settings)
    state = retention.status(db, settings)
    assert not state.allowed and "nobody has seen a dry run" in state.reason
    with pytest.raises(retention.PurgeNotSeen):
        retention.purge(db, settings, actor="ops")
    scheduler = build_scheduler(settings)
    due = scheduler.get_job("retention").next_run_time
    with caplog.at_level(logging.WARNING, logger="tuneloop.scheduler"):
        assert run_due(scheduler, due) == [("retention", None)]
    assert "deleted nothing" in caplog.text and "would delete 1 conversations" in caplog.text
    assert db.execute("SELECT COUNT(*) FROM conversations").fetchone()[0] == 1

    runner = CliRunner()
    refused = runner.invoke(cli, ["--config", str(config), "privacy", "purge"], env={})
    assert refused.exit_code == 1 and "nothing deleted" in refused.output
    assert db.execute("SELECT COUNT(*) FROM conversations").fetchone()[0] == 1
    seen = runner.invoke(cli, ["--config", str(config), "privacy", "purge", "--dry-run"], env={"USER": "lee"})
    assert seen.exit_code == 0, seen.output
    assert "would delete" in seen.output and "conversations: 1" in seen.output and "allowed from now" in seen.output
    assert db.execute("SELECT COUNT(*) FROM conversations").fetchone()[0] == 1, "a dry run deletes nothing"
    assert retention.status(db, settings).seen_by == "lee"

    (fired,) = run_due(scheduler, scheduler.get_job("retention").next_run_time)
    purged = fired[1]
    assert purged.counts["conversations"] == 1 and purged.disk["vacuumed"], "old free space is rewritten once"
    on_disk = [p for p in settings.data_dir.iterdir() if p.name.startswith("tuneloop.db")]
    assert on_disk and not [p.name for p in on_disk if b"smark6" in p.read_bytes().lower()]
    scheduler.shutdown()
    shorter = load_settings(config, env={}, overrides={"privacy.retention_days": 30})
    assert "run `tuneloop privacy purge --dry-run` again" in retention.status(db, shorter).reason
    assert retention.status(db, load_settings(config, env={}, overrides={"privacy.retention_days": 365})).allowed
    db.close()


def test_retention_zero_keeps_everything_and_schedules_no_purge(tmp_path):
    settings = make_settings(tmp_path, **{"privacy.retention_days": 0})
    db = open_db(settings.db_path)
    old = talk(db, "kept forever", "yes")
    backdate(db, old, 4000)
    assert retention.purge(db, settings, actor="ops").counts == {} and exists(db, old)
    scheduler = build_scheduler(settings)
    assert scheduler.get_job("retention") is None
    scheduler.shutdown()
    db.close()
