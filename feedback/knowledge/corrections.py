"""Approved corrections go live as knowledge-base entries, in the approval's own transaction.

Approving a review item (``feedback/review.py``) upserts one entry, chosen in this order:

1. the entry this item already updated (re-approving or editing an approved item changes it again);
2. the entry the reviewer picked (``target``: an entry id, or :data:`NEW` for a new entry);
3. the active entry one of whose questions is the item's question (by ``question_key``) — "a correction
   replaces the entry of the same question";
4. the entry most of the item's thumbs-down answers were grounded on at rank 1 (``message_sources``): the users
   were answered from it and said the answer was wrong, so that is the entry to fix (an outdated entry asked
   in other words);
5. otherwise a new entry (``source_kind = review``, ``source_ref`` = the item id).

The entry gets the approved answer, and the item's question and the phrasings users grouped with it
(``evidence.variants``) as extra questions — except a phrasing another active entry already has, which stays
there, and one holding personal data (:func:`phrasings`). History: actor = the reviewer, reason = "approved
review item <id>". The item remembers the entry and the entry's version before its first approval (0: the
approval created it), so :func:`revert_approval` — rejecting an approved item — puts the entry back as it was (a
created entry is retired), again with who and why.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from sqlite_utils import Database

from config.errors import ValidationFailed
from feedback.knowledge import store
from feedback.knowledge.store import KBEntry
from feedback.pii import PiiMasker
from feedback.sql import in_list
from feedback.text import question_key

NEW = "new"
_MASKER = PiiMasker()


def approval_target(db: Database, item, target: str | None = None) -> KBEntry | None:
    """The entry approving ``item`` would update (None: a new entry), by the rules in the module docstring."""
    if item.kb_entry_id and getattr(item, "kb_entry_version_before", None) is not None:
        return store.find_entry(db, item.kb_entry_id)
    if target == NEW:
        return None
    if target:
        entry = store.find_entry(db, target)
        if entry is None:
            raise ValidationFailed(f"no knowledge-base entry {target!r} to put this correction in", field="kb_entry")
        return entry
    same_question = store.entry_for_question(db, item.question)
    if same_question is not None:
        return same_question
    return _grounded_on(db, item.evidence.get("message_ids") or [])


def _grounded_on(db: Database, message_ids: list[str]) -> KBEntry | None:
    if not message_ids:
        return None
    in_messages, params = in_list(db, "s.message_id", message_ids)
    rows = db.execute(f"SELECT s.entry_id FROM message_sources s WHERE s.rank = 1 AND {in_messages}", params).fetchall()
    counts = Counter(entry_id for (entry_id,) in rows)
    if not counts:
        return None
    entry_id, n = counts.most_common(1)[0]
    entry = store.find_entry(db, entry_id)
    # "Most": more than half of the thumbs-down answers, so a stray retrieval does not pick the entry to rewrite.
    return entry if entry is not None and entry.active and n * 2 > len(message_ids) else None


def phrasings(item) -> list[str]:
    """The item's question, then the user phrasings grouped with it (most voted first).

    Users' phrasings are stored in the knowledge base, exported and searched for everyone, so one that holds
    personal data (a phone number, an e-mail, an order-like number: ``feedback/pii.py``) is left out; the item's
    question, which the reviewer saw and approved, is kept with such values masked.
    """
    variants = [v.get("question", "") for v in item.evidence.get("variants") or [] if isinstance(v, dict)]
    return [_MASKER.mask(item.question).text, *[v for v in variants if v and v.strip() and not _MASKER.find(v)]]


def apply_approval(db: Database, item, *, actor: str, target: str | None = None) -> tuple[KBEntry, int]:
    """Upsert the entry for an approved ``item``; returns it and its version before this item's first approval."""
    entry = approval_target(db, item, target)
    reason = f"approved review item {item.id}"
    first_approval = not (item.kb_entry_id and getattr(item, "kb_entry_version_before", None) is not None)
    if entry is None:
        questions = _free_questions(db, phrasings(item), None)
        created = store.new_entry(
            questions=questions or [item.question],
            answer=item.answer,
            source_kind="review",
            source_ref=item.id,
            actor=actor,
        )
        return store.save_entries(db, [created], actor=actor, reason=reason)[0], 0
    before = entry.version if first_approval else item.kb_entry_version_before
    questions = list(entry.questions) + _free_questions(db, phrasings(item), entry.id)
    changed = store.changed_entry(entry, questions=questions, answer=item.answer, state="active")
    if changed == entry:
        return entry, before
    return store.save_entries(db, [changed], actor=actor, reason=reason)[0], before


def _free_questions(db: Database, questions: list[str], entry_id: str | None) -> list[str]:
    """The questions no other active entry holds (one keeps its own)."""
    free = []
    for question in questions:
        holder = db.execute("SELECT entry_id FROM kb_question_keys WHERE key = ?", [question_key(question)]).fetchone()
        if holder is None or holder[0] == entry_id:
            free.append(question)
    return free


def revert_approval(db: Database, item, *, actor: str, reason: str) -> KBEntry | None:
    """Put the entry an approval changed back as it was before (retired if the approval created it)."""
    if not item.kb_entry_id or getattr(item, "kb_entry_version_before", None) is None:
        return None
    entry = store.find_entry(db, item.kb_entry_id)
    if entry is None:
        return None
    before = item.kb_entry_version_before
    if before == 0:
        if not entry.active:
            return entry
        return store.save_entries(db, [replace(entry, state="retired")], actor=actor, reason=reason)[0]
    return store.revert_entry(db, entry.id, before, actor=actor, reason=reason)
