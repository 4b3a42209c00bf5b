"""Alternate questions for the bundled FAQ: customer phrasings added to each bundled entry as more questions.

``data/faq-alternates.jsonl`` has one row per line of ``data/faq.jsonl``, in the same order::

    {"alternates_of": 41, "question": "<that FAQ row's question>", "questions": ["배송 기간이 얼마나 되나요?", ...]}

``alternates_of`` is the FAQ line, counted from 0 as ``rewordings.jsonl`` counts; ``question`` repeats the FAQ
row's question so that a row that no longer lines up with its FAQ row is noticed, not applied to another
entry. Retrieval indexes every question of an entry (``feedback/knowledge/retrieval.py``), so five or six
phrasings per entry, in the words customers use, let a question asked in other words find its entry
(docs/benchmarks.md, "Retrieval"). ``data/faq.jsonl`` itself stays one question per row: the starter model
trains on it and the golden sets derive from it.

:func:`add_alternates` runs at every start (``seed.ensure_seeded``), right after the first import and on
databases seeded before the alternates shipped, and is idempotent. It gives an entry its alternates only when

- the entry is a bundled FAQ row (``source_kind = base``, ``source_ref = data/faq.jsonl:<line>``) and active;
- it is still equal to that row: the same one question and the same answer (an entry a reviewer edited or
  corrected is theirs: its questions are left as they made them);
- it never had them: its history has no version saved with :data:`REASON` (a reviewer who removes them later
  is not overruled at the next start);
- or it has them and nobody changed it since: its newest version is the one saved with :data:`REASON`, its
  answer is still the row's, and the file now holds phrasings it lacks (a release that ships more alternates:
  the entry gets the whole list again, in the file's order).

Each entry gets a new version with actor ``system`` and reason :data:`REASON` (``tuneloop kb show`` and the
admin page's history say where the questions came from), all in one transaction with one ``kb.import`` audit
row. An alternate whose question another active entry already has is left out.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from sqlite_utils import Database

from config.settings import PROJECT_ROOT
from feedback.db import write_transaction
from feedback.knowledge import io, store
from feedback.text import question_key

BUNDLED_ALTERNATES = PROJECT_ROOT / "data" / "faq-alternates.jsonl"
REASON = "added the bundled alternate questions (data/faq-alternates.jsonl)"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AlternateRow:
    """The alternate questions of one FAQ row: its 0-based line, its own question, and the phrasings."""

    faq_line: int
    question: str
    alternates: tuple[str, ...]


def read_alternates(path: Path = BUNDLED_ALTERNATES) -> list[AlternateRow]:
    """The rows of an alternates file; ValueError naming the line when one is malformed."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            row = AlternateRow(
                int(record["alternates_of"]), str(record["question"]), tuple(str(q) for q in record["questions"])
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path.name} line {number}: not an alternates row ({exc})") from None
        rows.append(row)
    return rows


def add_alternates(db: Database, *, base: Path, base_name: str, actor: str, path: Path | None = None) -> int:
    """Give every bundled entry still as imported its alternate questions (see the module docstring).

    ``base`` is the FAQ file the entries were imported from, ``base_name`` its name in their ``source_ref``
    (``data/faq.jsonl``); ``path`` the alternates file (default: the bundled one). Returns how many entries got
    them; 0 when there is nothing to do (then nothing is written and no write lock is taken).
    """
    path = path or BUNDLED_ALTERNATES
    if not path.is_file():
        return 0
    base_rows, _ = io.read_rows(base)
    by_ref = {}
    for row in read_alternates(path):
        source = base_rows[row.faq_line] if 0 <= row.faq_line < len(base_rows) else None
        if source is None or source.questions != (row.question,):  # no longer lines up with its FAQ row
            log.warning("%s: alternates of FAQ line %d do not match that row; left out", path.name, row.faq_line)
            continue
        by_ref[f"{base_name}:{source.line}"] = (source, row)
    if not _planned(db, by_ref, base_name):
        return 0
    with write_transaction(db):
        planned = _planned(db, by_ref, base_name)  # again under the lock: another worker may have done it
        store.save_entries(db, planned, actor=actor, reason=REASON, audit_action="kb.import")
    if planned:
        log.info("knowledge base: alternate questions added to %d bundled entries", len(planned))
    return len(planned)


def _planned(db: Database, by_ref: dict[str, tuple[io.Row, AlternateRow]], base_name: str) -> list[store.KBEntry]:
    candidates = []
    for entry in store.entries_from(db, "base", f"{base_name}:", state="active"):
        source, row = by_ref.get(entry.source_ref or "", (None, None))
        if source is not None and entry.answer == source.answer and entry.questions[:1] == source.questions:
            candidates.append((entry, row))
    if not candidates:
        return []
    ids = [entry.id for entry, _ in candidates]
    marks = ", ".join("?" for _ in ids)
    # Per entry: whether it ever got the alternates, and whether the version it has now is the one that gave them.
    given, ours = set(), set()
    for entry_id, version, newest in db.execute(
        f"""SELECT h.entry_id, h.version, e.version FROM kb_history h JOIN kb_entries e ON e.id = h.entry_id
            WHERE h.reason = ? AND h.entry_id IN ({marks})""",
        [REASON, *ids],
    ):
        given.add(entry_id)
        if version == newest:
            ours.add(entry_id)
    # An entry that already holds the file's whole list, word for word, has nothing to gain: the usual case at
    # every start after the first, decided here without normalising 2,000 questions (40 ms a process start).
    candidates = [
        (entry, row)
        for entry, row in candidates
        if (entry.id not in given and len(entry.questions) == 1)
        or (entry.id in ours and entry.questions != tuple(q.strip() for q in (row.question, *row.alternates)))
    ]
    if not candidates:
        return []
    keys = sorted({question_key(q) for _, row in candidates for q in row.alternates})
    held: dict[str, str] = {}
    for start in range(0, len(keys), 500):  # under SQLite's limit on parameters
        chunk = keys[start : start + 500]
        sql = f"SELECT key, entry_id FROM kb_question_keys WHERE key IN ({', '.join('?' for _ in chunk)})"
        held.update(db.execute(sql, chunk).fetchall())
    planned = []
    for entry, row in candidates:
        questions, seen = [row.question], {question_key(row.question)}
        for alternate in row.alternates:
            key = question_key(alternate)
            if key and key not in seen and held.get(key, entry.id) == entry.id:  # another entry's: left out
                questions.append(alternate)
                seen.add(key)
        questions = store.clean_questions(questions)
        if len(questions) > 1 and tuple(questions) != entry.questions:
            planned.append(replace(entry, questions=questions))
    return planned
