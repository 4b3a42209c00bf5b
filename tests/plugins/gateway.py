"""Gateway fixtures: a real app on a real SQLite file, pointed at a real upstream."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import load_settings
from feedback.db import open_db
from server.app import create_app


def gateway_settings(data_dir: Path, base_url: str, **overrides):
    """Settings for a test gateway: its own data folder, no rate limits unless asked."""
    values = {
        "paths.data_dir": str(data_dir),
        "model.base_url": base_url,
        "model.retries": 1,
        "model.first_token_timeout_s": 2.0,
        "limits.enabled": False,
    }
    values.update(overrides)
    return load_settings(env={}, overrides=values)


@pytest.fixture
def make_gateway(tmp_path, fake_upstream):
    """Factory: ``make_gateway(**overrides)`` → a Flask app talking to the fake upstream."""

    def make(base_url: str | None = None, **overrides):
        settings = gateway_settings(tmp_path / "var", base_url or fake_upstream.base_url, **overrides)
        return create_app(settings=settings)

    return make


@pytest.fixture
def client(make_gateway):
    """A test client of a default gateway on the fake upstream."""
    return make_gateway().test_client()


@pytest.fixture
def gateway_db(tmp_path):
    """The database the test gateways write to (open after the app exists)."""
    db = open_db(tmp_path / "var" / "tuneloop.db")
    yield db
    db.close()
