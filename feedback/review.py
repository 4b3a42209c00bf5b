"""The review queue: worst-answered questions waiting for a person to approve a corrected answer.

Thumbs-down answers are evidence, never training data; an approved correction is.
So the loop goes: :func:`collect_worst` takes the top groups of the worst-answered
ranking (``feedback.ranking``) and queues each as a ``review_items`` row with its
evidence (the answers given and their votes, comments, reasons, the corrections
users suggested, the message ids); a reviewer approves a corrected answer, edits
it, or rejects the item (admin page, CLI, CSV/JSONL round trip); the dataset
builder then trains on every approved answer.

A question is never queued twice while it is pending or approved: a partial
unique index on ``question_key`` enforces it for exact keys, and collecting also
skips a group whose phrasings (or a near-duplicate of its question, by
``feedback.text.similarity``) already belong to an open item — the ranking's
grouping varies a little from week to week, so the leader key alone is not
enough. A rejected question may come back in a later week.

``answer_source`` says where an approved answer came from: ``user`` (a user's
suggested correction taken as is), ``teacher`` (a teacher model's draft taken as
is), or ``reviewer`` (anything a person wrote or changed). Every function takes
the database first, so the CLI, the admin pages, the scheduler and the tests
share them; writes go through ``write_transaction``. Each decision writes an
audit entry (:mod:`feedback.audit`) in the same transaction, as the ``reviewer``
given — an :class:`feedback.audit.Actor` from the pages and the CLI.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from sqlite_utils import Database

from config.errors import Conflict, NotFound, ValidationFailed
from feedback import audit
from feedback.db import new_id, utc_now, write_transaction
from feedback.knowledge import corrections
from feedback.ranking import RankingOptions, rank_worst
from feedback.sql import integrity_errors, json_number, like, like_pattern
from feedback.text import fold_numbers, question_key, similarity

STATUSES = ("pending", "approved", "rejected")
ANSWER_SOURCES = ("reviewer", "teacher", "user")
ORIGINS = ("ranking", "import", "manual")
MAX_ANSWER_CHARS = 8000
MAX_QUESTION_CHARS = 4000

_COLUMNS = (
    "id",
    "question",
    "question_key",
    "origin",
    "model_version_id",
    "evidence",
    "status",
    "answer",
    "answer_source",
    "draft",
    "draft_model",
    "reviewer",
    "note",
    "created_at",
    "updated_at",
    "decided_at",
    "kb_entry_id",
    "kb_entry_version_before",
)


@dataclass
class ReviewItem:
    """One queued question and what was decided about it."""

    id: str
    question: str
    question_key: str
    origin: str
    model_version_id: str | None
    evidence: dict
    status: str
    answer: str | None
    answer_source: str | None
    draft: str | None
    draft_model: str | None
    reviewer: str | None
    note: str | None
    created_at: str
    updated_at: str
    decided_at: str | None
    # The knowledge-base entry the approval upserted, and its version before (0: created by it).
    kb_entry_id: str | None = None
    kb_entry_version_before: int | None = None

    @property
    def suggestions(self) -> list[str]:
        """Corrections users suggested, most suggested first."""
        return [c["correction"] for c in self.evidence.get("corrections", []) if c.get("correction")]

    @property
    def suggested_answer(self) -> str:
        """What an approve form starts from: the approved answer, else the teacher draft, else the top suggestion."""
        if self.answer:
            return self.answer
        if self.draft:
            return self.draft
        return self.suggestions[0] if self.suggestions else ""

    @property
    def keys(self) -> set[str]:
        """The question keys this item stands for: its own and every phrasing grouped with it."""
        keys = {self.question_key}
        keys.update(self.evidence.get("keys", []))
        keys.update(v["key"] for v in self.evidence.get("variants", []) if v.get("key"))
        return keys

    @property
    def downvoted_answers(self) -> list[str]:
        """Distinct answers users voted down, most down-voted first (the rejected side of preference pairs)."""
        return [a["answer"] for a in self.evidence.get("answers", []) if a.get("down", 0) > 0 and a.get("answer")]

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


@dataclass
class CollectResult:
    """What one collect run added, and which ranked groups it skipped and why."""

    added: list[ReviewItem] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {"question", "reason", "item_id"}
    since: str = ""
    until: str = ""
    model_version_id: str = ""


def _row_to_item(row) -> ReviewItem:
    values = dict(zip(_COLUMNS, row, strict=False))
    values["evidence"] = json.loads(values["evidence"] or "{}")
    return ReviewItem(**values)


def _select(db: Database, where: str = "1=1", params: list | dict = (), suffix: str = "") -> list[ReviewItem]:
    sql = f"SELECT {', '.join(_COLUMNS)} FROM review_items WHERE {where} {suffix}"
    return [_row_to_item(row) for row in db.execute(sql, params).fetchall()]


def get_item(db: Database, item_id: str) -> ReviewItem:
    """One review item by id; :class:`NotFound` otherwise."""
    rows = _select(db, "id = ?", [item_id])
    if not rows:
        raise NotFound(f"no review item {item_id!r}", field="id")
    return rows[0]


def open_items(db: Database) -> list[ReviewItem]:
    """Items that block re-queueing their question: pending or approved."""
    return _select(db, "status IN ('pending', 'approved')", [], "ORDER BY created_at, id")


def approved_items(db: Database) -> list[ReviewItem]:
    """Every approved item, oldest decision first (what the dataset builder trains on)."""
    return _select(db, "status = 'approved'", [], "ORDER BY decided_at NULLS FIRST, id")  # SQLite's order, said


def _filters(status: str | None, search: str | None) -> tuple[str, list]:
    where, params = ["1=1"], []
    if status:
        if status not in STATUSES:
            raise ValidationFailed(f"status must be one of {', '.join(STATUSES)}; got {status!r}", field="status")
        where.append("status = ?")
        params.append(status)
    if search and search.strip():
        where.append(f"({like('question')} OR {like('answer')} OR id = ?)")
        pattern = like_pattern(search.strip())
        params += [pattern, pattern, search.strip()]
    return " AND ".join(where), params


def list_items(
    db: Database, *, status: str | None = None, search: str | None = None, limit: int = 100, offset: int = 0
) -> list[ReviewItem]:
    """Items filtered by status and a text search (question, answer or id): newest first, worst first within
    a collect."""
    where, params = _filters(status, search)
    return _select(
        db,
        where,
        params + [int(limit), int(offset)],
        f"ORDER BY created_at DESC, {json_number(db, 'evidence', '$.score')} DESC NULLS LAST, id LIMIT ? OFFSET ?",
    )


def count_items(db: Database, *, status: str | None = None, search: str | None = None) -> int:
    """How many items :func:`list_items` would return without a limit."""
    where, params = _filters(status, search)
    return db.execute(f"SELECT COUNT(*) FROM review_items WHERE {where}", params).fetchone()[0]


def status_counts(db: Database) -> dict[str, int]:
    """Items per status, every status present (zero when none)."""
    counts = dict.fromkeys(STATUSES, 0)
    counts.update(dict(db.execute("SELECT status, COUNT(*) FROM review_items GROUP BY status").fetchall()))
    return counts


def matching_item(items: list[ReviewItem], keys: set[str], threshold: float) -> ReviewItem | None:
    """The first of ``items`` that stands for a question with ``keys``: exact, number-folded or near-duplicate."""
    folded = {fold_numbers(k) for k in keys}
    for item in items:
        if item.keys & keys or {fold_numbers(k) for k in item.keys} & folded:
            return item
    for item in items:
        if any(similarity(a, b) >= threshold for a in keys for b in item.keys):
            return item
    return None


def collect_worst(
    db: Database,
    *,
    model_version_id: str,
    since: str,
    until: str,
    options: RankingOptions | None = None,
    actor: str = "scheduler",
) -> CollectResult:
    """Queue the top ``options.top_n`` worst-answered groups of a version in ``[since, until)``.

    Groups whose question is already pending or approved are skipped (and listed
    in the result with the item that holds them); groups nobody voted down are
    not queued at all.
    """
    options = options or RankingOptions()
    ranking = rank_worst(db, model_version_id=model_version_id, since=since, until=until, options=options)
    result = CollectResult(since=since, until=until, model_version_id=model_version_id)
    now = utc_now()
    with write_transaction(db):
        existing = open_items(db)  # read inside BEGIN IMMEDIATE: two collectors cannot both add
        for group in ranking.groups:
            if group.down == 0:
                continue  # ranked only for lack of worse ones: nothing to correct
            keys = set(group.keys) | {group.question_key}
            match = matching_item(existing, keys, options.similarity_threshold)
            if match is not None:
                result.skipped.append(
                    {"question": group.question, "item_id": match.id, "reason": f"already {match.status} as {match.id}"}
                )
                continue
            evidence = _evidence(group, since, until, model_version_id)
            item = ReviewItem(
                id=new_id("ri"),
                question=group.question,
                question_key=question_key(group.question),
                origin="ranking",
                model_version_id=model_version_id,
                evidence=evidence,
                status="pending",
                answer=None,
                answer_source=None,
                draft=None,
                draft_model=None,
                reviewer=None,
                note=None,
                created_at=now,
                updated_at=now,
                decided_at=None,
            )
            _insert(db, item)
            existing.append(item)
            result.added.append(item)
        if result.added:
            details = {
                "added": [i.id for i in result.added],
                "skipped": len(result.skipped),
                "version": model_version_id,
            }
            audit.record(db, actor, "review.collect", None, details)
    return result


def _evidence(group, since: str, until: str, version: str) -> dict:
    ev = group.evidence
    return {
        "votes": group.votes,
        "down": group.down,
        "up": group.up,
        "asked": group.asked,
        "score": round(group.score, 4),
        "keys": list(group.keys),
        "answers": ev.answers if ev else [],
        "comments": ev.comments if ev else [],
        "reasons": ev.reasons if ev else {},
        "corrections": ev.corrections if ev else [],
        "variants": ev.variants if ev else [],
        "entries": ev.entries if ev else [],
        "message_ids": ev.message_ids if ev else [],
        "window": {"since": since, "until": until, "model_version_id": version},
    }


def _insert(db: Database, item: ReviewItem) -> None:
    values = item.to_dict()
    values["evidence"] = json.dumps(item.evidence, ensure_ascii=False, sort_keys=True)
    try:
        db.execute(
            f"INSERT INTO review_items ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})",
            [values[c] for c in _COLUMNS],
        )
    except integrity_errors() as exc:
        raise Conflict(f"the question {item.question!r} is already pending or approved", field="question") from exc


def _clean_text(value: str | None, name: str, limit: int) -> str:
    text = (value or "").strip()
    if not text:
        raise ValidationFailed(f"{name} must not be empty", field=name)
    if len(text) > limit:
        raise ValidationFailed(f"{name} is longer than {limit} characters", field=name)
    return text


def _reviewer(reviewer: str | None) -> str:
    return _clean_text(reviewer, "reviewer", 200)


def answer_source_for(item: ReviewItem, answer: str) -> str:
    """``teacher`` or ``user`` when ``answer`` is that draft or suggestion unchanged, else ``reviewer``."""
    if item.draft and answer == item.draft.strip():
        return "teacher"
    if answer in (s.strip() for s in item.suggestions):
        return "user"
    return "reviewer"


def create_item(
    db: Database,
    *,
    question: str,
    origin: str = "manual",
    answer: str | None = None,
    reviewer: str | None = None,
    answer_source: str | None = None,
    evidence: dict | None = None,
    kb_entry: str | None = None,
) -> ReviewItem:
    """Queue a question by hand (or from an import); with an ``answer`` it is approved at once (and goes live
    in the knowledge base, see :func:`approve`).

    :class:`Conflict` when the same question is already pending or approved.
    """
    if origin not in ORIGINS:
        raise ValidationFailed(f"origin must be one of {', '.join(ORIGINS)}", field="origin")
    question = _clean_text(question, "question", MAX_QUESTION_CHARS)
    now = utc_now()
    item = ReviewItem(
        id=new_id("ri"),
        question=question,
        question_key=question_key(question),
        origin=origin,
        model_version_id=None,
        evidence=evidence or {},
        status="pending",
        answer=None,
        answer_source=None,
        draft=None,
        draft_model=None,
        reviewer=None,
        note=None,
        created_at=now,
        updated_at=now,
        decided_at=None,
    )
    if answer is not None and answer.strip():
        item.answer = _clean_text(answer, "answer", MAX_ANSWER_CHARS)
        item.status, item.reviewer, item.decided_at = "approved", _reviewer(reviewer), now
        item.answer_source = answer_source or "reviewer"
        if item.answer_source not in ANSWER_SOURCES:
            raise ValidationFailed(f"answer_source must be one of {', '.join(ANSWER_SOURCES)}", field="answer_source")
    with write_transaction(db):
        _insert(db, item)
        if item.status == "approved":
            item = _go_live(db, item, item.reviewer, kb_entry)
        details = {"question": item.question[:200], "origin": origin, "status": item.status}
        audit.record(db, reviewer if reviewer else "unknown", "review.create", item.id, details)
    return item


def _update(db: Database, item_id: str, changes: dict) -> ReviewItem:
    changes = {"updated_at": changes.get("decided_at") or utc_now(), **changes}
    sets = ", ".join(f"{k} = ?" for k in changes)
    try:
        db.execute(f"UPDATE review_items SET {sets} WHERE id = ?", [*changes.values(), item_id])
    except integrity_errors() as exc:
        raise Conflict("another pending or approved item already holds this question", field="question") from exc
    return get_item(db, item_id)


def approve(
    db: Database,
    item_id: str,
    *,
    answer: str,
    reviewer: str,
    answer_source: str | None = None,
    kb_entry: str | None = None,
) -> ReviewItem:
    """Approve ``answer`` as the corrected answer (also re-approves an approved or rejected item).

    In the same transaction the answer goes live: the knowledge-base entry of the item's question is updated
    (or created), so the next user asking it in any wording is answered from it
    (``feedback/knowledge/corrections.py`` says which entry; ``kb_entry`` may name one, or ``"new"``).
    ``answer_source`` is inferred when not given (see :func:`answer_source_for`).
    :class:`ValidationFailed` for an empty answer, :class:`Conflict` when approving a
    rejected item whose question has meanwhile been queued again.
    """
    answer = _clean_text(answer, "answer", MAX_ANSWER_CHARS)
    actor, reviewer = reviewer, _reviewer(reviewer)
    if answer_source is not None and answer_source not in ANSWER_SOURCES:
        raise ValidationFailed(f"answer_source must be one of {', '.join(ANSWER_SOURCES)}", field="answer_source")
    with write_transaction(db):
        item = get_item(db, item_id)
        now = utc_now()
        approved = _update(
            db,
            item_id,
            {
                "status": "approved",
                "answer": answer,
                "answer_source": answer_source or answer_source_for(item, answer),
                "reviewer": reviewer,
                "decided_at": now,
            },
        )
        approved = _go_live(db, approved, actor, kb_entry)
        details = {"question": item.question[:200], "from": item.status, "answer_source": approved.answer_source}
        audit.record(db, actor, "review.approve", item_id, details)
        return approved


def _go_live(db: Database, item: ReviewItem, reviewer: str, kb_entry: str | None) -> ReviewItem:
    """Upsert the item's knowledge-base entry (inside the caller's transaction) and remember which it was."""
    entry, before = corrections.apply_approval(db, item, actor=reviewer, target=kb_entry)
    if (item.kb_entry_id, item.kb_entry_version_before) == (entry.id, before):
        return item
    db.execute(
        "UPDATE review_items SET kb_entry_id = ?, kb_entry_version_before = ? WHERE id = ?", [entry.id, before, item.id]
    )
    return get_item(db, item.id)


def publish_approved(db: Database) -> tuple[int, list[str]]:
    """Put every approved item that has no knowledge-base entry yet (approved before the knowledge base existed)
    live, oldest decision first; returns how many, and the problems of those that could not be."""
    published, problems = 0, []
    with write_transaction(db):
        for item in approved_items(db):
            if item.kb_entry_id:
                continue
            try:
                with write_transaction(db):  # a savepoint: one item's conflict leaves the others
                    _go_live(db, item, item.reviewer or "system", None)
                published += 1
            except Conflict as exc:
                problems.append(f"{item.id}: {exc.message}")
    return published, problems


def _withdraw(db: Database, item: ReviewItem, reviewer: str, why: str) -> None:
    """Put the entry an approval changed back as it was (inside the caller's transaction)."""
    corrections.revert_approval(db, item, actor=reviewer, reason=why)
    db.execute("UPDATE review_items SET kb_entry_version_before = NULL WHERE id = ?", [item.id])


def reject(db: Database, item_id: str, *, reviewer: str, note: str | None = None) -> ReviewItem:
    """Reject an item (nothing from it is trained on); ``note`` says why."""
    actor, reviewer = reviewer, _reviewer(reviewer)
    with write_transaction(db):
        item = get_item(db, item_id)
        if item.status == "rejected":
            raise Conflict(f"review item {item_id} is already rejected")
        if item.status == "approved":
            _withdraw(db, item, actor, f"rejected review item {item_id} (it was approved)")
        rejected = _update(
            db,
            item_id,
            {"status": "rejected", "reviewer": reviewer, "decided_at": utc_now(), "note": (note or "").strip() or None},
        )
        details = {"question": item.question[:200], "from": item.status, "note": rejected.note}
        audit.record(db, actor, "review.reject", item_id, details)
        return rejected


def edit_item(
    db: Database, item_id: str, *, reviewer: str, question: str | None = None, answer: str | None = None
) -> ReviewItem:
    """Change an item's question wording and/or an approved item's answer.

    A pending item gets its answer through :func:`approve`, so an ``answer`` for
    one is refused. Changing the question re-keys it (:class:`Conflict` when that
    question is already open elsewhere).
    """
    actor, reviewer = reviewer, _reviewer(reviewer)
    with write_transaction(db):
        item = get_item(db, item_id)
        changes: dict = {}
        if question is not None:
            text = _clean_text(question, "question", MAX_QUESTION_CHARS)
            if text != item.question:
                changes.update(question=text, question_key=question_key(text))
        if answer is not None:
            if item.status != "approved":
                raise ValidationFailed(
                    "only an approved item's answer can be edited; approve it instead", field="answer"
                )
            text = _clean_text(answer, "answer", MAX_ANSWER_CHARS)
            if text != item.answer:
                changes.update(answer=text, answer_source=answer_source_for(item, text))
        if not changes:
            return item
        changes["reviewer"] = reviewer
        edited = _update(db, item_id, changes)
        if edited.status == "approved":  # the live entry follows the approved answer and question
            edited = _go_live(db, edited, actor, None)
        details = {
            "question": edited.question[:200],
            "changed": sorted(k for k in changes if k in ("question", "answer")),
        }
        audit.record(db, actor, "review.edit", item_id, details)
        return edited


def set_draft(db: Database, item_id: str, *, draft: str, model: str) -> ReviewItem:
    """Store a teacher model's draft answer on a pending item (it still needs approval)."""
    text = _clean_text(draft, "draft", MAX_ANSWER_CHARS)
    with write_transaction(db):
        item = get_item(db, item_id)
        if item.status != "pending":
            raise Conflict(f"review item {item_id} is {item.status}; drafts are for pending items")
        return _update(db, item_id, {"draft": text, "draft_model": model})
