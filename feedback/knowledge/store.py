"""The knowledge base in the store: entries, every version of them, and the change counter workers poll.

An entry (``kb_entries``) is one or more questions — the first is the one shown to users as the source, the
rest are phrasings learned from approved corrections or added by reviewers — with an answer, a language, where
it came from (``source_kind`` ``base`` / ``review`` / ``import`` / ``manual`` and ``source_ref``, e.g.
``faq.jsonl:12`` or a review item id) and a state (``active`` or ``retired``; entries are never deleted, so
answers' lineage keeps pointing at them).

Every change goes through :func:`_save` inside one ``BEGIN IMMEDIATE`` transaction that

- bumps ``kb_state.seq`` (the store's change counter) and stamps the entry with it (``changed_seq``), so a
  gateway worker asks ``changed_seq > <the seq it has>`` and re-indexes only what changed
  (``feedback/knowledge/live.py``);
- raises the entry's ``version`` and writes that version to ``kb_history`` with who (``actor``) and why
  (``reason``);
- rewrites the entry's rows in ``kb_question_keys``, whose primary key is the rule "a question belongs to at
  most one active entry": a second active entry with the same question (by ``feedback.text.question_key``) is
  refused with :class:`~config.errors.Conflict` naming the entry that has it.

A change that changes nothing (same questions, answer, language and state) writes nothing. Every function
takes the database first, so the CLI, the admin pages, the review queue and the tests share them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Iterable, Sequence

from sqlite_utils import Database

from config.errors import Conflict, NotFound, ValidationFailed
from feedback import audit
from feedback.db import new_id, savepoint, utc_now, write_transaction
from feedback.knowledge.analysis import language_of
from feedback.sql import in_list, integrity_errors, like, like_pattern
from feedback.text import question_key

STATES = ("active", "retired")
SOURCE_KINDS = ("base", "review", "import", "manual")
LANGS = ("ko", "en")
MAX_QUESTION_CHARS = 4000
MAX_ANSWER_CHARS = 8000
MAX_QUESTIONS = 100
MAX_ACTOR_CHARS = 200

_COLUMNS = (
    "id",
    "questions",
    "answer",
    "lang",
    "source_kind",
    "source_ref",
    "state",
    "version",
    "changed_seq",
    "created_at",
    "updated_at",
    "created_by",
    "updated_by",
)


@dataclass(frozen=True)
class KBEntry:
    """One knowledge-base entry as stored (``version`` 0 and ``changed_seq`` 0: not saved yet)."""

    id: str
    questions: tuple[str, ...]
    answer: str
    lang: str
    source_kind: str
    source_ref: str | None
    state: str
    version: int
    changed_seq: int
    created_at: str
    updated_at: str
    created_by: str
    updated_by: str

    @property
    def question(self) -> str:
        """The question shown as the source of an answer: the first one."""
        return self.questions[0]

    @property
    def active(self) -> bool:
        return self.state == "active"

    def to_dict(self) -> dict:
        """JSON-ready form."""
        data = asdict(self)
        data["questions"] = list(self.questions)
        return data


@dataclass(frozen=True)
class HistoryRow:
    """One version of an entry: what it said, its state, who made it and why."""

    entry_id: str
    version: int
    questions: tuple[str, ...]
    answer: str
    lang: str
    state: str
    actor: str
    reason: str | None
    at: str

    def to_dict(self) -> dict:
        """JSON-ready form."""
        data = asdict(self)
        data["questions"] = list(self.questions)
        return data


def _row_to_entry(row) -> KBEntry:
    values = dict(zip(_COLUMNS, row, strict=True))
    values["questions"] = tuple(json.loads(values["questions"]))
    return KBEntry(**values)


def _select(db: Database, where: str = "1=1", params: Sequence | dict = (), suffix: str = "") -> list[KBEntry]:
    sql = f"SELECT {', '.join(_COLUMNS)} FROM kb_entries WHERE {where} {suffix}"
    return [_row_to_entry(row) for row in db.execute(sql, params).fetchall()]


# --- reading --------------------------------------------------------------------------------------


def current_seq(db: Database) -> int:
    """The store's change counter: raised by every change to any entry."""
    return db.execute("SELECT seq FROM kb_state WHERE id = 1").fetchone()[0]


def find_entry(db: Database, entry_id: str) -> KBEntry | None:
    """The entry with ``entry_id``, or None."""
    rows = _select(db, "id = ?", [entry_id])
    return rows[0] if rows else None


def get_entry(db: Database, entry_id: str) -> KBEntry:
    """The entry with ``entry_id``; :class:`NotFound` otherwise."""
    entry = find_entry(db, entry_id)
    if entry is None:
        raise NotFound(f"no knowledge-base entry {entry_id!r}", field="id")
    return entry


def get_entries(db: Database, entry_ids: Iterable[str]) -> dict[str, KBEntry]:
    """The entries with these ids that exist, by id."""
    ids = list(dict.fromkeys(entry_ids))
    if not ids:
        return {}
    rows = _select(db, *in_list(db, "id", ids))
    return {entry.id: entry for entry in rows}


def entry_for_question(db: Database, question: str) -> KBEntry | None:
    """The active entry one of whose questions is ``question`` (compared by ``question_key``), or None."""
    row = db.execute("SELECT entry_id FROM kb_question_keys WHERE key = ?", [question_key(question)]).fetchone()
    return find_entry(db, row[0]) if row else None


def all_entries(db: Database, *, state: str | None = None) -> list[KBEntry]:
    """Every entry (or every one in ``state``), in the order they were created."""
    where, params = _filters(state, None)
    return _select(db, where, params, "ORDER BY rowid")


def entries_from(db: Database, source_kind: str, ref_prefix: str, *, state: str | None = None) -> list[KBEntry]:
    """Entries of one source kind whose ``source_ref`` starts with ``ref_prefix`` (e.g. ``data/faq.jsonl:``)."""
    where, params = "source_kind = ? AND substr(source_ref, 1, ?) = ?", [source_kind, len(ref_prefix), ref_prefix]
    if state is not None:
        where, params = where + " AND state = ?", [*params, state]
    return _select(db, where, params)


def changed_since(db: Database, seq: int) -> list[KBEntry]:
    """Entries (active or retired) changed after the counter stood at ``seq``, in the order they changed."""
    return _select(db, "changed_seq > ?", [seq], "ORDER BY changed_seq, rowid")


def _filters(state: str | None, search: str | None) -> tuple[str, list]:
    where, params = ["1=1"], []
    if state:
        if state not in STATES:
            raise ValidationFailed(f"state must be one of {', '.join(STATES)}; got {state!r}", field="state")
        where.append("state = ?")
        params.append(state)
    if search and search.strip():
        pattern = like_pattern(search.strip())
        where.append(f"({like('questions')} OR {like('answer')} OR id = ?)")
        params += [pattern, pattern, search.strip()]
    return " AND ".join(where), params


def list_entries(
    db: Database, *, state: str | None = None, search: str | None = None, limit: int = 100, offset: int = 0
) -> list[KBEntry]:
    """Entries filtered by state and a text search (questions, answer, or an id), last changed first."""
    where, params = _filters(state, search)
    return _select(
        db, where, params + [int(limit), int(offset)], "ORDER BY changed_seq DESC, rowid DESC LIMIT ? OFFSET ?"
    )


def count_entries(db: Database, *, state: str | None = None, search: str | None = None) -> int:
    """How many entries :func:`list_entries` would return without a limit."""
    where, params = _filters(state, search)
    return db.execute(f"SELECT COUNT(*) FROM kb_entries WHERE {where}", params).fetchone()[0]


def state_counts(db: Database) -> dict[str, int]:
    """Entries per state, every state present."""
    counts = dict.fromkeys(STATES, 0)
    counts.update(dict(db.execute("SELECT state, COUNT(*) FROM kb_entries GROUP BY state").fetchall()))
    return counts


def history(db: Database, entry_id: str) -> list[HistoryRow]:
    """Every version of an entry, newest first."""
    rows = db.execute(
        """SELECT entry_id, version, questions, answer, lang, state, actor, reason, at FROM kb_history
           WHERE entry_id = ? ORDER BY version DESC""",
        [entry_id],
    ).fetchall()
    return [HistoryRow(r[0], r[1], tuple(json.loads(r[2])), *r[3:]) for r in rows]


def version_of(db: Database, entry_id: str, version: int) -> HistoryRow:
    """One version of an entry; :class:`NotFound` otherwise."""
    row = db.execute(
        """SELECT entry_id, version, questions, answer, lang, state, actor, reason, at FROM kb_history
           WHERE entry_id = ? AND version = ?""",
        [entry_id, version],
    ).fetchone()
    if row is None:
        raise NotFound(f"entry {entry_id!r} has no version {version}", field="version")
    return HistoryRow(row[0], row[1], tuple(json.loads(row[2])), *row[3:])


# --- checking -------------------------------------------------------------------------------------


def clean_questions(questions: Iterable[str] | str) -> tuple[str, ...]:
    """Questions stripped, empty ones dropped, repeats (by ``question_key``) kept once; raises when none is left."""
    if isinstance(questions, str):
        questions = [questions]
    kept, seen = [], set()
    for question in questions:
        if not isinstance(question, str):
            raise ValidationFailed(f"a question must be text, got {type(question).__name__}", field="questions")
        text = question.strip()
        key = question_key(text)
        if not key or key in seen:
            continue
        if len(text) > MAX_QUESTION_CHARS:
            raise ValidationFailed(f"a question is longer than {MAX_QUESTION_CHARS} characters", field="questions")
        seen.add(key)
        kept.append(text)
    if not kept:
        raise ValidationFailed("an entry needs at least one question", field="questions")
    if len(kept) > MAX_QUESTIONS:
        raise ValidationFailed(f"an entry has at most {MAX_QUESTIONS} questions, got {len(kept)}", field="questions")
    return tuple(kept)


def clean_answer(answer: str | None) -> str:
    """The answer stripped; raises when it is empty or too long."""
    if not isinstance(answer, str):
        raise ValidationFailed("the answer must be text", field="answer")
    text = answer.strip()
    if not text:
        raise ValidationFailed("the answer must not be empty", field="answer")
    if len(text) > MAX_ANSWER_CHARS:
        raise ValidationFailed(f"the answer is longer than {MAX_ANSWER_CHARS} characters", field="answer")
    return text


def clean_lang(lang: str | None, questions: Sequence[str]) -> str:
    """``ko`` or ``en``; empty means detect it from the first question."""
    value = (lang or "").strip().lower()
    if not value:
        return language_of(questions[0])
    if value not in LANGS:
        raise ValidationFailed(
            f"lang must be one of {', '.join(LANGS)} (or empty to detect it), got {lang!r}", field="lang"
        )
    return value


def clean_actor(actor: str | None) -> str:
    """Who makes a change: required, so every change is attributed."""
    text = (actor or "").strip()
    if not text:
        raise ValidationFailed("who makes the change must be named", field="actor")
    if len(text) > MAX_ACTOR_CHARS:
        raise ValidationFailed(f"actor is longer than {MAX_ACTOR_CHARS} characters", field="actor")
    return text


# --- changing -------------------------------------------------------------------------------------


def new_entry(
    *,
    questions: Iterable[str] | str,
    answer: str,
    lang: str | None = None,
    source_kind: str = "manual",
    source_ref: str | None = None,
    actor: str,
    entry_id: str | None = None,
) -> KBEntry:
    """A checked entry that is not saved yet (``version`` 0); :func:`save_entries` writes it."""
    if source_kind not in SOURCE_KINDS:
        raise ValidationFailed(f"source_kind must be one of {', '.join(SOURCE_KINDS)}", field="source_kind")
    cleaned = clean_questions(questions)
    actor = clean_actor(actor)
    return KBEntry(
        id=entry_id or new_id("kb"),
        questions=cleaned,
        answer=clean_answer(answer),
        lang=clean_lang(lang, cleaned),
        source_kind=source_kind,
        source_ref=source_ref,
        state="active",
        version=0,
        changed_seq=0,
        created_at="",
        updated_at="",
        created_by=actor,
        updated_by=actor,
    )


def add_entry(
    db: Database,
    *,
    questions: Iterable[str] | str,
    answer: str,
    lang: str | None = None,
    source_kind: str = "manual",
    source_ref: str | None = None,
    actor: str,
    reason: str | None = None,
) -> KBEntry:
    """Create an active entry. :class:`Conflict` when one of its questions belongs to another active entry."""
    entry = new_entry(
        questions=questions, answer=answer, lang=lang, source_kind=source_kind, source_ref=source_ref, actor=actor
    )
    return save_entries(db, [entry], actor=actor, reason=reason or "added")[0]


def update_entry(
    db: Database,
    entry_id: str,
    *,
    actor: str,
    reason: str | None = None,
    questions: Iterable[str] | str | None = None,
    answer: str | None = None,
    lang: str | None = None,
    state: str | None = None,
) -> KBEntry:
    """Change an entry's questions, answer, language and/or state; what is None stays. Unchanged: nothing written."""
    clean_actor(actor)  # checked before anything is read; the actor itself (an account's, perhaps) goes on
    with write_transaction(db):
        entry = get_entry(db, entry_id)
        changed = changed_entry(entry, questions=questions, answer=answer, lang=lang, state=state)
        if changed == entry:
            return entry
        return save_entries(db, [changed], actor=actor, reason=reason or "edited")[0]


def changed_entry(
    entry: KBEntry,
    *,
    questions: Iterable[str] | str | None = None,
    answer: str | None = None,
    lang: str | None = None,
    state: str | None = None,
) -> KBEntry:
    """``entry`` with the given fields replaced and checked (not saved)."""
    changes: dict = {}
    if questions is not None:
        changes["questions"] = clean_questions(questions)
    if answer is not None:
        changes["answer"] = clean_answer(answer)
    if lang is not None:
        changes["lang"] = clean_lang(lang, changes.get("questions", entry.questions))
    if state is not None:
        if state not in STATES:
            raise ValidationFailed(f"state must be one of {', '.join(STATES)}; got {state!r}", field="state")
        changes["state"] = state
    return replace(entry, **changes)


def retire_entry(db: Database, entry_id: str, *, actor: str, reason: str | None = None) -> KBEntry:
    """Stop serving an entry (it stays, with its history, for lineage and for restoring)."""
    return update_entry(db, entry_id, actor=actor, reason=reason or "retired", state="retired")


def restore_entry(db: Database, entry_id: str, *, actor: str, reason: str | None = None) -> KBEntry:
    """Serve a retired entry again (:class:`Conflict` when another active entry now has one of its questions)."""
    return update_entry(db, entry_id, actor=actor, reason=reason or "restored", state="active")


def revert_entry(db: Database, entry_id: str, version: int, *, actor: str, reason: str) -> KBEntry:
    """Make an earlier version current again (questions, answer, language and state), as a new version."""
    with write_transaction(db):
        entry = get_entry(db, entry_id)
        old = version_of(db, entry_id, version)
        changed = replace(entry, questions=old.questions, answer=old.answer, lang=old.lang, state=old.state)
        if changed == entry:
            return entry
        return save_entries(db, [changed], actor=actor, reason=reason)[0]


def save_entries(
    db: Database, entries: Sequence[KBEntry], *, actor: str, reason: str, audit_action: str | None = None
) -> list[KBEntry]:
    """Write new (``version`` 0) and changed entries in one transaction, under one raise of the change counter.

    Each gets version + 1, a history row and its question keys, and the audit log says who did what
    (``kb.add``/``kb.edit``/``kb.retire``/``kb.restore`` per entry, or one ``audit_action`` row for the whole
    batch, as an import writes). :class:`Conflict` (nothing written) when two active entries would share a question.
    """
    who, actor = actor, clean_actor(actor)
    if not entries:
        return []
    now = utc_now()
    saved = []
    with write_transaction(db):
        (seq,) = db.execute("UPDATE kb_state SET seq = seq + 1 WHERE id = 1 RETURNING seq").fetchone()
        for entry in entries:
            was = _state_of(db, entry.id) if entry.version else None
            if audit_action is None:
                details = {"version": entry.version + 1, "reason": reason, "question": entry.questions[0][:200]}
                audit.record(db, who, _audit_action(was, entry.state), entry.id, details)
            entry = replace(
                entry,
                version=entry.version + 1,
                changed_seq=seq,
                updated_at=now,
                updated_by=actor,
                created_at=entry.created_at or now,
            )
            _write(db, entry, actor, reason)
            saved.append(entry)
        if audit_action is not None:
            details = {"entries": len(saved), "ids": [e.id for e in saved[:20]], "reason": reason}
            audit.record(db, who, audit_action, None, details)
    return saved


def _state_of(db: Database, entry_id: str) -> str | None:
    row = db.execute("SELECT state FROM kb_entries WHERE id = ?", [entry_id]).fetchone()
    return row[0] if row else None


def _audit_action(was: str | None, now: str) -> str:
    """What a change did, as the audit log names it."""
    if was is None:
        return "kb.add"
    if was != now:
        return "kb.retire" if now == "retired" else "kb.restore"
    return "kb.edit"


def _write(db: Database, entry: KBEntry, actor: str, reason: str) -> None:
    values = entry.to_dict()
    values["questions"] = json.dumps(list(entry.questions), ensure_ascii=False)
    if entry.version == 1:
        db.execute(
            f"INSERT INTO kb_entries ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})",
            [values[c] for c in _COLUMNS],
        )
    else:
        updated = db.execute(
            """UPDATE kb_entries SET questions = ?, answer = ?, lang = ?, state = ?, version = ?, changed_seq = ?,
                   updated_at = ?, updated_by = ? WHERE id = ? AND version = ?""",
            [
                values["questions"],
                entry.answer,
                entry.lang,
                entry.state,
                entry.version,
                entry.changed_seq,
                entry.updated_at,
                entry.updated_by,
                entry.id,
                entry.version - 1,
            ],
        )
        if updated.rowcount != 1:  # someone saved another version since this one was read
            raise Conflict(f"entry {entry.id} changed meanwhile; load it again", field="version")
    db.execute(
        """INSERT INTO kb_history (entry_id, version, questions, answer, lang, state, actor, reason, at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        [
            entry.id,
            entry.version,
            values["questions"],
            entry.answer,
            entry.lang,
            entry.state,
            actor,
            reason,
            entry.updated_at,
        ],
    )
    db.execute("DELETE FROM kb_question_keys WHERE entry_id = ?", [entry.id])
    if not entry.active:
        return
    for question in entry.questions:
        try:
            with savepoint(db):
                db.execute(
                    "INSERT INTO kb_question_keys (key, entry_id) VALUES (?, ?)", [question_key(question), entry.id]
                )
        except integrity_errors():
            holder = db.execute(
                "SELECT entry_id FROM kb_question_keys WHERE key = ?", [question_key(question)]
            ).fetchone()
            raise Conflict(
                f"the question {question!r} already belongs to entry {holder[0] if holder else '?'}; "
                "edit that entry instead, or retire it first",
                field="questions",
            ) from None
