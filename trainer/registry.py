"""The model registry: which version is live, which one is a canary, and the history behind it.

This module only writes ``model_versions`` rows and their ``model_events``
history; making a version servable on the model server is ``trainer.deploy``'s
job. The gateway reads the rows (``feedback.versions``, cached for
``gateway.model_cache_s``), so every change here reaches it without a restart.

States and transitions (``docs/registry-and-evaluation.md`` draws them)::

    candidate ──promote──▶ live ──(next promote / rollback)──▶ retired
        │  └──canary w──▶ canary ──promote──▶ live
        └──reject──▶ rejected            retired ──promote / rollback──▶ live

- exactly one version is ``live`` (a partial unique index makes the database
  refuse a second); promoting retires the old live version in the same
  ``BEGIN IMMEDIATE`` transaction, so no reader ever sees zero or two;
- at most one ``canary``, taking ``traffic_weight`` (0 < w < 1) of conversations,
  sticky per conversation (the gateway hashes the conversation id); naming a new
  canary sends the old one back to ``candidate``;
- ``rollback`` makes the version that was live before the current one's
  promotion live again, found in ``model_events`` (not guessed from timestamps),
  and marks the current one ``retired`` — not ``rejected``: a rollback is often
  operational (latency, an incident, a bad prompt interaction) rather than a
  verdict on quality, and a retired version may be promoted again once fixed,
  while ``rejected`` means "failed the gate" and needs ``force`` to promote.
  Rolling back twice walks further back (each step follows the restored
  version's own promotion), it does not toggle between two versions.

Each change writes one ``model_events`` row (who, why, which evaluation) and, in the same
transaction, an audit-log entry (``model.promoted`` …, :mod:`feedback.audit`). For
``promoted`` and ``rolled_back`` rows ``version_id`` is the version that became
live and ``previous_live_id`` the one it replaced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlite_utils import Database

from config.errors import Conflict, NotFound, ValidationFailed
from feedback import audit
from feedback.db import new_id, utc_now, write_transaction
from feedback.versions import ModelVersion, get_version, live_version

EVENTS = ("promoted", "canary", "rolled_back", "retired", "rejected", "deployed", "undeployed")


@dataclass(frozen=True)
class ModelEvent:
    """One row of a version's history."""

    id: str
    version_id: str
    event: str
    previous_live_id: str | None
    evaluation_id: str | None
    actor: str
    reason: str | None
    details: dict
    created_at: str


def _version_id(version: ModelVersion | str) -> str:
    return version.id if isinstance(version, ModelVersion) else version


def resolve_version(db: Database, ref: str) -> ModelVersion:
    """A version by id, by ``live``, or by name (the newest version of that name)."""
    if ref == "live":
        live = live_version(db)
        if live is None:
            raise NotFound("no version is live yet (start the gateway once, or promote one)")
        return live
    row = db.execute(
        "SELECT id FROM model_versions WHERE id = ? OR name = ? "
        "ORDER BY id = ? DESC, created_at DESC, rowid DESC LIMIT 1",
        [ref, ref, ref],
    ).fetchone()
    if row is None:
        raise NotFound(f"no model version {ref!r} (give an id, a name, or 'live')")
    return get_version(db, row[0])


def list_versions(db: Database, *, include_inactive: bool = True) -> list[dict]:
    """Every version (newest first) with its status, weight and dates; ``include_inactive=False``
    keeps only live, canary and candidate ones."""
    where = "1=1" if include_inactive else "status IN ('live', 'canary', 'candidate')"
    columns = (
        "id",
        "name",
        "provider",
        "base_model",
        "base_url",
        "adapter_path",
        "training_run_id",
        "status",
        "traffic_weight",
        "created_at",
        "promoted_at",
        "retired_at",
        "notes",
        "api_key_env",
        "fallback_until",
    )
    rows = db.execute(
        f"SELECT {', '.join(columns)} FROM model_versions WHERE {where} ORDER BY created_at DESC, rowid DESC"
    ).fetchall()
    return [dict(zip(columns, row, strict=False)) for row in rows]


def record_event(
    db: Database,
    version_id: str,
    event: str,
    *,
    actor: str,
    reason: str | None = None,
    previous_live_id: str | None = None,
    evaluation_id: str | None = None,
    details: dict | None = None,
) -> str:
    """Append one history row (inside the caller's transaction, if any); returns its id."""
    if event not in EVENTS:
        raise ValueError(f"unknown model event {event!r}")
    event_id = new_id("mev")
    with write_transaction(db):
        db.execute(
            """INSERT INTO model_events (id, version_id, event, previous_live_id, evaluation_id, actor, reason,
                   details, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            [
                event_id,
                version_id,
                event,
                previous_live_id,
                evaluation_id,
                actor or "unknown",
                reason,
                json.dumps(details or {}, ensure_ascii=False),
                utc_now(),
            ],
        )
        trail = {"event_id": event_id, "reason": reason, "previous_live_id": previous_live_id}
        trail |= {"evaluation_id": evaluation_id, **(details or {})}
        audit.record(db, actor or "unknown", f"model.{event}", version_id, {k: v for k, v in trail.items() if v})
    return event_id


def events(db: Database, version_id: str | None = None, *, limit: int = 100) -> list[ModelEvent]:
    """History rows, newest first; of one version (as subject or as the replaced live one) when given."""
    where, params = ("1=1", []) if version_id is None else ("version_id = ? OR previous_live_id = ?", [version_id] * 2)
    rows = db.execute(
        f"""SELECT id, version_id, event, previous_live_id, evaluation_id, actor, reason, details, created_at
            FROM model_events WHERE {where} ORDER BY created_at DESC, rowid DESC LIMIT {int(limit)}""",
        params,
    ).fetchall()
    return [ModelEvent(*row[:7], json.loads(row[7] or "{}"), row[8]) for row in rows]


def _check_promotable(version: ModelVersion, force: bool) -> None:
    if version.status == "live":
        raise Conflict(f"{version.name} ({version.id}) is already live")
    if version.status == "rejected" and not force:
        raise Conflict(f"{version.name} ({version.id}) was rejected by the gate; use force to serve it anyway")


def promote(
    db: Database,
    version: ModelVersion | str,
    actor: str,
    reason: str | None = None,
    *,
    evaluation_id: str | None = None,
    force: bool = False,
) -> ModelVersion:
    """Make ``version`` the live one; the old live version becomes ``retired``. One transaction."""
    with write_transaction(db):
        target = get_version(db, _version_id(version))
        _check_promotable(target, force)
        now = utc_now()
        old = live_version(db)
        if old is not None:
            db.execute(
                "UPDATE model_versions SET status = 'retired', retired_at = ?, traffic_weight = 0 WHERE id = ?",
                [now, old.id],
            )
        db.execute(
            """UPDATE model_versions SET status = 'live', traffic_weight = 1.0, promoted_at = ?, retired_at = NULL
               WHERE id = ?""",
            [now, target.id],
        )
        record_event(
            db,
            target.id,
            "promoted",
            actor=actor,
            reason=reason,
            evaluation_id=evaluation_id,
            previous_live_id=old.id if old else None,
            details={"from_status": target.status},
        )
    return get_version(db, target.id)


def set_canary(
    db: Database,
    version: ModelVersion | str,
    weight: float,
    actor: str = "cli",
    reason: str | None = None,
    *,
    evaluation_id: str | None = None,
    force: bool = False,
) -> ModelVersion:
    """Let ``version`` answer ``weight`` (0 < w < 1) of conversations next to the live one.

    There is one canary at a time: another canary goes back to ``candidate``.
    Calling it again on the canary changes its weight.
    """
    if not 0 < weight < 1:
        raise ValidationFailed(f"a canary's traffic weight must be between 0 and 1, got {weight}", field="weight")
    with write_transaction(db):
        target = get_version(db, _version_id(version))
        _check_promotable(target, force)
        replaced = [
            row[0]
            for row in db.execute(
                "SELECT id FROM model_versions WHERE status = 'canary' AND id != ?", [target.id]
            ).fetchall()
        ]
        if replaced:
            db.execute(
                f"UPDATE model_versions SET status = 'candidate', traffic_weight = 0 "
                f"WHERE id IN ({', '.join('?' * len(replaced))})",
                replaced,
            )
        db.execute(
            "UPDATE model_versions SET status = 'canary', traffic_weight = ?, retired_at = NULL WHERE id = ?",
            [float(weight), target.id],
        )
        live = live_version(db)
        record_event(
            db,
            target.id,
            "canary",
            actor=actor,
            reason=reason,
            evaluation_id=evaluation_id,
            previous_live_id=live.id if live else None,
            details={"weight": float(weight), "replaced": replaced, "from_status": target.status},
        )
    return get_version(db, target.id)


def rollback_target(db: Database) -> tuple[ModelVersion, ModelVersion]:
    """(current live, the version a rollback would make live); :class:`Conflict` when there is none."""
    live = live_version(db)
    if live is None:
        raise Conflict("no version is live, so there is nothing to roll back")
    row = db.execute(
        """SELECT previous_live_id FROM model_events WHERE version_id = ? AND event = 'promoted'
           ORDER BY created_at DESC, rowid DESC LIMIT 1""",
        [live.id],
    ).fetchone()
    if row is None or row[0] is None:
        raise Conflict(
            f"{live.name} ({live.id}) was not promoted from another version, so there is nothing to roll back to; "
            "promote the version you want instead"
        )
    previous = get_version(db, row[0])
    if previous.status == "rejected":
        raise Conflict(
            f"the version before {live.name} ({previous.name}, {previous.id}) has since been rejected; "
            "promote the version you want instead (force to override)"
        )
    return live, previous


def rollback(
    db: Database, actor: str = "cli", reason: str | None = None, *, expected: str | None = None
) -> tuple[ModelVersion, ModelVersion]:
    """Make the version that was live before the current one live again; returns (restored, withdrawn).

    The withdrawn version becomes ``retired`` (see the module docstring for why not ``rejected``).
    ``expected`` (a version id) makes it refuse when the registry changed since the caller looked.
    """
    with write_transaction(db):
        live, previous = rollback_target(db)
        if expected is not None and previous.id != expected:
            raise Conflict(f"the registry changed meanwhile: a rollback would now restore {previous.name}; try again")
        now = utc_now()
        db.execute(
            "UPDATE model_versions SET status = 'retired', retired_at = ?, traffic_weight = 0 WHERE id = ?",
            [now, live.id],
        )
        db.execute(
            """UPDATE model_versions SET status = 'live', traffic_weight = 1.0, promoted_at = ?, retired_at = NULL
               WHERE id = ?""",
            [now, previous.id],
        )
        record_event(
            db,
            previous.id,
            "rolled_back",
            actor=actor,
            reason=reason,
            previous_live_id=live.id,
            details={"from_status": previous.status},
        )
    return get_version(db, previous.id), get_version(db, live.id)


def retire(db: Database, version: ModelVersion | str, actor: str = "cli", reason: str | None = None) -> ModelVersion:
    """Take a version out of service (``retired``); the live version cannot be retired, roll back or promote."""
    with write_transaction(db):
        target = get_version(db, _version_id(version))
        if target.status == "live":
            raise Conflict(f"{target.name} ({target.id}) is live; promote another version or roll back first")
        if target.status == "retired":
            return target
        db.execute(
            "UPDATE model_versions SET status = 'retired', retired_at = ?, traffic_weight = 0 WHERE id = ?",
            [utc_now(), target.id],
        )
        record_event(db, target.id, "retired", actor=actor, reason=reason, details={"from_status": target.status})
    return get_version(db, target.id)


def reject(
    db: Database,
    version: ModelVersion | str,
    reasons: list[str],
    actor: str = "gate",
    *,
    evaluation_id: str | None = None,
) -> ModelVersion:
    """Mark a candidate (or canary) ``rejected`` with the reasons; the live version is never touched."""
    with write_transaction(db):
        target = get_version(db, _version_id(version))
        if target.status not in ("candidate", "canary", "rejected"):
            raise Conflict(
                f"{target.name} ({target.id}) is {target.status}; only a candidate or canary can be rejected"
            )
        db.execute("UPDATE model_versions SET status = 'rejected', traffic_weight = 0 WHERE id = ?", [target.id])
        record_event(
            db,
            target.id,
            "rejected",
            actor=actor,
            reason="; ".join(reasons) or None,
            evaluation_id=evaluation_id,
            details={"reasons": list(reasons), "from_status": target.status},
        )
    return get_version(db, target.id)
