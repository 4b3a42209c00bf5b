"""Export on request: everything stored about one person (or one conversation), as JSON.

The export holds the person's own data in full — their conversations with every message, the ratings, reasons,
comments and corrections they gave, the votes they cast on other conversations — and, for the copies the loop
made of their words, where they are: which review items, knowledge-base entries, dataset versions, evaluation
files and weekly reports hold them, by id and field, without repeating anyone else's words. Ratings other people
gave on the person's answers are left out (they are the other people's data); in a conversation export, every
rating on it is in (a conversation is found by its id, which only its visitor holds).
"""

from __future__ import annotations

import json

from sqlite_utils import Database

from config.settings import Settings
from feedback import audit
from feedback.db import utc_now, write_transaction
from feedback.privacy.erase import masker
from feedback.privacy.files import Gone, quoting_reports, scrub_datasets, scrub_evaluations
from feedback.privacy.subjects import Subject, find_rows, reference_secret
from feedback.privacy.texts import Texts, own_texts
from feedback.review import list_items
from feedback.sql import in_list

FORMAT = "tuneloop personal data export, version 1"
_MESSAGE = ("id", "role", "content", "created_at", "model", "error")
_RATING = ("message_id", "rating", "reason", "comment", "correction", "created_at", "updated_at")


def _ratings(rows) -> list[dict]:
    return [{**dict(zip(_RATING, row, strict=True)), "rating": "up" if row[1] > 0 else "down"} for row in rows]


def _conversation(db: Database, conversation_id: str, voter_refs: list[str] | None) -> dict:
    created_at, source, metadata, key_name = db.execute(
        """SELECT c.created_at, c.source, c.metadata, k.name FROM conversations c
           LEFT JOIN api_keys k ON k.id = c.api_key_id WHERE c.id = ?""",
        [conversation_id],
    ).fetchone()
    messages = db.execute(
        """SELECT m.id, m.role, m.content, m.created_at, v.name, m.error FROM messages m
           LEFT JOIN model_versions v ON v.id = m.model_version_id WHERE m.conversation_id = ? ORDER BY m.seq""",
        [conversation_id],
    ).fetchall()
    in_voters, voters = in_list(db, "f.voter_ref", voter_refs or [], name="voters")
    mine = "" if voter_refs is None else f"AND {in_voters}"
    ratings = db.execute(
        f"""SELECT f.message_id, f.rating, f.reason, f.comment, f.correction, f.created_at, f.updated_at
            FROM feedback f JOIN messages m ON m.id = f.message_id
            WHERE m.conversation_id = :c {mine} ORDER BY f.created_at""",
        {"c": conversation_id, **voters},
    ).fetchall()
    # What a /v1/responses caller sent beside the messages (instructions, metadata) is theirs too.
    responses = db.execute(
        """SELECT id, message_id, previous_response_id, instructions, metadata, created_at FROM responses
           WHERE conversation_id = ? ORDER BY created_at""",
        [conversation_id],
    ).fetchall()
    return {
        "id": conversation_id,
        "created_at": created_at,
        "source": source,
        "api_key": key_name,
        "metadata": json.loads(metadata or "{}"),
        "messages": [dict(zip(_MESSAGE, row, strict=True)) for row in messages],
        "ratings": _ratings(ratings),
        "responses": [
            {
                "id": rid,
                "message_id": message_id,
                "previous_response_id": previous,
                "instructions": instructions,
                "metadata": json.loads(metadata or "{}"),
                "created_at": at,
            }
            for rid, message_id, previous, instructions, metadata, at in responses
        ],
    }


def _copies(db: Database, settings: Settings, texts: Texts, message_ids: set[str]) -> dict:
    """Where the loop copied the person's words, by id and field (never the words of others)."""
    items = []
    for item in list_items(db, limit=10**9):
        fields = [name for name in ("question", "answer", "draft") if texts.matches(getattr(item, name))]
        fields += [
            f"evidence.{name}"
            for name, value in item.evidence.items()
            if name != "message_ids" and texts.in_value(value)
        ]
        if set(item.evidence.get("message_ids") or []) & message_ids:
            fields.append("evidence.message_ids")
        if fields:
            items.append({"id": item.id, "status": item.status, "fields": fields})
    entries = []
    for entry_id, questions, answer, state in db.execute("SELECT id, questions, answer, state FROM kb_entries"):
        fields = ["questions"] if texts.in_value(json.loads(questions)) else []
        fields += ["answer"] if texts.matches(answer) else []
        if fields:
            entries.append({"id": entry_id, "state": state, "fields": fields})
    gone = Gone(texts, messages=message_ids)
    datasets = scrub_datasets(db, gone, why="export", erasure_id="", at="", dry_run=True)
    return {
        "review_items": items,
        "knowledge_base_entries": entries,
        "dataset_versions": [{"version": v, "rows": d["rows_removed"]} for v, d in sorted(datasets.items())],
        "evaluation_files": [
            {"evaluation_id": k, "rows": n} for k, n in scrub_evaluations(db, settings, gone, dry_run=True).items()
        ],
        "weekly_reports": sorted(quoting_reports(settings, texts)),
    }


def export(db: Database, settings: Settings, subject: Subject, *, actor) -> dict:
    """Everything stored about ``subject`` (module docstring), as a JSON-ready dict; the audit log records
    who exported what kind of subject (never whom)."""
    rows = find_rows(db, reference_secret(db, settings), subject)
    voters = rows.voter_refs if subject.kind == "user" else None
    conversations = [_conversation(db, cid, voters) for cid in rows.conversation_ids]
    in_votes, votes = in_list(db, "id", rows.vote_ids)
    elsewhere = db.execute(
        f"""SELECT message_id, rating, reason, comment, correction, created_at, updated_at FROM feedback
           WHERE {in_votes} ORDER BY created_at""",
        votes,
    ).fetchall()
    texts = Texts.of(own_texts(db, rows.conversation_ids, rows.vote_ids), masker(settings))
    message_ids = {m["id"] for c in conversations for m in c["messages"]}
    days = settings.privacy.retention_days
    data = {
        "format": FORMAT,
        "exported_at": utc_now(),
        "subject": subject.describe(),
        "scope": rows.scope or None,
        "retention": {
            "days": days,
            "rule": (
                f"a conversation is deleted {days} days after its last message or rating"
                if days
                else "kept until erased (privacy.retention_days = 0)"
            ),
        },
        "conversations": conversations,
        "ratings_on_other_conversations": _ratings(elsewhere),
        "copies": _copies(db, settings, texts, message_ids),
    }
    with write_transaction(db):
        audit.record(db, actor, "privacy.export", None, {"kind": subject.kind, "conversations": len(conversations)})
    return data
