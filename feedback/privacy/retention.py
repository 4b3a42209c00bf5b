"""Retention: personal data older than ``privacy.retention_days`` is deleted, and what the product still needs
is kept without it.

:func:`purge` (the scheduler's ``retention`` job and ``tuneloop privacy purge``) deletes every conversation idle
since the cutoff (``expiry.py``) with its messages, ratings, comments and corrections, in batches of
:data:`BATCH` conversations per transaction so gateways keep writing in between. It keeps, without personal data:

- the counts behind the weekly report's trends — answers, failures, ratings, thumbs-down per model version and
  hour (``counts.py``), rolled up in the transaction that deletes the rows;
- approved corrections, as the reviewer wrote them: an approved review item older than the cutoff keeps its
  answer, its question with personal data masked, its vote counts and the phrasings without personal data (what
  the knowledge base keeps too), and loses the comments, corrections and message ids of its evidence. Pending
  and rejected items that old are deleted (their question was a user's).

Files follow as after an erasure (``files.py``: dataset and evaluation rows whose message or review item is
gone; reports of the weeks it deleted from are rebuilt), then the disk is wiped (``disk.py``), and the run is
in the erasure log.

**An upgrade never deletes before an operator has looked.** The purge refuses to delete until someone has seen
a dry run (:func:`mark_seen`: ``tuneloop privacy purge --dry-run``, or "Allow the purge" on ``/admin/privacy``)
for the configured retention or a shorter one; until then the job logs, every time it runs, what it would
delete and how to allow it. A database created by a release that already had retention starts allowed
(migration m011): it held nothing to lose.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone

from sqlite_utils import Database

from config.errors import Conflict
from config.settings import Settings
from feedback import audit
from feedback.db import utc_now, utc_text, write_transaction
from feedback.privacy import log
from feedback.privacy.audit_quotes import QUOTE_CHARS, redact_quotes
from feedback.privacy.counts import roll_up
from feedback.privacy.disk import wipe_sqlite_free_space
from feedback.privacy.erase import finish_unfinished, masker, row_counts, week_of
from feedback.privacy.expiry import active_hours, expired_conversations, expired_counts
from feedback.privacy.files import Gone, rebuild_reports, report_weeks_on_disk, scrub_datasets, scrub_evaluations
from feedback.privacy.knowledge_base import ERASED
from feedback.privacy.subjects import Rows
from feedback.privacy.texts import Texts
from feedback.review import ReviewItem, list_items
from feedback.sql import in_list

BATCH = 500  # conversations deleted per transaction
REQUESTED_BY = "the retention period (privacy.retention_days)"
STRIPPED = "retention"  # evidence key marking an approved item already stripped of personal data
_KEPT_EVIDENCE = ("votes", "down", "up", "asked", "score", "reasons", "entries", "window")


class PurgeNotSeen(Conflict):
    """No operator has seen a dry run for this retention yet; nothing is deleted."""


@dataclass
class Purge:
    """What a purge deleted (or, with ``dry_run``, would delete): counts per kind, never content."""

    id: str | None
    dry_run: bool
    retention_days: int
    cutoff: str | None
    counts: dict = field(default_factory=dict)
    datasets: dict = field(default_factory=dict)
    evaluations: dict = field(default_factory=dict)
    reports: list[str] = field(default_factory=list)
    disk: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True)
class PurgeStatus:
    """The retention settings and whether the purge may delete."""

    retention_days: int
    allowed: bool
    reason: str  # why not, or who allowed it
    seen_at: str | None
    seen_by: str | None
    seen_days: int | None
    last_purge_at: str | None
    last_purge_cutoff: str | None

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def status(db: Database, settings: Settings) -> PurgeStatus:
    """Whether the purge may delete now, and why (module docstring)."""
    days = settings.privacy.retention_days
    seen_at, seen_by, seen_days, last_at, last_cutoff = db.execute(
        "SELECT purge_seen_at, purge_seen_by, purge_seen_days, last_purge_at, last_purge_cutoff"
        " FROM privacy_state WHERE id = 1"
    ).fetchone()
    if days == 0:
        allowed, reason = False, "privacy.retention_days is 0: everything is kept"
    elif seen_at is None:
        allowed, reason = False, "nobody has seen a dry run yet: run `tuneloop privacy purge --dry-run`"
    elif seen_days is not None and days < seen_days:
        allowed, reason = (
            False,
            f"a dry run was seen for {seen_days} days, and privacy.retention_days is now {days}: "
            "run `tuneloop privacy purge --dry-run` again",
        )
    else:
        allowed, reason = True, f"dry run seen by {seen_by} at {seen_at}"
    return PurgeStatus(days, allowed, reason, seen_at, seen_by, seen_days, last_at, last_cutoff)


def mark_seen(db: Database, settings: Settings, *, actor) -> None:
    """Record that ``actor`` saw a dry run for the configured retention: from now the purge may delete."""
    days = settings.privacy.retention_days
    with write_transaction(db):
        db.execute(
            "UPDATE privacy_state SET purge_seen_at = ?, purge_seen_by = ?, purge_seen_days = ? WHERE id = 1",
            [utc_now(), str(actor), days],
        )
        audit.record(db, actor, "privacy.purge_seen", None, {"retention_days": days})


def cutoff(settings: Settings, now: datetime | None = None) -> str:
    """The moment before which a conversation's last activity makes it expire."""
    moment = now or datetime.now(timezone.utc)
    return utc_text(moment - timedelta(days=settings.privacy.retention_days))


def _old_items(db: Database, before: str) -> tuple[list[ReviewItem], list[ReviewItem]]:
    """(items to delete, approved items to strip) among those created before ``before``."""
    old = [item for item in list_items(db, limit=10**9) if item.created_at < before]
    doomed = [i for i in old if i.status != "approved"]
    strip = [i for i in old if i.status == "approved" and STRIPPED not in i.evidence]
    return doomed, strip


def stripped(item: ReviewItem, mask, now: str) -> tuple[str, dict]:
    """An approved item's question and evidence without personal data (module docstring)."""
    evidence = {k: copy.deepcopy(v) for k, v in item.evidence.items() if k in _KEPT_EVIDENCE}
    evidence["keys"] = [k for k in item.evidence.get("keys") or [] if not mask.find(k)]
    evidence["variants"] = [
        v for v in item.evidence.get("variants") or [] if isinstance(v, dict) and not mask.find(v.get("question", ""))
    ]
    evidence["answers"] = [
        {**a, "answer": mask.mask(a.get("answer", "")).text}
        for a in item.evidence.get("answers") or []
        if isinstance(a, dict)
    ]
    evidence[STRIPPED] = {"stripped_at": now}
    return mask.mask(item.question).text, evidence


def _strip_items(db: Database, items: list[ReviewItem], mask, now: str) -> dict[str, str]:
    """Strip approved items (inside the caller's transaction); returns item id → the question audits may quote."""
    quotes = {}
    for item in items:
        question, evidence = stripped(item, mask, now)
        db.execute(
            "UPDATE review_items SET question = ?, evidence = ?, updated_at = ? WHERE id = ?",
            [question, json.dumps(evidence, ensure_ascii=False, sort_keys=True), now, item.id],
        )
        if question != item.question:
            quotes[item.id] = question[:QUOTE_CHARS]
    return quotes


def _weeks(hours: set[str], tz: str) -> set[str]:
    return {week_of(hour + ":00:00.000Z", tz) for hour in hours}


@dataclass
class _Run:
    """A purge's row in the erasure log, written with its first deletion and kept current with every batch, so a
    purge stopped half-way leaves the weeks and items its files must still follow (``erase.finish_unfinished``)."""

    db: Database
    actor: object
    scope: str
    id: str | None = None
    totals: dict = field(default_factory=dict)
    weeks: set[str] = field(default_factory=set)
    items: list[str] = field(default_factory=list)

    def note(self, counts: dict) -> None:
        """Add ``counts`` (inside the transaction that deleted them)."""
        if self.id is None:
            self.id = log.start(
                self.db, kind="retention", subject=None, scope=self.scope, requested_by=REQUESTED_BY, actor=self.actor
            )
        _add(self.totals, counts)
        log.update(self.db, self.id, counts=self.totals, pending={"items": self.items, "weeks": sorted(self.weeks)})


def _item_weeks(items: list[ReviewItem], tz: str) -> set[str]:
    return {week_of(t, tz) for item in items for t in (item.created_at, item.decided_at) if t}


def _add(total: dict, counts: dict) -> None:
    for key, value in counts.items():
        total[key] = total.get(key, 0) + value


def purge(
    db: Database,
    settings: Settings,
    *,
    actor,
    now: datetime | None = None,
    dry_run: bool = False,
    wipe_wait_s: float = 10.0,
) -> Purge:
    """Delete what the retention period has run out on (module docstring); ``dry_run`` only counts.

    Raises :class:`PurgeNotSeen` (deleting nothing) while no operator has seen a dry run for this retention.
    With ``privacy.retention_days`` 0 it deletes nothing and says so in the result's counts (all zero).
    """
    days = settings.privacy.retention_days
    result = Purge(None, dry_run, days, None)
    if days == 0:
        return result
    if not dry_run:
        allowed = status(db, settings)
        if not allowed.allowed:
            raise PurgeNotSeen(f"the retention purge deletes nothing yet: {allowed.reason}", code="purge_not_seen")
    result.cutoff = before = cutoff(settings, now)
    tz = settings.report.timezone
    doomed_items, strip_items = _old_items(db, before)
    if dry_run:
        result.counts = expired_counts(db, before)
        result.counts.update(review_items_deleted=len(doomed_items), review_items_stripped=len(strip_items))
        weeks = _weeks(active_hours(db, cutoff=before), tz) | _item_weeks(doomed_items, tz)
        _follow_in_files(
            db, settings, result, Gone(items={i.id for i in doomed_items}, expired_before=before), weeks, ""
        )
        return result

    result.problems = finish_unfinished(db, settings)
    run = _Run(db, actor, f"idle since {before} ({days} days)")
    while batch := expired_conversations(db, before, limit=BATCH):
        with write_transaction(db):
            counts = row_counts(db, Rows(batch))
            del counts["votes_on_other_conversations"]
            run.weeks |= _weeks(active_hours(db, batch), tz)
            roll_up(db, conversation_ids=batch)
            in_batch, params = in_list(db, "id", batch)
            db.execute(f"DELETE FROM conversations WHERE {in_batch}", params)
            run.note(counts)
    stamp = utc_now()
    with write_transaction(db):
        db.execute("UPDATE privacy_state SET last_purge_at = ?, last_purge_cutoff = ? WHERE id = 1", [stamp, before])
        if doomed_items or strip_items or run.id is not None:
            quotes = _strip_items(db, strip_items, masker(settings), stamp)
            for item in doomed_items:
                db.execute("DELETE FROM review_items WHERE id = ?", [item.id])
                quotes[item.id] = ERASED
            run.items = [i.id for i in doomed_items]
            run.weeks |= _item_weeks(doomed_items, tz)
            run.note(
                {
                    "review_items_deleted": len(doomed_items),
                    "review_items_stripped": len(strip_items),
                    "audit_quotes": redact_quotes(db, Texts(), quotes),
                }
            )
        if run.id is None:
            return result  # nothing had expired: nothing to log, no file to follow
        audit.record(db, actor, "privacy.purge", run.id, {"retention_days": days, "cutoff": before, **run.totals})
    result.id, result.counts = run.id, run.totals
    _follow_in_files(db, settings, result, Gone(items=set(run.items)), run.weeks, run.id)
    log.update(db, run.id, counts=result.counts)
    log.finish(db, run.id)
    result.disk = wipe_sqlite_free_space(db, wait_s=wipe_wait_s)
    log.update(db, run.id, disk=result.disk)
    return result


def _follow_in_files(db: Database, settings: Settings, result: Purge, gone: Gone, weeks: set[str], run_id: str) -> None:
    at = utc_now()
    why = f"retention ({result.retention_days} days)"
    result.datasets = scrub_datasets(db, gone, why=why, erasure_id=run_id, at=at, dry_run=result.dry_run)
    result.evaluations = scrub_evaluations(db, settings, gone, dry_run=result.dry_run)
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
