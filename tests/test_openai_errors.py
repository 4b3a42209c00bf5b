"""OpenAI's error shape on every /v1 path, ours on /api, and model names the gateway does not serve (issue 20).

The OpenAI SDKs pick the exception class from the status and show ``error.message``; clients written for
OpenAI read ``param`` and ``code``. A request for a model the gateway does not serve is OpenAI's 404
``model_not_found`` unless ``model.aliases`` lists the name.
"""

from __future__ import annotations

import openai
import pytest

from tests.plugins.gateway import start_gunicorn_gateway, stop_gateway


@pytest.mark.parametrize(
    "method, path, status",
    [
        ("get", "/v1/nothing-here", 404),
        ("post", "/v1/embeddings", 404),
        ("get", "/v1", 404),
        ("get", "/v1/chat/completions", 405),
        ("delete", "/v1/models", 405),
    ],
)
def test_every_v1_error_is_openai_shaped(client, method, path, status):
    r = getattr(client, method)(path)
    assert r.status_code == status
    error = r.get_json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] is None
    assert error["code"] == ("not_found" if status == 404 else "method_not_allowed")
    if status == 404:
        # Says what is here, so a client with the wrong base URL or an API we lack learns which.
        assert error["message"].startswith(f"Invalid URL ({method.upper()} {path})")
        assert "POST /v1/responses" in error["message"] and "POST /v1/chat/completions" in error["message"]


def test_api_keeps_its_own_shape(client):
    r = client.get("/api/nothing-here")
    assert r.status_code == 404
    assert set(r.get_json()["error"]) == {"code", "message"} and r.get_json()["error"]["code"] == "not_found"
    r = client.post("/api/chat", json={"message": ""})
    assert r.status_code == 422 and r.get_json()["error"]["field"] == "message"


def test_a_model_not_served_is_a_404_model_not_found_and_nothing_is_stored(client, gateway_db):
    ask = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    r = client.post("/v1/chat/completions", json=ask)
    assert r.status_code == 404
    error = r.get_json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model" and error["type"] == "invalid_request_error"
    assert "`gpt-4o`" in error["message"] and "starter" in error["message"] and "model.aliases" in error["message"]
    assert gateway_db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0
    # No model named: the live one, as before.
    assert client.post("/v1/chat/completions", json={"messages": ask["messages"]}).status_code == 200


def test_an_alias_is_answered_by_the_live_model_and_listed(make_gateway):
    c = make_gateway(**{"model.aliases": ["gpt-4o-mini", "starter"]}).test_client()
    r = c.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.get_json()["model"] == "starter"
    assert [card["id"] for card in c.get("/v1/models").get_json()["data"]] == ["starter", "gpt-4o-mini"]
    assert (
        c.post(
            "/v1/chat/completions", json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        ).status_code
        == 404
    )


@pytest.fixture(scope="module")
def sdk(tmp_path_factory, module_fake_upstream):
    gw = start_gunicorn_gateway(tmp_path_factory.mktemp("errors"), module_fake_upstream.base_url)
    yield openai.OpenAI(base_url=gw.url + "/v1", api_key="unused-on-loopback", max_retries=0)
    stop_gateway(gw)


def test_the_sdk_raises_the_status_class_with_our_message(sdk):
    with pytest.raises(openai.NotFoundError) as info:
        sdk.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "model_not_found" and info.value.param == "model"
    assert "does not exist" in str(info.value) and "model.aliases" in str(info.value)
    with pytest.raises(openai.UnprocessableEntityError) as info:
        sdk.chat.completions.create(model="starter", messages=[{"role": "assistant", "content": "hi"}])
    assert info.value.message.endswith("the last message must come from the user") and info.value.param == "messages"
    with pytest.raises(openai.NotFoundError) as info:
        sdk.embeddings.create(model="starter", input="hi")
    assert "Invalid URL (POST /v1/embeddings)" in str(info.value)
    completion = sdk.chat.completions.create(model="starter", messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.refusal is None and completion.choices[0].message.content == "echo: hi"
