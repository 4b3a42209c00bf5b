"""Conversations and messages: recording turns and reading them back.

A turn is written whole, in one ``BEGIN IMMEDIATE`` transaction, after the model
has answered: the conversation (if new), the user's message and the assistant's
message with the model version that wrote it and the knowledge-base entries it
was given (``message_sources``, feedback/knowledge/lineage.py). Ids are chosen before the model is
called, so a streaming response can announce them in its first event. A turn the
model failed to answer is recorded on purpose (``error`` set, empty content), so
error rates per model version are visible and no user message is left without
its answer row; such turns are left out of the history sent to the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlite_utils import Database

from config.errors import NotFound
from feedback.access import check_visible
from feedback.db import new_id, utc_now, write_transaction
from feedback.knowledge.lineage import conversation_sources, record_sources
from feedback.knowledge.prompt import Snippet
from feedback.text import question_key


@dataclass
class Turn:
    """One user message and the assistant's answer (or the error in its place)."""

    conversation_id: str
    question: str
    answer: str
    model_version_id: str | None
    user_message_id: str = field(default_factory=lambda: new_id("msg"))
    assistant_message_id: str = field(default_factory=lambda: new_id("msg"))
    latency_ms: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    finish_reason: str | None = None
    error: str | None = None
    # The knowledge-base entries the model was given, best first (lineage: message_sources).
    sources: list[Snippet] = field(default_factory=list)
    # Used only when the conversation is new:
    api_key_id: str | None = None
    user_ref: str | None = None
    source: str = "api"
    metadata: dict[str, Any] = field(default_factory=dict)


def new_conversation_id() -> str:
    """An id for a conversation that will be created by its first recorded turn."""
    return new_id("conv")


def record_turn(db: Database, turn: Turn) -> None:
    """Write the turn atomically; creates the conversation on its first turn."""
    now = utc_now()
    with write_transaction(db):
        exists = db.execute("SELECT 1 FROM conversations WHERE id = ?", [turn.conversation_id]).fetchone()
        if not exists:
            db.execute(
                "INSERT INTO conversations (id, created_at, api_key_id, user_ref, source, metadata) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [
                    turn.conversation_id,
                    now,
                    turn.api_key_id,
                    turn.user_ref,
                    turn.source,
                    json.dumps(turn.metadata, ensure_ascii=False),
                ],
            )
        (last_seq,) = db.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE conversation_id = ?", [turn.conversation_id]
        ).fetchone()
        db.execute(
            "INSERT INTO messages (id, conversation_id, seq, role, content, created_at, tokens_in) "
            "VALUES (?, ?, ?, 'user', ?, ?, ?)",
            [turn.user_message_id, turn.conversation_id, last_seq + 1, turn.question, now, None],
        )
        db.execute(
            """INSERT INTO messages (id, conversation_id, seq, role, content, model_version_id, created_at,
                   latency_ms, tokens_in, tokens_out, finish_reason, error, question_key)
               VALUES (?, ?, ?, 'assistant', ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            [
                turn.assistant_message_id,
                turn.conversation_id,
                last_seq + 2,
                turn.answer,
                turn.model_version_id,
                now,
                turn.latency_ms,
                turn.tokens_in,
                turn.tokens_out,
                turn.finish_reason,
                turn.error,
                question_key(turn.question),  # what ranking groups answers by (feedback/text.py)
            ],
        )
        record_sources(db, turn.assistant_message_id, turn.sources)


def _conversation_row(db: Database, conversation_id: str) -> dict | None:
    row = db.execute(
        "SELECT id, created_at, api_key_id, user_ref, source, metadata FROM conversations WHERE id = ?",
        [conversation_id],
    ).fetchone()
    if row is None:
        return None
    keys = ("id", "created_at", "api_key_id", "user_ref", "source", "metadata")
    return dict(zip(keys, row, strict=False))


def get_conversation(
    db: Database, conversation_id: str, *, api_key_id: str | None = None, any_key: bool = False
) -> dict:
    """The conversation with its messages in order.

    Only for a caller that may see it (:func:`feedback.access.check_visible`); ``any_key=True`` is for
    admin tools.
    """
    if not any_key:
        check_visible(db, api_key_id, conversation_id=conversation_id)
    conv = _conversation_row(db, conversation_id)
    if conv is None:
        raise NotFound(f"no conversation {conversation_id!r}", field="conversation_id")
    rows = db.execute(
        """SELECT m.id, m.role, m.content, m.created_at, m.model_version_id, v.name, m.latency_ms,
                  m.tokens_in, m.tokens_out, m.finish_reason, m.error
           FROM messages m LEFT JOIN model_versions v ON v.id = m.model_version_id
           WHERE m.conversation_id = ? ORDER BY m.seq""",
        [conversation_id],
    ).fetchall()
    keys = (
        "id",
        "role",
        "content",
        "created_at",
        "model_version_id",
        "model",
        "latency_ms",
        "tokens_in",
        "tokens_out",
        "finish_reason",
        "error",
    )
    sources = conversation_sources(db, conversation_id)
    messages = [dict(zip(keys, row, strict=False)) for row in rows]
    for message in messages:
        if message["role"] == "assistant":
            message["sources"] = sources.get(message["id"], [])
    return {
        "id": conv["id"],
        "created_at": conv["created_at"],
        "metadata": json.loads(conv["metadata"] or "{}"),
        "messages": messages,
    }


def history(
    db: Database, conversation_id: str, turns: int, *, until_message_id: str | None = None
) -> list[dict[str, str]]:
    """The last ``turns`` answered user/assistant pairs, oldest first, as chat messages.

    ``until_message_id``: only up to and including that answer — what a Responses API
    ``previous_response_id`` continues from (going back to an earlier response branches from there).
    """
    if turns <= 0:
        return []
    until = "AND a.seq <= (SELECT seq FROM messages WHERE id = ?)" if until_message_id else ""
    rows = db.execute(
        f"""SELECT u.content, a.content FROM messages a
           JOIN messages u ON u.conversation_id = a.conversation_id AND u.seq = a.seq - 1 AND u.role = 'user'
           WHERE a.conversation_id = ? AND a.role = 'assistant' AND a.error IS NULL {until}
           ORDER BY a.seq DESC LIMIT ?""",
        [conversation_id, *([until_message_id] if until_message_id else []), turns],
    ).fetchall()
    messages: list[dict[str, str]] = []
    for question, answer in reversed(rows):
        messages.append({"role": "user", "content": question})
        messages.append({"role": "assistant", "content": answer})
    return messages
