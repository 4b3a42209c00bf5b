"""The clients teams bring, unmodified, against a real gunicorn gateway (issue 20).

Each runs on two backends: the built-in model server with the tiny model (the real upstream), and the scripted
chat-completions-only upstream (tests/plugins/upstream.py) that stands for a vLLM deployment or a hosted
``ft:`` model. The gateway translates ``/v1/responses`` to chat completions for both. Every answer a client
gets is rated through ``/api/feedback`` with the ``tuneloop`` ids it carried, and the rating lands on the turn
the gateway stored with its model version.
"""

from __future__ import annotations

import httpx2
import openai
import pytest
from langchain_openai import ChatOpenAI

from feedback.db import open_db
from tests.plugins.gateway import start_gunicorn_gateway, stop_gateway
from tests.plugins.model import qa, tiny_rows
from tests.plugins.node import run_node_script

# A question the tiny model memorised (closed book, no system turn: it was trained on nothing else, and anything
# else makes it ramble to its token limit, an "incomplete" answer); the scripted upstream echoes any question.
QUESTION = qa(tiny_rows()[0])[0]


@pytest.fixture(scope="module", params=["builtin-model-server", "chat-completions-only-upstream"])
def gateway(request, tmp_path_factory, module_fake_upstream):
    if request.param == "builtin-model-server":
        model_server = request.getfixturevalue("model_server")
        tiny_model_dir = request.getfixturevalue("tiny_model_dir")
        base_url = model_server.base_url
        extra = {
            "model_server": {"model_dir": str(tiny_model_dir)},  # where the gateway finds the tokenizer
            "model": {"first_token_timeout_s": 30.0, "timeout_s": 60.0},
            "chat": {"system_prompt": "", "temperature": 0},
            "knowledge": {"enabled": False},
        }
    else:
        base_url, extra = module_fake_upstream.base_url, {}
    gw = start_gunicorn_gateway(tmp_path_factory.mktemp(request.param), base_url, extra=extra, timeout_s=60)
    gw.backend = request.param
    yield gw
    stop_gateway(gw)


@pytest.fixture(scope="module")
def db(gateway):
    database = open_db(gateway.data_dir / "tuneloop.db")
    yield database
    database.close()


@pytest.fixture
def sdk(gateway):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused-on-loopback", max_retries=0)


def assert_rateable(gateway, db, ids: dict, text: str, rating: str = "down") -> None:
    """The answer ``text`` is the stored turn ``ids`` names, with its model version, and it takes a rating."""
    stored = db.execute(
        """SELECT m.content, v.name FROM messages m JOIN model_versions v ON v.id = m.model_version_id
           WHERE m.id = ? AND m.conversation_id = ?""",
        [ids["message_id"], ids["conversation_id"]],
    ).fetchone()
    assert stored == (text, "starter"), stored
    if gateway.backend == "chat-completions-only-upstream":
        assert text.startswith("echo: ")
    assert text.strip(), "the model answered nothing"
    vote = {"message_id": ids["message_id"], "feedback_token": ids["feedback_token"], "rating": rating}
    r = httpx2.post(gateway.url + "/api/feedback", json=vote, timeout=30)
    assert r.status_code == 200, r.text
    rated = db.execute("SELECT rating FROM feedback WHERE message_id = ?", [ids["message_id"]]).fetchone()
    assert rated == ({"up": 1, "down": -1}[rating],)


def test_openai_sdk_responses_create(gateway, db, sdk):
    response = sdk.responses.create(model="starter", input=QUESTION, instructions="Answer briefly.")
    assert response.status == "completed" and response.output_text
    ids = response.model_extra["tuneloop"]
    assert response.output[0].id == ids["message_id"]
    assert_rateable(gateway, db, ids, response.output_text)

    follow_up = sdk.responses.create(model="starter", input="And the cost?", previous_response_id=response.id)
    assert follow_up.previous_response_id == response.id
    assert follow_up.model_extra["tuneloop"]["conversation_id"] == ids["conversation_id"]
    assert_rateable(gateway, db, follow_up.model_extra["tuneloop"], follow_up.output_text, "up")

    fetched = sdk.responses.retrieve(response.id)
    assert fetched.output_text == response.output_text and fetched.model_extra["tuneloop"] == ids
    sdk.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError) as info:
        sdk.responses.retrieve(response.id)
    assert info.value.param == "response_id"


def test_openai_sdk_responses_stream(gateway, db, sdk):
    with sdk.responses.stream(model="starter", input=QUESTION) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    assert_rateable(gateway, db, final.model_extra["tuneloop"], final.output_text)

    created = None
    text = ""
    for event in sdk.responses.create(model="starter", input=QUESTION, stream=True):
        if event.type == "response.created":
            created = event.response.model_extra["tuneloop"]
        elif event.type == "response.output_text.delta":
            text += event.delta
        elif event.type == "response.completed":
            assert event.response.model_extra["tuneloop"] == created
    assert_rateable(gateway, db, created, text)


def test_openai_sdk_errors_are_its_exceptions(sdk):
    with pytest.raises(openai.BadRequestError) as info:
        sdk.responses.create(model="starter", input=QUESTION, tools=[{"type": "web_search"}])
    assert info.value.code == "unsupported_parameter" and info.value.param == "tools"
    with pytest.raises(openai.NotFoundError) as info:
        sdk.responses.create(model="gpt-4o", input=QUESTION)
    assert info.value.code == "model_not_found"


# Only the real model: the scripted upstream always finishes with "stop", the tiny model is cut for real.
@pytest.mark.parametrize("gateway", ["builtin-model-server"], indirect=True)
def test_an_answer_cut_at_max_output_tokens_is_incomplete(gateway, db, sdk):
    response = sdk.responses.create(model="starter", input=QUESTION, max_output_tokens=2)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert_rateable(gateway, db, response.model_extra["tuneloop"], response.output_text)


def stored_ids(gateway, response_id: str) -> dict:
    """The ``tuneloop`` ids of a stored response, for a client that keeps only the response's id (LangChain keeps
    a fixed list of response fields in ``response_metadata``; ``id`` is one of them)."""
    r = httpx2.get(f"{gateway.url}/v1/responses/{response_id}", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["tuneloop"]


def test_langchain_chatopenai_with_the_responses_api(gateway, db):
    chat = ChatOpenAI(
        model="starter", base_url=gateway.url + "/v1", api_key="unused-on-loopback", use_responses_api=True
    )
    answer = chat.invoke(QUESTION)
    assert answer.response_metadata["id"].startswith("resp_") and answer.response_metadata["status"] == "completed"
    assert_rateable(gateway, db, stored_ids(gateway, answer.response_metadata["id"]), answer.text)
    chunks = list(chat.stream(QUESTION))
    text = "".join(chunk.text for chunk in chunks)
    response_id = next(chunk.response_metadata["id"] for chunk in chunks if "id" in chunk.response_metadata)
    assert_rateable(gateway, db, stored_ids(gateway, response_id), text)
    # A conversation continued through LangChain's own previous_response_id support.
    follow_up = chat.invoke("And the cost?", previous_response_id=answer.response_metadata["id"])
    ids = stored_ids(gateway, follow_up.response_metadata["id"])
    assert ids["conversation_id"] == stored_ids(gateway, answer.response_metadata["id"])["conversation_id"]
    assert_rateable(gateway, db, ids, follow_up.text, "up")


def test_vercel_ai_sdk_default_provider(gateway, db):
    lines = run_node_script("vercel_ai.mjs", gateway.url + "/v1", "starter", QUESTION)
    calls = {line["call"]: line for line in lines}
    generated, streamed = calls["generateText"], calls["streamText"]
    assert generated["responseId"].startswith("resp_")
    assert_rateable(gateway, db, generated["tuneloop"], generated["text"])
    assert_rateable(gateway, db, streamed["tuneloop"], streamed["text"])
    assert calls["unknownModel"]["status"] == 404 and "does not exist" in calls["unknownModel"]["error"]
