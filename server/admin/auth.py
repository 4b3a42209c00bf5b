"""Who may open ``/admin``: one admin token, as a bearer header or a browser session.

The token is ``admin.token`` when configured, otherwise one generated at first
start and kept in the database (``instance_secrets``), so it survives restarts
and every gateway process on the database agrees on it; ``tuneloop up`` and
``tuneloop admin token`` print it.

- Scripts send ``Authorization: Bearer <token>``.
- Browsers log in once on ``/admin/login``; that starts a session in the store
  (:mod:`feedback.sessions`) and sets an HttpOnly, SameSite=Strict cookie scoped to
  ``/admin`` that carries the session's secret, signed with a key derived from the
  token (changing the token ends every session) and stamped, so it expires after
  ``admin.session_hours``. Logging out ends the session in the store, so the cookie
  is refused from then on even if someone kept a copy.
- Every sign-in — the form or a bearer header — counts against
  ``admin.signin_attempts_per_address`` and ``…_per_account`` failures per
  ``admin.signin_window_s`` (:mod:`feedback.throttle`, in the store, so all gateways
  share the count); beyond them the answer is 429 with ``Retry-After``.
- A cookie-authenticated POST must also carry the form's CSRF field
  (:func:`csrf_token`); SameSite=Strict alone leaves out older browsers.

Unauthenticated requests for pages are sent to the login page; anything else
(JSON, scripts) gets 401 in the one error shape.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlsplit

from flask import current_app, g, redirect, request, url_for
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlite_utils import Database

from config.errors import Forbidden, Unauthorized
from config.settings import AdminSettings, Settings
from feedback import sessions
from feedback.secrets import instance_secret
from feedback.throttle import Limit, attempt_succeeded, reserve_attempt
from server.context import get_db

COOKIE = "tuneloop_admin"
SECRET_NAME = "admin_token"
TOKEN_KEY = "tuneloop_admin_token"  # app.extensions key holding the token once read
PUBLIC_ENDPOINTS = {"admin.login", "admin.login_submit"}
# The account a token sign-in is counted against (named accounts arrive with issue 23).
TOKEN_ACCOUNT = "the admin token"


def admin_token(settings: Settings, db: Database) -> str:
    """The admin token: ``admin.token`` if set, else the one generated (once) and kept in ``db``."""
    return settings.admin.token or instance_secret(db, SECRET_NAME)


def _serializer(token: str) -> URLSafeTimedSerializer:
    # A derived key, so the cookie's signing key is not the token itself.
    key = hmac.new(token.encode(), b"tuneloop admin session", hashlib.sha256).hexdigest()
    return URLSafeTimedSerializer(key, salt="tuneloop-admin")


def current_token() -> str:
    """The token for this app (read once at start by the blueprint)."""
    return current_app.extensions[TOKEN_KEY]


def session_value(token: str, secret: str) -> str:
    """The signed, timestamped cookie value that carries the session's ``secret``."""
    return _serializer(token).dumps({"sid": secret})


def session_secret(token: str, value: str, max_age_s: float) -> str | None:
    """The session secret in ``value`` if it was signed for ``token`` less than ``max_age_s`` ago, else None."""
    try:
        data = _serializer(token).loads(value, max_age=max_age_s)
    except (BadSignature, SignatureExpired):
        return None
    secret = data.get("sid") if isinstance(data, dict) else None
    return secret if isinstance(secret, str) else None


def signin_limits(settings: AdminSettings, address: str | None, account: str = TOKEN_ACCOUNT) -> list[Limit]:
    """The two limits one sign-in counts against: its client address and the account it tries."""
    window = settings.signin_window_s
    return [
        Limit("address", address or "unknown", settings.signin_attempts_per_address, window),
        Limit("account", account, settings.signin_attempts_per_account, window),
    ]


def check_token(presented: str | None) -> bool:
    """Compare a presented token with the real one as one throttled sign-in attempt.

    Raises :class:`feedback.throttle.Throttled` (429) before comparing when this address or the
    token has used up its failures.
    """
    settings = current_app.extensions["tuneloop"].settings.admin
    db = get_db()
    reservation = reserve_attempt(db, signin_limits(settings, request.remote_addr))
    if token_matches(presented, current_token()):
        attempt_succeeded(db, reservation)
        return True
    return False


def token_matches(presented: str | None, token: str) -> bool:
    """Constant-time comparison of a presented token with the real one."""
    return bool(presented) and hmac.compare_digest(presented.encode(errors="replace"), token.encode())


def csrf_token() -> str:
    """The value forms put in their ``csrf`` field; bound to the session cookie."""
    value = request.cookies.get(COOKIE, "")
    return hmac.new(current_token().encode(), f"csrf:{value}".encode(), hashlib.sha256).hexdigest()


def wants_html() -> bool:
    """A browser asking for a page (rather than a script asking for JSON)."""
    if request.path.startswith("/admin/api/") or request.path.endswith(".json"):
        return False
    # Browsers rank text/html above */*; curl and scripts send */* and get JSON.
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


def safe_next(target: str | None) -> str:
    """``target`` if it is a path inside ``/admin``, else the dashboard (no open redirects)."""
    if target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and parts.path.startswith("/admin") and "\\" not in target:
            return target
    return url_for("admin.index")


def require_admin():
    """``before_request`` of the admin blueprint: let the admin in, or send them to log in."""
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    token = current_token()
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        if check_token(header[7:].strip()):
            g.admin_via = "bearer"
            return None
        raise Unauthorized("the admin token is not valid", code="invalid_admin_token")
    settings = current_app.extensions["tuneloop"].settings
    cookie = request.cookies.get(COOKIE)
    secret = session_secret(token, cookie, settings.admin.session_hours * 3600) if cookie else None
    if secret and sessions.session_active(get_db(), secret):
        g.admin_via = "session"
        g.admin_session = secret
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            if not hmac.compare_digest(request.form.get("csrf", ""), csrf_token()):
                raise Forbidden("the form is stale or came from another site; reload the page", code="csrf_failed")
        return None
    if wants_html():
        return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))
    raise Unauthorized(
        "admin access needs 'Authorization: Bearer <admin token>' (see 'tuneloop admin token')",
        code="admin_auth_required",
    )
