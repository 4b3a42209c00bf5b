"""The gateway as deployed: gunicorn + gevent workers, the official openai SDK, real HTTP."""

from __future__ import annotations

import json
import threading
import time

import httpx2
import openai

from feedback.db import open_db


def sdk(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused-on-loopback", max_retries=0)


def test_openai_sdk_non_streaming_logs_a_rateable_turn(gunicorn_gateway):
    client = sdk(gunicorn_gateway)
    completion = client.chat.completions.create(
        model="starter",
        messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": "환불 규정이 궁금해요"}],
    )
    assert completion.choices[0].message.content == "echo: 환불 규정이 궁금해요"
    assert completion.model == "starter"
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    ids = completion.model_extra["tuneloop"]
    assert ids["message_id"] == completion.id
    rated = httpx2.post(
        gunicorn_gateway.url + "/api/feedback",
        json={
            "message_id": completion.id,
            "feedback_token": ids["feedback_token"],
            "rating": "down",
            "reason": "wrong",
        },
    )
    assert rated.status_code == 200
    db = open_db(gunicorn_gateway.data_dir / "tuneloop.db")
    row = db.execute(
        "SELECT c.source, m.content, f.rating FROM messages m JOIN conversations c ON c.id = m.conversation_id "
        "JOIN feedback f ON f.message_id = m.id WHERE m.id = ?",
        [completion.id],
    ).fetchone()
    assert row == ("openai", "echo: 환불 규정이 궁금해요", -1)


def test_openai_sdk_streaming(gunicorn_gateway):
    client = sdk(gunicorn_gateway)
    stream = client.chat.completions.create(
        model="starter",
        messages=[{"role": "user", "content": "stream me"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: stream me"
    assert chunks[-1].usage.completion_tokens == 3
    assert chunks[0].model_extra["tuneloop"]["message_id"] == chunks[0].id


def test_openai_sdk_sees_errors_in_its_own_exceptions(gunicorn_gateway):
    client = sdk(gunicorn_gateway)
    try:
        client.chat.completions.create(model="starter", messages=[{"role": "user", "content": "!status 503"}])
    except openai.APIStatusError as exc:
        assert exc.status_code == 503
        assert exc.body["code"] == "upstream_unavailable"  # the SDK unwraps {"error": {...}}
    else:
        raise AssertionError("expected an error")
    models = client.models.list()
    assert [m.id for m in models.data] == ["starter"]


def test_streams_arrive_incrementally_and_concurrently(gunicorn_gateway):
    """20 streams at once on 2 gevent workers: all open together, each token forwarded as produced."""
    spans: list[tuple[float, list[float], float]] = []
    errors: list[str] = []

    def one():
        try:
            started = time.perf_counter()
            deltas = []
            with httpx2.stream(
                "POST",
                gunicorn_gateway.url + "/api/chat",
                json={"message": "!tokens 5 0.2", "stream": True},
                timeout=30,
            ) as r:
                for line in r.iter_lines():
                    if line.startswith("event: delta"):
                        deltas.append(time.perf_counter())
            spans.append((started, deltas, time.perf_counter()))
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))

    threads = [threading.Thread(target=one) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(spans) == 20
    for _, deltas, _ in spans:
        # The upstream spaces its 5 tokens 0.2 s apart; a buffering gateway would
        # deliver them together at the end.
        assert len(deltas) == 5
        assert deltas[-1] - deltas[0] > 0.4
    # Every stream was open at the same moment: none waited for another to finish.
    assert max(s for s, _, _ in spans) < min(e for _, _, e in spans)


def _metric(text: str, prefix: str, *must_contain: str) -> float:
    lines = [line for line in text.splitlines() if line.startswith(prefix) and all(m in line for m in must_contain)]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def test_metrics_add_up_across_workers(gunicorn_gateway):
    def scrape():
        text = httpx2.get(gunicorn_gateway.url + "/metrics").text
        return (
            _metric(text, "tuneloop_requests_total{", 'route="/api/chat"', 'status="200"'),
            _metric(text, 'tuneloop_ratings_total{rating="up"}'),
            text,
        )

    chats_before, ups_before, _ = scrape()
    for _ in range(6):  # spread over both workers by the kernel's accept balancing
        chat = httpx2.post(gunicorn_gateway.url + "/api/chat", json={"message": "count me"}).json()
        httpx2.post(
            gunicorn_gateway.url + "/api/feedback",
            json={"message_id": chat["message_id"], "feedback_token": chat["feedback_token"], "rating": "up"},
        )
    chats, ups, text = scrape()
    assert chats - chats_before == 6
    assert ups - ups_before == 6
    assert "tuneloop_tokens_total" in text and "tuneloop_first_token_seconds_bucket" in text


def test_workers_are_warmed_before_traffic(gunicorn_gateway):
    time.sleep(0.5)
    assert gunicorn_gateway.log().count("warmed (readyz 200)") == 2
    openapi = httpx2.get(gunicorn_gateway.url + "/openapi.json").json()
    assert json.dumps(openapi).count("/api/chat") >= 1
