"""Gateway fixtures: a real app on a real SQLite file (or PostgreSQL database), pointed at a real upstream."""

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
def make_gateway(tmp_path, fake_upstream, database_url):
    """Factory: ``make_gateway(**overrides)`` → a Flask app talking to the fake upstream (on the test's engine)."""

    def make(base_url: str | None = None, **overrides):
        if database_url:
            overrides.setdefault("database.url", database_url)
        settings = gateway_settings(tmp_path / "var", base_url or fake_upstream.base_url, **overrides)
        return create_app(settings=settings)

    return make


@pytest.fixture
def client(make_gateway):
    """A test client of a default gateway on the fake upstream."""
    return make_gateway().test_client()


@pytest.fixture
def gateway_db(tmp_path, database_url):
    """The database the test gateways write to (open after the app exists)."""
    db = open_db(database_url or tmp_path / "var" / "tuneloop.db")
    yield db
    db.close()


class RunningGateway:
    """A gateway under real gunicorn (``tuneloop serve``) in a subprocess."""

    def __init__(self, url: str, process, log_path: Path, data_dir: Path):
        self.url = url
        self.process = process
        self.log_path = log_path
        self.data_dir = data_dir

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def write_config(path: Path, values: dict) -> Path:
    """Write a TOML settings file from {"section": {"key": value}}."""
    import tomllib  # noqa: F401 - only to make sure we write what Python can read back

    lines = []
    for section, keys in values.items():
        lines.append(f"[{section}]")
        for key, value in keys.items():
            lines.append(f"{key} = {_toml_value(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml_value(value) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def start_gunicorn_gateway(
    tmp_path: Path, base_url: str, extra: dict | None = None, timeout_s: float = 30
) -> RunningGateway:
    """Run ``tuneloop serve`` on a free port against ``base_url``; wait for /healthz."""
    import os
    import subprocess
    import sys

    from tests.plugins.common import free_port, wait_until_healthy

    port = free_port()
    data_dir = tmp_path / "gw-var"
    values = {
        "paths": {"data_dir": str(data_dir)},
        "gateway": {"port": port, "workers": 2},
        "model": {"base_url": base_url, "retries": 1, "first_token_timeout_s": 5.0},
        "limits": {"enabled": False},
    }
    for section, keys in (extra or {}).items():
        values.setdefault(section, {}).update(keys)
    config = write_config(tmp_path / "gateway.toml", values)
    log_path = tmp_path / "gunicorn.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELOOP_")}
    tuneloop = Path(sys.executable).with_name("tuneloop")
    process = subprocess.Popen(
        [str(tuneloop), "--config", str(config), "serve"],
        stdout=open(log_path, "wb"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(process, url + "/healthz", log_path, what="gateway", timeout_s=timeout_s)
    return RunningGateway(url, process, log_path, data_dir)


def stop_gateway(gw: RunningGateway) -> None:
    """Stop the gateway after its tests: gunicorn's quick shutdown (SIGQUIT), then SIGKILL after 20 s.

    Nothing of the tests is in flight any more. The graceful stop (SIGTERM) would wait for the test's own
    idle kept-alive connections (an SDK client's pool) to time out, gateway.request_header_timeout_s (10 s)
    per gateway, for nothing.
    """
    import signal

    gw.process.send_signal(signal.SIGQUIT)
    try:
        gw.process.wait(timeout=20)
    except Exception:  # noqa: BLE001
        gw.process.kill()


@pytest.fixture(scope="module")
def gunicorn_gateway(tmp_path_factory, module_fake_upstream):
    """A real gunicorn gateway (2 gevent workers) on the fake upstream, shared by a test module."""
    gw = start_gunicorn_gateway(tmp_path_factory.mktemp("gunicorn"), module_fake_upstream.base_url)
    yield gw
    stop_gateway(gw)
