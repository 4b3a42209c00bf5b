"""Rate limits that limit the right thing (issue 14, item 7).

Counts shared by every gunicorn worker through the store; a publishable key counted per key and client
address; the client address taken from ``X-Forwarded-For`` only when a trusted proxy sent it.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest

from feedback import apikeys, rate_counters
from feedback.db import open_db
from server.proxies import TrustedProxies
from tests.plugins.gateway import start_gunicorn_gateway, stop_gateway

pytestmark = pytest.mark.engines  # the storage tests run on SQLite and on PostgreSQL


def chat(url: str) -> tuple[int, dict]:
    request = urllib.request.Request(
        url + "/api/chat", data=json.dumps({"message": "hi"}).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def test_two_gunicorn_workers_accept_60_of_200_against_60_per_minute(tmp_path, fake_upstream):
    # The shipped default storage (database://); on per-worker counters this accepted 119.
    gw = start_gunicorn_gateway(
        tmp_path, fake_upstream.base_url, {"limits": {"enabled": True, "chat": "60/minute"}, "gateway": {"workers": 2}}
    )
    try:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda _: chat(gw.url), range(200)))
        pids = {line.split()[-1] for line in gw.log().splitlines() if "Booting worker" in line}
    finally:
        stop_gateway(gw)
    codes = [status for status, _ in results]
    assert len(pids) == 2
    assert codes.count(200) == 60 and codes.count(429) == 140, codes
    refused = next(headers for status, headers in results if status == 429)
    assert 0 < int(refused["Retry-After"]) <= 60
    db = open_db(gw.data_dir / "tuneloop.db")
    assert db.execute("SELECT COUNT(*) FROM messages WHERE role = 'assistant'").fetchone()[0] == 60
    assert db.execute("SELECT hits FROM rate_limit_counters").fetchall() == [(200,)]


def test_a_counter_window_starts_over_when_it_ends(tmp_path):
    db = open_db(tmp_path / "t.db")
    t0 = datetime(2026, 12, 1, tzinfo=timezone.utc)
    assert rate_counters.hit(db, "k", 60, now=t0)[0] == 1
    assert rate_counters.hit(db, "k", 60, amount=2, now=t0 + timedelta(seconds=59))[0] == 3
    assert rate_counters.current(db, "k", now=t0 + timedelta(seconds=59)) == (3, "2026-12-01T00:01:00.000Z")
    assert rate_counters.current(db, "k", now=t0 + timedelta(seconds=60)) == (0, None)
    assert rate_counters.hit(db, "k", 60, now=t0 + timedelta(seconds=61)) == (1, "2026-12-01T00:02:01.000Z")
    rate_counters.hit(db, "other", 10, now=t0)
    assert rate_counters.purge_ended(db, now=t0 + timedelta(seconds=30)) == 1
    assert [r[0] for r in db.execute("SELECT key FROM rate_limit_counters")] == ["k"]


def test_concurrent_hits_from_many_connections_are_all_counted(tmp_path):
    open_db(tmp_path / "t.db").close()
    counts: list[int] = []

    def worker():
        db = open_db(tmp_path / "t.db", migrate=False)
        for _ in range(50):
            counts.append(rate_counters.hit(db, "shared", 60)[0])
        db.close()

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(counts) == list(range(1, 301))  # every hit counted once, none lost or doubled


@pytest.fixture
def limited(make_gateway):
    def make(**overrides):
        app = make_gateway(
            **{"limits.enabled": True, "limits.chat": "3/minute", "gateway.require_api_key": "always", **overrides}
        )
        db = app.extensions["tuneloop"].connect()
        return app.test_client(), db

    return make


def statuses(client, headers: dict, remote: str, n: int = 4) -> list[int]:
    return [
        client.post(
            "/api/chat", json={"message": "hi"}, headers=headers, environ_base={"REMOTE_ADDR": remote}
        ).status_code
        for _ in range(n)
    ]


def test_a_publishable_key_counts_per_visitor_and_a_secret_key_as_one_caller(limited):
    client, db = limited()
    _, site = apikeys.create_key(db, "site", kind="publishable")
    _, backend = apikeys.create_key(db, "backend")
    site_auth, backend_auth = {"Authorization": f"Bearer {site}"}, {"Authorization": f"Bearer {backend}"}
    # Each visitor of the site has the whole allowance: one visitor cannot use up the site's.
    assert statuses(client, site_auth, "198.51.100.1") == [200, 200, 200, 429]
    assert statuses(client, site_auth, "198.51.100.2") == [200, 200, 200, 429]
    # A secret key is one server-side caller, wherever its requests come from.
    assert statuses(client, backend_auth, "198.51.100.1", 2) == [200, 200]
    assert statuses(client, backend_auth, "198.51.100.2", 2) == [200, 429]


def test_forwarded_for_counts_only_from_a_trusted_proxy(limited):
    client, db = limited(**{"gateway.trusted_proxies": ["10.0.0.0/8"]})
    _, site = apikeys.create_key(db, "site", kind="publishable")
    auth = {"Authorization": f"Bearer {site}"}
    via_proxy = statuses(client, auth | {"X-Forwarded-For": "203.0.113.9"}, "10.1.2.3")
    assert via_proxy == [200, 200, 200, 429]
    # Another visitor behind the same proxy has an allowance of its own ...
    assert statuses(client, auth | {"X-Forwarded-For": "203.0.113.10"}, "10.1.2.3", 1) == [200]
    # ... and one that writes someone else's address into the header is still itself (the proxy appends it).
    spoof = {"X-Forwarded-For": "203.0.113.77, 203.0.113.9"}
    assert statuses(client, auth | spoof, "10.1.2.3", 1) == [429]
    # From an address that is not a trusted proxy the header is not believed: it is one client whatever it says.
    direct = [statuses(client, auth | {"X-Forwarded-For": f"192.0.2.{i}"}, "198.51.100.50", 1)[0] for i in range(1, 5)]
    assert direct == [200, 200, 200, 429]


def test_without_trusted_proxies_forwarded_headers_are_dropped():
    seen = {}

    def app(environ, start_response):
        seen.update(environ)
        start_response("204 No Content", [])
        return [b""]

    def call(middleware, remote: str, **headers) -> dict:
        seen.clear()
        environ = {"REMOTE_ADDR": remote, "wsgi.url_scheme": "http", "HTTP_HOST": "gw"}
        environ.update({f"HTTP_{k.upper()}": v for k, v in headers.items()})
        middleware(environ, lambda *a: None)
        return dict(seen)

    nobody = TrustedProxies(app, [])
    env = call(nobody, "10.0.0.1", x_forwarded_for="1.2.3.4", x_forwarded_proto="https", x_forwarded_host="evil")
    assert env["REMOTE_ADDR"] == "10.0.0.1" and env["wsgi.url_scheme"] == "http"
    assert not any(k.startswith("HTTP_X_FORWARDED") for k in env)

    chain = TrustedProxies(app, ["10.0.0.0/8", "fd00::/8"])
    env = call(chain, "10.0.0.1", x_forwarded_for="1.2.3.4, 10.9.9.9", x_forwarded_proto="http, https")
    assert env["REMOTE_ADDR"] == "1.2.3.4" and env["wsgi.url_scheme"] == "https"
    env = call(chain, "fd00::1", x_forwarded_for="2001:db8::7", x_forwarded_host="evil")
    assert env["REMOTE_ADDR"] == "2001:db8::7" and env["HTTP_HOST"] == "gw"
    env = call(chain, "10.0.0.1")
    assert env["REMOTE_ADDR"] == "10.0.0.1"
