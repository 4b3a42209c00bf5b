"""The model server down, slow, failing or dying mid-stream: clear errors, honest records."""

from __future__ import annotations

from tests.plugins.common import free_port
from tests.test_gateway_api import events


def test_model_server_down_is_503_and_recorded_as_failed(make_gateway, gateway_db):
    c = make_gateway(base_url=f"http://127.0.0.1:{free_port()}/v1").test_client()
    r = c.post("/api/chat", json={"message": "hello"})
    assert r.status_code == 503
    assert r.get_json()["error"]["code"] == "upstream_unavailable"
    rows = gateway_db.execute("SELECT role, content, error IS NOT NULL FROM messages ORDER BY seq").fetchall()
    assert rows == [("user", "hello", 0), ("assistant", "", 1)]  # failed on purpose, not orphaned


def test_slow_model_is_504(make_gateway, fake_upstream):
    c = make_gateway(**{"model.first_token_timeout_s": 0.3, "model.retries": 0}).test_client()
    r = c.post("/api/chat", json={"message": "!slow 1.5"})
    assert r.status_code == 504
    assert r.get_json()["error"]["code"] == "upstream_timeout"


def test_5xx_is_502_after_bounded_retries(make_gateway, fake_upstream):
    c = make_gateway(**{"model.retries": 2}).test_client()
    r = c.post("/api/chat", json={"message": "!status 500"})
    assert r.status_code == 502
    assert fake_upstream.log.attempts["!status 500"] == 3  # 1 + 2 retries, no more


def test_4xx_from_model_is_not_retried(make_gateway, fake_upstream):
    c = make_gateway(**{"model.retries": 2}).test_client()
    assert c.post("/api/chat", json={"message": "!status 400"}).status_code == 502
    assert fake_upstream.log.attempts["!status 400"] == 1


def test_flaky_model_recovers_within_retries(make_gateway, fake_upstream):
    c = make_gateway(**{"model.retries": 2}).test_client()
    r = c.post("/api/chat", json={"message": "!flaky 2"})
    assert r.status_code == 200
    assert r.get_json()["answer"] == "echo: !flaky 2"


def test_fallback_model_answers_and_is_recorded_as_such(make_gateway, fake_upstream, gateway_db):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    c = make_gateway(
        base_url=dead,
        **{"model.retries": 0, "model.fallbacks": [{"name": "backup", "base_url": fake_upstream.base_url}]},
    ).test_client()
    r = c.post("/api/chat", json={"message": "hello"})
    assert r.status_code == 200
    assert r.get_json()["model"] == "backup"
    assert fake_upstream.log.requests[-1]["model"] == "backup"
    version = gateway_db.execute(
        "SELECT v.name, v.status FROM messages m JOIN model_versions v ON v.id = m.model_version_id WHERE m.id = ?",
        [r.get_json()["message_id"]],
    ).fetchone()
    assert version == ("backup", "standby")


def test_mid_stream_failure_is_an_error_event_and_no_fallback(make_gateway, fake_upstream, gateway_db):
    c = make_gateway(**{"model.fallbacks": [{"name": "backup"}]}).test_client()
    r = c.post("/api/chat", json={"message": "!midstream", "stream": True})
    assert r.status_code == 200  # headers were already sent when it broke
    evs = events(r)
    assert [e for e, _ in evs] == ["start", "delta", "delta", "error"]
    assert evs[-1][1]["error"]["code"] in ("upstream_error", "upstream_unavailable")
    assert fake_upstream.log.attempts["!midstream"] == 1  # never retried after tokens were sent
    row = gateway_db.execute(
        "SELECT content, error, finish_reason FROM messages WHERE id = ?", [evs[0][1]["message_id"]]
    ).fetchone()
    assert row[0] == "echo: !mid" and row[1] and row[2] == "error"


def test_mid_stream_failure_without_streaming_is_502(client, gateway_db):
    r = client.post("/api/chat", json={"message": "!midstream"})
    assert r.status_code == 502
    assert (
        gateway_db.execute("SELECT COUNT(*) FROM messages WHERE role='assistant' AND error IS NOT NULL").fetchone()[0]
        == 1
    )


def test_failed_answer_cannot_be_rated(make_gateway, gateway_db):
    c = make_gateway(**{"model.retries": 0}).test_client()
    r = c.post("/api/chat", json={"message": "!midstream", "stream": True})
    start = events(r)[0][1]
    vote = {"message_id": start["message_id"], "feedback_token": start["feedback_token"], "rating": "down"}
    rated = c.post("/api/feedback", json=vote)
    assert rated.status_code == 409


def test_readyz_reports_each_dependency(make_gateway):
    c = make_gateway().test_client()
    ok = c.get("/readyz")
    assert ok.status_code == 200 and ok.get_json()["checks"]["database"]["ok"]
    down = make_gateway(base_url=f"http://127.0.0.1:{free_port()}/v1").test_client().get("/readyz")
    assert down.status_code == 503
    assert down.get_json()["error"]["code"] == "not_ready"
    assert down.get_json()["checks"]["model_server"]["ok"] is False


def test_promotion_is_picked_up_without_restart(make_gateway, fake_upstream, gateway_db):
    c = make_gateway(**{"gateway.model_cache_s": 0}).test_client()
    assert c.post("/api/chat", json={"message": "a"}).get_json()["model"] == "starter"
    with gateway_db.conn:
        gateway_db.execute("UPDATE model_versions SET status = 'retired' WHERE status = 'live'")
        gateway_db.execute(
            "INSERT INTO model_versions (id, name, provider, base_model, status, created_at) "
            "VALUES ('mv_new', 'starter-v2', 'builtin', 'starter', 'live', 't')"
        )
    r = c.post("/api/chat", json={"message": "b"})
    assert r.get_json()["model"] == "starter-v2"
    assert fake_upstream.log.requests[-1]["model"] == "starter-v2"


def test_canary_is_sticky_per_conversation(make_gateway, fake_upstream, gateway_db):
    c = make_gateway(**{"gateway.model_cache_s": 0}).test_client()
    with gateway_db.conn:
        gateway_db.execute(
            "INSERT INTO model_versions (id, name, provider, base_model, status, traffic_weight, created_at) "
            "VALUES ('mv_c', 'canary', 'builtin', 'starter', 'canary', 0.5, 't')"
        )
    served = {}
    for i in range(30):
        first = c.post("/api/chat", json={"message": f"q{i}"}).get_json()
        again = c.post("/api/chat", json={"message": "again", "conversation_id": first["conversation_id"]}).get_json()
        assert again["model"] == first["model"]
        served[first["model"]] = served.get(first["model"], 0) + 1
    assert set(served) == {"starter", "canary"}


def _fill_the_disk(app) -> None:
    """Cap every pooled connection at its current size: the next write fails with SQLITE_FULL,
    exactly as on a full disk."""
    pool = app.extensions["tuneloop"].pool
    held = [pool.acquire() for _ in range(4)]  # a request uses two: its own and the one that records
    for db in held:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages}")
    for db in held:
        pool.release(db)


def test_full_disk_is_503_with_a_clear_message(make_gateway, gateway_db):
    app = make_gateway()
    c = app.test_client()
    ok = c.post("/api/chat", json={"message": "before"}).get_json()
    _fill_the_disk(app)
    # Enough text that the new rows cannot fit in the pages already there.
    r = c.post("/api/chat", json={"message": "x" * 3900})
    assert r.status_code == 503
    assert r.get_json()["error"]["code"] == "storage_unavailable"
    assert "full" in r.get_json()["error"]["message"]
    rated = c.post(
        "/api/feedback",
        json={
            "message_id": ok["message_id"],
            "feedback_token": ok["feedback_token"],
            "rating": "down",
            "comment": "y" * 1999,
        },
    )
    assert rated.status_code in (200, 503)  # a small row may still fit in a free slot of a page
    if rated.status_code == 503:
        assert rated.get_json()["error"]["code"] == "storage_unavailable"
    # Nothing half-written: the failed turn left no user message without its answer.
    orphans = gateway_db.execute(
        "SELECT COUNT(*) FROM messages u WHERE u.role = 'user' AND NOT EXISTS "
        "(SELECT 1 FROM messages a WHERE a.conversation_id = u.conversation_id AND a.seq = u.seq + 1)"
    ).fetchone()[0]
    assert orphans == 0


def test_full_disk_while_streaming_is_an_error_event(make_gateway):
    app = make_gateway()
    c = app.test_client()
    _fill_the_disk(app)
    r = c.post("/api/chat", json={"message": "z" * 3900, "stream": True})
    evs = events(r)
    assert evs[0][0] == "start" and evs[-1][0] == "error"
    assert evs[-1][1]["error"]["code"] == "storage_unavailable"
