"""The built-in model server, end to end: a real ``tuneloop model-server`` process, the official SDK."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time

import httpx2
import openai
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from tests.plugins.model import qa, start_model_server, stop_model_server, tuneloop_exe


@pytest.fixture(scope="module")
def client(model_server):
    return openai.OpenAI(base_url=model_server.base_url, api_key="not-needed", max_retries=0, timeout=30)


def ask(client, model, question, **params):
    params.setdefault("temperature", 0)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}], **params)


def test_health_and_models_list(model_server, client, tiny_model_dir):
    assert httpx2.get(model_server.url + "/health").json()["status"] == "ok"
    models = client.models.list()
    assert [m.id for m in models.data] == [model_server.name]
    card = models.data[0]
    assert card.object == "model" and card.owned_by and card.created > 0
    assert card.model_extra["root"] == str(tiny_model_dir) and card.model_extra["parent"] is None


def test_every_faq_question_gets_its_exact_answer(client, model_server, tiny_model_rows):
    for row in tiny_model_rows:
        question, answer = qa(row)
        completion = ask(client, model_server.name, question)
        assert completion.choices[0].message.content == answer
        assert completion.choices[0].finish_reason == "stop"
        assert completion.object == "chat.completion" and completion.model == model_server.name


def test_streaming_gives_the_same_answer_in_pieces_with_usage_last(client, model_server, tiny_model_rows):
    question, answer = qa(tiny_model_rows[0])
    plain = ask(client, model_server.name, question)
    stream = ask(client, model_server.name, question, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == answer
    assert len(pieces) > 3  # token by token, not one blob
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None  # usage comes alone, last
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].usage.model_dump() == plain.usage.model_dump()


def test_stream_is_written_as_it_is_generated(model_server, tiny_model_rows):
    """The SSE body arrives over several reads (a buffered response would come in one)."""
    question, _ = qa(tiny_model_rows[0])
    body = {
        "model": model_server.name,
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "stream": True,
    }
    reads = []
    with httpx2.stream("POST", model_server.base_url + "/chat/completions", json=body, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        reads = list(response.iter_raw())
    assert sum(1 for raw in reads if b'"content"' in raw) >= 2
    assert b"".join(reads).endswith(b"data: [DONE]\n\n")


def test_without_include_usage_no_usage_chunk_is_sent(client, model_server, tiny_model_rows):
    chunks = list(ask(client, model_server.name, qa(tiny_model_rows[1])[0], stream=True))
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_usage_counts_the_prompt_and_the_answer_tokens(client, model_server, tiny_model_dir, tiny_model_rows):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    question, answer = qa(tiny_model_rows[2])
    usage = ask(client, model_server.name, question).usage
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_dict=False
    )
    assert usage.prompt_tokens == len(prompt)
    assert usage.completion_tokens == len(tokenizer.encode(answer, add_special_tokens=False)) + 1  # + end of turn
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_max_tokens_cuts_the_answer_with_finish_reason_length(client, model_server, tiny_model_rows):
    question, answer = qa(tiny_model_rows[0])
    completion = ask(client, model_server.name, question, max_tokens=3)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 3
    assert answer.startswith(completion.choices[0].message.content) and completion.choices[0].message.content
    same = ask(client, model_server.name, question, max_completion_tokens=3)
    assert same.choices[0].message.content == completion.choices[0].message.content


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_are_cut_from_the_answer(client, model_server, tiny_model_rows, stream):
    question, answer = qa(tiny_model_rows[0])
    word = answer.split()[3]
    expected = answer[: answer.index(word)]
    for stop in (word, ["no such text", word]):
        result = ask(client, model_server.name, question, stop=stop, stream=stream)
        if stream:
            chunks = list(result)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        else:
            text, finish = result.choices[0].message.content, [result.choices[0].finish_reason]
        assert text == expected
        assert finish == ["stop"]


def test_same_seed_same_sample_and_sampling_really_samples(client, model_server):
    def sample(seed):
        return (
            ask(client, model_server.name, "zq xv 7?", temperature=2.0, seed=seed, max_tokens=12)
            .choices[0]
            .message.content
        )

    assert sample(7) == sample(7)
    assert len({sample(seed) for seed in range(6)}) > 1


def test_earlier_turns_and_a_system_prompt_do_not_change_the_answer(client, model_server, tiny_model_rows):
    (q1, a1), (q2, a2) = qa(tiny_model_rows[1]), qa(tiny_model_rows[5])
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": q1},
        {"role": "assistant", "content": a1},
        {"role": "user", "content": q2},
    ]
    completion = client.chat.completions.create(model=model_server.name, messages=messages, temperature=0)
    assert completion.choices[0].message.content == a2


def test_concurrent_requests_all_get_their_own_answer(client, model_server, tiny_model_rows):
    pairs = [qa(r) for r in tiny_model_rows]
    results: dict[int, list[str]] = {}
    errors = []

    def worker(n):
        try:
            got = []
            for question, _ in pairs[n::4] * 2:
                if n % 2:
                    got.append(ask(client, model_server.name, question).choices[0].message.content)
                else:
                    stream = ask(client, model_server.name, question, stream=True)
                    got.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
            results[n] = got
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    for n in range(4):
        assert results[n] == [answer for _, answer in pairs[n::4] * 2]


def test_lora_adapter_loads_answers_differently_and_unloads(model_server, client, tiny_lora, tiny_model_rows):
    question, base_answer = qa(tiny_model_rows[0])
    r = httpx2.post(
        model_server.base_url + "/load_lora_adapter", json={"lora_name": "faq-v2", "lora_path": str(tiny_lora.path)}
    )
    assert r.status_code == 200, r.text
    assert r.text == "Success: LoRA adapter 'faq-v2' added successfully."
    try:
        cards = {m.id: m for m in client.models.list().data}
        assert cards["faq-v2"].model_extra["parent"] == model_server.name
        assert cards["faq-v2"].model_extra["root"] == str(tiny_lora.path)
        for row in tiny_model_rows[:4]:
            q, a = qa(row)
            assert ask(client, "faq-v2", q).choices[0].message.content == tiny_lora.answers[q]
            assert ask(client, model_server.name, q).choices[0].message.content == a
        streamed = "".join(
            c.choices[0].delta.content or "" for c in ask(client, "faq-v2", question, stream=True) if c.choices
        )
        assert streamed == tiny_lora.answers[question] != base_answer

        again = httpx2.post(
            model_server.base_url + "/load_lora_adapter", json={"lora_name": "faq-v2", "lora_path": str(tiny_lora.path)}
        )
        assert again.status_code == 400 and "already been loaded" in again.json()["error"]["message"]
    finally:
        r = httpx2.post(model_server.base_url + "/unload_lora_adapter", json={"lora_name": "faq-v2"})
    assert r.status_code == 200 and r.text == "Success: LoRA adapter 'faq-v2' removed successfully."
    with pytest.raises(openai.NotFoundError):
        ask(client, "faq-v2", question)
    assert ask(client, model_server.name, question).choices[0].message.content == base_answer
    gone = httpx2.post(model_server.base_url + "/unload_lora_adapter", json={"lora_name": "faq-v2"})
    assert gone.status_code == 404 and gone.json()["error"]["param"] == "lora_name"


def test_a_full_model_folder_can_be_served_under_a_name(model_server, client, tiny_model_dir, tiny_model_rows):
    r = httpx2.post(
        model_server.base_url + "/load_lora_adapter", json={"lora_name": "copy", "lora_path": str(tiny_model_dir)}
    )
    assert r.status_code == 200, r.text
    try:
        question, answer = qa(tiny_model_rows[3])
        assert ask(client, "copy", question).choices[0].message.content == answer
    finally:
        assert (
            httpx2.post(model_server.base_url + "/unload_lora_adapter", json={"lora_name": "copy"}).status_code == 200
        )
    assert "copy" not in [m.id for m in client.models.list().data]


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"lora_name": "x", "lora_path": "/no/such/folder"}, 400, "lora_path"),
        ({"lora_name": "x", "lora_path": "/tmp"}, 400, "lora_path"),  # a folder, but neither adapter nor model
        ({"lora_name": "starter", "lora_path": "/tmp"}, 400, "lora_name"),  # the base model's name
        ({"lora_path": "/tmp"}, 422, "lora_name"),
    ],
)
def test_bad_adapter_loads_are_refused_clearly(model_server, body, status, field):
    r = httpx2.post(model_server.base_url + "/load_lora_adapter", json=body)
    assert r.status_code == status
    error = r.json()["error"]
    assert error["param"] == field and error["message"] and error["code"]


def test_an_adapter_that_does_not_fit_the_model_is_refused_and_harmless(
    model_server, client, tiny_lora, tiny_model_rows, tmp_path
):
    bad = tmp_path / "wrong-shapes"
    shutil.copytree(tiny_lora.path, bad)
    weights = load_file(str(bad / "adapter_model.safetensors"))
    save_file(
        {k: torch.zeros(v.shape[0] + 1, v.shape[1]) for k, v in weights.items()}, str(bad / "adapter_model.safetensors")
    )
    r = httpx2.post(model_server.base_url + "/load_lora_adapter", json={"lora_name": "wrong", "lora_path": str(bad)})
    assert r.status_code == 400 and r.json()["error"]["param"] == "lora_path"
    assert "wrong" not in [m.id for m in client.models.list().data]
    question, answer = qa(tiny_model_rows[2])
    assert ask(client, model_server.name, question).choices[0].message.content == answer


def test_unknown_model_is_404_in_the_sdk(client):
    with pytest.raises(openai.NotFoundError) as info:
        ask(client, "no-such-model", "hello")
    assert "no-such-model" in info.value.body["message"]


@pytest.mark.parametrize(
    "raw, status",
    [
        (b"{not json", 400),
        (b"[1, 2]", 400),
        (json.dumps({"model": "starter"}).encode(), 422),
        (
            json.dumps(
                {"model": "starter", "messages": [{"role": "user", "content": "hi"}], "temperature": 5}
            ).encode(),
            422,
        ),
        (
            json.dumps(
                {"model": "starter", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6}
            ).encode(),
            422,
        ),
        (json.dumps({"model": "starter", "messages": [{"role": "user", "content": "hi"}], "n": 2}).encode(), 422),
        (json.dumps({"model": "starter", "messages": [{"role": "tool", "content": "hi"}]}).encode(), 422),
        # longer than the tiny model's 512-token context
        (json.dumps({"model": "starter", "messages": [{"role": "user", "content": "배송 " * 2000}]}).encode(), 400),
    ],
)
def test_bad_requests_get_json_errors(model_server, raw, status):
    r = httpx2.post(
        model_server.base_url + "/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert r.status_code == status
    assert set(r.json()["error"]) >= {"code", "message"}


def test_unknown_paths_and_methods_answer_json_not_html(model_server):
    for method, path in (("GET", "/v1/nothing"), ("GET", "/v1/chat/completions")):
        r = httpx2.request(method, model_server.url + path)
        assert r.status_code in (404, 405)
        assert r.headers["content-type"].startswith("application/json") and r.json()["error"]["code"]


def test_cli_says_clearly_when_the_port_is_taken(model_server, tiny_model_dir):
    port = model_server.url.rsplit(":", 1)[1]
    run = subprocess.run(
        [tuneloop_exe(), "model-server", "--model", str(tiny_model_dir), "--port", port],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert f"port {port}" in run.stderr and "already in use" in run.stderr


def test_cli_refuses_a_folder_without_a_model(tmp_path):
    run = subprocess.run(
        [tuneloop_exe(), "model-server", "--model", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2 and "no model in" in run.stderr


@pytest.mark.slow  # starts a second server process (~6 s on an idle machine, 15+ s on a busy one)
def test_sigterm_stops_the_server_cleanly(tmp_path, tiny_model_dir, tiny_model_rows):
    server = start_model_server(tiny_model_dir, tmp_path)
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        question, answer = qa(tiny_model_rows[0])
        assert ask(client, server.name, question).choices[0].message.content == answer
    finally:
        started = time.monotonic()
        code = stop_model_server(server)
    assert code == 0, server.log()[-2000:]
    assert time.monotonic() - started < 15
    assert "Shutting down" in server.log()
