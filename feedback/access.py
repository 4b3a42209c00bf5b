"""Who may see a conversation or a message: the one rule, asked wherever a caller names one.

A conversation belongs to the API key that started it (``api_key_id``; ``None`` when it was started without a
key, as on loopback), and its messages belong to it. Only that same key may continue it, read it back or rate
its answers. Every other caller is told the id does not exist — 404, never 403 — so ids cannot be probed
across tenants: a foreign id and an unknown one answer alike. Admin tools read past the rule on purpose
(``turns.get_conversation(..., any_key=True)``).
"""

from __future__ import annotations

from sqlite_utils import Database

from config.errors import NotFound


def check_visible(
    db: Database, api_key_id: str | None, *, conversation_id: str | None = None, message_id: str | None = None
) -> str:
    """The id of the conversation the caller with ``api_key_id`` asks about, if they may see it.

    Name exactly one of ``conversation_id`` and ``message_id``. Raises :class:`NotFound` (for that field) when
    it does not exist or belongs to another key.
    """
    if (conversation_id is None) == (message_id is None):
        raise ValueError("name exactly one of conversation_id and message_id")
    if conversation_id is not None:
        row = db.execute("SELECT id, api_key_id FROM conversations WHERE id = ?", [conversation_id]).fetchone()
        what, field, wanted = "conversation", "conversation_id", conversation_id
    else:
        row = db.execute(
            "SELECT c.id, c.api_key_id FROM messages m JOIN conversations c ON c.id = m.conversation_id WHERE m.id = ?",
            [message_id],
        ).fetchone()
        what, field, wanted = "message", "message_id", message_id
    if row is None or row[1] != api_key_id:
        raise NotFound(f"no {what} {wanted!r}", field=field)
    return row[0]
