"""Fixtures every test may use: settings pointing at a temporary folder, a migrated database."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from config.settings import load_settings
from feedback.db import open_store


def run_folder(tmp_path_factory) -> Path:
    """The temporary folder of this run: under pytest-xdist the one every worker's own folder is in.

    For what the workers build once and share (the models of tests/plugins/model.py and starter_model.py, each
    built under ``build_starter``'s file lock: the first worker builds, another waits and finds it up to date).
    """
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def serve_in_thread(server) -> None:
    """Run a ``socketserver`` server (werkzeug's ``make_server`` is one) in a daemon thread until ``shutdown()``.

    It looks for the shutdown every 20 ms: at ``serve_forever``'s default 0.5 s every fixture that stopped such a
    server waited half a second for it, and the per-test fake upstream alone is in 358 tests.
    """
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()


def free_port() -> int:
    """A TCP port nobody listens on right now (on loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def settings(tmp_path, database_url):
    """Default settings with every path inside the test's own temporary folder (and the test's engine's store)."""
    overrides = {"paths.data_dir": str(tmp_path / "var")}
    if database_url:
        overrides["database.url"] = database_url
    return load_settings(env={}, overrides=overrides)


@pytest.fixture
def db(settings):
    """A freshly migrated store: a SQLite file, or (in a module marked ``engines``) PostgreSQL in turn."""
    database = open_store(settings)
    yield database
    database.close()


def wait_for(check, *, what: str, timeout_s: float, logs=(), interval_s: float = 0.2):
    """Poll ``check()`` until it returns something truthy and return that; raise naming ``what`` (and the tails
    of ``logs``) when ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(interval_s)
    tails = "".join(f"\n--- {Path(p).name}\n{Path(p).read_text(errors='replace')[-2000:]}" for p in logs)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}{tails}")


def wait_for_log_line(log_path, text: str, process, *, what: str, timeout_s: float) -> str:
    """Wait until ``text`` is in the log at ``log_path`` and return the log; fail at once if ``process`` exits."""
    log_path = Path(log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        log = log_path.read_text(errors="replace")
        if text in log:
            return log
        assert process.poll() is None, f"{what} exited with {process.returncode}:\n{log[-3000:]}"
        time.sleep(0.3)
    raise AssertionError(f"{text!r} not in {what}'s log after {timeout_s} s:\n{log_path.read_text()[-3000:]}")


def wait_until_healthy(process, url: str, log_path, *, what: str, timeout_s: float) -> None:
    """Poll ``url`` until it answers 200; raise with the log's tail if ``process`` exits or time runs out."""
    import httpx2

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{what} exited with {process.returncode}:\n{Path(log_path).read_text(errors='replace')[-3000:]}"
            )
        try:
            if httpx2.get(url, timeout=2).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.05)  # a server is up in seconds; at 0.2 s each start waited 0.1 s more on average
    process.kill()
    raise RuntimeError(
        f"{what} did not answer {url} within {timeout_s} s:\n{Path(log_path).read_text(errors='replace')[-3000:]}"
    )


def error_body(path: str, code: str, message: str, field: str | None, kind: str = "invalid_request_error") -> dict:
    """The ``error`` object a request to ``path`` must answer with, in its API family's one shape (server/errors.py):
    ``{"code", "message", "field"?}`` on ``/api``, OpenAI's ``{"message", "type", "param", "code"}`` on ``/v1``."""
    if path.startswith("/v1/"):
        return {"message": message, "type": kind, "param": field, "code": code}
    return {"code": code, "message": message} | ({"field": field} if field else {})


def error_field(path: str, error: dict) -> str | None:
    """The request field an ``error`` object names: ``field`` on ``/api``, OpenAI's ``param`` on ``/v1``
    (where ``field`` must be absent: one shape per API family)."""
    if path.startswith("/v1/"):
        assert "field" not in error, error
        return error["param"]
    assert "param" not in error, error
    return error.get("field")
