"""Operations: liveness, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import httpx2
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
    """Ready to serve: the model server answers and the database takes writes.

    A version taking traffic that its model server does not list (a canary whose
    adapter failed) is a *degraded* check: still 200, because every gateway shares
    that model server and the live model (or a fallback) answers; a load balancer
    must not drop gateways for it.
    """
    gw = gateway()
    checks: dict[str, dict] = {}
    target = gw.router.targets("readyz")[0]
    listed: list[str] | None = None
    try:
        listed = gw.chat.client.ping(target)
        checks["model_server"] = {"ok": True, "url": target.base_url, "models": listed}
    except UpstreamError as exc:
        checks["model_server"] = {"ok": False, "url": target.base_url, "error": exc.message}
    supervised = (read_status(gw.settings.data_dir) or {}).get("model")  # under `tuneloop up`: crashes, restarts
    if supervised:
        checks["model_server"]["process"] = supervised
    if listed is not None:
        checks["serving"] = _serving_check(gw, target.base_url, listed)
    checks["database"] = database_check(get_db())  # no write lock while a recent commit proves it
    index = gw.knowledge  # informational: how current this worker's knowledge index is
    checks["knowledge"] = {
        "ok": True,
        "enabled": gw.settings.knowledge.enabled,
        "entries": len(index),
        "seq": index.seq,
    }
    if all(c["ok"] for c in checks.values()):
        degraded = any(c.get("degraded") for c in checks.values())
        return jsonify({"status": "degraded" if degraded else "ready", "checks": checks})
    failing = ", ".join(name for name, c in checks.items() if not c["ok"])
    response = jsonify({"error": {"code": "not_ready", "message": f"not ready: {failing}"}, "checks": checks})
    response.status_code = 503
    return response


def _serving_check(gw, base_url: str, listed: list[str]) -> dict:
    """Every version taking traffic on ``base_url`` is listed there, and the server reports no failed model.

    Either failing makes the check degraded (still ok): a missing canary's conversations
    are answered by the live model; a failed candidate concerns no user yet.
    """
    problems = _model_server_problems(base_url)
    missing = []
    for version in gw.router.serving():
        if gw.router.target(version).base_url == base_url and version.name not in listed:
            role = "live" if version.status == "live" else "canary"
            entry = {"name": version.name, "version_id": version.id, "role": role}
            if version.name in problems:
                entry["reason"] = problems[version.name]
            missing.append(entry)
    if not missing and not problems:
        return {"ok": True}
    words = [
        f"{m['role']} {m['name']} is not served"
        + (", so its conversations are answered by the live model" if m["role"] == "canary" else "")
        for m in missing
    ]
    words += [f"the model server reports {name}: {why}" for name, why in problems.items()]
    check = {"ok": True, "degraded": True, "message": "degraded: " + "; ".join(words)}
    if missing:
        check["missing"] = missing
    if problems:
        check["model_server_problems"] = problems
    return check


def _model_server_problems(base_url: str) -> dict[str, str]:
    """The built-in model server's ``/health`` problems (why an adapter was dropped); {} from other servers."""
    root = base_url.rstrip("/").removesuffix("/v1")
    try:
        body = httpx2.get(f"{root}/health", timeout=2.0).json()
    except (httpx2.HTTPError, ValueError):
        return {}
    problems = body.get("problems") if isinstance(body, dict) else None
    return {str(k): str(v) for k, v in problems.items()} if isinstance(problems, dict) else {}


@bp.get("/metrics")
def prometheus():
    gw = gateway()
    body, content_type = metrics.render(loop_registry(str(gw.settings.db_path), gw.connect))
    return Response(body, content_type=content_type)


@bp.get("/openapi.json")
def openapi():
    return jsonify(build_spec(current_app, current_app.config["TUNELOOP_VERSION"]))
