"""The audit log: who changed what, when — one call, ``record(db, actor, action, target, details)``.

Every change users can see goes through a store function that takes the database and
the person making it (review decisions, knowledge-base edits and imports, promotions
and rollbacks, API keys, accounts); that function calls :func:`record` inside its own
write transaction, so a change and its audit row commit together or not at all.

Who is an :class:`Actor`: a ``str`` (the name histories always stored — an account's
e-mail, an operating-system user, ``gate``) that also carries the display name, the
account id and the way in (web, api, cli, system). Being a string, it passes through
every existing ``actor: str`` / ``reviewer: str`` parameter unchanged, and a plain
string is accepted too (recorded as ``via="system"``).

``details`` is a small JSON object: ids, counts, old and new roles, a reason. Never a
secret: values under keys that name one (``password``, ``token``, ``secret``, ``key``,
``hash``) are replaced by ``"[redacted]"`` before anything is written.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import asdict, dataclass
from typing import IO

from sqlite_utils import Database

from config.errors import ValidationFailed
from feedback.db import utc_now, write_transaction
from feedback.sql import escape_like, like, like_pattern, same_text

VIAS = ("web", "api", "cli", "system")
# What each action means, in the words the audit page and the weekly report use.
ACTIONS = {
    "review.approve": "approved a correction",
    "review.reject": "rejected a review item",
    "review.edit": "edited a review item",
    "review.create": "queued a question by hand",
    "review.collect": "collected the worst-answered questions",
    "review.import": "imported review decisions",
    "kb.add": "added a knowledge-base entry",
    "kb.edit": "edited a knowledge-base entry",
    "kb.retire": "retired a knowledge-base entry",
    "kb.restore": "restored a knowledge-base entry",
    "kb.import": "imported knowledge-base entries",
    "model.promoted": "promoted a model version",
    "model.canary": "made a model version a canary",
    "model.rolled_back": "rolled back the live model",
    "model.retired": "retired a model version",
    "model.rejected": "rejected a model version",
    "model.deployed": "loaded a model version",
    "model.undeployed": "unloaded a model version",
    "model.pinned": "pinned a model version to its server",
    "model.kept_as_fallback": "kept a replaced model as a fallback",
    "key.create": "created an API key",
    "key.revoke": "revoked an API key",
    "user.add": "added an account",
    "user.role": "changed an account's role",
    "user.disable": "disabled an account",
    "user.enable": "enabled an account",
    "user.password": "set a password",
    "user.link": "issued a sign-in link",
    "admin_token.rotate": "rotated the admin token",
    "privacy.erase": "erased a person's data on request",
    "privacy.export": "exported a person's data on request",
    "privacy.purge": "deleted data past the retention period",
    "privacy.purge_seen": "saw what the retention purge deletes",
}
_SECRET_KEY = re.compile(r"password|secret|token|hash|(^|_)key$", re.IGNORECASE)
_KEEP_KEYS = frozenset({"key_id", "kind", "prefix_shown"})  # ids and kinds, not secrets
REDACTED = "[redacted]"


class Actor(str):
    """Who made a change: the name recorded in histories, with display name, account id and way in."""

    name: str
    user_id: str | None
    via: str

    def __new__(cls, label: str, *, name: str = "", user_id: str | None = None, via: str = "system") -> Actor:
        if via not in VIAS:
            raise ValueError(f"via must be one of {VIAS}, got {via!r}")
        actor = super().__new__(cls, label)
        actor.name = name or label
        actor.user_id = user_id
        actor.via = via
        return actor

    def __reduce__(self):
        return (_rebuild_actor, (str(self), self.name, self.user_id, self.via))


def _rebuild_actor(label: str, name: str, user_id: str | None, via: str) -> Actor:
    return Actor(label, name=name, user_id=user_id, via=via)


def as_actor(actor: str | None) -> Actor:
    """``actor`` as an :class:`Actor` (a plain string is a system actor; None is ``unknown``)."""
    if isinstance(actor, Actor):
        return actor
    return Actor((actor or "unknown").strip() or "unknown")


@dataclass(frozen=True)
class Entry:
    """One row of the audit log."""

    id: int
    at: str
    actor: str
    actor_name: str
    actor_id: str | None
    via: str
    action: str
    target: str | None
    details: dict

    @property
    def description(self) -> str:
        """The action in words ("approved a correction")."""
        return ACTIONS.get(self.action, self.action)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def scrub(details: dict | None) -> dict:
    """``details`` with every value under a secret-looking key replaced by ``"[redacted]"`` (nested too)."""

    def clean(value, key: str = ""):
        if key and key not in _KEEP_KEYS and _SECRET_KEY.search(key):
            return REDACTED
        if isinstance(value, dict):
            return {str(k): clean(v, str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return clean(dict(details or {}))


def record(db: Database, actor: str | None, action: str, target: str | None = None, details: dict | None = None) -> int:
    """Append one entry (inside the caller's transaction, if any); returns its id."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}; add it to feedback.audit.ACTIONS")
    who = as_actor(actor)
    with write_transaction(db):
        ((entry_id,),) = db.execute(
            """INSERT INTO audit_log (at, actor, actor_name, actor_id, via, action, target, details)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id""",
            [
                utc_now(),
                str(who),
                who.name,
                who.user_id,
                who.via,
                action,
                target,
                json.dumps(scrub(details), ensure_ascii=False, sort_keys=True, default=str),
            ],
        ).fetchall()  # all of it: an INSERT … RETURNING left unfinished would hold the transaction open
    return entry_id


@dataclass(frozen=True)
class Filters:
    """What the audit page and its CSV export filter on; empty fields filter nothing."""

    actor: str = ""
    action: str = ""
    target: str = ""
    since: str = ""  # ISO date or time, inclusive
    until: str = ""  # ISO date or time, exclusive

    def __post_init__(self):
        for name in ("since", "until"):
            value = getattr(self, name)
            if value and not re.fullmatch(r"\d{4}-\d{2}-\d{2}([T ][\d:.]+Z?)?", value):
                raise ValidationFailed(f"{name} must be a date like 2026-11-21 (or an ISO time)", field=name)
        if self.action and self.action not in ACTIONS and not self.action.endswith("."):
            raise ValidationFailed(
                f"action must be one of {', '.join(ACTIONS)} or a group such as 'review.'", field="action"
            )

    def where(self) -> tuple[str, list]:
        """SQL condition and parameters."""
        clauses, params = ["1=1"], []
        if self.actor:
            clauses.append(f"({same_text('actor')} OR {like('actor_name')})")
            params += [self.actor.strip(), like_pattern(self.actor.strip())]
        if self.action:
            if self.action.endswith("."):
                clauses.append(like("action"))
                params.append(escape_like(self.action) + "%")
            else:
                clauses.append("action = ?")
                params.append(self.action)
        if self.target:
            clauses.append("target = ?")
            params.append(self.target.strip())
        if self.since:
            clauses.append("at >= ?")
            params.append(self.since.replace(" ", "T"))
        if self.until:
            clauses.append("at < ?")
            params.append(self.until.replace(" ", "T"))
        return " AND ".join(clauses), params


_COLUMNS = ("id", "at", "actor", "actor_name", "actor_id", "via", "action", "target", "details")


def entries(db: Database, filters: Filters | None = None, *, limit: int = 100, offset: int = 0) -> list[Entry]:
    """Entries matching ``filters``, newest first."""
    where, params = (filters or Filters()).where()
    rows = db.execute(
        f"SELECT {', '.join(_COLUMNS)} FROM audit_log WHERE {where} ORDER BY at DESC, id DESC LIMIT ? OFFSET ?",
        [*params, int(limit), int(offset)],
    ).fetchall()
    return [_entry(row) for row in rows]


def count(db: Database, filters: Filters | None = None) -> int:
    """How many entries :func:`entries` would return without a limit."""
    where, params = (filters or Filters()).where()
    return db.execute(f"SELECT COUNT(*) FROM audit_log WHERE {where}", params).fetchone()[0]


def in_window(db: Database, since: str, until: str) -> list[Entry]:
    """Every entry in ``[since, until)``, oldest first (the weekly report's "what changed")."""
    rows = db.execute(
        f"SELECT {', '.join(_COLUMNS)} FROM audit_log WHERE at >= ? AND at < ? ORDER BY at, id", [since, until]
    ).fetchall()
    return [_entry(row) for row in rows]


def _entry(row) -> Entry:
    values = dict(zip(_COLUMNS, row, strict=True))
    values["details"] = json.loads(values["details"] or "{}")
    return Entry(**values)


CSV_HEADER = ("at", "actor", "actor_name", "via", "action", "description", "target", "details")


def write_csv(rows: list[Entry], stream: IO[str]) -> None:
    """Write entries as CSV (a spreadsheet opens it; cells that start like a formula are quoted with ')."""
    writer = csv.writer(stream)
    writer.writerow(CSV_HEADER)
    for e in rows:
        details = json.dumps(e.details, ensure_ascii=False, sort_keys=True)
        writer.writerow(
            [_cell(v) for v in (e.at, e.actor, e.actor_name, e.via, e.action, e.description, e.target or "", details)]
        )


def _cell(value: str) -> str:
    # A cell starting with = + - @ is run as a formula by spreadsheets (CSV injection); names and
    # targets come from people, so they are neutralised the way OWASP recommends.
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value
