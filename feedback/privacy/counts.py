"""The numbers that outlive the words: answers, failures, ratings and thumbs-down per model version and hour.

Before a purge or an erasure deletes messages and votes, :func:`roll_up` adds them to ``activity_counts``
(migration m011), so the weekly report's trends (``feedback/report/build.py``) still count them: a customer's
words leave, the week's volume and satisfaction do not change. UTC hours, not weeks, so any report time zone
adds them into its own weeks; a vote counts in the hour its answer was written, as the report counts it.
"""

from __future__ import annotations

from sqlite_utils import Database

from feedback.sql import flag, in_list

# 2026-11-21T05:44:39.123Z → 2026-11-21T05:00:00.000Z (stored times are ISO-8601 UTC text)
_HOUR = "substr({column}, 1, 13) || ':00:00.000Z'"


def roll_up(db: Database, *, conversation_ids: list[str] = (), vote_ids: list[str] = ()) -> None:
    """Add the answers of these conversations and the votes on them (and ``vote_ids``) to the kept counts.

    Call inside the transaction that deletes them.
    """
    in_conversations, conversations = in_list(db, "conversation_id", conversation_ids, name="c")
    in_votes, votes = in_list(db, "id", vote_ids, name="v")
    # The stored row's columns carry the table's name: in PostgreSQL's DO UPDATE a bare one is ambiguous.
    db.execute(
        f"""INSERT INTO activity_counts (model_version_id, hour, answers, failed)
            SELECT model_version_id, {_HOUR.format(column="created_at")}, COUNT(*), COUNT(error) FROM messages
            WHERE {in_conversations} AND role = 'assistant'
              AND model_version_id IS NOT NULL
            GROUP BY 1, 2
            ON CONFLICT (model_version_id, hour) DO UPDATE
              SET answers = activity_counts.answers + excluded.answers,
                  failed = activity_counts.failed + excluded.failed""",
        conversations,
    )
    db.execute(
        f"""INSERT INTO activity_counts (model_version_id, hour, ratings, down)
            SELECT model_version_id, {_HOUR.format(column="answered_at")}, COUNT(*), SUM({flag("rating < 0")})
            FROM feedback
            WHERE (message_id IN (SELECT id FROM messages WHERE {in_conversations}) OR {in_votes})
              AND model_version_id IS NOT NULL AND answered_at IS NOT NULL
            GROUP BY 1, 2
            ON CONFLICT (model_version_id, hour) DO UPDATE
              SET ratings = activity_counts.ratings + excluded.ratings, down = activity_counts.down + excluded.down""",
        {**conversations, **votes},
    )


def kept_counts(db: Database, version_id: str, since: str, until: str) -> tuple[int, int, int, int]:
    """Answers, failed answers, ratings and thumbs-down kept for ``version_id`` in ``[since, until)``."""
    row = db.execute(
        """SELECT COALESCE(SUM(answers), 0), COALESCE(SUM(failed), 0), COALESCE(SUM(ratings), 0),
                  COALESCE(SUM(down), 0)
           FROM activity_counts WHERE model_version_id = ? AND hour >= ? AND hour < ?""",
        [version_id, since, until],
    ).fetchone()
    return tuple(row)
