"""Privacy (``/admin/privacy``, admins only): erase or export one person's data on request, the retention purge,
the erasure log.

An erasure is irreversible, so the page asks twice: the first POST shows exactly what would go (a dry run), and
only the confirmation form that page carries erases. An export is a POST too, so the person's identifier never
sits in a URL (or a proxy's access log). The same actions are JSON under ``/admin/api/privacy/…`` for scripts
with the admin token. Every action is in the audit log and the erasure log; pages never show the content of what
was erased, only counts.
"""

from __future__ import annotations

import json

from flask import Response, jsonify, request

from config.errors import Conflict, NotFound, ValidationFailed
from feedback import apikeys
from feedback.privacy import log, retention
from feedback.privacy.erase import erase
from feedback.privacy.export import export
from feedback.privacy.subjects import Subject
from server.admin.auth import acting_person, requires
from server.admin.blueprint import bp, page
from server.context import gateway, get_db
from server.openapi import documented
from server.protocol import PrivacyEraseRequest, PrivacyPurgeRequest, PrivacySubjectRequest, parse_body

DEFAULT_ACTOR = "admin"


def _actor(values=None):
    return acting_person("actor", DEFAULT_ACTOR, values)


def _subject(values) -> Subject:
    kind = str(values.get("kind") or ("conversation" if values.get("conversation") else "user"))
    value = values.get("value") if "value" in values else values.get(kind)
    if kind not in ("user", "conversation") or not isinstance(value, str):
        raise ValidationFailed("name a user (the API's user field) or a conversation id", field="user")
    key = values.get("key") or None
    if key is not None and not isinstance(key, str):
        raise ValidationFailed("key must be an API key id or prefix", field="key")
    return Subject.of(**{kind: value}, key=key if kind == "user" else None)


def _privacy_page(*, status: int = 200, **context):
    db = get_db()
    settings = gateway().settings
    return page(
        "privacy.html",
        state=retention.status(db, settings),
        keys=apikeys.list_keys(db),
        runs=log.recent(db, limit=50),
        form=request.form,
        **context,
    ), status


@bp.get("/privacy")
@requires("admin")
def privacy():
    """Retention, the forms to erase and export, and the erasure log."""
    return _privacy_page()


@bp.post("/privacy/purge/preview")
@requires("admin")
def privacy_purge_preview():
    """What the retention purge would delete now (nothing is deleted)."""
    preview = retention.purge(get_db(), gateway().settings, actor=_actor(), dry_run=True)
    return _privacy_page(purge_preview=preview)


@bp.post("/privacy/purge/allow")
@requires("admin")
def privacy_purge_allow():
    """Record that this admin saw the preview: the retention job may delete from its next run."""
    retention.mark_seen(get_db(), gateway().settings, actor=_actor())
    return _privacy_page(message="The retention purge is allowed; the retention job deletes from its next run.")


@bp.post("/privacy/erase")
@requires("admin")
def privacy_erase():
    """First POST: a dry run and a confirmation form. With ``confirm=yes``: erase."""
    form = request.form
    try:
        subject = _subject(form)
        confirmed = form.get("confirm") == "yes"
        result = erase(
            get_db(),
            gateway().settings,
            subject,
            requested_by=form.get("requested_by", ""),
            actor=_actor(),
            dry_run=not confirmed,
        )
    except (ValidationFailed, NotFound, Conflict) as exc:
        return _privacy_page(status=exc.status, error=exc.message)
    if result.dry_run:
        return _privacy_page(erase_preview=result)
    return _privacy_page(erased=result, message=f"Erased {result.subject}; logged as {result.id}.")


@bp.post("/privacy/export")
@requires("admin")
def privacy_export():
    """Everything stored about the person, as a JSON file to download."""
    try:
        data = export(get_db(), gateway().settings, _subject(request.form), actor=_actor())
    except (ValidationFailed, NotFound) as exc:
        return _privacy_page(status=exc.status, error=exc.message)
    return _json_download(data)


def _json_download(data: dict) -> Response:
    return Response(
        json.dumps(data, ensure_ascii=False, indent=2),
        mimetype="application/json",
        headers={"Content-Disposition": 'attachment; filename="tuneloop-export.json"'},
    )


def _fields(body) -> dict:
    """A parsed request as the ``values`` :func:`_subject` and :func:`_actor` read (unset fields left out)."""
    return body.model_dump(exclude_none=True)


@bp.post("/api/privacy/erase")
@requires("admin")
@documented(
    "Erase one person's data (`user`, under every API key unless `key`) or one conversation everywhere it was "
    "copied; `dry_run` counts only. The result has counts per kind (never content) and what already left the "
    "machine.",
    request=PrivacyEraseRequest,
    errors=(404, 409),
    tag="admin: privacy",
)
def privacy_erase_json():
    """Erase ``{"user": REF, "key"?: KEY}`` or ``{"conversation": ID}``, with ``requested_by``; ``dry_run`` counts
    only. ``actor`` names who runs it when the admin token is used."""
    body = parse_body(request, PrivacyEraseRequest)
    values = _fields(body)
    result = erase(
        get_db(),
        gateway().settings,
        _subject(values),
        requested_by=body.requested_by,
        actor=_actor(values),
        dry_run=body.dry_run,
    )
    return jsonify(result.to_dict())


@bp.post("/api/privacy/export")
@requires("admin")
@documented(
    "Everything stored about one person or one conversation, as JSON (docs/privacy.md).",
    request=PrivacySubjectRequest,
    errors=(404,),
    tag="admin: privacy",
)
def privacy_export_json():
    """Everything stored about ``{"user": REF, "key"?: KEY}`` or ``{"conversation": ID}``."""
    values = _fields(parse_body(request, PrivacySubjectRequest))
    return jsonify(export(get_db(), gateway().settings, _subject(values), actor=_actor(values)))


@bp.get("/api/privacy/log")
@requires("admin")
@documented("The erasure log, newest first: counts, never content.", tag="admin: privacy")
def privacy_log_json():
    """The erasure log, newest first (counts, never content)."""
    return jsonify({"runs": [r.to_dict() for r in log.recent(get_db(), limit=200)]})


@bp.get("/api/privacy/status")
@requires("admin")
@documented("Retention settings, and whether the retention purge may delete.", tag="admin: privacy")
def privacy_status_json():
    """Retention settings, and whether the purge may delete."""
    return jsonify(retention.status(get_db(), gateway().settings).to_dict())


@bp.post("/api/privacy/purge")
@requires("admin")
@documented(
    "The retention purge: `dry_run` previews it, `allow` records that the preview was seen, `{}` purges "
    "(409 purge_not_seen until allowed).",
    request=PrivacyPurgeRequest,
    errors=(409,),
    tag="admin: privacy",
)
def privacy_purge_json():
    """``{"dry_run": true}`` previews the purge; ``{"allow": true}`` records that it was seen; ``{}`` purges (409
    ``purge_not_seen`` until allowed)."""
    body = parse_body(request, PrivacyPurgeRequest)
    values = _fields(body)
    db, settings = get_db(), gateway().settings
    if body.allow:
        retention.mark_seen(db, settings, actor=_actor(values))
        return jsonify(retention.status(db, settings).to_dict())
    result = retention.purge(db, settings, actor=_actor(values), dry_run=body.dry_run)
    return jsonify(result.to_dict())
