"""Reading which model versions serve traffic, and registering the configured one.

The registry proper (promote, rollback, retire) belongs to ``trainer/``; the
gateway only reads these rows (cached briefly), which is how it picks up a
promotion without a restart and never needs to import ``trainer``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlite_utils import Database

from config.errors import NotFound
from config.settings import env_secret
from feedback.db import new_id, utc_now, write_transaction

_COLUMNS = (
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
    "api_key_env",
    "fallback_until",
)


@dataclass(frozen=True)
class ModelVersion:
    id: str
    name: str
    provider: str
    base_model: str
    base_url: str | None
    adapter_path: str | None
    training_run_id: str | None
    status: str
    traffic_weight: float
    created_at: str
    promoted_at: str | None
    # The environment variable holding its server's key (None: model.api_key_env), and the last day it may
    # answer as a fallback after it stopped being live (a hosted model replaced before its shutdown).
    api_key_env: str | None = None
    fallback_until: str | None = None

    def api_key(self, default: str) -> str:
        """The key its server wants: from its own ``api_key_env`` when it has one, else ``default``."""
        return env_secret(self.api_key_env) if self.api_key_env else default


def _select(db: Database, where: str, params: list) -> list[ModelVersion]:
    sql = f"SELECT {', '.join(_COLUMNS)} FROM model_versions WHERE {where} ORDER BY created_at"
    return [ModelVersion(*row) for row in db.execute(sql, params).fetchall()]


def get_version(db: Database, version_id: str) -> ModelVersion:
    """One version by id; :class:`NotFound` otherwise."""
    rows = _select(db, "id = ?", [version_id])
    if not rows:
        raise NotFound(f"no model version {version_id!r}")
    return rows[0]


def live_version(db: Database) -> ModelVersion | None:
    """The one live version, or None on a database nobody has started a gateway on."""
    rows = _select(db, "status = 'live'", [])
    return rows[0] if rows else None


def canary_versions(db: Database) -> list[ModelVersion]:
    """Versions taking a share of traffic next to the live one."""
    return _select(db, "status = 'canary' AND traffic_weight > 0", [])


def fallback_versions(db: Database, today: str) -> list[ModelVersion]:
    """Versions kept as fallbacks until a date on or after ``today`` (YYYY-MM-DD), the latest-dated first;
    never one that is live, a canary or rejected."""
    sql = (
        f"SELECT {', '.join(_COLUMNS)} FROM model_versions WHERE fallback_until >= ? "
        "AND status NOT IN ('live', 'canary', 'rejected') ORDER BY fallback_until DESC, created_at"
    )
    return [ModelVersion(*row) for row in db.execute(sql, [today]).fetchall()]


def ensure_live_version(db: Database, *, name: str, provider: str, base_url: str | None = None) -> ModelVersion:
    """Make sure some version is live; on a fresh database that is the configured model.

    A live version that the loop promoted wins over the configuration, so a
    restart never undoes a promotion.
    """
    with write_transaction(db):
        current = live_version(db)
        if current:
            return current
        version_id = new_id("mv")
        now = utc_now()
        db.execute(
            """INSERT INTO model_versions (id, name, provider, base_model, base_url, status, traffic_weight,
                   created_at, promoted_at, notes)
               VALUES (?, ?, ?, ?, ?, 'live', 1.0, ?, ?, 'configured model')""",
            [version_id, name, provider, name, base_url, now, now],
        )
        return get_version(db, version_id)


def ensure_standby_version(db: Database, *, name: str, provider: str, base_url: str | None) -> ModelVersion:
    """The row for a configured fallback model, so answers it writes carry its version."""
    with write_transaction(db):
        rows = _select(db, "status = 'standby' AND name = ? AND COALESCE(base_url, '') = ?", [name, base_url or ""])
        if rows:
            return rows[0]
        version_id = new_id("mv")
        db.execute(
            """INSERT INTO model_versions (id, name, provider, base_model, base_url, status, created_at, notes)
               VALUES (?, ?, ?, ?, ?, 'standby', ?, 'configured fallback')""",
            [version_id, name, provider, name, base_url, utc_now()],
        )
        return get_version(db, version_id)


def create_candidate(
    db: Database,
    *,
    name: str,
    provider: str,
    base_model: str,
    training_run_id: str | None = None,
    adapter_path: str | None = None,
    base_url: str | None = None,
    notes: str | None = None,
) -> ModelVersion:
    """Register a trained model as a ``candidate``: servable by name, not yet taking traffic.

    ``name`` is what the model server will know it as (a vLLM LoRA name, an
    OpenAI ``ft:`` name); ``adapter_path`` is the folder a LoRA is loaded from.
    """
    version_id = new_id("mv")
    with write_transaction(db):
        db.execute(
            """INSERT INTO model_versions (id, name, provider, base_model, base_url, adapter_path, training_run_id,
                   status, created_at, notes)
               VALUES (?, ?, ?, ?, ?, ?, ?, 'candidate', ?, ?)""",
            [version_id, name, provider, base_model, base_url, adapter_path, training_run_id, utc_now(), notes],
        )
    return get_version(db, version_id)
