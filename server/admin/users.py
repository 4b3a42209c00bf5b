"""People (``/admin/users``, admins only): add accounts, change roles, disable and enable, new sign-in links.

A new sign-in link is shown once, in the answer to the POST that made it — never put
in a URL or a log. Changing a role or disabling an account ends that person's open
sessions at once (:mod:`feedback.accounts`); every change is in the audit log.
"""

from __future__ import annotations

from flask import jsonify, request

from config.errors import Conflict, NotFound, ValidationFailed
from feedback import accounts
from server.admin.auth import principal, requires
from server.admin.blueprint import bp, page
from server.context import gateway, get_db


def _users_page(*, status: int = 200, message: str = "", error: str = "", link: str = "", link_for: str = ""):
    settings = gateway().settings
    return page(
        "users.html",
        users=accounts.list_users(get_db()),
        roles=accounts.ROLES,
        message=message,
        error=error,
        link=link,
        link_for=link_for,
        link_hours=settings.admin.signin_link_hours,
        password_signin=settings.admin.password_signin,
        sso_enabled=settings.sso.enabled,
    ), status


def _link(account: accounts.Account) -> str:
    settings = gateway().settings.admin
    if not settings.password_signin:
        return ""
    secret = accounts.create_signin_link(
        get_db(), account.id, actor=principal().actor, hours=settings.signin_link_hours
    )
    return request.host_url.rstrip("/") + f"/admin/welcome/{secret}"


def _changing(change):
    """Run ``change()``; a refused change re-renders the page with the reason."""
    try:
        return change()
    except (ValidationFailed, Conflict, NotFound) as exc:
        return _users_page(status=exc.status, error=exc.message)


@bp.get("/users")
@requires("admin")
def users():
    """Every account, with the forms to add one and to change, disable or enable it."""
    return _users_page()


@bp.get("/api/users")
@requires("admin")
def users_json():
    """Every account as JSON (no password hashes)."""
    return jsonify({"users": [a.to_dict() for a in accounts.list_users(get_db())]})


@bp.post("/users")
@requires("admin")
def users_add():
    """Add an account; shows its one-time sign-in link once."""

    def add():
        form = request.form
        account = accounts.add_user(
            get_db(),
            form.get("email", ""),
            role=form.get("role", "viewer"),
            name=form.get("name"),
            actor=principal().actor,
            source="admin",
        )
        return _users_page(
            message=f"Added {account.email} as {account.role}.", link=_link(account), link_for=account.email
        )

    return _changing(add)


@bp.post("/users/<user_id>/role")
@requires("admin")
def users_role(user_id: str):
    """Give an account another role (their open sessions end)."""

    def change():
        account = accounts.set_role(get_db(), user_id, request.form.get("role", ""), actor=principal().actor)
        return _users_page(message=f"{account.email} is now a {account.role}; their open sessions ended.")

    return _changing(change)


@bp.post("/users/<user_id>/disable")
@requires("admin")
def users_disable(user_id: str):
    """Disable an account (their open sessions end at once)."""

    def change():
        account = accounts.set_disabled(get_db(), user_id, True, actor=principal().actor)
        return _users_page(message=f"Disabled {account.email}; their open sessions ended.")

    return _changing(change)


@bp.post("/users/<user_id>/enable")
@requires("admin")
def users_enable(user_id: str):
    """Let a disabled account sign in again."""

    def change():
        account = accounts.set_disabled(get_db(), user_id, False, actor=principal().actor)
        return _users_page(message=f"Enabled {account.email}.")

    return _changing(change)


@bp.post("/users/<user_id>/link")
@requires("admin")
def users_link(user_id: str):
    """A new one-time sign-in link (forgotten password); earlier ones stop working."""

    def change():
        account = accounts.get_user(get_db(), user_id)
        return _users_page(
            message=f"New sign-in link for {account.email}.", link=_link(account), link_for=account.email
        )

    return _changing(change)
