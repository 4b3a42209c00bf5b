"""Lineage: which knowledge-base entries each answer was given, and what users said about answers built on them.

``message_sources`` holds, for every assistant message, the entries that were in its prompt (rank from 1, the
entry's version, the retrieval score), written in the same transaction as the turn (``feedback/turns.py``).
An answer is *built on* its rank-1 entry: that is the one whose thumbs-down are counted against an entry,
because the lower ranks were only offered as context. So the weekly report, the review queue and the admin
page can say "answers built on entry X were rated down N times", and a reviewer fixes the entry instead of
waiting for a retrain.
"""

from __future__ import annotations

import json
from typing import Sequence

from sqlite_utils import Database

from feedback.knowledge.prompt import Snippet
from feedback.sql import executemany, flag, in_list


def record_sources(db: Database, message_id: str, sources: Sequence[Snippet]) -> None:
    """Write the entries an answer was given (call inside the transaction that writes the message)."""
    if not sources:
        return
    executemany(
        db,
        "INSERT INTO message_sources (message_id, rank, entry_id, entry_version, score) VALUES (?, ?, ?, ?, ?)",
        [(message_id, rank, s.entry_id, s.version, s.score) for rank, s in enumerate(sources, start=1)],
    )


def sources_of(db: Database, message_id: str) -> list[dict]:
    """The entries a message was given, best first: ``{"id", "question", "score", "version"}``."""
    return conversation_sources(db, message_ids=[message_id]).get(message_id, [])


def conversation_sources(
    db: Database, conversation_id: str | None = None, *, message_ids: Sequence[str] = ()
) -> dict[str, list[dict]]:
    """The entries each answer of a conversation (or each of ``message_ids``) was given, by message id.

    The question shown is the entry's first question now (what a user clicking through would find).
    """
    where, params = (
        ("m.conversation_id = ?", [conversation_id]) if conversation_id else in_list(db, "s.message_id", message_ids)
    )
    rows = db.execute(
        f"""SELECT s.message_id, s.entry_id, e.questions, s.score, s.entry_version FROM message_sources s
            JOIN messages m ON m.id = s.message_id JOIN kb_entries e ON e.id = s.entry_id
            WHERE {where} ORDER BY s.message_id, s.rank""",
        params,
    ).fetchall()
    found: dict[str, list[dict]] = {}
    for message_id, entry_id, questions, score, version in rows:
        found.setdefault(message_id, []).append(
            {"id": entry_id, "question": json.loads(questions)[0], "score": score, "version": version}
        )
    return found


def built_on(db: Database, message_ids: Sequence[str]) -> dict[str, int]:
    """How many of these answers were built on each entry (rank 1), most first."""
    in_messages, params = in_list(db, "message_id", message_ids)
    rows = db.execute(
        f"""SELECT entry_id, COUNT(*) FROM message_sources
           WHERE rank = 1 AND {in_messages}
           GROUP BY entry_id ORDER BY COUNT(*) DESC, entry_id""",
        params,
    ).fetchall()
    return dict(rows)


def rated_entries(db: Database, *, since: str, until: str, limit: int = 10) -> list[dict]:
    """Entries whose answers (written in ``[since, until)``) were rated down most, with their up-votes.

    ``{"id", "question", "state", "down", "up", "answers"}``, most thumbs-down first; entries with none left out.
    Each vote carries its answer's time (``feedback.answered_at``) and is cast after it, so ``created_at >= since``
    bounds the scan by an index.
    """
    down = f"SUM({flag('f.rating < 0')})"  # spelled out in HAVING: PostgreSQL's cannot name an output column
    rows = db.execute(
        f"""SELECT s.entry_id, {down} AS down, SUM({flag("f.rating > 0")}), COUNT(DISTINCT f.message_id)
           FROM feedback f JOIN message_sources s ON s.message_id = f.message_id AND s.rank = 1
           WHERE f.created_at >= :since AND f.answered_at >= :since AND f.answered_at < :until
           GROUP BY s.entry_id HAVING {down} > 0
           ORDER BY down DESC, s.entry_id LIMIT :limit""",
        {"since": since, "until": until, "limit": int(limit)},
    ).fetchall()
    return _with_questions(db, [{"id": i, "down": d, "up": u, "answers": n} for i, d, u, n in rows])


def entry_ratings(db: Database, entry_id: str) -> dict:
    """Every answer built on one entry: how many, and their thumbs up and down (all time)."""
    return ratings_by_entry(db, [entry_id]).get(entry_id, {"answers": 0, "down": 0, "up": 0})


def _with_questions(db: Database, rows: list[dict]) -> list[dict]:
    if not rows:
        return rows
    in_ids, params = in_list(db, "id", [r["id"] for r in rows])
    found = dict(
        (i, (json.loads(q)[0], state))
        for i, q, state in db.execute(f"SELECT id, questions, state FROM kb_entries WHERE {in_ids}", params).fetchall()
    )
    for row in rows:
        row["question"], row["state"] = found.get(row["id"], ("", "retired"))
    return rows


def ratings_by_entry(db: Database, entry_ids: Sequence[str]) -> dict[str, dict]:
    """:func:`entry_ratings` for many entries at once (entries no answer was built on are left out)."""
    in_entries, params = in_list(db, "s.entry_id", entry_ids)
    rows = db.execute(
        f"""SELECT s.entry_id, COUNT(DISTINCT s.message_id), COALESCE(SUM({flag("f.rating < 0")}), 0),
                  COALESCE(SUM({flag("f.rating > 0")}), 0)
           FROM message_sources s LEFT JOIN feedback f ON f.message_id = s.message_id
           WHERE s.rank = 1 AND {in_entries}
           GROUP BY s.entry_id""",
        params,
    ).fetchall()
    return {i: {"answers": n, "down": d, "up": u} for i, n, d, u in rows}


def rated_down_answers(db: Database, entry_id: str, *, limit: int = 5) -> list[dict]:
    """The latest thumbs-down answers built on an entry: what was asked, answered and said, newest first."""
    rows = db.execute(
        """SELECT a.id, u.content, a.content, s.entry_version, f.reason, f.comment, f.correction, f.updated_at
           FROM message_sources s
           JOIN feedback f ON f.message_id = s.message_id AND f.rating < 0
           JOIN messages a ON a.id = s.message_id
           JOIN messages u ON u.conversation_id = a.conversation_id AND u.seq = a.seq - 1
           WHERE s.entry_id = ? AND s.rank = 1
           ORDER BY f.updated_at DESC LIMIT ?""",
        [entry_id, int(limit)],
    ).fetchall()
    keys = ("message_id", "question", "answer", "entry_version", "reason", "comment", "correction", "at")
    return [dict(zip(keys, row, strict=True)) for row in rows]
