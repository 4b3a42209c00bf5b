"""Storage of fine-tuning runs and their logs: the ``training_runs`` and ``training_events`` tables.

Every function takes ``db`` first, so the CLI, the scheduler, the local worker
process and the tests share them. A run row is written before anything is
submitted, and the provider's external id right after, which is what lets a
restarted process resume polling instead of training again. JSON columns
(``hyperparameters``, ``metrics``, event ``data``) are decoded here; callers see
dicts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from config.errors import Conflict, NotFound
from feedback.db import new_id, utc_now, write_transaction
from feedback.sql import integrity_errors, is_unique_violation, json_text

_COLUMNS = (
    "id",
    "dataset_id",
    "provider",
    "base_model",
    "hyperparameters",
    "config_key",
    "external_job_id",
    "state",
    "progress",
    "metrics",
    "output",
    "work_dir",
    "error",
    "created_at",
    "started_at",
    "finished_at",
    "updated_at",
    "candidate_version_id",
)
STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
_EVENT_LEVELS = {"debug": "debug", "info": "info", "warn": "warning", "warning": "warning", "error": "error"}


@dataclass(frozen=True)
class TrainingRun:
    """A ``training_runs`` row, with its dataset's folder (``dataset_path``) joined in."""

    id: str
    dataset_id: str
    provider: str
    base_model: str
    hyperparameters: dict[str, Any]
    config_key: str
    external_job_id: str | None
    state: str
    progress: float | None
    metrics: dict[str, Any]
    output: str | None
    work_dir: str | None
    error: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    updated_at: str
    candidate_version_id: str | None
    dataset_path: str
    dataset_version: int

    @property
    def short_id(self) -> str:
        """The first 8 characters of the id after its ``run_`` prefix (for model names)."""
        return self.id.split("_", 1)[-1][:8]

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


@dataclass(frozen=True)
class RunEvent:
    """One line of a run's log. ``external_id`` (the provider's event id) makes storing it idempotent."""

    message: str
    level: str = "info"
    data: dict[str, Any] = field(default_factory=dict)
    external_id: str | None = None
    created_at: str | None = None  # ISO-8601 UTC; None: when it is stored


# Where and how fast a run trains, not what it learns: left out of the config fingerprint.
_RUNTIME_KEYS = {"device", "cpu_threads", "save_total_limit", "launcher"}


def config_key(provider: str, base_model: str, hyperparameters: dict[str, Any]) -> str:
    """Fingerprint of what a run trains: two runs with the same key and dataset produce the same model."""
    learned = {k: v for k, v in hyperparameters.items() if k not in _RUNTIME_KEYS}
    blob = json.dumps(
        {"provider": provider, "base_model": base_model, "hyperparameters": learned}, sort_keys=True, ensure_ascii=False
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _select(
    db: Database, where: str, params: list, *, order: str = "r.created_at", limit: int | None = None
) -> list[TrainingRun]:
    columns = ", ".join(f"r.{c}" for c in _COLUMNS)
    sql = (
        f"SELECT {columns}, d.path, d.version FROM training_runs r JOIN datasets d ON d.id = r.dataset_id"
        f" WHERE {where} ORDER BY {order}" + (f" LIMIT {int(limit)}" if limit else "")
    )
    runs = []
    for row in db.execute(sql, params).fetchall():
        values = dict(zip((*_COLUMNS, "dataset_path", "dataset_version"), row, strict=False))
        values["hyperparameters"] = json.loads(values["hyperparameters"])
        values["metrics"] = json.loads(values["metrics"])
        runs.append(TrainingRun(**values))
    return runs


def get_run(db: Database, run_id: str) -> TrainingRun:
    """One run by id; :class:`NotFound` otherwise."""
    rows = _select(db, "r.id = ?", [run_id])
    if not rows:
        raise NotFound(f"no training run {run_id!r}", field="run_id")
    return rows[0]


def list_runs(db: Database, *, states: tuple[str, ...] | None = None, limit: int | None = None) -> list[TrainingRun]:
    """Runs, newest first, optionally only in ``states``."""
    if states:
        where, params = f"r.state IN ({', '.join('?' for _ in states)})", list(states)
    else:
        where, params = "1=1", []
    return _select(db, where, params, order="r.created_at DESC", limit=limit)


def find_run(db: Database, dataset_id: str, key: str, states: tuple[str, ...]) -> TrainingRun | None:
    """The newest run of ``dataset_id`` with config ``key`` in one of ``states``."""
    marks = ", ".join("?" for _ in states)
    rows = _select(
        db,
        f"r.dataset_id = ? AND r.config_key = ? AND r.state IN ({marks})",
        [dataset_id, key, *states],
        order="r.created_at DESC",
        limit=1,
    )
    return rows[0] if rows else None


def create_run(
    db: Database, *, dataset_id: str, provider: str, base_model: str, hyperparameters: dict[str, Any], work_root: Path
) -> TrainingRun:
    """Insert a ``queued`` run; its folder is ``work_root/<run id>``. :class:`Conflict` when the same
    dataset and config is already queued or running (the partial unique index decides, so two starters
    racing cannot both win)."""
    run_id = new_id("run")
    now = utc_now()
    work_dir = (work_root / run_id).resolve()
    try:
        with write_transaction(db):
            db.execute(
                """INSERT INTO training_runs (id, dataset_id, provider, base_model, hyperparameters, config_key,
                       state, metrics, work_dir, created_at, updated_at)
                   VALUES (?, ?, ?, ?, ?, ?, 'queued', '{}', ?, ?, ?)""",
                [
                    run_id,
                    dataset_id,
                    provider,
                    base_model,
                    json.dumps(hyperparameters, sort_keys=True),
                    config_key(provider, base_model, hyperparameters),
                    str(work_dir),
                    now,
                    now,
                ],
            )
    except integrity_errors() as exc:
        if not is_unique_violation(exc):
            raise
        raise Conflict(
            "a run of this dataset with the same configuration is already queued or running", code="run_active"
        ) from None
    work_dir.mkdir(parents=True, exist_ok=True)
    return get_run(db, run_id)


_UPDATABLE = {
    "external_job_id",
    "state",
    "progress",
    "metrics",
    "output",
    "error",
    "started_at",
    "finished_at",
    "candidate_version_id",
}


def update_run(db: Database, run_id: str, **changes: Any) -> TrainingRun:
    """Set columns of a run (``metrics`` as a dict); ``updated_at`` follows."""
    unknown = set(changes) - _UPDATABLE
    if unknown:
        raise ValueError(f"cannot update {sorted(unknown)}")
    if "metrics" in changes:
        changes["metrics"] = json.dumps(changes["metrics"], sort_keys=True)
    changes["updated_at"] = utc_now()
    assignments = ", ".join(f"{name} = ?" for name in changes)
    with write_transaction(db):
        db.execute(f"UPDATE training_runs SET {assignments} WHERE id = ?", [*changes.values(), run_id])
    return get_run(db, run_id)


def add_event(db: Database, run_id: str, event: RunEvent) -> bool:
    """Append ``event`` to the run's log; False when an event with its ``external_id`` is already there."""
    level = _EVENT_LEVELS.get(event.level, "info")
    with write_transaction(db):
        cursor = db.execute(
            """INSERT INTO training_events (run_id, created_at, level, message, data, external_id)
               VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING""",
            [
                run_id,
                event.created_at or utc_now(),
                level,
                event.message,
                json.dumps(event.data, ensure_ascii=False, sort_keys=True),
                event.external_id,
            ],
        )
        return cursor.rowcount == 1


def log(db: Database, run_id: str, message: str, *, level: str = "info", **data: Any) -> None:
    """Shorthand for :func:`add_event` with a message and keyword data."""
    add_event(db, run_id, RunEvent(message=message, level=level, data=data))


def list_events(db: Database, run_id: str, *, after_id: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
    """The run's log in order: dicts with id, created_at, level, message, data."""
    sql = "SELECT id, created_at, level, message, data FROM training_events WHERE run_id = ? AND id > ? ORDER BY id" + (
        f" LIMIT {int(limit)}" if limit else ""
    )
    return [
        {"id": i, "created_at": t, "level": lv, "message": m, "data": json.loads(d)}
        for i, t, lv, m, d in db.execute(sql, [run_id, after_id]).fetchall()
    ]


def latest_event_data(db: Database, run_id: str, key: str) -> dict[str, Any] | None:
    """``data`` of the newest event whose data has ``key`` (e.g. the latest progress report)."""
    row = db.execute(
        f"SELECT data FROM training_events WHERE run_id = ? AND {json_text(db, 'data', f'$.{key}')} IS NOT NULL "
        "ORDER BY id DESC LIMIT 1",
        [run_id],
    ).fetchone()
    return json.loads(row[0]) if row else None


def has_event(db: Database, run_id: str, external_id: str) -> bool:
    """Whether the run's log holds the provider event ``external_id``."""
    row = db.execute("SELECT 1 FROM training_events WHERE run_id = ? AND external_id = ?", [run_id, external_id])
    return row.fetchone() is not None
