"""``/v1/responses``, the OpenAI Responses API, on the gateway's chat (issue 20).

Against the scripted chat-completions-only upstream (tests/plugins/upstream.py), which is what the gateway
translates to: every answer is a stored turn with its model version and sources, rateable through
``/api/feedback`` with the ``tuneloop`` ids; ``previous_response_id`` continues the stored conversation; fields
the gateway cannot honour are a 400 naming them. The official clients against real gunicorn and the built-in
model server are in tests/test_clients.py.
"""

from __future__ import annotations

import json

import pytest

from feedback import apikeys
from feedback.knowledge import store

pytestmark = pytest.mark.engines  # the storage tests run on SQLite and on PostgreSQL


def events(response) -> list[tuple[str, dict]]:
    """The SSE events of a response: (event name, data)."""
    out = []
    for block in response.get_data(as_text=True).split("\n\n"):
        if block.strip():
            name, data = block.splitlines()
            out.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def rate(client, ids: dict, rating: str = "down"):
    vote = {"message_id": ids["message_id"], "feedback_token": ids["feedback_token"], "rating": rating}
    return client.post("/api/feedback", json=vote)


def test_a_string_input_is_answered_stored_and_rateable(client, gateway_db, fake_upstream):
    closed_book = {"knowledge": False}  # the prompt is then exactly the question (sources: see below)
    r = client.post("/v1/responses", json={"model": "starter", "input": "환불 되나요?", "tuneloop": closed_book})
    assert r.status_code == 200, r.get_data(as_text=True)
    body = r.get_json()
    ids = body["tuneloop"]
    assert body["id"].startswith("resp_") and body["object"] == "response" and body["status"] == "completed"
    assert body["model"] == "starter" and body["error"] is None and body["incomplete_details"] is None
    assert body["output"] == [
        {
            "type": "message",
            "id": ids["message_id"],
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "echo: 환불 되나요?", "annotations": [], "logprobs": []}],
        }
    ]
    assert body["usage"]["input_tokens"] == 5 and body["usage"]["output_tokens"] == 3
    assert body["usage"]["total_tokens"] == 8
    assert ids["message_id"] == r.headers["X-Tuneloop-Message-Id"] and ids["feedback_token"]
    assert ids["conversation_id"] == r.headers["X-Tuneloop-Conversation-Id"] and ids["sources"] == []
    assert fake_upstream.log.requests[-1]["messages"] == [{"role": "user", "content": "환불 되나요?"}]
    turn = gateway_db.execute(
        """SELECT m.content, v.name, m.conversation_id FROM messages m JOIN model_versions v
           ON v.id = m.model_version_id WHERE m.id = ?""",
        [ids["message_id"]],
    ).fetchone()
    assert turn == ("echo: 환불 되나요?", "starter", ids["conversation_id"])
    assert rate(client, ids).status_code == 200
    assert gateway_db.execute("SELECT rating FROM feedback WHERE message_id = ?", [ids["message_id"]]).fetchone() == (
        -1,
    )
    # Bound to the served message: another answer's token does not rate this one.
    other = client.post("/v1/responses", json={"input": "hi"}).get_json()["tuneloop"]
    assert rate(client, ids | {"feedback_token": other["feedback_token"]}).status_code == 403


def test_messages_instructions_and_sampling_reach_the_upstream_as_chat(client, fake_upstream):
    ask = {
        "model": "starter",
        "instructions": "Answer briefly.",
        "input": [
            {"role": "developer", "content": "Use Korean."},
            {
                "role": "user",
                "content": [{"type": "input_text", "text": "first "}, {"type": "input_text", "text": "q"}],
            },
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "first a"}]},
            {"type": "message", "role": "user", "content": "second q"},
        ],
        "max_output_tokens": 40,
        "temperature": 0.3,
        "top_p": 0.9,
        "tuneloop": {"knowledge": False},
    }
    body = client.post("/v1/responses", json=ask).get_json()
    sent = fake_upstream.log.requests[-1]
    assert sent["messages"] == [
        {"role": "system", "content": "Answer briefly.\n\nUse Korean."},  # the gateway sends one system message
        {"role": "user", "content": "first q"},
        {"role": "assistant", "content": "first a"},
        {"role": "user", "content": "second q"},
    ]
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"]) == (40, 0.3, 0.9)
    assert (body["instructions"], body["max_output_tokens"], body["temperature"], body["top_p"]) == (
        "Answer briefly.",
        40,
        0.3,
        0.9,
    )


def test_sources_ride_in_the_tuneloop_field_and_are_stored(client, gateway_db):
    shipping = store.entry_for_question(gateway_db, "How much is the shipping fee?")
    body = client.post("/v1/responses", json={"input": "what's the postage cost?"}).get_json()
    assert body["tuneloop"]["sources"][0]["id"] == shipping.id
    stored = gateway_db.execute(
        "SELECT entry_id FROM message_sources WHERE message_id = ?", [body["tuneloop"]["message_id"]]
    ).fetchall()
    assert stored[0][0] == shipping.id
    assert client.get(f"/v1/responses/{body['id']}").get_json()["tuneloop"]["sources"] == body["tuneloop"]["sources"]


def test_previous_response_id_continues_the_stored_conversation(client, fake_upstream, gateway_db):
    first = client.post("/v1/responses", json={"input": "one", "tuneloop": {"knowledge": False}}).get_json()
    second = client.post(
        "/v1/responses", json={"input": "two", "previous_response_id": first["id"], "tuneloop": {"knowledge": False}}
    ).get_json()
    assert second["previous_response_id"] == first["id"]
    assert second["tuneloop"]["conversation_id"] == first["tuneloop"]["conversation_id"]
    assert fake_upstream.log.requests[-1]["messages"] == [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "echo: one"},
        {"role": "user", "content": "two"},
    ]
    # Going back to the first response branches from there: "two" is not in its history.
    client.post(
        "/v1/responses", json={"input": "other", "previous_response_id": first["id"], "tuneloop": {"knowledge": False}}
    )
    assert [m["content"] for m in fake_upstream.log.requests[-1]["messages"]] == ["one", "echo: one", "other"]
    count = gateway_db.execute(
        "SELECT COUNT(*) FROM messages WHERE conversation_id = ?", [first["tuneloop"]["conversation_id"]]
    ).fetchone()[0]
    assert count == 6  # three turns, one conversation


def test_get_and_delete_a_stored_response(client):
    created = client.post("/v1/responses", json={"input": "hello", "metadata": {"ticket": "T-1"}}).get_json()
    got = client.get(f"/v1/responses/{created['id']}").get_json()
    assert got == created | {"created_at": got["created_at"]} and abs(got["created_at"] - created["created_at"]) <= 1
    deleted = client.delete(f"/v1/responses/{created['id']}")
    assert deleted.status_code == 200 and deleted.get_json() == {
        "id": created["id"],
        "object": "response",
        "deleted": True,
    }
    gone = client.get(f"/v1/responses/{created['id']}")
    assert gone.status_code == 404 and gone.get_json()["error"]["param"] == "response_id"
    assert client.delete(f"/v1/responses/{created['id']}").status_code == 404
    continued = client.post("/v1/responses", json={"input": "more", "previous_response_id": created["id"]})
    assert continued.status_code == 404 and continued.get_json()["error"]["param"] == "previous_response_id"
    # The turn itself stays in the log, rateable.
    assert rate(client, created["tuneloop"], "up").status_code == 200


def test_store_false_is_answered_and_logged_but_not_retrievable(client, gateway_db):
    body = client.post("/v1/responses", json={"input": "hello", "store": False}).get_json()
    assert body["store"] is False and body["status"] == "completed"
    assert client.get(f"/v1/responses/{body['id']}").status_code == 404
    assert (
        gateway_db.execute("SELECT COUNT(*) FROM messages WHERE id = ?", [body["tuneloop"]["message_id"]]).fetchone()[0]
        == 1
    )
    assert rate(client, body["tuneloop"]).status_code == 200


def test_another_keys_response_is_not_found(make_gateway, gateway_db):
    app = make_gateway(**{"gateway.require_api_key": "always"})
    c = app.test_client()
    db = app.extensions["tuneloop"].connect()
    _, mine = apikeys.create_key(db, "mine")
    _, theirs = apikeys.create_key(db, "theirs")
    created = c.post("/v1/responses", json={"input": "hi"}, headers={"Authorization": f"Bearer {mine}"}).get_json()
    other = {"Authorization": f"Bearer {theirs}"}
    assert c.get(f"/v1/responses/{created['id']}", headers=other).status_code == 404
    assert c.delete(f"/v1/responses/{created['id']}", headers=other).status_code == 404
    r = c.post("/v1/responses", json={"input": "x", "previous_response_id": created["id"]}, headers=other)
    assert r.status_code == 404
    assert c.get(f"/v1/responses/{created['id']}", headers={"Authorization": f"Bearer {mine}"}).status_code == 200


DEFAULTS = {
    "store": True,
    "tools": [],
    "tool_choice": "auto",
    "parallel_tool_calls": True,
    "text": {"format": {"type": "text"}},
    "truncation": "disabled",
    "user": "visitor-7",
    "metadata": {"page": "/help"},
    "background": False,
    "reasoning": {"effort": None},
    "include": ["reasoning.encrypted_content"],
    "service_tier": "auto",
}


def test_the_fields_clients_send_with_default_values_are_accepted(client):
    r = client.post("/v1/responses", json={"model": "starter", "input": "hi", **DEFAULTS})
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.get_json()["metadata"] == {"page": "/help"}


@pytest.mark.parametrize(
    "change, field",
    [
        ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools"),
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"background": True}, "background"),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {}}}}, "text.format"),
        ({"text": {"format": {"type": "json_object"}}}, "text.format"),
        ({"reasoning": {"effort": "high"}}, "reasoning.effort"),
        ({"include": ["message.output_text.logprobs"]}, "include.0"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": "1"}]}, "input.0.type"),
    ],
)
def test_a_field_the_gateway_cannot_honour_is_a_400_naming_it(client, gateway_db, change, field):
    r = client.post("/v1/responses", json={"input": "hi"} | change)
    assert r.status_code == 400, r.get_data(as_text=True)
    error = r.get_json()["error"]
    assert error["code"] == "unsupported_parameter" and error["param"] == field
    assert error["type"] == "invalid_request_error" and error["message"].startswith(field + ":")
    assert gateway_db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0


@pytest.mark.parametrize(
    "ask, status, field",
    [
        ({"input": ""}, 422, "input"),
        ({"input": []}, 422, "input"),
        ({}, 422, "input"),
        ({"input": [{"role": "assistant", "content": "hi"}]}, 422, "input"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, 422, None),
        ({"input": "hi", "max_output_tokens": 0}, 422, "max_output_tokens"),
        ({"input": "hi", "temperature": 3}, 422, "temperature"),
        ({"input": "hi", "top_logprobs": False}, 422, "top_logprobs"),  # not read as 0 (found by Schemathesis)
        ({"input": "hi", "stream": "yes"}, 422, "stream"),
        ({"input": "hi", "model": "gpt-4o"}, 404, "model"),
        ({"input": "hi", "previous_response_id": "resp_nope"}, 404, "previous_response_id"),
        (
            {"input": [{"type": "item_reference", "id": "msg_nope"}, {"role": "user", "content": "x"}]},
            404,
            "input.0.id",
        ),
    ],
)
def test_bad_requests_are_openai_shaped_and_store_nothing(client, gateway_db, ask, status, field):
    r = client.post("/v1/responses", json=ask)
    assert r.status_code == status, r.get_data(as_text=True)
    error = r.get_json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if field:
        assert error["param"] == field
    else:
        assert error["param"].startswith("input.0.content.0")
    assert gateway_db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0


def test_an_item_reference_sends_a_stored_answer_back(client, fake_upstream):
    first = client.post("/v1/responses", json={"input": "one", "tuneloop": {"knowledge": False}}).get_json()
    ask = [
        {"role": "user", "content": "one"},
        {"type": "item_reference", "id": first["output"][0]["id"]},
        {"role": "user", "content": "two"},
    ]
    client.post("/v1/responses", json={"input": ask, "tuneloop": {"knowledge": False}})
    assert [m["content"] for m in fake_upstream.log.requests[-1]["messages"]] == ["one", "echo: one", "two"]


def test_a_stream_follows_the_documented_event_sequence(client, gateway_db):
    r = client.post("/v1/responses", json={"input": "hello", "stream": True})
    assert r.status_code == 200 and r.mimetype == "text/event-stream"
    evs = events(r)
    names = [name for name, _ in evs]
    assert names[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert set(names[4:-4]) == {"response.output_text.delta"}
    assert names[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [data["sequence_number"] for _, data in evs] == list(range(len(evs)))
    assert all(data["type"] == name for name, data in evs)
    created, completed = evs[0][1]["response"], evs[-1][1]["response"]
    assert created["status"] == "in_progress" and created["output"] == []
    assert created["tuneloop"] == completed["tuneloop"] and created["tuneloop"]["feedback_token"]
    text = "".join(data["delta"] for name, data in evs if name == "response.output_text.delta")
    assert text == "echo: hello" == completed["output"][0]["content"][0]["text"]
    assert completed["status"] == "completed" and completed["usage"]["total_tokens"] > 0
    assert client.get(f"/v1/responses/{completed['id']}").get_json()["output"] == completed["output"]
    assert rate(client, created["tuneloop"]).status_code == 200


def test_an_error_mid_stream_is_an_error_event_then_response_failed(client, gateway_db):
    r = client.post("/v1/responses", json={"input": "!midstream", "stream": True, "tuneloop": {"knowledge": False}})
    evs = events(r)
    names = [name for name, _ in evs]
    assert names[0] == "response.created" and "response.output_text.delta" in names
    assert names[-2:] == ["error", "response.failed"]
    error, failed = evs[-2][1], evs[-1][1]["response"]
    assert error["code"] and error["message"]
    assert failed["status"] == "failed" and failed["error"]["message"] == error["message"]
    stored = gateway_db.execute(
        "SELECT error FROM messages WHERE id = ?", [failed["tuneloop"]["message_id"]]
    ).fetchone()
    assert stored[0]  # the failed turn is recorded
    assert client.get(f"/v1/responses/{failed['id']}").get_json()["status"] == "failed"


def test_responses_count_against_the_chat_limit(make_gateway):
    app = make_gateway(**{"limits.enabled": True, "limits.chat": "2/minute"})
    c = app.test_client()
    statuses = [c.post("/v1/responses", json={"input": "hi"}).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    refused = c.post("/v1/responses", json={"input": "hi"})
    assert refused.headers["Retry-After"] and refused.get_json()["error"]["type"] == "rate_limit_error"
