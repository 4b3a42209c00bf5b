"""The review queue after an erasure: the person's words leave every item's evidence; an item nobody else
supports goes.

A review item copies what users said (``feedback/review.py``, ``_evidence``): the answers they were given, their
comments, suggested corrections, phrasings and keys, the ids of their down-voted answers. :func:`scrub_item`
removes every piece that is the subject's (:class:`feedback.privacy.texts.Texts`, the ids of their messages)
and then decides what is left:

- the item's question was theirs and another user's phrasing of it remains: that phrasing becomes the question;
- the question was theirs and no one else's phrasing remains: nothing else supports the item; it is deleted;
- the approved answer was their own words (a suggested correction approved as is): it goes, and the item is
  pending again, for a reviewer to answer in their own words;
- a teacher's draft or a reviewer's note quoting them goes.

Vote counts (``votes``, ``down``, ``up``, ``asked``, ``score``) are numbers, kept as collected.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field

from sqlite_utils import Database

from feedback.db import savepoint
from feedback.privacy.texts import Texts
from feedback.review import ReviewItem, list_items
from feedback.sql import integrity_errors
from feedback.text import question_key

# Evidence lists of texts, and the fields of each entry that hold a user's words.
_TEXT_LISTS = {
    "answers": ("answer",),
    "comments": ("comment", "question"),
    "corrections": ("correction",),
    "variants": ("question",),
}


@dataclass
class ItemChange:
    """What an erasure does to one review item: ``delete`` it, or ``update`` these columns."""

    item: ReviewItem
    action: str  # "delete" | "update"
    columns: dict = field(default_factory=dict)
    pieces: int = 0  # evidence pieces removed

    @property
    def unapproved(self) -> bool:
        return self.item.status == "approved" and (self.action == "delete" or self.columns.get("status") == "pending")


def scrub_item(item: ReviewItem, texts: Texts, message_ids: set[str]) -> ItemChange | None:
    """What to change in ``item`` so none of the subject's words or message ids remain (None: nothing)."""
    evidence = copy.deepcopy(item.evidence)
    removed = 0
    ids = evidence.get("message_ids") or []
    kept_ids = [i for i in ids if i not in message_ids]
    removed += len(ids) - len(kept_ids)
    if ids:
        evidence["message_ids"] = kept_ids
    for name, fields in _TEXT_LISTS.items():
        entries = evidence.get(name) or []
        kept = [e for e in entries if not (isinstance(e, dict) and any(texts.matches(e.get(f)) for f in fields))]
        removed += len(entries) - len(kept)
        if entries:
            evidence[name] = kept
    keys = evidence.get("keys") or []
    kept_keys = [k for k in keys if not texts.matches(k)]
    removed += len(keys) - len(kept_keys)
    if keys:
        evidence["keys"] = kept_keys

    columns: dict = {}
    if texts.matches(item.question):
        others = [v["question"] for v in evidence.get("variants") or [] if v.get("question", "").strip()]
        if not others:
            return ItemChange(item, "delete", pieces=removed)
        columns.update(question=others[0].strip(), question_key=question_key(others[0]))
    if item.answer and texts.matches(item.answer):
        columns.update(answer=None, answer_source=None)
        if item.status == "approved":
            columns.update(status="pending", reviewer=None, decided_at=None)
    for name in ("draft", "note"):
        if texts.matches(getattr(item, name)):
            columns[name] = None
            if name == "draft":
                columns["draft_model"] = None
    if evidence != item.evidence:
        columns["evidence"] = json.dumps(evidence, ensure_ascii=False, sort_keys=True)
    if not columns:
        return None
    return ItemChange(item, "update", columns, removed)


def scrub_review_queue(db: Database, texts: Texts, message_ids: set[str], now: str) -> list[ItemChange]:
    """Apply :func:`scrub_item` to every review item (inside the caller's transaction); returns the changes.

    A question that becomes another open item's question (the unique index on open questions refuses it)
    means that other item already stands for it: this one is deleted instead.
    """
    changes = []
    for item in _all_items(db):
        change = scrub_item(item, texts, message_ids)
        if change is None:
            continue
        if change.action == "update":
            sets = ", ".join(f"{name} = ?" for name in change.columns)
            try:
                with savepoint(db):  # on PostgreSQL the refused UPDATE must not abort the whole erasure
                    db.execute(
                        f"UPDATE review_items SET {sets}, updated_at = ? WHERE id = ?",
                        [*change.columns.values(), now, item.id],
                    )
            except integrity_errors():
                change = ItemChange(item, "delete", pieces=change.pieces)
        if change.action == "delete":
            db.execute("DELETE FROM review_items WHERE id = ?", [item.id])
        changes.append(change)
    return changes


def _all_items(db: Database, page: int = 500) -> list[ReviewItem]:
    items, offset = [], 0
    while True:
        batch = list_items(db, limit=page, offset=offset)
        items += batch
        if len(batch) < page:
            return items
        offset += page
