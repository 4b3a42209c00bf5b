"""Approving a review item upserts its knowledge-base entry at once; rejecting it puts the entry back."""

from __future__ import annotations

import pytest

from config.errors import Conflict
from feedback import review
from feedback.db import write_transaction
from feedback.knowledge import lineage, seed, store
from feedback.knowledge.prompt import Snippet
from feedback.ranking import RankingOptions
from tests.test_ranking import WEEK, ask_many, make_version

pytestmark = pytest.mark.engines  # the storage tests run on SQLite and on PostgreSQL

SHIPPING = "How much is the shipping fee?"
OUTDATED = "Shipping costs 3,000 won per order and is free for orders of 30,000 won or more."
FIXED = "Shipping is 3,500 won per order, free from 50,000 won."
POSTAGE = "postage cost?"


@pytest.fixture
def kb(db, settings):
    seed.ensure_seeded(db, settings.knowledge)
    return db


@pytest.fixture
def live(db):
    return make_version(db, "live", "live")


def collect(db, live, question, *, grounded_on=None, down=6, answers=8, top_n=1):
    """Users ask ``question``, answers (built on ``grounded_on``) are rated down; the group is queued."""
    ask_many(db, live, question, answers=answers, down=down, answer="It is 3,000 won.", correction=FIXED)
    if grounded_on is not None:
        ids = [r[0] for r in db.execute("SELECT id FROM messages WHERE role = 'assistant'").fetchall()]
        with write_transaction(db):
            for message_id in ids:
                lineage.record_sources(db, message_id, [Snippet(grounded_on.id, grounded_on.question, "", 0.6, 1)])
    result = review.collect_worst(
        db, model_version_id=live, since=WEEK[0], until=WEEK[1], options=RankingOptions(top_n=top_n)
    )
    return result.added[0]


def test_a_correction_of_the_same_question_replaces_that_entry(kb, live):
    entry = store.entry_for_question(kb, SHIPPING)
    item = collect(kb, live, "how much is the shipping fee")
    seq = store.current_seq(kb)
    approved = review.approve(kb, item.id, answer=FIXED, reviewer="ana")
    updated = store.get_entry(kb, entry.id)
    assert (updated.answer, updated.version, updated.state) == (FIXED, entry.version + 1, "active")
    assert updated.question == SHIPPING  # the shown question stays
    assert (approved.kb_entry_id, approved.kb_entry_version_before) == (entry.id, entry.version)
    last = store.history(kb, entry.id)[0]
    assert (last.actor, last.reason) == ("ana", f"approved review item {item.id}")
    assert store.current_seq(kb) == seq + 1  # the change every worker's index picks up


def test_an_entry_asked_in_other_words_is_fixed_through_lineage(kb, live):
    # Users asked "postage cost?", were answered from the shipping entry, and rated it down.
    entry = store.entry_for_question(kb, SHIPPING)
    item = collect(kb, live, POSTAGE, grounded_on=entry)
    assert lineage.built_on(kb, item.evidence["message_ids"]) == {entry.id: 6}
    review.approve(kb, item.id, answer=FIXED, reviewer="ana")
    updated = store.get_entry(kb, entry.id)
    # The wording is learned, after the entry's own questions (the FAQ's and its bundled alternates).
    assert updated.answer == FIXED and updated.questions == (*entry.questions, POSTAGE)
    assert updated.question == SHIPPING
    assert store.entry_for_question(kb, "Postage cost") == updated


def test_a_new_question_becomes_a_new_entry_and_rejecting_retires_it(kb, live):
    item = collect(kb, live, "Do you ship to Mars?")
    approved = review.approve(kb, item.id, answer="No, Earth only.", reviewer="ana")
    entry = store.get_entry(kb, approved.kb_entry_id)
    assert (entry.source_kind, entry.source_ref, entry.question, entry.lang) == (
        "review",
        item.id,
        "Do you ship to Mars?",
        "en",
    )
    assert approved.kb_entry_version_before == 0
    review.reject(kb, item.id, reviewer="bo", note="we might, one day")
    retired = store.get_entry(kb, entry.id)
    assert retired.state == "retired" and store.entry_for_question(kb, "Do you ship to Mars?") is None
    assert store.history(kb, entry.id)[0].actor == "bo"
    assert "rejected review item" in store.history(kb, entry.id)[0].reason
    # Rejected items may be approved again later: the entry comes back.
    again = review.approve(kb, item.id, answer="Only in 2040.", reviewer="cy")
    assert store.get_entry(kb, again.kb_entry_id).answer == "Only in 2040."
    assert store.get_entry(kb, again.kb_entry_id).state == "active"


def test_rejecting_an_approved_correction_restores_the_entry_as_it_was(kb, live):
    entry = store.entry_for_question(kb, SHIPPING)
    item = collect(kb, live, SHIPPING)
    review.approve(kb, item.id, answer=FIXED, reviewer="ana")
    review.edit_item(kb, item.id, reviewer="ana", answer=FIXED + " Jeju +3,000 won.")  # the entry follows
    assert store.get_entry(kb, entry.id).answer == FIXED + " Jeju +3,000 won."
    review.reject(kb, item.id, reviewer="bo", note="the old price holds after all")
    restored = store.get_entry(kb, entry.id)
    assert (restored.answer, restored.state, restored.version) == (OUTDATED, "active", entry.version + 3)
    assert restored.questions == entry.questions
    # Seeded by the system (the FAQ row, then its bundled alternate questions), then the review's three changes.
    assert [h.actor for h in store.history(kb, entry.id)] == ["bo", "ana", "ana", "system", "system"]


def test_a_reviewer_can_choose_the_entry_or_a_new_one(kb, live):
    entry = store.entry_for_question(kb, SHIPPING)
    other = store.entry_for_question(kb, "Can I order without creating an account?")
    item = collect(kb, live, SHIPPING)
    # A new entry cannot take a question another active entry has: refused, and nothing changes.
    with pytest.raises(Conflict) as info:
        review.approve(kb, item.id, answer="Ask support.", reviewer="ana", kb_entry="new")
    assert entry.id in info.value.message
    assert review.get_item(kb, item.id).status == "pending" and store.get_entry(kb, entry.id) == entry
    approved = review.approve(kb, item.id, answer="Ask support.", reviewer="ana", kb_entry=other.id)
    assert approved.kb_entry_id == other.id and store.get_entry(kb, other.id).answer == "Ask support."
    assert store.entry_for_question(kb, SHIPPING).id == entry.id  # the question stays with its entry
    second = collect(kb, live, "Do you deliver to the moon?", top_n=5)
    assert review.approve(kb, second.id, answer="No.", reviewer="ana", kb_entry="new").kb_entry_version_before == 0


def test_an_imported_or_manual_approval_goes_live_too(kb):
    item = review.create_item(kb, question="Can I pay with crypto?", answer="No.", reviewer="ana")
    entry = store.entry_for_question(kb, "can i pay with crypto")
    assert entry is not None and entry.answer == "No." and item.kb_entry_id == entry.id


def test_phrasings_grouped_with_the_item_are_learned_but_not_taken_from_other_entries(kb, live):
    entry = store.entry_for_question(kb, SHIPPING)
    ask_many(kb, live, "how much is shipping fee", answers=4, down=4, answer="x")
    item = collect(kb, live, "How much is the shipping fee??", answers=5, down=5)
    variants = {v["question"] for v in item.evidence["variants"]}
    assert "how much is shipping fee" in variants
    review.approve(kb, item.id, answer=FIXED, reviewer="ana")
    assert "how much is shipping fee" in store.get_entry(kb, entry.id).questions


def test_phrasings_with_personal_data_are_not_learned(kb, live):
    entry = store.entry_for_question(kb, SHIPPING)
    ask_many(kb, live, "how much is the shipping fee to 010-1234-5678", answers=4, down=4, answer="x")
    item = collect(kb, live, "How much is the shipping fee??", answers=5, down=5)
    assert any("010-1234-5678" in v["question"] for v in item.evidence["variants"])
    review.approve(kb, item.id, answer=FIXED, reviewer="ana")
    assert not any("010" in q for q in store.get_entry(kb, entry.id).questions)
