"""Fixtures every test may use: settings pointing at a temporary folder, a migrated database."""

from __future__ import annotations

import socket

import pytest

from config.settings import load_settings
from feedback.db import open_db


def free_port() -> int:
    """A TCP port nobody listens on right now (on loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def settings(tmp_path):
    """Default settings with every path inside the test's own temporary folder."""
    return load_settings(env={}, overrides={"paths.data_dir": str(tmp_path / "var")})


@pytest.fixture
def db(settings):
    """A freshly migrated database file."""
    database = open_db(settings.db_path)
    yield database
    database.close()
