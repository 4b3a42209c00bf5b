"""Operations: liveness, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from config.errors import UpstreamError
from feedback.health import database_check
from feedback.process_status import read_status
from server import metrics
from server.context import gateway, get_db
from server.loop_metrics import loop_registry
from server.openapi import build_spec

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():
    """The process is up (says nothing about its dependencies)."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    """Ready to serve: the model server answers and the database takes writes."""
    gw = gateway()
    checks: dict[str, dict] = {}
    target = gw.router.targets("readyz")[0]
    try:
        listed = gw.chat.client.ping(target)
        checks["model_server"] = {"ok": True, "url": target.base_url, "models": listed}
    except UpstreamError as exc:
        checks["model_server"] = {"ok": False, "url": target.base_url, "error": exc.message}
    supervised = (read_status(gw.settings.data_dir) or {}).get("model")  # under `tuneloop up`: crashes, restarts
    if supervised:
        checks["model_server"]["process"] = supervised
    checks["database"] = database_check(get_db())  # no write lock while a recent commit proves it
    if all(c["ok"] for c in checks.values()):
        return jsonify({"status": "ready", "checks": checks})
    failing = ", ".join(name for name, c in checks.items() if not c["ok"])
    response = jsonify({"error": {"code": "not_ready", "message": f"not ready: {failing}"}, "checks": checks})
    response.status_code = 503
    return response


@bp.get("/metrics")
def prometheus():
    gw = gateway()
    body, content_type = metrics.render(loop_registry(str(gw.settings.db_path), gw.connect))
    return Response(body, content_type=content_type)


@bp.get("/openapi.json")
def openapi():
    return jsonify(build_spec(current_app, current_app.config["TUNELOOP_VERSION"]))
