"""The knowledge base in the store: seeding once, entries with history, the change counter, imports and exports."""

from __future__ import annotations

import csv
import json
import sqlite3
import threading

import pytest
import sqlite_utils

from config.errors import ConfigError, Conflict, NotFound, ValidationFailed
from config.settings import load_settings
from feedback import accounts, audit, review
from feedback.db import open_db
from feedback.knowledge import io, seed, store
from feedback.migrations import MIGRATIONS
from feedback.review_io import ImportRejected, read_records

pytestmark = pytest.mark.engines  # the storage tests run on SQLite and on PostgreSQL

SHIPPING = "How much is the shipping fee?"
SHIPPING_ANSWER = "Shipping costs 3,000 won per order and is free for orders of 30,000 won or more."


def faq_rows() -> list[dict]:
    lines = seed.BUNDLED_BASE.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture
def seeded(db, settings):
    assert seed.ensure_seeded(db, settings.knowledge) == len(faq_rows())
    return db


def counts(db) -> tuple[int, int, int]:
    """(entries, history rows, change counter)."""
    entries = db.execute("SELECT COUNT(*) FROM kb_entries").fetchone()[0]
    history = db.execute("SELECT COUNT(*) FROM kb_history").fetchone()[0]
    return entries, history, store.current_seq(db)


def test_first_start_imports_the_bundled_faq_once_with_its_lines(seeded, settings):
    rows = faq_rows()
    entry = store.entry_for_question(seeded, "how much is the SHIPPING fee")  # found by question key
    line = next(i for i, r in enumerate(rows, 1) if r["messages"][0]["content"] == SHIPPING)
    assert (entry.question, entry.answer, entry.lang) == (SHIPPING, SHIPPING_ANSWER, "en")
    # Version 1 is the FAQ row; version 2 adds its bundled alternate questions (tests/test_knowledge_alternates.py).
    assert (entry.source_kind, entry.source_ref, entry.state, entry.version) == (
        "base",
        f"data/faq.jsonl:{line}",
        "active",
        2,
    )
    first, *_ = reversed(store.history(seeded, entry.id))
    assert entry.created_by == "system" and first.reason == "first start: imported data/faq.jsonl"
    assert (first.version, first.questions) == (1, (SHIPPING,))
    assert store.state_counts(seeded) == {"active": len(rows), "retired": 0}
    korean = store.entry_for_question(seeded, rows[-1]["messages"][0]["content"])
    assert korean.lang == "ko"
    before = counts(seeded)
    store.update_entry(seeded, entry.id, actor="ana", answer="Shipping is 3,500 won.")
    assert seed.ensure_seeded(seeded, settings.knowledge) is None  # never again, so the edit stays
    assert store.get_entry(seeded, entry.id).answer == "Shipping is 3,500 won."
    assert counts(seeded)[0] == before[0]


def test_two_processes_starting_at_once_seed_once(settings):
    """Four starts at once, each on its own connection (four workers, or four hosts on one empty PostgreSQL store):
    one seeds; the others wait for the seed lock and find the work done, without an error."""
    open_db(settings.store).close()
    errors, results = [], []
    together = threading.Barrier(4)

    def start():
        db = open_db(settings.store, migrate=False)
        try:
            together.wait()
            results.append(seed.ensure_seeded(db, settings.knowledge))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results, key=lambda n: n or 0) == [None, None, None, len(faq_rows())]
    db = open_db(settings.store)
    try:
        assert counts(db)[0] == len(faq_rows())
        (created,) = db.execute("SELECT COUNT(*) FROM kb_history WHERE version = 1").fetchone()
        assert created == len(faq_rows())  # each entry created once
    finally:
        db.close()


def test_a_changed_base_file_is_reported_not_reimported(tmp_path, db, caplog):
    first = tmp_path / "faq.csv"
    first.write_text("question,answer\nDo you ship abroad?,No.\n", encoding="utf-8")
    knowledge = load_settings(env={}, overrides={"knowledge.base_file": str(first)}).knowledge
    assert seed.ensure_seeded(db, knowledge) == 1
    first.write_text("question,answer\nDo you ship abroad?,Yes, to Japan.\n", encoding="utf-8")
    assert seed.ensure_seeded(db, knowledge) is None
    assert "tuneloop kb import" in seed.base_changed(db, knowledge)
    assert "differs from" in caplog.text
    assert store.entry_for_question(db, "Do you ship abroad?").answer == "No."


def test_a_bad_base_file_stops_start_up_naming_line_and_field_and_writes_nothing(tmp_path, db):
    bad = tmp_path / "faq.csv"
    bad.write_text("question,answer\nDo you ship abroad?,No.\nOpen on Sunday?,\n", encoding="utf-8")
    knowledge = load_settings(env={}, overrides={"knowledge.base_file": str(bad)}).knowledge
    with pytest.raises(ConfigError) as info:
        seed.ensure_seeded(db, knowledge)
    assert "line 3, answer: must not be empty" in info.value.message
    assert counts(db) == (0, 0, 0)
    missing = load_settings(env={}, overrides={"knowledge.base_file": "nowhere.csv"}).knowledge
    with pytest.raises(ConfigError, match="knowledge.base_file: nowhere.csv not found"):
        seed.ensure_seeded(db, missing)
    assert seed.ensure_seeded(db, load_settings(env={}, overrides={"knowledge.seed": False}).knowledge) is None
    assert counts(db) == (0, 0, 0)


def test_every_change_is_a_version_with_who_and_why_and_raises_the_counter(db):
    entry = store.add_entry(db, questions=["Do you ship abroad?", "international shipping?"], answer="No.", actor="ana")
    assert (entry.version, entry.changed_seq, entry.source_kind, entry.lang) == (1, 1, "manual", "en")
    edited = store.update_entry(db, entry.id, actor="bo", reason="we ship to Japan now", answer="Yes, to Japan.")
    assert (edited.version, edited.changed_seq, edited.updated_by) == (2, 2, "bo")
    same = store.update_entry(db, entry.id, actor="bo", answer="  Yes, to Japan.  ")  # nothing changed
    assert same.version == 2 and store.current_seq(db) == 2
    retired = store.retire_entry(db, entry.id, actor="cy", reason="policy withdrawn")
    assert retired.state == "retired" and store.entry_for_question(db, "international shipping") is None
    # Its questions are free again: a new entry may take one.
    other = store.add_entry(db, questions="International shipping?", answer="Ask us.", actor="cy")
    with pytest.raises(Conflict) as info:
        store.restore_entry(db, entry.id, actor="cy")
    assert other.id in info.value.message
    store.retire_entry(db, other.id, actor="cy")
    reverted = store.revert_entry(db, entry.id, 1, actor="dee", reason="back to the original")
    assert (reverted.version, reverted.answer, reverted.state) == (4, "No.", "active")
    assert [(h.version, h.actor, h.reason, h.state) for h in store.history(db, entry.id)] == [
        (4, "dee", "back to the original", "active"),
        (3, "cy", "policy withdrawn", "retired"),
        (2, "bo", "we ship to Japan now", "active"),
        (1, "ana", "added", "active"),
    ]
    assert [e.id for e in store.changed_since(db, 3)] == [other.id, entry.id]


def test_entries_are_checked(db):
    for questions, answer, field in (
        ([" "], "x", "questions"),
        (["q?"], " ", "answer"),
        (["q?"], "a" * 9000, "answer"),
    ):
        with pytest.raises(ValidationFailed) as info:
            store.add_entry(db, questions=questions, answer=answer, actor="ana")
        assert info.value.field == field
    with pytest.raises(ValidationFailed) as info:
        store.add_entry(db, questions=["q?"], answer="a", lang="fr", actor="ana")
    assert info.value.field == "lang"
    with pytest.raises(ValidationFailed):
        store.add_entry(db, questions=["q?"], answer="a", actor=" ")
    twice = store.add_entry(db, questions=["Where is my parcel?", "where is my parcel"], answer="a", actor="ana")
    assert twice.questions == ("Where is my parcel?",)
    with pytest.raises(NotFound):
        store.update_entry(db, "kb_nope", actor="ana", answer="b")
    assert counts(db) == (1, 1, 1)


def test_search_lists_and_counts(seeded):
    found = store.list_entries(seeded, search="30,000 won")
    assert SHIPPING in {e.question for e in found}
    assert store.list_entries(seeded, search="100%_") == []  # LIKE wildcards are literal
    assert store.count_entries(seeded, state="retired") == 0
    with pytest.raises(ValidationFailed):
        store.list_entries(seeded, state="gone")


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_export_then_import_round_trips_and_edits_apply(seeded, tmp_path, fmt):
    path = tmp_path / f"kb.{fmt}"
    assert io.export_file(seeded, path) == len(faq_rows())
    before = counts(seeded)
    again = io.import_file(seeded, path, actor="ana")
    assert (again.created, again.updated, again.unchanged) == (0, 0, len(faq_rows()))
    assert counts(seeded) == before  # nothing written, not even the counter

    assert io.read_rows(path)[1] == []
    records = [dict(r) for _, r in read_records(path)[0]]
    first_question = {"csv": lambda r: r["questions"].split("\n")[0], "jsonl": lambda r: r["questions"][0]}[fmt]
    shipping = next(r for r in records if first_question(r) == SHIPPING)  # with its alternate questions
    seeded_version = store.entry_for_question(seeded, SHIPPING).version
    shipping["answer"] = "Shipping is 3,500 won."
    shipping["questions"] = [SHIPPING, "postage?"] if fmt == "jsonl" else f"{SHIPPING}\npostage?"
    records[0]["state"] = "retired"
    records.append({"question": "Do you ship abroad?", "answer": "No, domestic only.", "lang": ""})
    _write(path, records, fmt)
    summary = io.import_file(seeded, path, actor="ana")
    assert (summary.created, summary.updated, summary.retired) == (1, 1, 1)
    entry = store.entry_for_question(seeded, "postage")
    assert (entry.questions, entry.answer) == ((SHIPPING, "postage?"), "Shipping is 3,500 won.")
    assert entry.version == seeded_version + 1
    assert store.history(seeded, entry.id)[0].reason == f"imported kb.{fmt}"
    new = store.entry_for_question(seeded, "Do you ship abroad?")
    line = next(row.line for row in io.read_rows(path)[0] if row.questions == ("Do you ship abroad?",))
    assert (new.source_kind, new.source_ref) == ("import", f"kb.{fmt}:{line}")
    assert store.current_seq(seeded) == before[2] + 1  # one import, one raise of the counter


def test_a_bad_import_names_every_line_and_field_and_writes_nothing(seeded, tmp_path):
    held = store.entry_for_question(seeded, SHIPPING)
    other = store.entry_for_question(seeded, faq_rows()[0]["messages"][0]["content"])
    path = tmp_path / "kb.csv"
    path.write_text(
        "question,answer,lang,state,id\n"
        "Do you ship abroad?,No.,,,\n"  # 2: fine
        "Open on Sunday?,,,,\n"  # 3: no answer
        "Gift wrapping?,Yes.,fr,,\n"  # 4: bad lang
        "do you ship abroad,Maybe.,,,\n"  # 5: same question as line 2
        f"{SHIPPING},3 000 won,,,\n"  # 6: held by a base entry
        "Cash on delivery?,No.,,gone,\n"  # 7: bad state
        f"Returns?,30 days.,,,{other.id}\n"  # 8: fine (updates another entry, replacing its question)
        f"Refunds?,5 days.,,,{other.id}\n",  # 9: same id again
        encoding="utf-8-sig",
    )
    before = counts(seeded)
    with pytest.raises(ImportRejected) as info:
        io.import_file(seeded, path, actor="ana")
    found = [(e.line, e.field) for e in info.value.errors]
    assert found == [(3, "answer"), (4, "lang"), (5, "questions"), (6, "questions"), (7, "state"), (9, "id")]
    assert "line 5, questions: 'do you ship abroad' is also a question on line 2" in info.value.message
    assert counts(seeded) == before
    bad_json = tmp_path / "kb.jsonl"
    bad_json.write_text(
        '{"question": "Hi?", "answer": "Hello."}\n{"messages": [{"role": "user", "content": "a"}]}\n'
        f'{{"question": "{SHIPPING}", "answer": "x"}}\nnot json\n',
        encoding="utf-8",
    )
    with pytest.raises(ImportRejected) as info:
        io.import_file(seeded, bad_json, actor="ana")
    assert [(e.line, e.field) for e in info.value.errors] == [(2, "messages"), (3, "questions"), (4, None)]
    assert f"entry {held.id}" in str(info.value.errors[1])
    assert counts(seeded) == before


def test_dry_run_reports_and_writes_nothing(seeded, tmp_path):
    path = tmp_path / "new.jsonl"
    path.write_text('{"questions": ["Gift wrap?", "can you wrap it"], "answer": "Yes, 2,000 won."}\n', encoding="utf-8")
    before = counts(seeded)
    summary = io.import_file(seeded, path, actor="ana", dry_run=True)
    assert summary.created == 1 and summary.lines[0][1].startswith("created kb_")
    assert counts(seeded) == before


def _write(path, records, fmt):
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        return
    columns = list(dict.fromkeys(k for r in records for k in r))
    with open(path, "w", encoding="utf-8-sig", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)


def test_corrections_approved_before_the_knowledge_base_existed_go_live_at_first_start(tmp_path, settings):
    """A database from the version before the knowledge base: its approved corrections replace their entries'
    answers when the base file is first imported."""
    path = settings.db_path
    path.parent.mkdir(parents=True)
    raw = sqlite_utils.Database(sqlite3.connect(path))
    MIGRATIONS.apply(raw, stop_before="m008_knowledge_base")
    raw.execute(
        """INSERT INTO review_items (id, question, question_key, status, answer, answer_source, reviewer,
               created_at, updated_at, decided_at)
           VALUES ('ri_old', 'how much is the shipping fee', 'how much is the shipping fee', 'approved', ?,
                   'reviewer', 'ana', 't', 't', 't')""",
        ["Shipping is 3,500 won."],
    )
    raw.conn.commit()
    raw.close()
    db = open_db(path)
    seed.ensure_seeded(db, settings.knowledge)
    entry = store.entry_for_question(db, SHIPPING)
    assert (entry.answer, entry.version, entry.source_kind) == ("Shipping is 3,500 won.", 2, "base")
    assert (store.history(db, entry.id)[0].actor, store.history(db, entry.id)[0].reason) == (
        "ana",
        "approved review item ri_old",
    )
    assert db.execute("SELECT kb_entry_id, kb_entry_version_before FROM review_items").fetchone() == (entry.id, 1)


def test_a_base_row_whose_question_an_entry_already_has_is_left_to_that_entry(db, settings):
    review.create_item(db, question=SHIPPING, answer="Ask us.", reviewer="ana")  # before any first start
    seed.ensure_seeded(db, settings.knowledge)
    entry = store.entry_for_question(db, SHIPPING)
    assert (entry.answer, entry.source_kind) == ("Ask us.", "review")
    assert store.state_counts(db)["active"] == len(faq_rows())  # the other 183 rows and the correction


def test_every_change_is_in_the_audit_log_with_the_person_and_an_import_is_one_row(db, tmp_path):
    minji = accounts.add_user(db, "minji@example.com", role="reviewer", name="Min-ji Kim", actor="root")
    who = minji.actor("web")
    entry = store.add_entry(db, questions=["Do you gift-wrap?"], answer="Yes, for 2,000 won.", actor=who)
    store.update_entry(db, entry.id, actor=who, answer="Yes, for free.")
    store.retire_entry(db, entry.id, actor=who)
    store.restore_entry(db, entry.id, actor=who)
    path = tmp_path / "more.jsonl"
    rows = [{"questions": [f"Question number {n}?"], "answer": f"Answer {n}."} for n in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    io.import_file(db, path, actor=who)
    logged = [(e.action, e.target, e.actor_name) for e in audit.entries(db) if e.target == entry.id]
    assert sorted(logged) == sorted(
        (action, entry.id, "Min-ji Kim") for action in ("kb.add", "kb.edit", "kb.retire", "kb.restore")
    )
    (imported,) = [e for e in audit.entries(db) if e.action == "kb.import"]
    assert imported.actor_name == "Min-ji Kim" and imported.details["entries"] == 3
