"""Erasure on request: one person's data — or one conversation — out of everything tuneloop keeps.

:func:`erase` is what ``tuneloop privacy erase``, the admin page and API and the widget's "delete this
conversation" call. In order:

1. **Find** the subject's conversations and the votes they cast elsewhere (``subjects.py``) and read their own
   words (``texts.py``) while the rows still exist.
2. **The store, in one transaction**: the counts the report's trends need are kept (``counts.py``); the
   conversations go with their messages, ratings, comments, corrections and answer lineage (foreign keys
   cascade), and so do the person's votes on other conversations; review items lose the person's evidence and
   an item nothing else supports goes (``evidence.py``); knowledge-base phrasings and answers learned from
   them leave every version (``knowledge_base.py``); audit-log quotes of them go (``audit_quotes.py``); the
   erasure log gets its row and the audit log an entry with the counts.
3. **Files** follow (``files.py``): dataset versions and evaluation rows are rewritten without their rows,
   reports of the weeks they were in are rebuilt. The run's row lists what had already left the machine
   (``outside.py``).
4. **Disk**: the SQLite files are wiped of what was deleted (``disk.py``).

``dry_run`` does steps 1–3 without keeping anything: the store transaction is rolled back and files are only
counted, so the operator sees exactly what would go. A run stopped after step 2 is finished by the next
erasure or purge, from the ids its row keeps (:func:`finish_unfinished`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from sqlite_utils import Database

from config.errors import ValidationFailed
from config.settings import Settings
from feedback import audit
from feedback.db import utc_now, write_transaction
from feedback.pii import PiiMasker
from feedback.privacy import log
from feedback.privacy.audit_quotes import redact_quotes
from feedback.privacy.counts import roll_up
from feedback.privacy.disk import wipe_sqlite_free_space
from feedback.privacy.evidence import scrub_review_queue
from feedback.privacy.files import (
    Gone,
    quoting_reports,
    rebuild_reports,
    report_weeks_on_disk,
    scrub_datasets,
    scrub_evaluations,
)
from feedback.privacy.knowledge_base import ERASED, scrub_knowledge
from feedback.privacy.outside import copies_outside
from feedback.privacy.subjects import Rows, Subject, find_rows, reference_secret, subject_hash
from feedback.privacy.texts import Texts, own_texts
from feedback.report.weeks import local_date, week_label
from feedback.sql import in_list


@dataclass
class Erasure:
    """What an erasure removed (or, with ``dry_run``, would remove): counts per kind, never content."""

    id: str | None
    dry_run: bool
    subject: str  # "a user under every API key", "one conversation" — never the identifier
    counts: dict = field(default_factory=dict)
    datasets: dict = field(default_factory=dict)  # version → {"dataset_id", "rows_removed": {file: rows}}
    evaluations: dict = field(default_factory=dict)  # evaluation id → rows removed
    reports: list[str] = field(default_factory=list)  # weeks rebuilt (or to rebuild)
    left_machine: list[dict] = field(default_factory=list)
    disk: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


@dataclass
class _StorePart:
    """What the store transaction did: counts, and what the files must follow."""

    counts: dict
    gone: Gone
    weeks: set[str]


class _RolledBack(Exception):
    """Carries a dry run's store part out of the transaction it rolls back."""

    def __init__(self, part: _StorePart):
        super().__init__("dry run")
        self.part = part


def masker(settings: Settings) -> PiiMasker:
    """The masker training files and reports use (their copies of a text are masked this way)."""
    return PiiMasker(settings.dataset.pii_allowlist)


def week_of(stored: str, tz: str) -> str:
    """The report week (``2026-W47``) a stored timestamp falls in, in the report's time zone."""
    return week_label(local_date(stored, tz))


def row_counts(db: Database, rows: Rows) -> dict:
    """How many conversations, messages, ratings, comments and corrections ``rows`` hold."""
    in_conversations, conversations = in_list(db, "conversation_id", rows.conversation_ids)
    in_votes, votes = in_list(db, "id", rows.vote_ids)
    messages = db.execute(f"SELECT COUNT(*) FROM messages WHERE {in_conversations}", conversations).fetchone()[0]
    ratings, comments, corrections = db.execute(
        f"""SELECT COUNT(*), COUNT(NULLIF(trim(comment), '')), COUNT(NULLIF(trim(correction), '')) FROM feedback
           WHERE message_id IN (SELECT id FROM messages WHERE {in_conversations}) OR {in_votes}""",
        [*conversations, *votes],
    ).fetchone()
    return {
        "conversations": len(rows.conversation_ids),
        "messages": messages,
        "ratings": ratings,
        "comments": comments,
        "corrections": corrections,
        "votes_on_other_conversations": len(rows.vote_ids),
    }


def _activity_weeks(db: Database, rows: Rows, tz: str) -> set[str]:
    """Report weeks that counted the subject: when their answers were written (votes count there too)."""
    in_conversations, conversations = in_list(db, "conversation_id", rows.conversation_ids)
    in_votes, votes = in_list(db, "id", rows.vote_ids)
    stamps = db.execute(
        f"""SELECT created_at FROM messages WHERE {in_conversations}
           UNION SELECT answered_at FROM feedback WHERE {in_votes}""",
        [*conversations, *votes],
    ).fetchall()
    return {week_of(stamp, tz) for (stamp,) in stamps if stamp}


def _change_store(db: Database, settings: Settings, rows: Rows, texts: Texts, *, actor, erasure_id: str) -> _StorePart:
    """Step 2 of the module docstring (inside the caller's transaction)."""
    now = utc_now()
    tz = settings.report.timezone
    counts = row_counts(db, rows)
    weeks = _activity_weeks(db, rows, tz)
    in_conversations, conversations = in_list(db, "conversation_id", rows.conversation_ids)
    message_ids = {row[0] for row in db.execute(f"SELECT id FROM messages WHERE {in_conversations}", conversations)}
    roll_up(db, conversation_ids=rows.conversation_ids, vote_ids=rows.vote_ids)
    in_votes, votes = in_list(db, "id", rows.vote_ids)
    db.execute(f"DELETE FROM feedback WHERE {in_votes}", votes)
    in_ids, ids = in_list(db, "id", rows.conversation_ids)
    db.execute(f"DELETE FROM conversations WHERE {in_ids}", ids)
    items = scrub_review_queue(db, texts, message_ids, now)
    reason = f"erasure on request {erasure_id}"
    kb = scrub_knowledge(db, texts, actor=actor, reason=reason)
    questions = {c.item.id: ERASED for c in items if c.action == "delete"}
    questions.update({c.item.id: c.columns["question"] for c in items if "question" in c.columns})
    quotes = redact_quotes(db, texts, questions)
    for change in items:
        weeks.update(week_of(t, tz) for t in (change.item.created_at, change.item.decided_at) if t)
    counts.update(
        review_items_deleted=sum(c.action == "delete" for c in items),
        review_items_changed=sum(c.action == "update" for c in items),
        review_items_unapproved=sum(c.unapproved for c in items),
        review_evidence_pieces=sum(c.pieces for c in items),
        kb_entries_changed=len(kb.changed),
        kb_entries_retired=len(kb.retired),
        kb_phrasings=kb.phrasings,
        kb_history_versions=kb.history_rows,
        audit_quotes=quotes,
    )
    return _StorePart(counts, Gone(texts, {c.item.id for c in items}, message_ids), weeks)


def erase(
    db: Database,
    settings: Settings,
    subject: Subject,
    *,
    requested_by: str,
    actor,
    dry_run: bool = False,
    wipe_wait_s: float = 10.0,
) -> Erasure:
    """Erase ``subject`` from the store, the files and the disk (module docstring); ``dry_run`` only counts.

    ``requested_by`` says who asked (required; anything shaped like personal data in it is masked); ``actor``
    runs it (an :class:`feedback.audit.Actor`). :class:`ValidationFailed` for a bad subject,
    :class:`~config.errors.NotFound` for an unknown conversation or key.
    """
    requested = log.clean_requested_by(requested_by)
    if not requested and not dry_run:
        raise ValidationFailed("say who asked for the erasure (requested_by)", field="requested_by")
    problems = [] if dry_run else finish_unfinished(db, settings)
    secret = reference_secret(db, settings)
    rows = find_rows(db, secret, subject)
    texts = Texts.of(own_texts(db, rows.conversation_ids, rows.vote_ids), masker(settings))
    result = Erasure(None, dry_run, subject.describe(), problems=problems)
    erasure_id = log.new_erasure_id()
    try:
        with write_transaction(db):
            part = _change_store(db, settings, rows, texts, actor=actor, erasure_id=erasure_id)
            if dry_run:
                raise _RolledBack(part)
            pending = {"items": sorted(part.gone.items), "weeks": sorted(part.weeks)}
            log.start(
                db,
                kind=subject.kind,
                subject=subject_hash(secret, subject),
                scope=rows.scope or None,
                requested_by=requested,
                actor=actor,
                erasure_id=erasure_id,
            )
            log.update(db, erasure_id, counts=part.counts, pending=pending)
            audit.record(db, actor, "privacy.erase", erasure_id, {"kind": subject.kind, **part.counts})
    except _RolledBack as rolled_back:
        part = rolled_back.part
    except Exception as exc:
        if not dry_run:  # nothing changed; the log still says an erasure was asked for and failed, and why
            log.start(
                db,
                kind=subject.kind,
                subject=subject_hash(secret, subject),
                scope=rows.scope or None,
                requested_by=requested,
                actor=actor,
                state="failed",
                erasure_id=erasure_id,
            )
            log.update(db, erasure_id, error=f"{type(exc).__name__}: {exc}"[:500], finished_at=utc_now())
        raise
    result.counts = part.counts
    result.id = None if dry_run else erasure_id
    _follow_in_files(db, settings, result, part, erasure_id)
    if dry_run:
        return result
    log.update(db, erasure_id, counts=result.counts, left_machine=result.left_machine)
    log.finish(db, erasure_id)
    result.disk = wipe_sqlite_free_space(db, wait_s=wipe_wait_s)
    log.update(db, erasure_id, disk=result.disk)
    return result


def _follow_in_files(db: Database, settings: Settings, result: Erasure, part: _StorePart, erasure_id: str) -> None:
    """Step 3: datasets, evaluation rows, reports (counted only on a dry run); fills ``result``."""
    at = utc_now()
    why = "erasure on request"
    result.datasets = scrub_datasets(db, part.gone, why=why, erasure_id=erasure_id, at=at, dry_run=result.dry_run)
    result.evaluations = scrub_evaluations(db, settings, part.gone, dry_run=result.dry_run)
    weeks = part.weeks | quoting_reports(settings, part.gone.texts)
    if result.dry_run:
        result.reports = sorted(weeks & report_weeks_on_disk(settings))
    else:
        result.reports, problems = rebuild_reports(db, settings, weeks)
        result.problems += problems
    result.counts.update(
        dataset_rows=sum(sum(v["rows_removed"].values()) for v in result.datasets.values()),
        evaluation_rows=sum(result.evaluations.values()),
        reports_rebuilt=len(result.reports),
    )
    result.left_machine = copies_outside(
        db,
        settings,
        report_weeks=result.reports,
        dataset_ids=[v["dataset_id"] for v in result.datasets.values()],
        before=at,
    )


def finish_unfinished(db: Database, settings: Settings) -> list[str]:
    """Finish the files of runs stopped after their store part (by the ids and weeks they kept); returns
    problems. Without the words (gone from the store), rows are recognised by their lineage alone."""
    problems = []
    for run in log.unfinished(db):
        gone = Gone(items=set(run.pending.get("items", [])))
        at = utc_now()
        datasets = scrub_datasets(db, gone, why=f"finishing {run.kind} {run.id}", erasure_id=run.id, at=at)
        scrub_evaluations(db, settings, gone)
        _, failed = rebuild_reports(db, settings, set(run.pending.get("weeks", [])))
        problems += failed
        counts = {
            **run.counts,
            "dataset_rows_on_resume": sum(sum(v["rows_removed"].values()) for v in datasets.values()),
        }
        log.update(db, run.id, counts=counts)
        log.finish(db, run.id)
    return problems
