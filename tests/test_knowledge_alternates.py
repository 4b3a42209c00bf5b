"""The bundled FAQ's alternate questions: the data lines up, first start and older databases get them, edits win.

Real SQLite files and a real PostgreSQL (the storage tests run on both); seeding goes through
``seed.ensure_seeded`` as every process start does.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from feedback import audit
from feedback.knowledge import alternates, seed, store
from feedback.knowledge.analysis import language_of
from feedback.knowledge.retrieval import Entry, Retriever
from feedback.text import question_key

pytestmark = pytest.mark.engines  # seeding runs at every start, on SQLite and on PostgreSQL

DATA = Path(__file__).resolve().parent.parent / "data"
SHIPPING = "How much is the shipping fee?"


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]


FAQ = rows("faq.jsonl")
ALTERNATES = alternates.read_alternates()


def bundled_entries(db) -> dict[int, store.KBEntry]:
    """FAQ line (0-based) -> its entry."""
    return {int(e.source_ref.rsplit(":", 1)[1]) - 1: e for e in store.entries_from(db, "base", "data/faq.jsonl:")}


# --- the data ---------------------------------------------------------------------------------------


def test_every_faq_row_has_ten_to_twelve_alternates_in_its_language_none_seen_elsewhere():
    assert [r.faq_line for r in ALTERNATES] == list(range(len(FAQ)))
    keys = Counter(question_key(r["messages"][0]["content"]) for r in FAQ)
    for row in ALTERNATES:
        source = FAQ[row.faq_line]["messages"][0]["content"]
        assert row.question == source
        assert 10 <= len(row.alternates) <= 12, row.faq_line  # 5–6 of the first release, 5–6 added later
        assert {language_of(q) for q in row.alternates} == {language_of(source)}, row.faq_line
        keys.update(question_key(q) for q in row.alternates)
    assert [k for k, n in keys.items() if n > 1] == []  # no phrasing in two entries, none an FAQ question
    # No evaluation or retrieval query set holds one, so no figure measured on them is a lookup.
    for name in ("rewordings.jsonl", "paraphrases.jsonl", "golden-rewordings.jsonl"):
        asked = {question_key(r["messages"][0]["content"]) for r in rows(name)}
        assert [r.faq_line for r in ALTERNATES for q in r.alternates if question_key(q) in asked] == [], name


def test_alternates_find_more_dev_rewordings_first_than_the_faq_questions_alone():
    def entries(with_alternates: bool) -> list[Entry]:
        return [
            Entry(
                f"faq-{row.faq_line}",
                (row.question, *(row.alternates if with_alternates else ())),
                FAQ[row.faq_line]["messages"][1]["content"],
            )
            for row in ALTERNATES
        ]

    dev = [r for r in rows("rewordings.jsonl") if r["split"] == "dev"]

    def first(retriever: Retriever) -> int:
        return sum(
            [h.entry_id for h in retriever.search(r["messages"][0]["content"], k=1)] == [f"faq-{r['rewording_of']}"]
            for r in dev
        )

    plain, expanded = first(Retriever(entries(False))), first(Retriever(entries(True)))
    # Measured 93 and 106 of 123 (docs/benchmarks.md); floors well below, so only a real regression fails.
    assert expanded >= plain + 6 and expanded / len(dev) >= 0.8


def test_a_malformed_alternates_row_is_named_by_its_line(tmp_path):
    path = tmp_path / "alternates.jsonl"
    path.write_text('{"alternates_of": 0, "question": "q", "questions": ["a"]}\n{"alternates_of": 1}\n')
    with pytest.raises(ValueError, match="line 2"):
        alternates.read_alternates(path)


# --- seeding ----------------------------------------------------------------------------------------


def test_first_start_gives_every_bundled_entry_its_alternates_with_their_source(db, settings):
    assert seed.ensure_seeded(db, settings.knowledge) == len(FAQ)
    entries = bundled_entries(db)
    assert len(entries) == len(FAQ)
    for row in ALTERNATES:
        entry = entries[row.faq_line]
        assert entry.questions == (row.question, *row.alternates)  # the FAQ question stays first, shown as source
        newest, first = store.history(db, entry.id)
        assert (first.questions, first.reason) == ((row.question,), "first start: imported data/faq.jsonl")
        assert (newest.actor, newest.reason, newest.questions) == ("system", alternates.REASON, entry.questions)
    # A customer's phrasing is now one of the entry's own questions.
    korean = ALTERNATES[42].alternates[0]
    assert store.entry_for_question(db, korean).id == entries[42].id
    imports = [e for e in audit.entries(db) if e.action == "kb.import"]
    assert [e.details["reason"] for e in imports].count(alternates.REASON) == 1  # one audit row for all


def seed_without_alternates(db, settings, monkeypatch) -> dict[int, store.KBEntry]:
    """A database seeded by the version before the alternates shipped."""
    with monkeypatch.context() as patch:
        patch.setattr(alternates, "BUNDLED_ALTERNATES", Path("/nonexistent/faq-alternates.jsonl"))
        seed.ensure_seeded(db, settings.knowledge)
    entries = bundled_entries(db)
    assert {len(e.questions) for e in entries.values()} == {1}
    return entries


def test_a_database_seeded_before_gets_them_at_next_start_except_on_entries_people_changed(db, settings, monkeypatch):
    entries = seed_without_alternates(db, settings, monkeypatch)
    shipping = next(e for e in entries.values() if e.question == SHIPPING)
    edited = store.update_entry(db, entries[0].id, actor="ana", questions=[entries[0].question, "how to buy?"])
    corrected = store.update_entry(db, entries[1].id, actor="ana", answer="Guest checkout is closed for now.")
    retired = store.retire_entry(db, entries[2].id, actor="ana")
    # A phrasing another entry already holds stays that entry's.
    taken = ALTERNATES[27].alternates[0]
    manual = store.add_entry(db, questions=[taken], answer="Two days.", actor="bo")

    assert seed.ensure_seeded(db, settings.knowledge) is None  # no second import ...
    after = bundled_entries(db)
    assert after[0] == edited and after[1] == corrected and after[2] == retired  # ... people's entries untouched
    assert after[27].questions == (FAQ[27]["messages"][0]["content"], *ALTERNATES[27].alternates[1:])
    assert store.entry_for_question(db, taken).id == manual.id
    got = [line for line, e in after.items() if len(e.questions) > 1 and e.updated_by == "system"]
    assert len(got) == len(FAQ) - 3
    assert store.get_entry(db, shipping.id).questions[1:] == ALTERNATES[28].alternates

    # Idempotent: the next start writes nothing, and phrasings a reviewer removes are not added back.
    seq = store.current_seq(db)
    assert seed.ensure_seeded(db, settings.knowledge) is None and store.current_seq(db) == seq
    store.update_entry(db, shipping.id, actor="ana", questions=[SHIPPING])
    seed.ensure_seeded(db, settings.knowledge)
    assert store.get_entry(db, shipping.id).questions == (SHIPPING,)


def test_a_release_with_more_alternates_adds_them_to_entries_nobody_changed_since(db, settings, monkeypatch, tmp_path):
    # A database seeded by a release that shipped the first three alternates of each row.
    older = tmp_path / "faq-alternates.jsonl"
    older.write_text(
        "".join(
            json.dumps({"alternates_of": r.faq_line, "question": r.question, "questions": list(r.alternates[:3])})
            + "\n"
            for r in ALTERNATES
        ),
        encoding="utf-8",
    )
    with monkeypatch.context() as patch:
        patch.setattr(alternates, "BUNDLED_ALTERNATES", older)
        seed.ensure_seeded(db, settings.knowledge)
    entries = bundled_entries(db)
    assert entries[5].questions == (ALTERNATES[5].question, *ALTERNATES[5].alternates[:3])
    trimmed = store.update_entry(db, entries[3].id, actor="ana", questions=list(entries[3].questions[:2]))
    corrected = store.update_entry(db, entries[4].id, actor="ana", answer="We changed this policy.")

    seed.ensure_seeded(db, settings.knowledge)  # the next start runs the release with every alternate
    after = bundled_entries(db)
    assert after[5].questions == (ALTERNATES[5].question, *ALTERNATES[5].alternates)
    assert after[3] == trimmed and after[4] == corrected  # what people changed stays as they left it
    grown = [line for line, e in after.items() if len(e.questions) == 1 + len(ALTERNATES[line].alternates)]
    assert len(grown) == len(FAQ) - 2
    newest = store.history(db, after[5].id)[0]
    assert (newest.actor, newest.reason) == ("system", alternates.REASON)
    seq = store.current_seq(db)
    assert seed.ensure_seeded(db, settings.knowledge) is None and store.current_seq(db) == seq  # idempotent


def test_a_base_from_another_file_gets_no_bundled_alternates(tmp_path, db):
    from config.settings import load_settings

    own = tmp_path / "faq.jsonl"
    own.write_text((DATA / "faq.jsonl").read_text(encoding="utf-8"), encoding="utf-8")  # same rows, own file
    knowledge = load_settings(env={}, overrides={"knowledge.base_file": str(own)}).knowledge
    assert seed.ensure_seeded(db, knowledge) == len(FAQ)
    assert {len(e.questions) for e in store.all_entries(db)} == {1}
