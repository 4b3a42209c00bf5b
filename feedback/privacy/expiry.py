"""Which conversations the retention period has run out on: idle — no message written, no vote cast or changed —
since the cutoff. A conversation goes whole, never cut in half, so what stays still reads as it was written."""

from __future__ import annotations

from sqlite_utils import Database

from feedback.sql import in_list

# The condition on ``conversations c`` (parameter ``:cutoff``, an ISO-8601 UTC text as stored).
IDLE_SINCE = """c.created_at < :cutoff
    AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = c.id AND m.created_at >= :cutoff)
    AND NOT EXISTS (SELECT 1 FROM feedback f JOIN messages m ON m.id = f.message_id
                    WHERE m.conversation_id = c.id AND f.updated_at >= :cutoff)"""


def expired_conversations(db: Database, cutoff: str, *, limit: int | None = None) -> list[str]:
    """Ids of the conversations idle since ``cutoff``, oldest first (at most ``limit``)."""
    sql = f"SELECT c.id FROM conversations c WHERE {IDLE_SINCE} ORDER BY c.created_at, c.id"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return [row[0] for row in db.execute(sql, {"cutoff": cutoff})]


def message_expired(db: Database, message_id: str, cutoff: str) -> bool:
    """Whether the message's conversation is idle since ``cutoff`` (False for a message that does not exist)."""
    sql = (
        "SELECT 1 FROM messages x JOIN conversations c ON c.id = x.conversation_id"
        f" WHERE x.id = :message AND {IDLE_SINCE}"
    )
    return db.execute(sql, {"message": message_id, "cutoff": cutoff}).fetchone() is not None


def expired_counts(db: Database, cutoff: str) -> dict[str, int]:
    """What the conversations idle since ``cutoff`` hold: conversations, messages, ratings, comments, corrections."""
    params = {"cutoff": cutoff}
    (conversations,) = db.execute(f"SELECT COUNT(*) FROM conversations c WHERE {IDLE_SINCE}", params).fetchone()
    (messages,) = db.execute(
        f"SELECT COUNT(*) FROM messages x JOIN conversations c ON c.id = x.conversation_id WHERE {IDLE_SINCE}", params
    ).fetchone()
    ratings, comments, corrections = db.execute(
        f"""SELECT COUNT(*), COUNT(NULLIF(trim(f.comment), '')), COUNT(NULLIF(trim(f.correction), ''))
            FROM feedback f JOIN messages x ON x.id = f.message_id JOIN conversations c ON c.id = x.conversation_id
            WHERE {IDLE_SINCE}""",
        params,
    ).fetchone()
    return {
        "conversations": conversations,
        "messages": messages,
        "ratings": ratings,
        "comments": comments,
        "corrections": corrections,
    }


def active_hours(db: Database, conversation_ids: list[str] | None = None, *, cutoff: str | None = None) -> set[str]:
    """The UTC hours (``2026-11-21T05``) in which these conversations' answers were written and their votes'
    answers were (the hours the weekly report counts them in) — of ``conversation_ids``, or of every conversation
    idle since ``cutoff``."""
    if conversation_ids is not None:
        where, params = in_list(db, "x.conversation_id", conversation_ids, name="ids")
    else:
        where, params = (
            f"x.conversation_id IN (SELECT c.id FROM conversations c WHERE {IDLE_SINCE})",
            {"cutoff": cutoff},
        )
    rows = db.execute(
        f"""SELECT DISTINCT substr(x.created_at, 1, 13) FROM messages x WHERE {where}
            UNION SELECT DISTINCT substr(f.answered_at, 1, 13) FROM feedback f JOIN messages x ON x.id = f.message_id
            WHERE {where} AND f.answered_at IS NOT NULL""",
        params,
    ).fetchall()
    return {hour for (hour,) in rows if hour}
