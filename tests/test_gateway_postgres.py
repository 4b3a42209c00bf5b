"""The gateway under real gunicorn (``tuneloop serve``, 2 gevent workers) on a real PostgreSQL store: a turn and
a rating through HTTP read back from the store, /readyz, and streams that leave a small pool to other requests."""

from __future__ import annotations

import concurrent.futures
import time

import httpx2
import pytest

from feedback.db import open_db
from tests.plugins.gateway import start_gunicorn_gateway, stop_gateway


@pytest.fixture
def pg_gateway(tmp_path, fake_upstream, postgres_url):
    # pool_size 1: a stream that kept its request's connection would leave the worker's other requests none.
    gw = start_gunicorn_gateway(
        tmp_path,
        fake_upstream.base_url,
        extra={"database": {"url": postgres_url, "pool_size": 1, "busy_timeout_ms": 1000}},
        timeout_s=60,
    )
    yield gw
    stop_gateway(gw)


def test_a_turn_and_a_rating_through_http_land_in_postgresql(pg_gateway, postgres_url):
    with httpx2.Client(base_url=pg_gateway.url, timeout=30) as http:
        chat = http.post("/api/chat", json={"message": "배송은 얼마나 걸리나요?", "user": "u1"})
        assert chat.status_code == 200, chat.text
        answer = chat.json()
        vote = {"message_id": answer["message_id"], "feedback_token": answer["feedback_token"], "user": "u1"}
        rated = http.post("/api/feedback", json=vote | {"rating": "down", "reason": "wrong"})
        assert rated.status_code == 200, rated.text
        conversation = http.get(f"/api/conversations/{answer['conversation_id']}", headers={})
        ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["database"]["ok"] is True
    db = open_db(postgres_url, migrate=False)
    try:
        stored = db.execute(
            "SELECT m.content, f.rating, f.reason, f.question_key FROM messages m JOIN feedback f"
            " ON f.message_id = m.id WHERE m.id = ?",
            [answer["message_id"]],
        ).fetchall()
    finally:
        db.close()
    assert stored == [("echo: 배송은 얼마나 걸리나요?", -1, "wrong", "배송은 얼마나 걸리나요")]
    assert conversation.status_code in (200, 403)  # read back needs the owner's token; the store is the proof
    assert not (pg_gateway.data_dir / "tuneloop.db").exists()  # nothing went to a SQLite file


def test_streams_leave_a_one_connection_pool_to_the_other_requests(pg_gateway):
    """Each worker has one pooled connection; 4 streams of ~2 s run while other requests are answered.

    Were a running stream to hold a connection, a request behind it would wait busy_timeout_ms (1 s) for one
    and get a 503; were a request to need two at once (its own and one to record its turn), every request would.
    """
    with httpx2.Client(base_url=pg_gateway.url, timeout=30) as http:

        def stream() -> str:
            with http.stream("POST", "/api/chat", json={"message": "!tokens 20 0.1", "stream": True}) as r:
                return "".join(r.iter_text())

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            streams = [pool.submit(stream) for _ in range(4)]
            time.sleep(0.8)  # the streams are under way, each past its request's database work
            quick = [http.post("/api/chat", json={"message": f"quick {i}"}) for i in range(4)]
            bodies = [s.result() for s in streams]
    assert [r.status_code for r in quick] == [200] * 4, [r.text for r in quick]
    assert all("event: done" in body for body in bodies), bodies[0][-300:]
