"""Account fixtures: people with a role and a password, signed in through the real login form."""

from __future__ import annotations

import re
from typing import Callable

import pytest
from flask import Flask

from feedback import accounts
from feedback.db import open_store

PASSWORD = "correct horse battery staple"


def csrf_field(html: str) -> str:
    """The CSRF value a page's forms carry."""
    return re.search(r'name="csrf" value="([0-9a-f]+)"', html).group(1)


def add_person(where, role: str, email: str | None = None, *, name: str | None = None, password: str = PASSWORD):
    """An account with ``role`` and ``password`` (made as the CLI would) in ``where``: an app's store or a database."""
    db = open_store(where.extensions["tuneloop"].settings) if isinstance(where, Flask) else where
    try:
        email = email or f"{role}@example.com"
        account = accounts.add_user(db, email, role=role, name=name or role.capitalize(), actor="test")
        if password:
            accounts.set_password(db, account.id, password, actor="test")
        return accounts.get_user(db, account.id)
    finally:
        if db is not where:
            db.close()


def password_login(client, email: str, password: str = PASSWORD, next_path: str = "/admin/"):
    """POST the login form."""
    return client.post("/admin/login", data={"email": email, "password": password, "next": next_path})


@pytest.fixture
def signed_in() -> Callable:
    """Factory: ``signed_in(app, role, email=None)`` → (test client with a session, account)."""

    def make(app, role: str, email: str | None = None):
        account = add_person(app, role, email)
        client = app.test_client()
        response = password_login(client, account.email)
        assert response.status_code == 302, response.get_data(as_text=True)
        return client, account

    return make
