"""The review queue as CSV or JSONL files: export, edit anywhere (a spreadsheet, an editor), import back.

A reviewer exports the pending items, fills in ``answer`` (and ``status``) for
the ones they fixed, sets ``status`` to ``rejected`` (with a ``note``) for the
ones that need no fix, and imports the file. A row without an ``id`` is a new
question (with an answer it is approved at once).

Imports are all-or-nothing: every row is checked first, and a file with any
problem changes nothing; each problem is reported with the line number it starts
on (line 1 of a CSV file is its header; a quoted field with line breaks spans
several lines, and the row is reported at its first). CSV files are written as
UTF-8 with a byte-order mark, so Excel shows Korean correctly, and read with or
without one.

:func:`read_records` (line-numbered CSV/JSONL reading) is shared with the
dataset importer in ``trainer/dataset``.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from sqlite_utils import Database

from config.errors import NotFound, ValidationFailed
from feedback import audit, review
from feedback.db import write_transaction
from feedback.text import question_key

FORMATS = ("csv", "jsonl")
# Columns a reviewer edits; the rest are there to decide with and are ignored on import.
EDITABLE = ("id", "status", "question", "answer", "note")
CSV_COLUMNS = (
    *EDITABLE,
    "answer_source",
    "reviewer",
    "decided_at",
    "draft",
    "suggested_correction",
    "current_answer",
    "votes",
    "down",
    "reasons",
    "created_at",
)


@dataclass(frozen=True)
class LineError:
    """A problem with one line (record) of an imported file, and the field (column) it is in when known."""

    line: int
    message: str
    field: str | None = None

    def __str__(self) -> str:
        where = f"line {self.line}, {self.field}" if self.field else f"line {self.line}"
        return f"{where}: {self.message}"


class ImportRejected(ValidationFailed):
    """A file had problems; nothing was imported. ``errors`` lists them by line."""

    def __init__(self, name: str, errors: list[LineError]):
        shown = "\n".join(f"  {e}" for e in errors[:50])
        more = f"\n  … and {len(errors) - 50} more" if len(errors) > 50 else ""
        super().__init__(f"{name}: {len(errors)} problem(s), nothing was imported:\n{shown}{more}")
        self.errors = errors


def detect_format(path: str | Path, fmt: str | None = None) -> str:
    """``fmt`` if given, else ``csv`` or ``jsonl`` from the file name's extension."""
    if fmt:
        if fmt not in FORMATS:
            raise ValidationFailed(f"format must be csv or jsonl, got {fmt!r}", field="format")
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    raise ValidationFailed(
        f"cannot tell the format of {Path(path).name}: name it .csv or .jsonl, or say --format", field="format"
    )


def read_records(path: str | Path, fmt: str | None = None) -> tuple[list[tuple[int, dict]], list[LineError]]:
    """``(line, record)`` pairs of a CSV (with a header row) or JSONL file, and the lines that failed to parse."""
    fmt = detect_format(path, fmt)
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return [], [LineError(data[: exc.start].count(b"\n") + 1, "not UTF-8 text (save the file as UTF-8)")]
    return _read_csv(text) if fmt == "csv" else _read_jsonl(text)


def _read_jsonl(text: str) -> tuple[list[tuple[int, dict]], list[LineError]]:
    records, errors = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(LineError(number, f"not valid JSON: {exc.msg} (column {exc.colno})"))
            continue
        if not isinstance(value, dict):
            errors.append(LineError(number, f"expected a JSON object, got {type(value).__name__}"))
            continue
        records.append((number, value))
    return records, errors


def _read_csv(text: str) -> tuple[list[tuple[int, dict]], list[LineError]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    records, errors = [], []
    header: list[str] | None = None
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            errors.append(LineError(start, f"not valid CSV: {exc}"))
            break
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip().lower() for cell in row]
            if len(set(header)) != len(header):
                errors.append(LineError(start, "the header names a column twice"))
                break
            continue
        if len(row) > len(header):
            errors.append(LineError(start, f"{len(row)} fields, but the header has {len(header)}"))
            continue
        records.append((start, dict(zip(header, row + [""] * (len(header) - len(row)), strict=False))))
    return records, errors


def _item_row(item: review.ReviewItem) -> dict:
    ev = item.evidence
    answers = ev.get("answers") or []
    return {
        "id": item.id,
        "status": item.status,
        "question": item.question,
        "answer": item.answer or "",
        "note": item.note or "",
        "answer_source": item.answer_source or "",
        "reviewer": item.reviewer or "",
        "decided_at": item.decided_at or "",
        "draft": item.draft or "",
        "suggested_correction": item.suggestions[0] if item.suggestions else "",
        "current_answer": answers[0]["answer"] if answers else "",
        "votes": ev.get("votes", ""),
        "down": ev.get("down", ""),
        "reasons": ", ".join(f"{r} {n}" for r, n in (ev.get("reasons") or {}).items()),
        "created_at": item.created_at,
    }


def write_items(items: list[review.ReviewItem], stream: TextIO, fmt: str) -> int:
    """Write ``items`` to ``stream`` as CSV or JSONL (JSONL also carries the full evidence); returns the count."""
    if fmt == "csv":
        writer = csv.DictWriter(stream, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for item in items:
            writer.writerow(_item_row(item))
    elif fmt == "jsonl":
        for item in items:
            stream.write(json.dumps({**_item_row(item), "evidence": item.evidence}, ensure_ascii=False) + "\n")
    else:
        raise ValidationFailed(f"format must be csv or jsonl, got {fmt!r}", field="format")
    return len(items)


def export_items(db: Database, path: str | Path, *, fmt: str | None = None, status: str | None = None) -> int:
    """Write the queue (optionally one status) to ``path``; returns how many items were written."""
    fmt = detect_format(path, fmt)
    items = review.list_items(db, status=status, limit=1_000_000)
    items.reverse()  # oldest first reads better in a spreadsheet
    with open(path, "w", encoding="utf-8-sig" if fmt == "csv" else "utf-8", newline="") as fh:
        return write_items(items, fh, fmt)


@dataclass
class ImportSummary:
    """What an import did (or, with ``dry_run``, would do)."""

    created: int = 0
    approved: int = 0
    rejected: int = 0
    edited: int = 0
    unchanged: int = 0
    lines: list[tuple[int, str]] = field(default_factory=list)  # (line, what happens)


@dataclass
class _Planned:
    line: int
    action: str  # create | approve | reject | edit | none
    item_id: str | None
    question: str | None
    answer: str | None
    note: str | None


def _text(record: dict, name: str) -> str:
    value = record.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be text, got {type(value).__name__}")
    return value.strip()


def _plan(db: Database, records: list[tuple[int, dict]]) -> tuple[list[_Planned], list[LineError]]:
    plans, errors = [], []
    seen_ids: dict[str, int] = {}
    new_keys: dict[str, int] = {}
    open_keys = {key: item.id for item in review.open_items(db) for key in item.keys}
    for line, record in records:
        try:
            item_id, status, question, answer, note = (_text(record, name) for name in EDITABLE)
        except ValueError as exc:
            errors.append(LineError(line, str(exc)))
            continue
        status = status.lower()
        problem = _check_row(item_id, status, question, answer)
        if problem:
            errors.append(LineError(line, problem))
            continue
        if item_id:
            if item_id in seen_ids:
                errors.append(LineError(line, f"id {item_id} is also on line {seen_ids[item_id]}"))
                continue
            seen_ids[item_id] = line
            plan, problem = _plan_existing(db, line, item_id, status, question, answer, note)
        else:
            key = question_key(question)
            if key in new_keys:
                errors.append(LineError(line, f"the same question is also on line {new_keys[key]}"))
                continue
            new_keys[key] = line
            if key in open_keys:
                problem = f"this question is already pending or approved as {open_keys[key]} (put that id in the row)"
                plan = None
            else:
                plan = _Planned(line, "create", None, question, answer or None, note or None)
        if problem:
            errors.append(LineError(line, problem))
        elif plan:
            plans.append(plan)
    return plans, errors


def _check_row(item_id: str, status: str, question: str, answer: str) -> str | None:
    if status and status not in review.STATUSES:
        return f"status must be one of {', '.join(review.STATUSES)} (or empty), got {status!r}"
    if status == "approved" and not answer:
        return "status is approved but the answer is empty"
    if status == "pending" and answer and not item_id:
        return "an answer is given but status is pending; set status to approved (or leave it empty)"
    if not item_id and not question:
        return "a row needs an id (an existing item) or a question (a new one)"
    if not item_id and status == "rejected":
        return "a new question cannot be rejected; leave it out"
    if len(answer) > review.MAX_ANSWER_CHARS:
        return f"the answer is longer than {review.MAX_ANSWER_CHARS} characters"
    if len(question) > review.MAX_QUESTION_CHARS:
        return f"the question is longer than {review.MAX_QUESTION_CHARS} characters"
    return None


def _plan_existing(db, line, item_id, status, question, answer, note) -> tuple[_Planned | None, str | None]:
    try:
        item = review.get_item(db, item_id)
    except NotFound:
        return None, f"no review item {item_id!r}"
    status = status or ("approved" if answer else item.status)
    new_question = question if question and question != item.question else None
    if status == "approved":
        if item.status == "approved" and answer == (item.answer or "") and not new_question:
            return _Planned(line, "none", item_id, None, None, None), None
        return _Planned(line, "approve", item_id, new_question, answer, None), None
    if status == "rejected":
        if item.status == "rejected":
            return _Planned(line, "none", item_id, None, None, None), None
        return _Planned(line, "reject", item_id, new_question, None, note or None), None
    # status pending
    if item.status != "pending":
        return None, f"{item_id} is {item.status}; a file cannot put it back to pending"
    if answer and answer != (item.answer or ""):
        return None, "an answer is given but status is pending; set status to approved"
    if new_question:
        return _Planned(line, "edit", item_id, new_question, None, None), None
    return _Planned(line, "none", item_id, None, None, None), None


def import_items(
    db: Database, path: str | Path, *, reviewer: str, fmt: str | None = None, dry_run: bool = False
) -> ImportSummary:
    """Apply a CSV/JSONL file of decisions; raises :class:`ImportRejected` (nothing changed) on any problem."""
    records, errors = read_records(path, fmt)
    plans, more = _plan(db, records)
    errors = sorted(errors + more, key=lambda e: e.line)
    name = Path(path).name
    if errors:
        raise ImportRejected(name, errors)
    summary = ImportSummary()
    for plan in plans:
        summary.lines.append((plan.line, plan.action if plan.item_id is None else f"{plan.action} {plan.item_id}"))
    if dry_run:
        _count(summary, plans)
        return summary
    with write_transaction(db):  # one transaction: a failure on any row undoes every row
        for plan in plans:
            try:
                _apply(db, plan, reviewer)
            except ValidationFailed as exc:
                raise ImportRejected(name, [LineError(plan.line, exc.message)]) from exc
            except Exception as exc:  # Conflict and friends: still name the line
                message = getattr(exc, "message", str(exc))
                raise ImportRejected(name, [LineError(plan.line, message)]) from exc
        _count(summary, plans)
        # Each decision has its own audit entry (review.approve, …); this one says which file brought them.
        details = {"file": name, "created": summary.created, "approved": summary.approved}
        details |= {"rejected": summary.rejected, "edited": summary.edited, "unchanged": summary.unchanged}
        audit.record(db, reviewer, "review.import", None, details)
    return summary


def _apply(db: Database, plan: _Planned, reviewer: str) -> None:
    if plan.action == "create":
        review.create_item(db, question=plan.question, origin="import", answer=plan.answer, reviewer=reviewer)
        return
    if plan.question and plan.action != "none":
        review.edit_item(db, plan.item_id, reviewer=reviewer, question=plan.question)
    if plan.action == "approve":
        review.approve(db, plan.item_id, answer=plan.answer, reviewer=reviewer)
    elif plan.action == "reject":
        review.reject(db, plan.item_id, reviewer=reviewer, note=plan.note)


def _count(summary: ImportSummary, plans: list[_Planned]) -> None:
    for plan in plans:
        if plan.action == "create":
            summary.created += 1
            if plan.answer:
                summary.approved += 1
        elif plan.action == "approve":
            summary.approved += 1
        elif plan.action == "reject":
            summary.rejected += 1
        elif plan.action == "edit":
            summary.edited += 1
        else:
            summary.unchanged += 1
