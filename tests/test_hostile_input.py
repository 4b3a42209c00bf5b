"""Input the API's JSON syntax allows but the gateway cannot hold: a clear 4xx, nothing stored (issue 14, item 1).

Each case was a 500 found by an outside test — some after the model had answered, so the turn was lost; with
``"stream": true`` the answer stopped mid-way with broken chunked encoding.
"""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest

from tests.plugins.common import error_field
from tests.plugins.gateway import start_gunicorn_gateway, stop_gateway

SURROGATE = '"\\ud800"'  # JSON text of a lone UTF-16 surrogate


def raw_post(client, path: str, text: str):
    return client.post(path, data=text.encode(), content_type="application/json")


def stored_rows(db) -> tuple[int, int, int]:
    return tuple(
        db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("conversations", "messages", "feedback")
    )


@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/api/chat", '{"message": "hi", "metadata": {"x": %s}}' % SURROGATE, "metadata.x"),
        ("/api/chat", '{"message": "hi", "stream": true, "metadata": {"x": %s}}' % SURROGATE, "metadata.x"),
        ("/api/chat", '{"message": "hi", "metadata": {%s: 1}}' % SURROGATE, "metadata.\\ud800"),
        ("/api/chat", '{"message": "hi", "conversation_id": %s}' % SURROGATE, "conversation_id"),
        ("/api/chat", '{"message": "hi", "user": %s}' % SURROGATE, "user"),
        ("/v1/chat/completions", '{"messages": [{"role": "user", "content": %s}]}' % SURROGATE, "messages.0.content"),
        (
            "/v1/chat/completions",
            '{"stream": true, "messages": [{"role": "user", "content": [{"type": "text", "text": %s}]}]}' % SURROGATE,
            "messages.0.content.0.text",
        ),
        ("/api/chat", '{"message": "hi", "metadata": {"n": %s}}' % ("9" * 5000), "metadata.n"),
        ("/api/chat", '{"message": "hi", "metadata": {"n": -%s}}' % ("9" * 19), "metadata.n"),
        ("/api/chat", '{"message": "hi", "metadata": {"n": 1e999}}', "metadata.n"),
        ("/api/chat", '{"message": "hi", "metadata": {"n": 1e20}}', "metadata.n"),
        ("/api/chat", '{"message": "hi", "metadata": {"n": NaN}}', "metadata.n"),
        ("/api/chat", '{"message": "hi", "metadata": {"n": [-Infinity]}}', "metadata.n.0"),
        ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}], "seed": 1%s}' % ("0" * 30), "seed"),
        ("/api/chat", '{"message": "hi", "metadata": %s%s}' % ("[" * 10_000, "]" * 10_000), None),
        ("/api/chat", '{"message": "hi", "metadata": {"a": %s%s}}' % ("[" * 40, "]" * 40), "metadata.a" + ".0" * 30),
    ],
)
def test_unholdable_json_is_a_400_naming_the_field_and_nothing_is_stored(client, gateway_db, path, body, field):
    r = raw_post(client, path, body)
    assert r.status_code == 400, r.get_data(as_text=True)[:300]
    error = r.get_json()["error"]
    assert error["code"] == "invalid_json"
    assert error_field(path, error) == field
    assert stored_rows(gateway_db) == (0, 0, 0)


def test_a_surrogate_in_any_feedback_field_is_refused_and_the_vote_not_stored(client, gateway_db):
    chat = client.post("/api/chat", json={"message": "hello"}).get_json()
    vote = {"message_id": chat["message_id"], "feedback_token": chat["feedback_token"], "rating": "down"}
    for name in ("comment", "correction", "user", "reason", "message_id"):
        body = json.dumps(vote | {name: "PLACEHOLDER"}).replace('"PLACEHOLDER"', SURROGATE)
        r = raw_post(client, "/api/feedback", body)
        assert r.status_code == 400 and r.get_json()["error"]["field"] == name
    assert stored_rows(gateway_db) == (1, 2, 0)
    assert client.post("/api/feedback", json=vote | {"comment": "한국어 ok 😀"}).status_code == 200


@pytest.mark.parametrize("token", ["é", "토큰", "\u0000", "x" * 5000])
def test_a_non_ascii_feedback_token_is_a_wrong_token_not_a_crash(client, gateway_db, token):
    chat = client.post("/api/chat", json={"message": "hello"}).get_json()
    r = client.post("/api/feedback", json={"message_id": chat["message_id"], "feedback_token": token, "rating": "up"})
    assert r.status_code == 403
    assert r.get_json()["error"] == {
        "code": "bad_feedback_token",
        "message": "feedback_token does not match this message",
        "field": "feedback_token",
    }
    assert stored_rows(gateway_db)[2] == 0


@pytest.mark.parametrize("text", ["42", "null", "[1, 2]", '{"a": 1}', "true"])
def test_a_text_part_whose_text_is_not_a_string_is_a_422_naming_it(client, gateway_db, text):
    body = '{"messages": [{"role": "user", "content": [{"type": "text", "text": %s}]}]}' % text
    r = raw_post(client, "/v1/chat/completions", body)
    assert r.status_code == 422
    assert r.get_json()["error"]["param"] == "messages.0.content.0.text"
    assert stored_rows(gateway_db) == (0, 0, 0)


def test_text_parts_are_joined_and_other_parts_are_refused_not_dropped(client, gateway_db, fake_upstream):
    parts = [{"type": "text", "text": "hello "}, {"type": "text", "text": "there"}]
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": parts}]})
    assert r.status_code == 200 and fake_upstream.log.requests[-1]["messages"][-1]["content"] == "hello there"
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": parts + [image]}]})
    assert r.status_code == 422
    assert r.get_json()["error"]["param"] == "messages.0.content.2.type"
    assert stored_rows(gateway_db) == (1, 2, 0)


def test_wrong_types_in_a_union_name_the_field_as_the_client_wrote_it(client):
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": 42}]})
    assert r.status_code == 422 and r.get_json()["error"]["param"] == "messages.0.content"
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "stop": 5})
    assert r.status_code == 422 and r.get_json()["error"]["param"] == "stop"
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user"}]})
    assert r.status_code == 422 and r.get_json()["error"]["param"] == "messages.0.content"


def test_valid_unicode_everywhere_still_goes_through(client, gateway_db):
    metadata = {"emoji": "😀", "ko": "배송", "nested": [[[{"deep": 2**63 - 1}]]], "float": -9.2e18, "small": 1.5e-300}
    r = client.post("/api/chat", json={"message": "안녕 😀", "metadata": metadata})
    assert r.status_code == 200
    stored = gateway_db.execute("SELECT metadata FROM conversations").fetchone()[0]
    assert json.loads(stored) == metadata


# --- against real gunicorn: what the test client cannot show (chunked bodies, the stream's framing) ---------


@pytest.fixture(scope="module")
def small_body_gateway(tmp_path_factory, module_fake_upstream):
    gw = start_gunicorn_gateway(
        tmp_path_factory.mktemp("hostile"), module_fake_upstream.base_url, {"gateway": {"max_body_bytes": 4096}}
    )
    yield gw
    stop_gateway(gw)


def _post(gw, body: bytes, *, chunked: bool) -> tuple[int, dict, bytes]:
    url = urlsplit(gw.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        if chunked:
            pieces = (body[i : i + 1000] for i in range(0, len(body), 1000))
            conn.request(
                "POST", "/api/chat", body=pieces, headers={"Content-Type": "application/json"}, encode_chunked=True
            )
        else:
            conn.request("POST", "/api/chat", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()  # read() fails on broken chunking
    finally:
        conn.close()


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_over_the_limit_is_413_also_when_chunked(small_body_gateway, chunked):
    for size, status in ((3000, 200), (5000, 413), (50_000, 413)):
        body = json.dumps({"message": "x" * (size - 15)}).encode()
        code, _, raw = _post(small_body_gateway, body, chunked=chunked)
        assert code == status, raw[:200]
        if status == 413:
            assert json.loads(raw)["error"]["code"] == "payload_too_large"


def test_a_streamed_chat_with_a_surrogate_is_refused_before_the_stream_starts(small_body_gateway):
    body = b'{"message": "hi", "stream": true, "metadata": {"x": "\\ud800"}}'
    code, headers, raw = _post(small_body_gateway, body, chunked=False)
    assert code == 400 and headers["Content-Type"] == "application/json"
    assert json.loads(raw)["error"]["field"] == "metadata.x"
    code, headers, raw = _post(small_body_gateway, b'{"message": "hi", "stream": true}', chunked=False)
    assert code == 200 and raw.decode().rstrip().split("\n\n")[-1].startswith("event: done")
