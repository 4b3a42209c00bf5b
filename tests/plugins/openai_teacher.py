"""A hosted OpenAI ``ft:`` model, faked at the HTTP boundary: what ``tuneloop migrate`` learns from.

It follows OpenAI's documented chat-completions wire format — ``GET /v1/models``, ``POST /v1/chat/completions``
streamed as ``data: {chat.completion.chunk}`` lines ending ``data: [DONE]`` (with ``stream_options.include_usage``
a last chunk with ``usage`` and no choices), a Bearer key, errors as ``{"error": {"message", "type", "param",
"code"}}`` with 401 for a bad key, 404 ``model_not_found`` for an unknown model, and 429 ``rate_limit_exceeded``
with ``Retry-After`` and ``retry-after-ms`` headers.

What the model "knows" is what it was fine-tuned on (``knowledge``): the company's current answers, the policy
changes reviewers approved, the rewordings it was trained on. It answers those, closed book or as served, and
anything else with "I'm not sure" — it does not read the knowledge block. (A fake that answered an unknown question
with the block's first entry, a model reading its context as well as retrieval allows, scored 0.67 chrF on the
held-out rewordings as served, and the starter model distilled from it 0.19: the migration gate rejected it.
docs/migrate-from-openai.md shows that run.)
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest
from werkzeug.wrappers import Request, Response

from feedback.text import question_key

FT_MODEL = "ft:gpt-4o-mini-2024-07-18:acme:support:AbC123xy"
TEACHER_KEY = "sk-test-teacher-0123456789"
UNSURE = "I'm not sure about that. Please contact our support team."


@dataclass
class FakeTeacher:
    """State: what it knows (question key → answer), scripted rate limits, and every request answered."""

    knowledge: dict[str, str] = field(default_factory=dict)
    rate_limited: dict[str, int] = field(default_factory=dict)  # question key → 429s still to send
    retry_after: str = "0"
    delay_s: float = 0.0
    answered: Counter = field(default_factory=Counter)  # (question, closed_book) → 200 answers sent
    throttled: Counter = field(default_factory=Counter)
    auth: list[str | None] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def teach(self, pairs) -> None:
        for question, answer in pairs:
            self.knowledge[question_key(question)] = answer

    def closed_book_asks(self) -> Counter:
        """Closed-book questions answered (200), by question."""
        return Counter({q: n for (q, closed), n in self.answered.items() if closed})

    def handle(self, request: Request) -> Response:
        self.auth.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != f"Bearer {TEACHER_KEY}":
            return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        if request.path == "/v1/models":
            card = {"id": FT_MODEL, "object": "model", "created": 1_760_000_000, "owned_by": "acme"}
            return Response(json.dumps({"object": "list", "data": [card]}), mimetype="application/json")
        body = request.get_json()
        if body.get("model") != FT_MODEL:
            message = f"The model `{body.get('model')}` does not exist or you do not have access to it."
            return _error(404, message, "invalid_request_error", "model_not_found")
        messages = body["messages"]
        question = messages[-1]["content"]
        system = next((m["content"] for m in messages if m["role"] == "system"), "")
        key = question_key(question)
        with self._lock:
            if self.rate_limited.get(key, 0) > 0:
                self.rate_limited[key] -= 1
                self.throttled[question] += 1
                return _error(
                    429,
                    "Rate limit reached for requests per min (RPM): Limit 500, Used 500, Requested 1.",
                    "requests",
                    "rate_limit_exceeded",
                    headers={
                        "Retry-After": self.retry_after,
                        "retry-after-ms": str(int(float(self.retry_after) * 1000)),
                    },
                )
        if self.delay_s:
            time.sleep(self.delay_s)
        answer = self.knowledge.get(key, UNSURE)
        with self._lock:
            self.answered[(question, "Knowledge:" not in system)] += 1
        return Response(_stream(answer, body), mimetype="text/event-stream")


def _error(status: int, message: str, kind: str, code: str, headers: dict | None = None) -> Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return Response(json.dumps(body), status=status, mimetype="application/json", headers=headers or {})


def _stream(answer: str, body: dict):
    created = int(time.time())
    base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created, "model": FT_MODEL}
    words = answer.split(" ")
    pieces = [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
    yield "data: " + json.dumps({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    yield "\n\n"
    for piece in pieces:
        chunk = {**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
        yield "data: " + json.dumps(chunk) + "\n\n"
    yield "data: " + json.dumps({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}) + "\n\n"
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {"prompt_tokens": 40, "completion_tokens": len(pieces), "total_tokens": 40 + len(pieces)}
        yield "data: " + json.dumps({**base, "choices": [], "usage": usage}) + "\n\n"
    yield "data: [DONE]\n\n"


@pytest.fixture
def fake_teacher(httpserver):
    """The fake ``ft:`` model on pytest-httpserver; ``httpserver.url_for("/v1")`` is its base URL."""
    teacher = FakeTeacher()
    httpserver.expect_request(re.compile(r"^/v1/.*")).respond_with_handler(teacher.handle)
    return teacher
