"""The audit log after an erasure: its quotes of the person's words go, the record of who did what stays.

Review and knowledge-base entries in the audit log quote the question they were about (up to
:data:`QUOTE_CHARS` characters, ``feedback/review.py``, ``feedback/knowledge/store.py``). An entry about an item
or entry the erasure changed quotes its new question; any other quote that is the subject's words — whole, or
cut at :data:`QUOTE_CHARS` — becomes :data:`~feedback.privacy.knowledge_base.ERASED`. The entry itself (who,
when, what action, which id) is the accountability the log exists for, and is kept.
"""

from __future__ import annotations

import json

from sqlite_utils import Database

from feedback.privacy.knowledge_base import ERASED
from feedback.privacy.texts import Texts
from feedback.sql import like

QUOTING = ("'review.%'", "'kb.%'")  # the audit actions whose details may quote a user's words

QUOTE_CHARS = 200  # what an audit entry quotes of a question, at most


def _quotes_subject(texts: Texts, value: str) -> bool:
    return texts.matches(value) or (len(value) >= QUOTE_CHARS and texts.starts(value))


def _redacted(value, texts: Texts, question: str | None, key: str = ""):
    if isinstance(value, dict):
        return {k: _redacted(v, texts, question, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v, texts, question) for v in value]
    if isinstance(value, str):
        if key == "question" and question is not None:
            return question[:QUOTE_CHARS]
        if _quotes_subject(texts, value):
            return ERASED
    return value


def redact_quotes(db: Database, texts: Texts, questions: dict[str, str]) -> int:
    """Rewrite the quotes of review and knowledge-base entries (inside the caller's transaction).

    ``questions`` maps an item or entry id to the question its entries should quote now (:data:`ERASED` for
    one deleted). Returns how many audit entries changed.
    """
    changed = 0
    rows = db.execute(
        f"SELECT id, target, details FROM audit_log WHERE {like('action', QUOTING[0])} OR {like('action', QUOTING[1])}"
    ).fetchall()
    for entry_id, target, details in rows:
        before = json.loads(details or "{}")
        after = _redacted(before, texts, questions.get(target or ""))
        if after != before:
            db.execute(
                "UPDATE audit_log SET details = ? WHERE id = ?",
                [json.dumps(after, ensure_ascii=False, sort_keys=True), entry_id],
            )
            changed += 1
    return changed
