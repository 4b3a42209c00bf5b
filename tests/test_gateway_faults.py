"""Faults the gateway must ride out: slow and greedy clients, another process holding the write lock.

Everything runs against real gunicorn (``tuneloop serve``) on loopback; attackers are
real sockets, bounded in number and time.
"""

from __future__ import annotations

import http.client
import json
import selectors
import socket
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


ATTACKER, BYSTANDER = "127.0.0.1", "127.0.0.2"  # two client addresses, both loopback


def _slow_body(port: int) -> socket.socket:
    """Headers that promise a 1,000-byte body, then one byte of it (issue 14's attack)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(ATTACKER, 0))
    sock.sendall(
        b"POST /api/chat HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    )
    return sock


def _slow_head(port: int) -> socket.socket:
    """A request line and one header, and never the blank line that ends the head."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(ATTACKER, 0))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n")
    return sock


def _request(port: int, method: str, path: str, body: dict | None = None, source: str = BYSTANDER):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
    try:
        payload = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=payload, headers={"Content-Type": "application/json"} if payload else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _read_all(sockets: list[socket.socket], within_s: float) -> tuple[list[bytes], float]:
    """Everything each socket receives until the server closes it; and when the last one closed."""
    received = {s: b"" for s in sockets}
    selector = selectors.DefaultSelector()
    for sock in sockets:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    started, last_closed, deadline = time.monotonic(), 0.0, time.monotonic() + within_s
    open_left = len(sockets)
    while open_left and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.2):
            try:
                chunk = key.fileobj.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if chunk:
                received[key.fileobj] += chunk
            else:
                selector.unregister(key.fileobj)
                open_left -= 1
                last_closed = time.monotonic() - started
    selector.close()
    assert open_left == 0, f"{open_left} of {len(sockets)} connections were still open after {within_s} s"
    return [received[s] for s in sockets], last_closed


def test_one_client_sending_slowly_cannot_take_the_gateway_down(tmp_path, module_fake_upstream):
    gateway = {
        "workers": 1,
        "worker_connections": 300,
        "max_waiting_connections_per_client": 20,
        "request_header_timeout_s": 2.0,
        "request_body_timeout_s": 3.0,
    }
    gw = start_gunicorn_gateway(tmp_path, module_fake_upstream.base_url, extra={"gateway": gateway})
    port = int(gw.url.rsplit(":", 1)[1])
    attackers: list[socket.socket] = []
    try:
        # 400 connections from one address (more than the worker's 300 slots): 300 with a slow body,
        # 100 with a slow head. Before the fix they filled every slot and nothing else was answered.
        attackers = [_slow_body(port) for _ in range(300)] + [_slow_head(port) for _ in range(100)]
        time.sleep(0.5)
        for _ in range(5):
            assert _request(port, "GET", "/healthz") == (200, b'{"status":"ok"}\n')
        status, body = _request(port, "POST", "/api/chat", {"message": "still here?"})
        assert status == 200 and json.loads(body)["answer"] == "echo: still here?"
        answers, last_closed = _read_all(attackers, within_s=15)
        statuses = [a.split(b" ", 2)[1].decode() if a.startswith(b"HTTP/1.1 ") else "closed" for a in answers]
        held = [s for s in statuses if s != "429"]
        # At most 20 were let in; every other one was told why at once and closed.
        assert len(held) <= 20 and statuses.count("429") >= 380
        refused = next(a for a, s in zip(answers, statuses, strict=True) if s == "429")
        assert json.loads(refused.partition(b"\r\n\r\n")[2])["error"]["code"] == "too_many_connections"
        assert b"Retry-After: 2\r\n" in refused
        # Those let in were closed by their deadlines: a slow body gets 408 in the one error shape.
        timed_out = [a for a, s in zip(answers, statuses, strict=True) if s == "408"]
        assert timed_out and all(b'{"error":{"code":"request_timeout"' in a for a in timed_out)
        assert all(b"\r\nConnection: close\r\n" in a for a in timed_out)
        assert set(held) <= {"408", "closed"} and last_closed < 10
        assert "refused" in gw.log() and "gateway.max_waiting_connections_per_client = 20" in gw.log()
        # Once they are gone, the same address is served again.
        assert _request(port, "GET", "/healthz", source=ATTACKER)[0] == 200
    finally:
        for sock in attackers:
            sock.close()
        stop_gateway(gw)
