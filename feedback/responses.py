"""Stored responses of the OpenAI Responses API (``/v1/responses``): one row per answered turn.

The answer lives in ``messages`` like every turn (feedback/turns.py); a ``responses`` row (migration
``m012_responses``) says which assistant message answered a response id, which response it followed
and what the Responses API echoes back that a turn does not hold. Rows are written after the turn,
so a response id is only ever visible once its answer is stored; who may read or continue one is the
conversation's rule (:func:`feedback.access.check_visible`), asked by the caller.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlite_utils import Database

from config.errors import NotFound
from feedback.db import utc_now, write_transaction


@dataclass
class StoredResponse:
    """A ``responses`` row joined with the turn that answered it."""

    id: str
    conversation_id: str
    message_id: str
    previous_response_id: str | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    # From the assistant message (read only):
    api_key_id: str | None = None
    answer: str = ""
    model: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    finish_reason: str | None = None
    error: str | None = None


def record_response(db: Database, response: StoredResponse) -> None:
    """Store ``response``; its turn (``message_id``) must already be recorded."""
    with write_transaction(db):
        db.execute(
            """INSERT INTO responses (id, conversation_id, message_id, previous_response_id, instructions,
                   max_output_tokens, temperature, top_p, metadata, created_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            [
                response.id,
                response.conversation_id,
                response.message_id,
                response.previous_response_id,
                response.instructions,
                response.max_output_tokens,
                response.temperature,
                response.top_p,
                json.dumps(response.metadata, ensure_ascii=False),
                response.created_at or utc_now(),
            ],
        )


_COLUMNS = (
    "id",
    "conversation_id",
    "message_id",
    "previous_response_id",
    "instructions",
    "max_output_tokens",
    "temperature",
    "top_p",
    "metadata",
    "created_at",
    "api_key_id",
    "answer",
    "model",
    "tokens_in",
    "tokens_out",
    "finish_reason",
    "error",
)


def get_response(db: Database, response_id: str, *, field: str = "response_id") -> StoredResponse:
    """The stored response ``response_id``; :class:`NotFound` naming ``field`` when there is none.

    Callers check who may see it (``api_key_id``, the conversation's key) before using it.
    """
    row = db.execute(
        """SELECT r.id, r.conversation_id, r.message_id, r.previous_response_id, r.instructions,
                  r.max_output_tokens, r.temperature, r.top_p, r.metadata, r.created_at, c.api_key_id,
                  m.content, v.name, m.tokens_in, m.tokens_out, m.finish_reason, m.error
           FROM responses r JOIN messages m ON m.id = r.message_id
           JOIN conversations c ON c.id = r.conversation_id
           LEFT JOIN model_versions v ON v.id = m.model_version_id
           WHERE r.id = ?""",
        [response_id],
    ).fetchone()
    if row is None:
        raise NotFound(f"no response {response_id!r}", field=field)
    values = dict(zip(_COLUMNS, row, strict=True))
    values["metadata"] = json.loads(values["metadata"] or "{}")
    return StoredResponse(**values)


def message_item(db: Database, message_id: str) -> dict[str, str] | None:
    """A stored message as a chat message (``role``, ``content``), for an ``item_reference``; None if absent."""
    row = db.execute("SELECT role, content FROM messages WHERE id = ?", [message_id]).fetchone()
    return {"role": row[0], "content": row[1]} if row else None


def delete_response(db: Database, response_id: str) -> None:
    """Forget the stored response ``response_id``: it can no longer be retrieved or continued.

    Only the ``responses`` row goes. Its turn stays in ``messages`` like every turn of the log (rated,
    ranked, erasable with its conversation), as a ``store: false`` response's does.
    """
    with write_transaction(db):
        db.execute("DELETE FROM responses WHERE id = ?", [response_id])
