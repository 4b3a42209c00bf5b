"""The knowledge base after an erasure: phrasings and answers learned from the person leave every version.

Approving a review item puts its question and its users' phrasings into a knowledge-base entry, and may put a
user's suggested correction in as the answer (``feedback/knowledge/corrections.py``); every version is kept in
``kb_history``. Only entries an approval ever changed can hold a user's words, so only those are read. For each:

- every version in ``kb_history`` loses the subject's phrasings, and an answer that was their words becomes
  :data:`ERASED` — rewritten in place: the history keeps its shape (who changed what, when, why), not the words;
- the current entry loses them too, as a new version by the person running the erasure (audited, and picked up
  by every gateway worker at its next refresh, like any edit); an answer that was theirs falls back to the
  newest earlier answer that was not; an entry left with no question, or with no answer of anyone else's, is
  retired (kept, as every entry is, for the lineage of answers built on it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from sqlite_utils import Database

from feedback.knowledge import store
from feedback.privacy.texts import Texts
from feedback.sql import like

ERASED = "[erased on request]"


@dataclass
class KnowledgeScrub:
    """What an erasure changed in the knowledge base."""

    changed: list[str] = field(default_factory=list)  # entry ids given a new version
    retired: list[str] = field(default_factory=list)  # of those, the ones retired
    history_rows: int = 0  # earlier versions rewritten in place
    phrasings: int = 0  # phrasings removed from current entries


def _learned_entries(db: Database) -> list[store.KBEntry]:
    """Entries a review approval ever changed: the only ones that can hold a user's words."""
    ids = [
        row[0]
        for row in db.execute(
            f"""SELECT DISTINCT entry_id FROM kb_history WHERE {like("reason", "'approved review item %'")}
               UNION SELECT id FROM kb_entries WHERE source_kind = 'review'"""
        )
    ]
    return list(store.get_entries(db, ids).values())


def scrub_knowledge(db: Database, texts: Texts, *, actor: str, reason: str) -> KnowledgeScrub:
    """Remove the subject's words from every version of every learned entry (inside the caller's transaction)."""
    result = KnowledgeScrub()
    if not texts:
        return result
    for entry in _learned_entries(db):
        history = store.history(db, entry.id)  # newest first
        for row in history:
            questions = [q for q in row.questions if not texts.matches(q)] or [ERASED]
            answer = ERASED if texts.matches(row.answer) else row.answer
            if tuple(questions) != row.questions or answer != row.answer:
                db.execute(
                    "UPDATE kb_history SET questions = ?, answer = ? WHERE entry_id = ? AND version = ?",
                    [json.dumps(questions, ensure_ascii=False), answer, entry.id, row.version],
                )
                result.history_rows += 1
        questions = [q for q in entry.questions if not texts.matches(q)]
        answer = entry.answer
        if texts.matches(answer):
            answer = next((h.answer for h in history if h.answer != ERASED and not texts.matches(h.answer)), None)
        if questions == list(entry.questions) and answer == entry.answer:
            continue
        result.phrasings += len(entry.questions) - len(questions)
        if questions and answer:
            changed = store.changed_entry(entry, questions=questions, answer=answer)
        else:
            changed = replace(entry, questions=tuple(questions) or (ERASED,), answer=answer or ERASED, state="retired")
            result.retired.append(entry.id)
        store.save_entries(db, [changed], actor=actor, reason=reason)
        result.changed.append(entry.id)
    return result
