"""Thumbs up/down on served answers: one vote per voter per message, changeable."""

from __future__ import annotations

from dataclasses import dataclass

from sqlite_utils import Database

from config.errors import Conflict, NotFound
from feedback.db import new_id, utc_now, write_transaction

RATING_VALUES = {"up": 1, "down": -1}


@dataclass(frozen=True)
class RatingResult:
    feedback_id: str
    rating: str
    updated: bool


def record_rating(
    db: Database,
    *,
    message_id: str,
    voter_ref: str,
    rating: str,
    reason: str | None = None,
    comment: str | None = None,
    correction: str | None = None,
) -> RatingResult:
    """Record ``voter_ref``'s rating of an assistant message, or change their earlier one.

    Raises :class:`NotFound` for an unknown message or one that is not an
    assistant answer, :class:`Conflict` for an answer that failed (nothing to rate).
    """
    value = RATING_VALUES[rating]
    now = utc_now()
    with write_transaction(db):
        message = db.execute("SELECT role, error FROM messages WHERE id = ?", [message_id]).fetchone()
        if message is None or message[0] != "assistant":
            raise NotFound(f"no assistant message {message_id!r}", field="message_id")
        if message[1] is not None:
            raise Conflict("this answer failed; there is nothing to rate", field="message_id")
        existing = db.execute(
            "SELECT id FROM feedback WHERE message_id = ? AND voter_ref = ?", [message_id, voter_ref]
        ).fetchone()
        if existing:
            db.execute(
                "UPDATE feedback SET rating = ?, reason = ?, comment = ?, correction = ?, updated_at = ? WHERE id = ?",
                [value, reason, comment, correction, now, existing[0]],
            )
            return RatingResult(existing[0], rating, True)
        feedback_id = new_id("fb")
        db.execute(
            """INSERT INTO feedback
                   (id, message_id, voter_ref, rating, reason, comment, correction, created_at, updated_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            [feedback_id, message_id, voter_ref, value, reason, comment, correction, now, now],
        )
        return RatingResult(feedback_id, rating, False)
