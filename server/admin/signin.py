"""Signing in and out of ``/admin``: password, one-time link, the admin token (bootstrap), your own password.

Single sign-on has its own module (``sso.py``). Every way in ends in
:func:`server.admin.auth.start_session`, so sessions are the same whatever started
them: in the store, ended by logout, by disabling the account or by changing its role.
A failed sign-in says no more than "these do not match" (not whether the address has
an account) and counts against the per-address and per-account limits.
"""

from __future__ import annotations

from flask import make_response, redirect, request, url_for

from config.errors import Forbidden, ValidationFailed
from feedback import accounts, sessions
from feedback.throttle import Throttled
from server.admin.auth import (
    check_token,
    drop_cookie,
    principal,
    public,
    requires,
    safe_next,
    start_session,
    throttled_attempt,
    token_opens_pages,
)
from server.admin.blueprint import bp, page
from server.context import gateway, get_db

LINK_ACCOUNT = "sign-in links"  # the account one-time-link failures are counted against


def login_page(*, status: int = 200, error: str = "", email: str = "", throttled: Throttled | None = None):
    """The sign-in page with the ways in this gateway allows, and ``error`` / ``throttled`` said on it."""
    settings = gateway().settings
    response = make_response(
        page(
            "login.html",
            next=safe_next(request.values.get("next")),
            error=error,
            email=email,
            throttled=throttled.message if throttled else None,
            password_signin=settings.admin.password_signin,
            sso=settings.sso if settings.sso.enabled else None,
            token_signin=token_opens_pages(get_db()),
        ),
        status,
    )
    if throttled is not None:
        response.headers["Retry-After"] = str(throttled.retry_after)
    return response


@bp.get("/login")
@public
def login():
    """The sign-in page: e-mail and password, single sign-on, and the admin token until an admin account exists."""
    return login_page(error=request.args.get("error", ""))


@bp.post("/login")
@public
def login_submit():
    """Check a password (or, during bootstrap, the admin token); on success start a session."""
    target = safe_next(request.form.get("next"))
    settings = gateway().settings.admin
    if "email" in request.form:
        email = request.form.get("email", "").strip()
        if not settings.password_signin:
            return login_page(status=403, error="Password sign-in is switched off here; use single sign-on.")
        password = request.form.get("password", "")
        try:
            account = throttled_attempt(
                email.lower() or "(empty)", lambda: accounts.verify_password(get_db(), email, password)
            )
        except Throttled as exc:
            return login_page(status=429, email=email, throttled=exc)
        if not account:
            return login_page(status=401, email=email, error="That e-mail address and password do not match.")
        return start_session(redirect(target), account=account, method="password")
    if not token_opens_pages(get_db()):
        return login_page(
            status=401,
            error="The admin token no longer opens these pages: an admin account exists. Sign in with your account "
            "(the token still works for scripts on /admin/api/).",
        )
    try:
        valid = check_token(request.form.get("token", "").strip())
    except Throttled as exc:
        return login_page(status=429, throttled=exc)
    if not valid:
        return login_page(status=401, error="That token is not valid.")
    return start_session(redirect(target), account=None, method="token")


@bp.post("/logout")
@requires("viewer")
def logout():
    """End the session in the store (a kept copy of the cookie stops working too) and drop the cookie."""
    who = principal()
    if who.session:
        sessions.end_session(get_db(), who.session)
    return drop_cookie(redirect(url_for("admin.login")))


def _password_settings():
    settings = gateway().settings.admin
    if not settings.password_signin:
        raise Forbidden("password sign-in is switched off here; use single sign-on", code="password_signin_off")
    return settings


@bp.get("/welcome/<secret>")
@public
def welcome(secret: str):
    """A one-time sign-in link: the form that sets the account's password (the link is used up on submit)."""
    _password_settings()
    account = accounts.link_account(get_db(), secret)
    if account is None:
        return page("welcome.html", account=None, secret="", error=""), 403
    return page("welcome.html", account=account, secret=secret, error="")


@bp.post("/welcome/<secret>")
@public
def welcome_submit(secret: str):
    """Use the link: set the password and sign in."""
    settings = _password_settings()
    db = get_db()
    try:
        password = _new_password()
        account = throttled_attempt(
            LINK_ACCOUNT,
            lambda: _redeem(db, secret, password, settings.password_min_length),
        )
    except Throttled as exc:
        return page("welcome.html", account=None, secret="", error=exc.message), 429
    except ValidationFailed as exc:
        return page("welcome.html", account=accounts.link_account(db, secret), secret=secret, error=exc.message), 422
    if not account:
        return page("welcome.html", account=None, secret="", error=""), 403
    return start_session(redirect(url_for("admin.index")), account=account, method="password")


def _new_password() -> str:
    """The form's new password, typed the same twice (else :class:`ValidationFailed`)."""
    password = request.form.get("password", "")
    if password != request.form.get("confirm", ""):
        raise ValidationFailed("the two passwords differ", field="confirm")
    return password


def _redeem(db, secret: str, password: str, min_length: int):
    try:
        return accounts.redeem_signin_link(db, secret, password, min_length=min_length)
    except Forbidden:
        return None


@bp.get("/account")
@requires("viewer")
def account():
    """Who you are signed in as, and (password accounts) the form to change your password."""
    return page("account.html", message=request.args.get("message", ""), error="")


@bp.post("/account/password")
@requires("viewer")
def account_password():
    """Change your own password (the current one is asked for again)."""
    settings = _password_settings()
    who = principal()
    if who.account is None:
        raise Forbidden("the admin token has no password; sign in with an account", code="token_has_no_password")
    db = get_db()
    try:
        new = _new_password()
        checked = throttled_attempt(
            who.account.email,
            lambda: accounts.verify_password(db, who.account.email, request.form.get("current", "")),
        )
        if not checked:
            raise ValidationFailed("the current password is not right", field="current")
        accounts.set_password(
            db, who.account.id, new, actor=who.actor, min_length=settings.password_min_length, keep_session=who.session
        )
    except Throttled as exc:
        return page("account.html", message="", error=exc.message), 429
    except ValidationFailed as exc:
        return page("account.html", message="", error=exc.message), exc.status
    return redirect(url_for("admin.account", message="Password changed; your other sessions ended."))
