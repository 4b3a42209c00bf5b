"""The review queue: collecting without duplicates, decisions, CSV/JSONL round trips, teacher drafts."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

from cli.main import cli
from config.errors import ConfigError, Conflict, ValidationFailed
from config.settings import load_settings
from feedback import accounts, review, sql
from feedback.db import write_transaction
from feedback.ranking import RankingOptions
from feedback.review_io import ImportRejected, export_items, import_items, read_records
from tests.plugins.common import free_port
from tests.test_ranking import WEEK, ask_many, make_version
from trainer.review_drafts import draft_answers

pytestmark = pytest.mark.engines  # the storage tests run on SQLite and on PostgreSQL

SHIPPING = "How much is the shipping fee?"
SUNDAY = "Do you deliver on Sundays?"
FIXED = "Shipping is 3,000 won per order and free from 30,000 won."


@pytest.fixture
def live(db):
    return make_version(db, "live", "live")


@pytest.fixture
def queued(db, live):
    """Two worst-answered groups in WEEK, collected: shipping (with a user correction) and Sundays."""
    ask_many(
        db,
        live,
        SHIPPING,
        answers=10,
        down=6,
        answer="It is 2,500 won.",
        correction=FIXED,
        comment="That's not what the website says.",
        reason="outdated",
    )
    ask_many(db, live, SUNDAY, answers=5, down=4, answer="Yes, every day.")
    ask_many(db, live, "Can I pay with KakaoPay?", answers=6, down=0)
    result = review.collect_worst(
        db, model_version_id=live, since=WEEK[0], until=WEEK[1], options=RankingOptions(top_n=2)
    )
    return {item.question: item for item in result.added}


def test_collect_queues_the_worst_with_evidence(db, queued):
    assert set(queued) == {SHIPPING, SUNDAY}
    item = queued[SHIPPING]
    assert item.status == "pending" and item.origin == "ranking" and item.answer is None
    ev = item.evidence
    assert (ev["votes"], ev["down"], ev["up"]) == (10, 6, 4)
    assert len(ev["message_ids"]) == 6 and all(m.startswith("msg_") for m in ev["message_ids"])
    assert ev["answers"][0] == {"answer": "It is 2,500 won.", "up": 4, "down": 6}
    assert ev["corrections"] == [{"correction": FIXED, "count": 6}]
    assert ev["reasons"] == {"outdated": 6}
    assert ev["comments"][0]["comment"] == "That's not what the website says."
    assert item.suggested_answer == FIXED
    assert review.get_item(db, item.id).evidence == ev  # stored, not just returned


def test_a_pending_or_approved_question_is_not_added_twice(db, live, queued):
    again = review.collect_worst(db, model_version_id=live, since=WEEK[0], until=WEEK[1])
    assert again.added == [] and {s["item_id"] for s in again.skipped} == {i.id for i in queued.values()}
    # A surface variant asked next week is the same question: still skipped.
    ask_many(db, live, "how much is the shipping fee", answers=5, down=5, at="2026-11-25T03:00:00.000Z")
    later = review.collect_worst(db, model_version_id=live, since=WEEK[1], until="2026-11-29T15:00:00.000Z")
    assert later.added == [] and later.skipped[0]["item_id"] == queued[SHIPPING].id
    # Approved stays closed; a rejected question may come back.
    review.approve(db, queued[SHIPPING].id, answer=FIXED, reviewer="ana")
    review.reject(db, queued[SUNDAY].id, reviewer="ana", note="not ours to fix")
    third = review.collect_worst(db, model_version_id=live, since=WEEK[0], until=WEEK[1])
    assert [i.question for i in third.added] == [SUNDAY]
    assert review.status_counts(db) == {"pending": 1, "approved": 1, "rejected": 1}


def test_the_database_refuses_a_second_open_item_for_a_question(db):
    first = review.create_item(db, question="Where is my parcel?")
    with pytest.raises(Conflict):
        review.create_item(db, question="where is my parcel")  # same key
    review.reject(db, first.id, reviewer="ana")
    second = review.create_item(
        db, question="Where is my parcel?", answer="Track it in My Page > Orders.", reviewer="ana"
    )
    assert second.status == "approved"
    with pytest.raises(Conflict):  # re-approving the rejected one would make two open items
        review.approve(db, first.id, answer="x", reviewer="ana")


def test_approve_needs_an_answer_and_records_who_when_and_where_from(db, queued):
    item = queued[SHIPPING]
    for empty in ("", "   "):
        with pytest.raises(ValidationFailed) as info:
            review.approve(db, item.id, answer=empty, reviewer="ana")
        assert info.value.field == "answer"
    assert review.get_item(db, item.id).status == "pending"
    approved = review.approve(db, item.id, answer=f"  {FIXED}  ", reviewer="ana")
    assert (approved.status, approved.answer, approved.answer_source, approved.reviewer) == (
        "approved",
        FIXED,
        "user",
        "ana",
    )
    assert approved.decided_at and approved.decided_at == approved.updated_at
    edited = review.edit_item(db, item.id, reviewer="bo", answer=FIXED + " Jeju pays 3,000 won more.")
    assert edited.answer_source == "reviewer" and edited.reviewer == "bo"
    with pytest.raises(ValidationFailed):  # a pending item's answer comes through approve
        review.edit_item(db, queued[SUNDAY].id, reviewer="bo", answer="No.")
    review.set_draft(db, queued[SUNDAY].id, draft="We deliver Monday to Saturday.", model="teacher")
    taught = review.approve(db, queued[SUNDAY].id, answer="We deliver Monday to Saturday.", reviewer="bo")
    assert taught.answer_source == "teacher"
    rejected = review.reject(db, item.id, reviewer="cy", note="policy under review")
    assert (rejected.status, rejected.note, rejected.reviewer) == ("rejected", "policy under review", "cy")
    with pytest.raises(Conflict):
        review.reject(db, item.id, reviewer="cy")


def test_list_filters_and_searches(db, queued):
    review.approve(db, queued[SUNDAY].id, answer="Monday to Saturday only.", reviewer="ana")
    assert [i.question for i in review.list_items(db, status="pending")] == [SHIPPING]
    assert [i.question for i in review.list_items(db, search="saturday")] == [SUNDAY]  # answers too
    assert [i.question for i in review.list_items(db, search="100%_")] == []  # LIKE wildcards are literal
    assert review.count_items(db, status="approved") == 1
    with pytest.raises(ValidationFailed):
        review.list_items(db, status="done")


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_export_edit_import_round_trip(db, queued, tmp_path, fmt):
    path = tmp_path / f"queue.{fmt}"
    assert export_items(db, path, status="pending") == 2
    records = [record for _, record in read_records(path)[0]]
    by_question = {r["question"]: r for r in records}
    by_question[SHIPPING].update(status="approved", answer=by_question[SHIPPING]["suggested_correction"])
    by_question[SUNDAY].update(status="rejected", note="courier decides")
    records.append({"id": "", "status": "", "question": "Do you ship abroad?", "answer": "No, domestic only."})
    _write(path, records, fmt)
    summary = import_items(db, path, reviewer="ana")
    assert (summary.created, summary.approved, summary.rejected, summary.unchanged) == (1, 2, 1, 0)
    shipping = review.get_item(db, queued[SHIPPING].id)
    assert (shipping.status, shipping.answer, shipping.answer_source, shipping.reviewer) == (
        "approved",
        FIXED,
        "user",
        "ana",
    )
    assert review.get_item(db, queued[SUNDAY].id).note == "courier decides"
    abroad = review.list_items(db, search="abroad")[0]
    assert (abroad.origin, abroad.status, abroad.answer) == ("import", "approved", "No, domestic only.")
    # Exporting everything and importing it untouched changes nothing.
    export_items(db, path)
    again = import_items(db, path, reviewer="bo")
    assert (again.created, again.approved, again.rejected, again.unchanged) == (0, 0, 0, 3)
    assert review.get_item(db, queued[SHIPPING].id).reviewer == "ana"


def _write(path, records, fmt):
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        return
    columns = list(dict.fromkeys(k for r in records for k in r))
    with open(path, "w", encoding="utf-8-sig", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(records)


def test_bad_csv_rows_are_reported_by_line_and_nothing_is_imported(db, queued, tmp_path):
    shipping, sunday = queued[SHIPPING].id, queued[SUNDAY].id
    path = tmp_path / "decisions.csv"
    path.write_text(
        "id,status,question,answer,note\n"  # line 1
        f'{shipping},approved,,"Shipping is 3,000 won.\nFree from 30,000 won.",\n'  # lines 2-3: fine
        f"{sunday},approved,,,\n"  # line 4: no answer
        "ri_nope,rejected,,,\n"  # line 5: unknown id
        f"{shipping},rejected,,,\n"  # line 6: id twice
        ",done,Is there a store?,,\n"  # line 7: bad status
        ",,,,\n"  # line 8: blank, skipped
        ",,Do you ship abroad?,No.,\n"  # line 9: fine
        ",,,Yes.,\n",  # line 10: no question
        encoding="utf-8",
    )
    with pytest.raises(ImportRejected) as info:
        import_items(db, path, reviewer="ana")
    assert [e.line for e in info.value.errors] == [4, 5, 6, 7, 10]
    assert "line 4: status is approved but the answer is empty" in info.value.message
    assert "no review item 'ri_nope'" in str(info.value.errors[1])
    assert review.status_counts(db) == {"pending": 2, "approved": 0, "rejected": 0}


def test_bad_jsonl_lines_are_reported_and_nothing_is_imported(db, queued, tmp_path):
    path = tmp_path / "decisions.jsonl"
    path.write_text(
        json.dumps({"id": queued[SHIPPING].id, "status": "approved", "answer": FIXED})
        + "\n"
        + "\n"
        + '{"id": "x", "status": \n'
        + json.dumps(["not", "an", "object"])
        + "\n"
        + json.dumps({"question": SUNDAY, "answer": "No."})
        + "\n",  # already pending under its id
        encoding="utf-8",
    )
    with pytest.raises(ImportRejected) as info:
        import_items(db, path, reviewer="ana")
    assert [(e.line, e.message.split(":")[0]) for e in info.value.errors] == [
        (3, "not valid JSON"),
        (4, "expected a JSON object, got list"),
        (5, f"this question is already pending or approved as {queued[SUNDAY].id} (put that id in the row)"),
    ]
    assert review.get_item(db, queued[SHIPPING].id).status == "pending"


def test_cli_round_trip_and_errors(db, queued, settings, tmp_path):
    env = {"TUNELOOP_PATHS__DATA_DIR": str(settings.data_dir), "TUNELOOP_DATABASE__URL": settings.database.url}
    runner = CliRunner()
    listed = runner.invoke(cli, ["review", "list", "--status", "pending"], env=env)
    assert listed.exit_code == 0 and SHIPPING in listed.output and "2 pending" in listed.output
    shown = runner.invoke(cli, ["review", "show", queued[SHIPPING].id], env=env)
    assert f"user suggested: {FIXED}" in shown.output and "answered (4 up, 6 down): It is 2,500 won." in shown.output
    # --reviewer names an account (issue 23: no more free-text reviewers).
    accounts.add_user(db, "ana@example.com", role="reviewer", name="Ana", actor="test")
    approved = runner.invoke(
        cli, ["review", "approve", queued[SHIPPING].id, "--use-suggestion", "--reviewer", "ana@example.com"], env=env
    )
    assert approved.exit_code == 0 and "(user)" in approved.output
    empty = runner.invoke(cli, ["review", "approve", queued[SUNDAY].id, "--answer", " "], env=env)
    assert empty.exit_code == 2 and "answer must not be empty" in empty.output
    out = tmp_path / "q.csv"
    assert runner.invoke(cli, ["review", "export", "-o", str(out)], env=env).exit_code == 0
    lines = out.read_text(encoding="utf-8-sig").splitlines()
    pending_line = next(n for n, line in enumerate(lines, 1) if ",pending," in line)
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines).replace(",pending,", ",finished,"), encoding="utf-8")
    refused = runner.invoke(cli, ["review", "import", str(bad)], env=env)
    assert refused.exit_code == 2 and f"line {pending_line}: status must be one of" in refused.output
    rejected = runner.invoke(cli, ["review", "reject", queued[SUNDAY].id, "--note", "n/a"], env=env)
    assert rejected.exit_code == 0
    assert review.status_counts(db) == {"pending": 0, "approved": 1, "rejected": 1}


def _teacher_settings(settings, base_url: str, **extra):
    values = {
        "paths.data_dir": str(settings.data_dir),
        "review.teacher_model": "teacher",
        "review.teacher_base_url": base_url,
        "model.retries": 0,
        "model.connect_timeout_s": 1.0,
    }
    values.update(extra)
    return load_settings(env={}, overrides=values)


def test_teacher_drafts_wait_for_approval(db, queued, settings, fake_upstream):
    teacher = _teacher_settings(settings, fake_upstream.base_url)
    summary = draft_answers(db, teacher)
    assert sorted(summary.drafted) == sorted(i.id for i in queued.values()) and summary.failed == []
    item = review.get_item(db, queued[SHIPPING].id)
    assert item.status == "pending" and item.draft_model == "teacher"
    assert item.draft.startswith("echo: Question: How much is the shipping fee?")  # the fake echoes its prompt
    sent = next(r for r in fake_upstream.log.requests if SHIPPING in r["messages"][1]["content"])
    assert sent["model"] == "teacher" and sent["messages"][0]["role"] == "system"
    assert f"A user suggested: {FIXED}" in sent["messages"][1]["content"]
    assert draft_answers(db, teacher).drafted == []  # already drafted
    assert item.suggested_answer == item.draft


def test_teacher_drafts_can_be_auto_approved_and_failures_are_reported(db, queued, settings, fake_upstream):
    auto = _teacher_settings(settings, fake_upstream.base_url, **{"review.auto_approve_teacher": True})
    summary = draft_answers(db, auto, item_ids=[queued[SUNDAY].id])
    assert summary.approved == [queued[SUNDAY].id]
    item = review.get_item(db, queued[SUNDAY].id)
    assert (item.status, item.answer_source, item.reviewer) == ("approved", "teacher", "teacher:teacher")
    down = _teacher_settings(settings, f"http://127.0.0.1:{free_port()}/v1")
    failed = draft_answers(db, down)
    assert failed.drafted == [] and failed.failed[0][0] == queued[SHIPPING].id
    assert "cannot reach" in failed.failed[0][1]
    with pytest.raises(ConfigError) as info:
        draft_answers(db, settings)  # no teacher configured
    assert info.value.field == "review.teacher_model"


def test_migration_keeps_one_open_item_per_question_in_sql(db):
    with write_transaction(db):
        db.execute("""INSERT INTO review_items (id, question, question_key, status, created_at, updated_at)
                      VALUES ('a', 'q', 'q', 'pending', 't', 't')""")
    with pytest.raises(sql.integrity_errors()) as unique:
        with write_transaction(db):
            db.execute("""INSERT INTO review_items (id, question, question_key, status, answer, created_at, updated_at)
                          VALUES ('b', 'q', 'q', 'approved', 'a', 't', 't')""")
    assert sql.constraint_kind(unique.value) == "unique"
    with pytest.raises(sql.integrity_errors()) as check:  # approved without an answer is refused
        with write_transaction(db):
            db.execute("UPDATE review_items SET status = 'approved' WHERE id = 'a'")
    assert sql.constraint_kind(check.value) == "check"
