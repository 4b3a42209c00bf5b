"""The ``/admin`` blueprint: every page behind the admin token, every response hardened.

Route modules (``pages.py`` now; the review queue next) add views to :data:`bp`;
they get authentication, security headers and the shared page layout
(``templates/admin/base.html``) without doing anything. Templates autoescape, so
user text (questions, answers, comments) is never markup.
"""

from __future__ import annotations

from flask import Blueprint, render_template

from server.admin.auth import TOKEN_KEY, admin_token, csrf_token, require_admin
from server.context import gateway

bp = Blueprint("admin", __name__, url_prefix="/admin")

# Pages use inline CSS and inline SVG only: no script, no remote anything.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)

NAV = [
    ("admin.index", "Dashboard"),
    ("admin.reports", "Weekly reports"),
    ("admin.worst", "Worst answered"),
    ("admin.review_list", "Review queue"),
    ("admin.knowledge_list", "Knowledge base"),
]


@bp.record_once
def _read_token(state) -> None:
    # Generated (or read) once at start, so `tuneloop up` can print the same
    # token the gateway accepts, and requests never write to the database for it.
    app = state.app
    services = gateway(app)
    db = services.connect()
    try:
        app.extensions[TOKEN_KEY] = admin_token(services.settings, db)
    finally:
        db.close()


bp.before_request(require_admin)


@bp.after_request
def _harden(response):
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    return response


@bp.context_processor
def _layout_helpers() -> dict:
    return {"admin_nav": NAV, "csrf_token": csrf_token}


def page(template: str, **context):
    """Render an admin page (templates live in ``server/templates/admin/``)."""
    return render_template(f"admin/{template}", **context)
