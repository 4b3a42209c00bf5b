"""The knowledge base as CSV or JSONL files: import (all-or-nothing, line-numbered) and export.

A row is one entry. Accepted columns (CSV header or JSONL keys; others are ignored, so an exported file
imports back unchanged):

- ``question`` and/or ``questions`` — the first question is the one shown as the source; ``questions`` holds
  every phrasing (a JSON list in JSONL, one per line inside the cell in CSV);
- ``answer`` — required;
- ``lang`` — ``ko`` or ``en``; empty: detected from the first question;
- ``id`` — an entry id: that entry is updated (created with that id when this store has none, e.g. a file
  exported from another instance); empty: a new entry;
- ``state`` — ``active`` or ``retired``; empty: a new entry is active, an existing one keeps its state.

A chat JSONL line (``{"messages": [{"role": "user", …}, {"role": "assistant", …}]}``, the format of
``data/faq.jsonl`` and of fine-tuning files) is one entry too: its user message is the question, its
assistant message the answer (a system message is ignored).

Imports are all-or-nothing: every row is checked first (its fields, questions repeated in the file or held
by another active entry, ids given twice) and a file with any problem writes nothing; each problem names
its line (a CSV row is reported at the line it starts on) and field. CSV is written as UTF-8 with a
byte-order mark, so Excel shows Korean, and read with or without one.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

from sqlite_utils import Database

from config.errors import TuneloopError, ValidationFailed
from feedback.db import write_transaction
from feedback.knowledge import store
from feedback.knowledge.store import KBEntry
from feedback.review_io import ImportRejected, LineError, detect_format, read_records
from feedback.text import question_key

CSV_COLUMNS = (
    "id",
    "questions",
    "answer",
    "lang",
    "state",
    "source_kind",
    "source_ref",
    "version",
    "updated_at",
    "updated_by",
)
_ID = re.compile(r"^kb_[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class Row:
    """One checked row of a file: what the entry should be."""

    line: int
    entry_id: str | None
    questions: tuple[str, ...]
    answer: str
    lang: str
    state: str | None


@dataclass
class ImportSummary:
    """What an import did (or, with ``dry_run``, would do)."""

    created: int = 0
    updated: int = 0
    retired: int = 0
    unchanged: int = 0
    kept: int = 0  # new rows left out because an entry already has their question (``keep_existing``)
    lines: list[tuple[int, str]] = field(default_factory=list)  # (line, "created kb_…")


def read_rows(path: str | Path, fmt: str | None = None) -> tuple[list[Row], list[LineError]]:
    """The rows of a knowledge-base file, and every line (with its field) that is not a valid entry."""
    fmt = detect_format(path, fmt)
    records, errors = read_records(path, fmt)
    rows = []
    for line, record in records:
        try:
            rows.append(_row(line, record, fmt))
        except ValidationFailed as exc:
            errors.append(LineError(line, exc.message, exc.field))
    return rows, sorted(errors, key=lambda e: e.line)


def _row(line: int, record: dict, fmt: str) -> Row:
    if "messages" in record:
        question, answer = _chat_pair(record["messages"])
        questions: list = [question]
    else:
        questions = _questions(record, fmt)
        answer = record.get("answer")
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        raise ValidationFailed("must not be empty", field="answer")
    cleaned = store.clean_questions(questions)
    entry_id = _text(record, "id")
    if entry_id and not _ID.match(entry_id):
        raise ValidationFailed(
            f"{entry_id!r} is not an entry id (kb_ and up to 64 letters, digits, - or _)", field="id"
        )
    state = _text(record, "state").lower() or None
    if state is not None and state not in store.STATES:
        raise ValidationFailed(f"must be one of {', '.join(store.STATES)} (or empty), got {state!r}", field="state")
    return Row(
        line=line,
        entry_id=entry_id or None,
        questions=cleaned,
        answer=store.clean_answer(answer),
        lang=store.clean_lang(_text(record, "lang"), cleaned),
        state=state,
    )


def _chat_pair(messages) -> tuple[str, str]:
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise ValidationFailed("must be a list of {role, content} objects", field="messages")
    users = [m.get("content") for m in messages if m.get("role") == "user"]
    answers = [m.get("content") for m in messages if m.get("role") == "assistant"]
    if len(users) != 1 or len(answers) != 1:
        raise ValidationFailed(
            f"an entry is one user question and one assistant answer; this line has {len(users)} and {len(answers)}",
            field="messages",
        )
    if not isinstance(users[0], str) or not isinstance(answers[0], str):
        raise ValidationFailed("content must be text", field="messages")
    return users[0], answers[0]


def _questions(record: dict, fmt: str) -> list:
    questions: list = []
    single = record.get("question")
    if single is not None:
        if not isinstance(single, str):
            raise ValidationFailed(f"must be text, got {type(single).__name__}", field="question")
        questions.append(single)
    many = record.get("questions")
    if isinstance(many, str):
        questions += many.splitlines() if fmt == "csv" or "\n" in many else [many]
    elif isinstance(many, list):
        if not all(isinstance(q, str) for q in many):
            raise ValidationFailed("must be a list of texts", field="questions")
        questions += many
    elif many is not None:
        raise ValidationFailed(f"must be a list of texts, got {type(many).__name__}", field="questions")
    if not any(q.strip() for q in questions):
        raise ValidationFailed("a row needs a question (or questions) column with text", field="question")
    return questions


def _text(record: dict, name: str) -> str:
    value = record.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValidationFailed(f"must be text, got {type(value).__name__}", field=name)
    return value.strip()


def plan_import(
    db: Database,
    rows: list[Row],
    *,
    source_kind: str,
    source_name: str,
    actor: str,
    keep_existing: bool = False,
) -> tuple[list[tuple[Row, KBEntry, str]], list[LineError]]:
    """For each row, the entry it becomes and the action (``created``/``updated``/``retired``/``unchanged``).

    Checked against the store as it is: ids given twice, and questions that two active entries would share
    (within the file, or with an entry the file does not touch). ``keep_existing``: a new row (no id) with a
    question an active entry already has is left out (``kept``) instead of refused — that entry is newer.
    """
    errors: list[LineError] = []
    existing = store.get_entries(db, [r.entry_id for r in rows if r.entry_id])
    held = dict(db.execute("SELECT key, entry_id FROM kb_question_keys").fetchall()) if keep_existing else {}
    seen_ids: dict[str, int] = {}
    planned: list[tuple[Row, KBEntry, str]] = []
    for row in rows:
        holder = next((held[k] for k in map(question_key, row.questions) if k in held), None)
        if not row.entry_id and holder:
            planned.append((row, store.get_entry(db, holder), "kept"))
            continue
        if row.entry_id:
            if row.entry_id in seen_ids:
                errors.append(LineError(row.line, f"{row.entry_id} is also on line {seen_ids[row.entry_id]}", "id"))
                continue
            seen_ids[row.entry_id] = row.line
        current = existing.get(row.entry_id) if row.entry_id else None
        if current is None:
            entry = store.new_entry(
                questions=row.questions,
                answer=row.answer,
                lang=row.lang,
                source_kind=source_kind,
                source_ref=f"{source_name}:{row.line}",
                actor=actor,
                entry_id=row.entry_id,
            )
            if row.state == "retired":
                entry = replace(entry, state="retired")
            planned.append((row, entry, "created"))
            continue
        entry = replace(
            current, questions=row.questions, answer=row.answer, lang=row.lang, state=row.state or current.state
        )
        if entry == current:
            action = "unchanged"
        elif entry.state == "retired" and current.state == "active":
            action = "retired"
        else:
            action = "updated"
        planned.append((row, entry, action))
    errors += _shared_questions(db, planned)
    return planned, sorted(errors, key=lambda e: e.line)


def _shared_questions(db: Database, planned: list[tuple[Row, KBEntry, str]]) -> list[LineError]:
    planned = [p for p in planned if p[2] != "kept"]
    touched = {entry.id for _, entry, _ in planned}
    held = {
        key: entry_id
        for key, entry_id in db.execute("SELECT key, entry_id FROM kb_question_keys").fetchall()
        if entry_id not in touched
    }
    in_file: dict[str, int] = {}
    errors = []
    for row, entry, _ in planned:
        if not entry.active:
            continue
        for question in entry.questions:
            key = question_key(question)
            if key in held:
                errors.append(
                    LineError(
                        row.line,
                        f"{question!r} is already a question of entry {held[key]} (put its id in the row to update it)",
                        "questions",
                    )
                )
            elif key in in_file:
                errors.append(
                    LineError(row.line, f"{question!r} is also a question on line {in_file[key]}", "questions")
                )
            else:
                in_file[key] = row.line
    return errors


def import_file(
    db: Database,
    path: str | Path,
    *,
    actor: str,
    fmt: str | None = None,
    dry_run: bool = False,
    source_kind: str = "import",
    source_name: str | None = None,
    reason: str | None = None,
    keep_existing: bool = False,
) -> ImportSummary:
    """Check a CSV/JSONL file and apply it in one transaction.

    :class:`ImportRejected` (nothing written) on any problem, naming each line and field.
    """
    store.clean_actor(actor)  # checked before anything is read; the actor itself goes on to the audit log
    name = Path(path).name
    rows, errors = read_rows(path, fmt)
    with write_transaction(db):  # planned and written on one snapshot: no change slips in between
        planned, more = plan_import(
            db, rows, source_kind=source_kind, source_name=source_name or name, actor=actor, keep_existing=keep_existing
        )
        errors = sorted(errors + more, key=lambda e: e.line)
        if errors:
            raise ImportRejected(name, errors)
        summary = _summary(planned)
        if dry_run:
            return summary
        changed = [entry for _, entry, action in planned if action not in ("unchanged", "kept")]
        try:
            store.save_entries(db, changed, actor=actor, reason=reason or f"imported {name}", audit_action="kb.import")
        except TuneloopError as exc:  # a rule only the database checks: still say which file
            raise ImportRejected(name, [LineError(0, exc.message, getattr(exc, "field", None))]) from exc
    return summary


def _summary(planned: list[tuple[Row, KBEntry, str]]) -> ImportSummary:
    summary = ImportSummary()
    for row, entry, action in planned:
        setattr(summary, action, getattr(summary, action) + 1)
        summary.lines.append((row.line, f"{action} {entry.id}"))
    return summary


def entry_row(entry: KBEntry) -> dict:
    """An entry as one exported row (CSV: questions one per line in their cell)."""
    return {
        "id": entry.id,
        "questions": "\n".join(entry.questions),
        "answer": entry.answer,
        "lang": entry.lang,
        "state": entry.state,
        "source_kind": entry.source_kind,
        "source_ref": entry.source_ref or "",
        "version": entry.version,
        "updated_at": entry.updated_at,
        "updated_by": entry.updated_by,
    }


def write_entries(entries: list[KBEntry], stream: TextIO, fmt: str) -> int:
    """Write ``entries`` to ``stream`` as CSV or JSONL (``questions`` a list there); returns the count."""
    if fmt == "csv":
        writer = csv.DictWriter(stream, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for entry in entries:
            writer.writerow(entry_row(entry))
    elif fmt == "jsonl":
        for entry in entries:
            stream.write(
                json.dumps({**entry_row(entry), "questions": list(entry.questions)}, ensure_ascii=False) + "\n"
            )
    else:
        raise ValidationFailed(f"format must be csv or jsonl, got {fmt!r}", field="format")
    return len(entries)


def export_file(db: Database, path: str | Path, *, fmt: str | None = None, state: str | None = None) -> int:
    """Write the knowledge base (optionally one state) to ``path``, oldest entry first; returns the count."""
    fmt = detect_format(path, fmt)
    entries = store.all_entries(db, state=state)
    with open(path, "w", encoding="utf-8-sig" if fmt == "csv" else "utf-8", newline="") as fh:
        return write_entries(entries, fh, fmt)
