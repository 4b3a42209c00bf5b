"""Faults the gateway must ride out: another process holding the database's write lock."""

from __future__ import annotations

import sqlite3
import threading
import time

import httpx2

from feedback import health
from tests.plugins.gateway import start_gunicorn_gateway, stop_gateway


def _hold_write_lock(db_path) -> sqlite3.Connection:
    """Another process's writer (the scheduler, a CLI command, a second host): holds the lock until COMMIT."""
    holder = sqlite3.connect(db_path, isolation_level=None, timeout=10)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_streams_keep_flowing_while_a_write_waits_for_the_lock(tmp_path, module_fake_upstream):
    # One gevent worker holds every stream. A request whose turn must wait for the write lock used to
    # wait inside SQLite's C busy handler, where gevent cannot switch: every stream of the worker froze.
    gw = start_gunicorn_gateway(
        tmp_path,
        module_fake_upstream.base_url,
        extra={"gateway": {"workers": 1}, "database": {"busy_timeout_ms": 15000}},
    )
    tokens: list[float] = []
    answers: list[httpx2.Response] = []

    def long_stream() -> None:
        body = {"message": "!tokens 40 0.1", "stream": True}
        with httpx2.stream("POST", gw.url + "/api/chat", json=body, timeout=60) as response:
            for line in response.iter_lines():
                if line.startswith("event: delta"):
                    tokens.append(time.monotonic())

    try:
        reader = threading.Thread(target=long_stream)
        reader.start()
        deadline = time.monotonic() + 20
        while len(tokens) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        holder = _hold_write_lock(gw.data_dir / "tuneloop.db")
        try:
            writer = threading.Thread(
                target=lambda: answers.append(httpx2.post(gw.url + "/api/chat", json={"message": "short"}, timeout=60))
            )
            writer.start()
            time.sleep(0.5)  # the short answer is generated; recording its turn now waits for our lock
            window = (time.monotonic(), time.monotonic() + 1.5)
            time.sleep(1.5)
            during = [t for t in tokens if window[0] <= t <= window[1]]
            assert writer.is_alive(), "the short chat was expected to be waiting for the write lock"
        finally:
            holder.execute("COMMIT")
            holder.close()
        writer.join(30)
        reader.join(30)
        # ~15 tokens arrive in 1.5 s when the worker keeps running; a frozen worker delivers none.
        assert len(during) >= 5, f"the other stream got {len(during)} tokens in 1.5 s while a write waited"
        assert answers[0].status_code == 200  # and the write went through once the lock was free
        assert len(tokens) == 40
    finally:
        stop_gateway(gw)


def test_readyz_proves_writability_without_waiting_for_the_write_lock(make_gateway, monkeypatch):
    app = make_gateway(**{"database.busy_timeout_ms": 3000})
    client = app.test_client()
    db_path = app.extensions["tuneloop"].settings.db_path
    holder = _hold_write_lock(db_path)
    try:
        # Starting the gateway wrote to the database: that commit is the proof, no lock needed.
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.get_json()["checks"]["database"]["proof"].startswith("a write committed")
        # Without a recent commit the probe tries the lock once, without waiting: a writer holding it
        # shows the database takes writes.
        monkeypatch.setattr(health, "PROOF_S", 0.0)
        started = time.monotonic()
        busy = client.get("/readyz")
        assert busy.status_code == 200 and time.monotonic() - started < 2.0
        assert busy.get_json()["checks"]["database"] == {"ok": True, "proof": "another writer holds the write lock"}
    finally:
        holder.execute("COMMIT")
        holder.close()
    assert client.get("/readyz").get_json()["checks"]["database"]["proof"] == "took the write lock"
    monkeypatch.setattr(health, "PROOF_S", 30.0)
    assert client.get("/readyz").get_json()["checks"]["database"]["proof"].startswith("a write committed")


def test_readyz_fails_when_the_disk_is_full(make_gateway, monkeypatch):
    client = make_gateway().test_client()
    monkeypatch.setattr(health, "MIN_FREE_BYTES", 1 << 62)
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["error"]["message"] == "not ready: database"
    assert "MiB free on the disk of" in body["checks"]["database"]["error"]
