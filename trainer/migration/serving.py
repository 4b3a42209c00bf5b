"""Where each side of a migration is served, written on its model version so nothing depends on ``[model]``.

Before a switch the configured model (``model.base_url``, ``model.api_key_env``) is the hosted one. The
candidate lives on the open model server (``migrate.open_base_url``, its key in ``migrate.open_api_key_env``),
so its version row carries that server and key variable; the hosted version is pinned to the server and key it
answers on today. Each is then asked where it lives, with its own key — the hosted model's key never reaches
the open server — whatever ``[model]`` says later.
"""

from __future__ import annotations

from sqlite_utils import Database

from config.settings import Settings
from feedback import audit
from feedback.db import write_transaction
from feedback.versions import ModelVersion, get_version


def open_base_url(settings: Settings) -> str:
    """``migrate.open_base_url``, else the built-in model server's address."""
    if settings.migrate.open_base_url:
        return settings.migrate.open_base_url
    return f"http://{settings.model_server.host}:{settings.model_server.port}/v1"


def pin(db: Database, version: ModelVersion, base_url: str, api_key_env: str, *, actor: str) -> ModelVersion:
    """Record the server and key variable a version is asked with (the audit log says so when they change)."""
    if version.base_url == base_url and (version.api_key_env or "") == api_key_env:
        return version
    with write_transaction(db):
        db.execute(
            "UPDATE model_versions SET base_url = ?, api_key_env = ? WHERE id = ?",
            [base_url, api_key_env or None, version.id],
        )
        audit.record(db, actor, "model.pinned", version.id, {"server": base_url, "api_key_env": api_key_env or None})
    return get_version(db, version.id)


def pin_teacher(db: Database, settings: Settings, teacher: ModelVersion, *, actor: str) -> ModelVersion:
    """The hosted model, pinned to the server and key it answers on now."""
    if teacher.base_url:
        return teacher
    return pin(db, teacher, settings.model.base_url, teacher.api_key_env or settings.model.api_key_env, actor=actor)


def pin_candidate(db: Database, settings: Settings, candidate: ModelVersion, *, actor: str) -> ModelVersion:
    """A locally trained candidate, pinned to the open model server."""
    return pin(db, candidate, open_base_url(settings), settings.migrate.open_api_key_env, actor=actor)


def keep_as_fallback(db: Database, version: ModelVersion, until: str, *, actor: str) -> ModelVersion:
    """Let ``version`` answer when the live one cannot, through ``until`` (YYYY-MM-DD)."""
    with write_transaction(db):
        db.execute("UPDATE model_versions SET fallback_until = ? WHERE id = ?", [until, version.id])
        audit.record(db, actor, "model.kept_as_fallback", version.id, {"until": until})
    return get_version(db, version.id)
