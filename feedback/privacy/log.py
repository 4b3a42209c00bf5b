"""The erasure log (``erasures``): every erasure on request and every retention purge — who asked, who ran it,
when, how many rows of each kind went, and what had already left the machine. Never the content, never the
person's identifier: ``subject`` is a keyed hash (``feedback/privacy/subjects.py``).

A run is written in the transaction that changes the store, as ``files_pending`` with the ids and weeks the files
still have to follow (``pending``), then ``done`` once they have. A run stopped between the store and the files
is finished by the next erasure or purge (:func:`unfinished`); one whose store transaction failed leaves a
``failed`` row with the error, and nothing else changed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from sqlite_utils import Database

from feedback.audit import as_actor
from feedback.db import new_id, utc_now, write_transaction
from feedback.pii import PiiMasker

MAX_REQUESTED_BY = 300
_COLUMNS = (
    "id",
    "kind",
    "subject",
    "scope",
    "requested_by",
    "run_by",
    "run_by_name",
    "via",
    "started_at",
    "finished_at",
    "state",
    "counts",
    "left_machine",
    "disk",
    "pending",
    "error",
)
_JSON = ("counts", "left_machine", "disk", "pending")


@dataclass
class ErasureRecord:
    """One row of the erasure log."""

    id: str
    kind: str  # user / conversation / retention
    subject: str | None
    scope: str | None
    requested_by: str
    run_by: str
    run_by_name: str
    via: str
    started_at: str
    finished_at: str | None
    state: str
    counts: dict
    left_machine: list
    disk: dict
    pending: dict
    error: str | None

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def clean_requested_by(text: str | None) -> str:
    """Who asked, as typed, with anything shaped like personal data masked (the log keeps no identifier)."""
    value = " ".join((text or "").split())[:MAX_REQUESTED_BY]
    return PiiMasker().mask(value).text


def new_erasure_id() -> str:
    """An id for a run about to start (``er_…``)."""
    return new_id("er")


def start(
    db: Database,
    *,
    kind: str,
    subject: str | None,
    scope: str | None,
    requested_by: str,
    actor,
    state: str = "files_pending",
    erasure_id: str | None = None,
) -> str:
    """Write a run's row (inside the caller's transaction, if any); returns its id."""
    who = as_actor(actor)
    erasure_id = erasure_id or new_erasure_id()
    with write_transaction(db):
        db.execute(
            """INSERT INTO erasures (id, kind, subject, scope, requested_by, run_by, run_by_name, via, started_at,
                   state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            [erasure_id, kind, subject, scope, requested_by, str(who), who.name, who.via, utc_now(), state],
        )
    return erasure_id


def update(db: Database, erasure_id: str, **values) -> None:
    """Set columns of one run (JSON columns given as Python values)."""
    values = {k: json.dumps(v, ensure_ascii=False, sort_keys=True) if k in _JSON else v for k, v in values.items()}
    with write_transaction(db):
        db.execute(
            f"UPDATE erasures SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?", [*values.values(), erasure_id]
        )


def _record(row) -> ErasureRecord:
    values = dict(zip(_COLUMNS, row, strict=True))
    for column in _JSON:
        values[column] = json.loads(values[column] or ("[]" if column == "left_machine" else "{}"))
    return ErasureRecord(**values)


def get(db: Database, erasure_id: str) -> ErasureRecord | None:
    """One run, or None."""
    row = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM erasures WHERE id = ?", [erasure_id]).fetchone()
    return _record(row) if row else None


def recent(db: Database, *, limit: int = 100, kind: str | None = None) -> list[ErasureRecord]:
    """Runs newest first (of one ``kind`` when given)."""
    where, params = ("kind = ?", [kind]) if kind else ("1=1", [])
    rows = db.execute(
        f"SELECT {', '.join(_COLUMNS)} FROM erasures WHERE {where} ORDER BY started_at DESC, rowid DESC LIMIT ?",
        [*params, int(limit)],
    ).fetchall()
    return [_record(row) for row in rows]


def unfinished(db: Database) -> list[ErasureRecord]:
    """Runs whose store part is done but whose files were not finished (oldest first)."""
    rows = db.execute(
        f"SELECT {', '.join(_COLUMNS)} FROM erasures WHERE state = 'files_pending' ORDER BY started_at"
    ).fetchall()
    return [_record(row) for row in rows]


def finish(db: Database, erasure_id: str) -> None:
    """Mark a run done."""
    update(db, erasure_id, state="done", finished_at=utc_now(), pending={})
