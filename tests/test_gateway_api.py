"""The gateway's /api routes against a real SQLite file and a real (scripted) upstream over HTTP."""

from __future__ import annotations

import json

import pytest

from feedback import apikeys
from tests.plugins.common import error_body

pytestmark = pytest.mark.engines


def events(response) -> list[tuple[str, dict]]:
    """Parse a text/event-stream body into (event, data) pairs."""
    out = []
    for block in response.get_data(as_text=True).strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_chat_answers_and_records_the_turn(client, gateway_db):
    r = client.post("/api/chat", json={"message": "배송은 얼마나 걸리나요?"})
    assert r.status_code == 200
    body = r.get_json()
    assert body["answer"] == "echo: 배송은 얼마나 걸리나요?"
    assert body["model"] == "starter"
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 3}
    row = gateway_db.execute(
        "SELECT m.content, v.name, m.finish_reason FROM messages m JOIN model_versions v ON v.id = m.model_version_id "
        "WHERE m.id = ?",
        [body["message_id"]],
    ).fetchone()
    assert row == ("echo: 배송은 얼마나 걸리나요?", "starter", "stop")
    assert "배송은" in r.get_data(as_text=True)  # not \\u-escaped on the wire


def test_history_and_system_prompt_are_sent_upstream(make_gateway, fake_upstream):
    c = make_gateway(**{"chat.system_prompt": "Be brief.", "chat.history_turns": 1}).test_client()
    first = c.post("/api/chat", json={"message": "one"}).get_json()
    c.post("/api/chat", json={"message": "two", "conversation_id": first["conversation_id"]})
    # Opted out of the knowledge base, so the prompt is exactly prompt + history + question
    # (tests/test_knowledge_gateway.py checks the grounded prompt).
    c.post("/api/chat", json={"message": "three", "conversation_id": first["conversation_id"], "knowledge": False})
    sent = fake_upstream.log.requests[-1]["messages"]
    assert sent == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "echo: two"},
        {"role": "user", "content": "three"},
    ]


def test_streaming_events_in_order(client, gateway_db):
    r = client.post("/api/chat", json={"message": "hello", "stream": True})
    assert r.status_code == 200 and r.mimetype == "text/event-stream"
    evs = events(r)
    assert [e for e, _ in evs] == ["start", "delta", "delta", "delta", "done"]
    start = evs[0][1]
    assert set(start) == {"conversation_id", "message_id", "model", "feedback_token", "sources"}
    assert "".join(d["text"] for e, d in evs if e == "delta") == "echo: hello"
    assert evs[-1][1]["usage"]["completion_tokens"] == 3
    stored = gateway_db.execute("SELECT content FROM messages WHERE id = ?", [start["message_id"]]).fetchone()
    assert stored == ("echo: hello",)


def test_feedback_round_trip_and_changed_vote(client, gateway_db):
    chat = client.post("/api/chat", json={"message": "hello"}).get_json()
    vote = {"message_id": chat["message_id"], "feedback_token": chat["feedback_token"], "user": "u1"}
    r1 = client.post("/api/feedback", json=vote | {"rating": "up"})
    r2 = client.post(
        "/api/feedback", json=vote | {"rating": "down", "reason": "wrong", "comment": "no", "correction": "yes"}
    )
    assert r1.status_code == r2.status_code == 200
    assert r1.get_json()["updated"] is False and r2.get_json()["updated"] is True
    rows = gateway_db.execute(
        "SELECT rating, reason, comment, correction FROM feedback WHERE message_id = ?", [chat["message_id"]]
    ).fetchall()
    assert rows == [(-1, "wrong", "no", "yes")]


@pytest.mark.parametrize(
    "change, status, code, field",
    [
        ({"feedback_token": "forged"}, 403, "bad_feedback_token", "feedback_token"),
        ({"message_id": "msg_nope"}, 404, "not_found", "message_id"),
        ({"rating": "meh"}, 422, "validation_failed", "rating"),
        ({"reason": "because"}, 422, "validation_failed", "reason"),
        ({"comment": "x" * 2001}, 422, "validation_failed", "comment"),
        ({"feedback_token": None}, 422, "validation_failed", "feedback_token"),
    ],
)
def test_bad_feedback_is_refused_and_nothing_stored(client, gateway_db, change, status, code, field):
    chat = client.post("/api/chat", json={"message": "hello"}).get_json()
    vote = {"message_id": chat["message_id"], "feedback_token": chat["feedback_token"], "rating": "down"} | change
    vote = {k: v for k, v in vote.items() if v is not None}
    r = client.post("/api/feedback", json=vote)
    assert r.status_code == status
    assert r.get_json()["error"]["code"] == code
    assert r.get_json()["error"]["field"] == field
    assert gateway_db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0] == 0


def test_token_of_one_message_cannot_rate_another(client):
    a = client.post("/api/chat", json={"message": "a"}).get_json()
    b = client.post("/api/chat", json={"message": "b"}).get_json()
    r = client.post(
        "/api/feedback", json={"message_id": b["message_id"], "feedback_token": a["feedback_token"], "rating": "down"}
    )
    assert r.status_code == 403


def test_user_message_cannot_be_rated(client, gateway_db):
    chat = client.post("/api/chat", json={"message": "hello"}).get_json()
    user_msg = gateway_db.execute("SELECT id FROM messages WHERE role='user'").fetchone()[0]
    from feedback.secrets import instance_secret
    from feedback.tokens import feedback_token

    token = feedback_token(instance_secret(gateway_db, "feedback_token"), user_msg)
    r = client.post("/api/feedback", json={"message_id": user_msg, "feedback_token": token, "rating": "up"})
    assert r.status_code == 404 and chat["message_id"] != user_msg


def test_conversation_read_back(client):
    first = client.post("/api/chat", json={"message": "one"}).get_json()
    client.post("/api/chat", json={"message": "two", "conversation_id": first["conversation_id"]})
    conv = client.get(f"/api/conversations/{first['conversation_id']}").get_json()
    assert [(m["role"], m["content"]) for m in conv["messages"]] == [
        ("user", "one"),
        ("assistant", "echo: one"),
        ("user", "two"),
        ("assistant", "echo: two"),
    ]
    assert client.get("/api/conversations/conv_unknown").status_code == 404


@pytest.mark.parametrize(
    "body, status, code",
    [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_json"),
        (b'{"message": 42}', 422, "validation_failed"),
        (b'{"message": ""}', 422, "validation_failed"),
        (b'{"message": "hi", "stream": "yes"}', 422, "validation_failed"),
        (b'{"message": "hi", "surprise": 1}', 422, "validation_failed"),
        (b'{"message": "hi", "conversation_id": "conv_unknown"}', 404, "not_found"),
    ],
)
def test_bad_chat_requests_get_one_error_shape(client, gateway_db, body, status, code):
    r = client.post("/api/chat", data=body, content_type="application/json")
    assert r.status_code == status
    assert r.get_json()["error"]["code"] == code
    assert set(r.get_json()) == {"error"}
    assert gateway_db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0


def test_oversized_message_and_body(make_gateway, gateway_db):
    c = make_gateway(**{"gateway.max_message_chars": 10, "gateway.max_body_bytes": 2048}).test_client()
    r = c.post("/api/chat", json={"message": "x" * 11})
    assert r.status_code == 413 and r.get_json()["error"]["field"] == "message"
    r = c.post("/api/chat", data=json.dumps({"message": "y" * 5000}), content_type="application/json")
    assert r.status_code == 413 and r.get_json()["error"]["code"] == "payload_too_large"
    assert gateway_db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0


@pytest.mark.parametrize(
    "path, field, ask",
    [
        ("/api/chat", "message", lambda text: {"message": text}),
        ("/v1/chat/completions", "messages", lambda text: {"messages": [{"role": "user", "content": text}]}),
    ],
)
def test_both_chat_apis_check_the_users_message_the_same_way(make_gateway, gateway_db, path, field, ask):
    c = make_gateway(**{"gateway.max_message_chars": 10}).test_client()
    too_long = c.post(path, json=ask("x" * 11)).get_json()["error"]
    assert too_long == error_body(path, "message_too_long", "message has 11 characters; the limit is 10", field)
    blank = c.post(path, json=ask("  \n ")).get_json()["error"]
    assert blank == error_body(path, "validation_failed", "the user's message is blank", field)
    assert c.post(path, json=ask("x" * 10)).status_code == 200
    assert gateway_db.execute("SELECT COUNT(*) FROM messages WHERE role = 'user'").fetchone()[0] == 1


def test_openai_completion_has_the_documented_shape(client):
    r = client.post(
        "/v1/chat/completions",
        json={
            "model": "starter",
            "messages": [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}],
        },
    )
    body = r.get_json()
    ids = body["tuneloop"]
    assert body == {
        "id": ids["message_id"],
        "object": "chat.completion",
        "created": body["created"],
        "model": "starter",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "echo: hi", "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        "tuneloop": {
            "conversation_id": r.headers["X-Tuneloop-Conversation-Id"],
            "message_id": r.headers["X-Tuneloop-Message-Id"],
            "feedback_token": ids["feedback_token"],
            "sources": [],  # "hi" matches no knowledge-base entry
        },
    }
    assert isinstance(body["created"], int) and ids["feedback_token"]


def test_openai_last_message_must_be_the_users(client, gateway_db):
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "assistant", "content": "hello"}]})
    assert r.status_code == 422
    assert r.get_json()["error"] == {
        "message": "the last message must come from the user",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "validation_failed",
    }
    assert gateway_db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0


def test_unknown_route_and_wrong_method_are_json(client):
    r = client.get("/api/nothing-here")
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"
    r = client.get("/api/chat")
    assert r.status_code == 405 and r.get_json()["error"]["code"] == "method_not_allowed"


def test_keys_required_then_checked(make_gateway, tmp_path):
    app = make_gateway(**{"gateway.require_api_key": "always"})
    c = app.test_client()
    r = c.post("/api/chat", json={"message": "hi"})
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "missing_api_key"
    db = app.extensions["tuneloop"].connect()
    key, raw = apikeys.create_key(db, "shop")
    ok = c.post("/api/chat", json={"message": "hi"}, headers={"Authorization": f"Bearer {raw}"})
    assert ok.status_code == 200
    assert c.post("/api/chat", json={"message": "hi"}, headers={"X-API-Key": raw}).status_code == 200
    assert (
        c.post("/api/chat", json={"message": "hi"}, headers={"Authorization": "Bearer tl_sk_wrong"}).status_code == 401
    )
    apikeys.revoke_key(db, key.id)
    assert c.post("/api/chat", json={"message": "hi"}, headers={"Authorization": f"Bearer {raw}"}).status_code == 401


def test_publishable_key_can_chat_and_rate_only(make_gateway):
    app = make_gateway(**{"gateway.require_api_key": "always"})
    c = app.test_client()
    _, raw = apikeys.create_key(app.extensions["tuneloop"].connect(), "widget", kind="publishable")
    auth = {"Authorization": f"Bearer {raw}"}
    chat = c.post("/api/chat", json={"message": "hi"}, headers=auth).get_json()
    vote = {"message_id": chat["message_id"], "feedback_token": chat["feedback_token"], "rating": "up"}
    assert c.post("/api/feedback", json=vote, headers=auth).status_code == 200
    r = c.get(f"/api/conversations/{chat['conversation_id']}", headers=auth)
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "key_not_allowed"


def test_other_tenants_messages_are_invisible(make_gateway):
    app = make_gateway(**{"gateway.require_api_key": "always"})
    c = app.test_client()
    db = app.extensions["tuneloop"].connect()
    _, a = apikeys.create_key(db, "a")
    _, b = apikeys.create_key(db, "b")
    chat = c.post("/api/chat", json={"message": "hi"}, headers={"Authorization": f"Bearer {a}"}).get_json()
    other = {"Authorization": f"Bearer {b}"}
    assert c.get(f"/api/conversations/{chat['conversation_id']}", headers=other).status_code == 404
    vote = {"message_id": chat["message_id"], "feedback_token": chat["feedback_token"], "rating": "down"}
    assert c.post("/api/feedback", json=vote, headers=other).status_code == 404
    cont = c.post("/api/chat", json={"message": "hi", "conversation_id": chat["conversation_id"]}, headers=other)
    assert cont.status_code == 404


def test_rate_limit_answers_429_with_retry_after(make_gateway):
    c = make_gateway(**{"limits.enabled": True, "limits.chat": "2/minute"}).test_client()
    codes = [c.post("/api/chat", json={"message": "hi"}).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    r = c.post("/api/chat", json={"message": "hi"})
    assert r.get_json()["error"]["code"] == "rate_limited"
    assert int(r.headers["Retry-After"]) > 0


def test_client_config_lists_reasons(client):
    assert client.get("/api/config").get_json()["reasons"][0] == "wrong"
