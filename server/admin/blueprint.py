"""The ``/admin`` blueprint: every page behind a signed-in role, every response hardened.

Route modules add views to :data:`bp` and declare the least role each needs
(``@requires("viewer")`` …, see ``auth.py``); they get authentication, the role
check, security headers and the shared page layout (``templates/admin/base.html``)
without doing anything else. Templates autoescape, so user text (questions, answers,
comments, names) is never markup.
"""

from __future__ import annotations

from flask import Blueprint, g, render_template

from config.errors import Forbidden
from feedback.accounts import has_role
from feedback.secrets import instance_secret
from server.admin.auth import SESSION_KEY_NAME, admin_token, csrf_token, require_role, wants_html
from server.context import gateway
from server.errors import error_response

bp = Blueprint("admin", __name__, url_prefix="/admin")

# Pages use inline CSS and inline SVG only: no script, no remote anything.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)

# (endpoint, label, least role that sees the link)
NAV = [
    ("admin.index", "Dashboard", "viewer"),
    ("admin.reports", "Weekly reports", "viewer"),
    ("admin.worst", "Worst answered", "viewer"),
    ("admin.review_list", "Review queue", "viewer"),
    ("admin.knowledge_list", "Knowledge base", "viewer"),
    ("admin.users", "People", "admin"),
    ("admin.audit", "Audit log", "admin"),
    ("admin.privacy", "Privacy", "admin"),
]


@bp.record_once
def _make_secrets(state) -> None:
    # Generated once at start (not inside a request), so `tuneloop up` prints the same token the
    # gateway accepts and requests only ever read these rows.
    services = gateway(state.app)
    db = services.connect()
    try:
        admin_token(services.settings, db)
        instance_secret(db, SESSION_KEY_NAME)
    finally:
        db.close()


bp.before_request(require_role)


@bp.after_request
def _harden(response):
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    return response


@bp.errorhandler(Forbidden)
def _forbidden(exc: Forbidden):
    # A person who may not do something gets a page that says so (and who they are signed in as);
    # scripts get the one error shape.
    if wants_html():
        return page("forbidden.html", message=exc.message, code=exc.code), exc.status
    return error_response(exc.code, exc.message, exc.status, exc.field)


def _nav() -> list[tuple[str, str]]:
    who = g.get("principal")
    if who is None:
        return []
    return [(endpoint, label) for endpoint, label, role in NAV if has_role(who.role, role)]


@bp.context_processor
def _layout_helpers() -> dict:
    return {"admin_nav": _nav(), "csrf_token": csrf_token, "principal": g.get("principal")}


def page(template: str, **context):
    """Render an admin page (templates live in ``server/templates/admin/``)."""
    return render_template(f"admin/{template}", **context)
