"""Grounded answers through the gateway's HTTP API: the prompt sent upstream, sources returned and stored, opt-out,
and the token budget (a 413 naming the field, never a 502). The upstream is the scripted OpenAI-protocol double,
which echoes the question; the real model server is in tests/test_knowledge_e2e.py."""

from __future__ import annotations

import json

import pytest

from feedback.knowledge import store

SHIPPING = "How much is the shipping fee?"


def events(response) -> list[tuple[str, dict]]:
    out = []
    for block in response.get_data(as_text=True).split("\n\n"):
        if block.strip():
            lines = block.splitlines()
            out.append((lines[0].removeprefix("event: "), json.loads(lines[1].removeprefix("data: "))))
    return out


@pytest.fixture
def shipping(gateway_db, client):
    return store.entry_for_question(gateway_db, SHIPPING)


def test_the_answer_is_grounded_and_returns_its_sources(client, fake_upstream, shipping, gateway_db):
    body = client.post("/api/chat", json={"message": "what's the postage cost?"}).get_json()
    assert body["sources"][0]["id"] == shipping.id and body["sources"][0]["question"] == SHIPPING
    assert 0.15 <= body["sources"][0]["score"] <= 1 and len(body["sources"]) <= 3
    system = fake_upstream.log.requests[-1]["messages"][0]
    assert system["role"] == "system" and f"Knowledge:\n[1] Q: {SHIPPING}\nA: {shipping.answer}" in system["content"]
    stored = gateway_db.execute(
        "SELECT entry_id, rank, entry_version FROM message_sources WHERE message_id = ? ORDER BY rank",
        [body["message_id"]],
    ).fetchall()
    assert [row[0] for row in stored] == [s["id"] for s in body["sources"]] and stored[0][1:] == (1, shipping.version)
    conversation = client.get(f"/api/conversations/{body['conversation_id']}").get_json()
    answer = conversation["messages"][1]
    assert [s["id"] for s in answer["sources"]] == [s["id"] for s in body["sources"]]


def test_streamed_answers_carry_sources_in_start_and_done(client, shipping):
    r = client.post("/api/chat", json={"message": "배송비 얼마에요?", "stream": True})
    evs = events(r)
    start, done = evs[0][1], evs[-1][1]
    assert evs[-1][0] == "done" and start["sources"] == done["sources"] and done["sources"]
    assert all(set(s) == {"id", "question", "score"} for s in done["sources"])


def test_a_request_may_opt_out(client, fake_upstream, gateway_db):
    body = client.post("/api/chat", json={"message": SHIPPING, "knowledge": False}).get_json()
    assert body["sources"] == []
    assert fake_upstream.log.requests[-1]["messages"] == [{"role": "user", "content": SHIPPING}]
    assert gateway_db.execute("SELECT COUNT(*) FROM message_sources").fetchone()[0] == 0
    refused = client.post("/api/chat", json={"message": SHIPPING, "knowledge": "no"})
    assert refused.status_code == 422 and refused.get_json()["error"]["field"] == "knowledge"


def test_nothing_found_tells_the_model_so_and_returns_no_sources(client, fake_upstream):
    body = client.post("/api/chat", json={"message": "qwzx vbnm?"}).get_json()
    assert body["sources"] == []
    assert fake_upstream.log.requests[-1]["messages"][0]["content"].endswith("(no matching entry)")


def test_the_openai_route_returns_sources_in_the_tuneloop_field(client, fake_upstream, shipping):
    ask = {"model": "starter", "messages": [{"role": "user", "content": "postage cost?"}]}
    body = client.post("/v1/chat/completions", json=ask).get_json()
    assert body["tuneloop"]["sources"][0]["id"] == shipping.id
    streamed = client.post("/v1/chat/completions", json=ask | {"stream": True}).get_data(as_text=True)
    first = json.loads(streamed.split("\n\n")[0].removeprefix("data: "))
    assert first["tuneloop"]["sources"][0]["id"] == shipping.id
    closed = client.post("/v1/chat/completions", json=ask | {"tuneloop": {"knowledge": False}}).get_json()
    assert closed["tuneloop"]["sources"] == []
    assert fake_upstream.log.requests[-1]["messages"] == [{"role": "user", "content": "postage cost?"}]
    bad = client.post("/v1/chat/completions", json=ask | {"tuneloop": {"knowledge": False, "x": 1}})
    assert bad.status_code == 422 and bad.get_json()["error"]["param"] == "tuneloop.x"


def test_knowledge_off_in_settings_answers_closed_book(make_gateway, fake_upstream):
    c = make_gateway(**{"knowledge.enabled": False}).test_client()
    assert c.post("/api/chat", json={"message": SHIPPING}).get_json()["sources"] == []
    assert fake_upstream.log.requests[-1]["messages"] == [{"role": "user", "content": SHIPPING}]


def test_history_is_trimmed_by_tokens_newest_kept(make_gateway, fake_upstream):
    c = make_gateway(**{"chat.context_window": 400, "chat.max_tokens": 100}).test_client()
    # Estimated (no tokenizer here): 500 characters are about 170 tokens, so that turn alone would fill the 300
    # tokens a prompt may take (400 in the window, 100 kept for the answer).
    first = c.post("/api/chat", json={"message": "first " + "x" * 500, "knowledge": False}).get_json()
    conv = first["conversation_id"]
    for n in range(4):
        assert (
            c.post("/api/chat", json={"message": f"turn {n}", "conversation_id": conv, "knowledge": False}).status_code
            == 200
        )
    last = c.post("/api/chat", json={"message": "latest", "conversation_id": conv, "knowledge": False})
    sent = fake_upstream.log.requests[-1]["messages"]
    assert last.status_code == 200 and sent[-1] == {"role": "user", "content": "latest"}
    expected = [
        [{"role": "user", "content": f"turn {n}"}, {"role": "assistant", "content": f"echo: turn {n}"}]
        for n in range(4)
    ]
    assert sent == [m for pair in expected for m in pair] + [{"role": "user", "content": "latest"}]


def test_a_message_that_cannot_fit_the_window_is_a_413_naming_the_field(make_gateway, fake_upstream, gateway_db):
    c = make_gateway(**{"chat.context_window": 300, "chat.max_tokens": 100}).test_client()
    asked = len(fake_upstream.log.requests)
    r = c.post("/api/chat", json={"message": "x" * 1000})
    assert r.status_code == 413
    assert r.get_json()["error"]["code"] == "context_length_exceeded" and r.get_json()["error"]["field"] == "message"
    v1 = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x" * 1000}]})
    error = v1.get_json()["error"]
    assert v1.status_code == 413 and (error["code"], error["param"]) == ("context_length_exceeded", "messages")
    assert len(fake_upstream.log.requests) == asked  # the model was never asked
    assert gateway_db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0


def test_readyz_says_how_current_the_workers_knowledge_index_is(client, gateway_db):
    knowledge = client.get("/readyz").get_json()["checks"]["knowledge"]
    assert knowledge == {"ok": True, "enabled": True, "entries": 184, "seq": store.current_seq(gateway_db)}
