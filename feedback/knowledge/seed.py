"""First start: the knowledge base is filled from ``[knowledge] base_file`` once, and never again.

:func:`ensure_seeded` is called wherever the database is opened for work — the gateway's app start (every
gunicorn worker, so ``tuneloop up`` and ``tuneloop serve``), and every CLI command — never inside a request.
It imports the file (empty setting: the bundled ``data/faq.jsonl``) as ``source_kind = base`` with
``source_ref = <file>:<line>``, then puts live every correction approved before the knowledge base existed (a
database from an earlier version: they replace the answers of their questions' entries), and records the file's
path and sha256 in ``kb_state``. A base row whose question an entry already has is left out: that entry is
newer (a correction approved meanwhile). Because that record
exists afterwards, a restart never imports again over reviewers' edits, even when the file changed (then it
logs how to import the new file on purpose: ``tuneloop kb import``). Two processes starting at once
— two workers, or two hosts on one empty PostgreSQL store — seed once: the check and the import run in one
write transaction under a lock of their own (``knowledge-seed``: ``BEGIN IMMEDIATE`` on SQLite, an advisory
lock on PostgreSQL), and the one that waited finds the work done.

A knowledge base seeded from the bundled FAQ also gets the bundled alternate questions
(``data/faq-alternates.jsonl``, :mod:`feedback.knowledge.alternates`): right after the first import, and at the
next start of a database seeded before they shipped — only on entries still equal to their FAQ row, never twice.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from sqlite_utils import Database

from config.errors import ConfigError
from config.settings import PROJECT_ROOT, KnowledgeSettings
from feedback import review
from feedback.db import utc_now, write_transaction
from feedback.knowledge import alternates, io
from feedback.review_io import ImportRejected

BUNDLED_BASE = PROJECT_ROOT / "data" / "faq.jsonl"
SEED_ACTOR = "system"
SEED_LOCK = "knowledge-seed"

log = logging.getLogger(__name__)


def base_file(settings: KnowledgeSettings) -> Path:
    """The file a first start imports: ``base_file``, or the bundled FAQ when it is empty.

    A relative path is looked up in the working directory, then in the project folder.
    """
    if not settings.base_file:
        return BUNDLED_BASE
    path = Path(settings.base_file).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, PROJECT_ROOT / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = " or ".join(str(c) for c in candidates)
    raise ConfigError(
        f"knowledge.base_file: {settings.base_file} not found (looked for {looked})", field="knowledge.base_file"
    )


def display_name(path: Path) -> str:
    """``path`` relative to the project or the working directory when inside one (what ``source_ref`` shows)."""
    resolved = path.resolve()
    for root in (PROJECT_ROOT, Path.cwd().resolve()):
        try:
            return resolved.relative_to(root).as_posix()
        except ValueError:
            continue
    return str(resolved)


def ensure_seeded(db: Database, settings: KnowledgeSettings) -> int | None:
    """Import the base file if this knowledge base was never seeded; returns how many entries, else None."""
    if not settings.seed:
        return None
    if _seeded(db):
        changed = base_changed(db, settings)
        if changed:
            log.warning(changed)
        _add_bundled_alternates(db)
        return None
    path = base_file(settings)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    name = display_name(path)
    with write_transaction(db, lock=SEED_LOCK):
        if _seeded(db):  # another worker seeded while this one waited for the lock
            return None
        try:
            summary = io.import_file(
                db,
                path,
                actor=SEED_ACTOR,
                source_kind="base",
                source_name=name,
                reason=f"first start: imported {name}",
                keep_existing=True,
            )
        except ImportRejected as exc:
            raise ConfigError(f"knowledge.base_file: {exc.message}", field="knowledge.base_file") from exc
        published, problems = review.publish_approved(db)
        for problem in problems:
            log.warning("an approved correction could not go into the knowledge base: %s", problem)
        db.execute(
            "UPDATE kb_state SET base_path = ?, base_sha256 = ?, seeded_at = ? WHERE id = 1", [name, digest, utc_now()]
        )
        _add_bundled_alternates(db)
    log.info(
        "knowledge base seeded from %s: %d entries (%d rows kept an existing entry), %d earlier corrections live",
        name,
        summary.created,
        summary.kept,
        published,
    )
    return summary.created


def _add_bundled_alternates(db: Database) -> int:
    """The bundled alternate questions, when this base was seeded from the bundled FAQ (else 0)."""
    row = db.execute("SELECT base_path FROM kb_state WHERE id = 1").fetchone()
    bundled = display_name(BUNDLED_BASE)
    if row is None or row[0] != bundled:
        return 0
    return alternates.add_alternates(db, base=BUNDLED_BASE, base_name=bundled, actor=SEED_ACTOR)


def _seeded(db: Database) -> bool:
    return db.execute("SELECT seeded_at FROM kb_state WHERE id = 1").fetchone()[0] is not None


def base_changed(db: Database, settings: KnowledgeSettings) -> str | None:
    """A sentence when the configured base file differs from the one imported on first start, else None."""
    row = db.execute("SELECT base_path, base_sha256 FROM kb_state WHERE id = 1 AND seeded_at IS NOT NULL").fetchone()
    if row is None or not settings.seed:
        return None
    try:
        path = base_file(settings)
    except ConfigError as exc:
        return exc.message
    if display_name(path) == row[0] and hashlib.sha256(path.read_bytes()).hexdigest() == row[1]:
        return None
    return (
        f"knowledge.base_file is now {display_name(path)}, which differs from {row[0]} imported on first start; "
        "the knowledge base keeps its entries (import the file on purpose with: "
        f"tuneloop kb import {display_name(path)})"
    )
