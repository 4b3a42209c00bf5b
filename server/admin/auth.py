"""Who may open ``/admin``, and as whom: named accounts with roles, and the admin token for scripts.

Every admin view declares the least role it needs with :func:`requires` (``viewer``,
``reviewer`` or ``admin``) or is :func:`public` (the sign-in pages); the blueprint's
``before_request`` (:func:`require_role`) authenticates the request, puts the
:class:`Principal` on ``g.principal`` and refuses a role that does not reach — and a view
that declares nothing is refused too (fail closed; ``tests/test_admin_roles.py`` walks
the route map so none ships).

Ways in:

- **A browser session** started by signing in with an e-mail address and password,
  through single sign-on (``sso.py``), or with a one-time link. The session lives in the
  store (:mod:`feedback.sessions`); the cookie — HttpOnly, SameSite=Strict, scoped to
  ``/admin`` — carries its random secret, signed and stamped with a key kept in the
  store (``admin_session_key``), so every gateway accepts it and it expires after
  ``admin.session_hours``. Each request reads the account again: a disabled account
  or a changed role (both also end the sessions) takes effect on the next request.
- **The admin token** (``admin.token``, or generated once and kept in the store) as
  ``Authorization: Bearer …``: role admin, recorded as ``admin token``. Until an active
  admin account exists it also opens the pages and the login form (bootstrap); from
  then on it authenticates only the admin API (``/admin/api/…``), and sessions opened
  with it end. It is read from the store on each use, so ``tuneloop admin token
  --rotate`` takes effect on every gateway at once.

Every sign-in — password, link or token — counts against
``admin.signin_attempts_per_address`` and ``…_per_account`` failures per
``admin.signin_window_s`` (:mod:`feedback.throttle`, in the store); beyond them the
answer is 429 with ``Retry-After``. A cookie-authenticated POST must also carry the
form's CSRF field (:func:`csrf_token`); SameSite=Strict alone leaves out older browsers.

Unauthenticated requests for pages are sent to the login page; anything else (JSON,
scripts) gets 401 in the one error shape.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import current_app, g, redirect, request, url_for
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlite_utils import Database

from config.errors import ConfigError, Forbidden, Unauthorized
from config.settings import AdminSettings, Settings
from feedback import accounts, audit, sessions
from feedback.accounts import Account
from feedback.audit import Actor
from feedback.db import write_transaction
from feedback.secrets import instance_secret, rotate_instance_secret
from feedback.throttle import Limit, attempt_succeeded, reserve_attempt
from server.context import gateway, get_db

COOKIE = "tuneloop_admin"
SECRET_NAME = "admin_token"
SESSION_KEY_NAME = "admin_session_key"
API_PREFIX = "/admin/api/"
PUBLIC = "public"  # the "role" of the sign-in pages
ROLE_ATTRIBUTE = "tuneloop_role"
TOKEN_ACCOUNT = "the admin token"  # the account a token sign-in is counted against


@dataclass(frozen=True)
class Principal:
    """Who is making this request: an account, or the admin token (``account`` None)."""

    role: str
    actor: Actor
    account: Account | None = None
    session: str | None = None  # the session secret, for cookie sign-ins

    @property
    def is_token(self) -> bool:
        return self.account is None


def requires(role: str):
    """Decorator: the view needs at least ``role`` (viewer < reviewer < admin)."""
    accounts.check_role(role)

    def mark(view):
        setattr(view, ROLE_ATTRIBUTE, role)
        return view

    return mark


def public(view):
    """Decorator: the view is open to everyone (sign-in pages only)."""
    setattr(view, ROLE_ATTRIBUTE, PUBLIC)
    return view


def declared_role(view) -> str | None:
    """The role a view declared with :func:`requires` / :func:`public`, or None."""
    return getattr(view, ROLE_ATTRIBUTE, None)


def principal() -> Principal:
    """This request's :class:`Principal` (set by :func:`require_role`)."""
    return g.principal


def acting_person(field: str, default: str, values=None) -> Actor:
    """Who makes a change from a form: the signed-in account; with the admin token, the name typed in ``field``
    (``default`` when empty), marked as the token's so the audit log never mistakes it for an account."""
    who = principal()
    if who.account is not None:
        return who.actor
    typed = str((values if values is not None else request.form).get(field) or "").strip() or default
    return Actor(typed[:200], name=f"{typed[:200]} (admin token)", via=who.actor.via)


def admin_token(settings: Settings, db: Database) -> str:
    """The admin token: ``admin.token`` if set, else the one generated (once) and kept in ``db``."""
    return settings.admin.token or instance_secret(db, SECRET_NAME)


def rotate_admin_token(settings: Settings, db: Database, *, actor: str) -> str:
    """Replace the generated admin token (the old one is refused at once everywhere); returns the new one.

    Sessions opened with the old token end. A token set in the settings (``admin.token``)
    is rotated there instead: :class:`ConfigError` says so.
    """
    if settings.admin.token:
        raise ConfigError(
            "admin.token is set in your settings; put a new value there (or in TUNELOOP_ADMIN__TOKEN) and restart the "
            "gateways (on PostgreSQL: on every host, after `tuneloop db forget-secrets`)",
            field="admin.token",
        )
    with write_transaction(db):
        token = rotate_instance_secret(db, SECRET_NAME)
        ended = sessions.end_token_sessions(db)
        audit.record(db, actor, "admin_token.rotate", None, {"sessions_ended": ended})
    return token


def _settings() -> Settings:
    return gateway().settings


def current_token() -> str:
    """The admin token, read from the store now (a rotation applies to every gateway at once)."""
    return admin_token(_settings(), get_db())


def session_key(db: Database) -> str:
    """The key that signs session cookies and CSRF fields, shared by every gateway through the store."""
    return instance_secret(db, SESSION_KEY_NAME)


def _serializer(key: str) -> URLSafeTimedSerializer:
    # A derived key, so the stored key is used for nothing but this.
    derived = hmac.new(key.encode(), b"tuneloop admin session", hashlib.sha256).hexdigest()
    return URLSafeTimedSerializer(derived, salt="tuneloop-admin")


def session_value(key: str, secret: str) -> str:
    """The signed, timestamped cookie value that carries the session's ``secret``."""
    return _serializer(key).dumps({"sid": secret})


def session_secret(key: str, value: str, max_age_s: float) -> str | None:
    """The session secret in ``value`` if it was signed with ``key`` less than ``max_age_s`` ago, else None."""
    try:
        data = _serializer(key).loads(value, max_age=max_age_s)
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


def throttled_attempt(account: str, check) -> object:
    """Run ``check()`` as one throttled sign-in attempt on ``account``; its result counts as a failure when falsy.

    Raises :class:`feedback.throttle.Throttled` (429) before ``check`` runs when this address
    or the account has used up its failures.
    """
    db = get_db()
    reservation = reserve_attempt(db, signin_limits(_settings().admin, request.remote_addr, account))
    result = check()
    if result:
        attempt_succeeded(db, reservation)
    return result


def check_token(presented: str | None) -> bool:
    """Compare a presented token with the real one as one throttled sign-in attempt."""
    return bool(throttled_attempt(TOKEN_ACCOUNT, lambda: token_matches(presented, current_token())))


def token_matches(presented: str | None, token: str) -> bool:
    """Constant-time comparison of a presented token with the real one."""
    return bool(presented) and hmac.compare_digest(presented.encode(errors="replace"), token.encode())


def csrf_token() -> str:
    """The value forms put in their ``csrf`` field; bound to the session cookie."""
    value = request.cookies.get(COOKIE, "")
    return hmac.new(session_key(get_db()).encode(), f"csrf:{value}".encode(), hashlib.sha256).hexdigest()


def wants_html() -> bool:
    """A browser asking for a page (rather than a script asking for JSON)."""
    if request.path.startswith(API_PREFIX) or request.path.endswith((".json", ".csv")):
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


def token_opens_pages(db: Database) -> bool:
    """The admin token opens the pages only until an active admin account exists (bootstrap)."""
    return not accounts.admin_exists(db)


def start_session(response, *, account: Account | None, method: str):
    """Start a session in the store for ``account`` (None: the admin token) and set its cookie on ``response``."""
    db = get_db()
    settings = _settings().admin
    secret = sessions.create_session(
        db,
        hours=settings.session_hours,
        client=request.remote_addr,
        user_id=account.id if account else None,
        method=method,
    )
    if account is not None:
        accounts.signed_in(db, account)
    response.set_cookie(
        COOKIE,
        session_value(session_key(db), secret),
        max_age=int(settings.session_hours * 3600),
        path="/admin",
        httponly=True,
        samesite="Strict",
        secure=request.is_secure,
    )
    return response


def drop_cookie(response):
    """Remove the session cookie from the browser."""
    response.delete_cookie(COOKIE, path="/admin", httponly=True, samesite="Strict", secure=request.is_secure)
    return response


def _from_bearer(header: str) -> Principal:
    if not check_token(header[7:].strip()):
        raise Unauthorized("the admin token is not valid", code="invalid_admin_token")
    if not request.path.startswith(API_PREFIX) and not token_opens_pages(get_db()):
        raise Unauthorized(
            "the admin token authenticates only the admin API (/admin/api/...) now that an admin account exists; "
            "people sign in on /admin/login",
            code="token_is_for_the_api",
        )
    return Principal("admin", Actor("admin token", via="api"))


def _from_cookie() -> Principal | None:
    cookie = request.cookies.get(COOKIE)
    if not cookie:
        return None
    db = get_db()
    secret = session_secret(session_key(db), cookie, _settings().admin.session_hours * 3600)
    found = sessions.find_session(db, secret) if secret else None
    if found is None:
        return None
    if found.user_id is None:
        if not token_opens_pages(db):
            sessions.end_session(db, secret)  # bootstrap is over: token sessions end
            return None
        return Principal("admin", Actor("admin token", via="web"), session=secret)
    account = accounts.find_user(db, found.user_id)
    if account is None or not account.active:
        sessions.end_session(db, secret)
        return None
    return Principal(account.role, account.actor("web"), account, secret)


def authenticate() -> Principal | None:
    """The principal of this request (bearer header first, then the session cookie), or None."""
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return _from_bearer(header)
    return _from_cookie()


def require_role():
    """``before_request`` of the admin blueprint: authenticate, then check the view's declared role."""
    view = current_app.view_functions.get(request.endpoint)
    needed = declared_role(view)
    if needed == PUBLIC:
        return None
    if needed is None:
        # A view that forgot to declare its role is closed, not open.
        raise Forbidden(f"{request.endpoint} declares no role; nobody may open it", code="no_role_declared")
    who = authenticate()
    if who is None:
        if wants_html():
            return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))
        raise Unauthorized(
            "admin access needs a signed-in account, or 'Authorization: Bearer <admin token>' for the admin API "
            "(see 'tuneloop admin token')",
            code="admin_auth_required",
        )
    g.principal = who
    if who.session and request.method not in ("GET", "HEAD", "OPTIONS"):
        if not hmac.compare_digest(request.form.get("csrf", ""), csrf_token()):
            raise Forbidden("the form is stale or came from another site; reload the page", code="csrf_failed")
    if not accounts.has_role(who.role, needed):
        raise Forbidden(
            f"{who.actor.name} is a {who.role}; this needs the {needed} role (an admin can change it)",
            code="role_required",
        )
    return None
