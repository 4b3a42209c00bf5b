"""A scriptable OpenAI-protocol upstream, for what the real model server cannot be made to do.

The built-in model server (tests/plugins/model.py) is the real upstream in
end-to-end tests. This one fakes only the HTTP boundary — the documented
chat-completions wire format, SSE chunks included — so tests can make an
upstream that is down, slow, failing with 5xx, or dying mid-stream. The last user
message scripts it:

    "!slow 2.5"     wait 2.5 s before the first byte
    "!status 503"   answer with that HTTP status (error JSON)
    "!flaky 2"      answer 503 on the first 2 attempts of this exact message, then normally
    "!midstream"    send two chunks, then drop the connection
    "!tokens 50 0.01"  stream 50 tokens, 10 ms apart
    anything else   "echo: <message>" in three chunks
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from tests.plugins.common import serve_in_thread


@dataclass
class UpstreamLog:
    requests: list[dict] = field(default_factory=list)
    attempts: Counter = field(default_factory=Counter)


def fake_openai_app(log: UpstreamLog, model_name: str = "fake-model"):
    """A WSGI app speaking just enough of the OpenAI chat-completions protocol."""

    def app(environ, start_response):
        req = Request(environ)
        if req.path.endswith("/models"):
            body = {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "test"}]}
            return Response(json.dumps(body), mimetype="application/json")(environ, start_response)
        payload = json.loads(req.get_data() or b"{}")
        log.requests.append(payload)
        text = payload["messages"][-1]["content"]
        log.attempts[text] += 1
        words = text.split()
        command = words[0] if words else ""
        if command == "!slow":
            time.sleep(float(words[1]))
        if command == "!status":
            status = int(words[1])
            return _error(status)(environ, start_response)
        if command == "!flaky" and log.attempts[text] <= int(words[1]):
            return _error(503)(environ, start_response)
        if command == "!tokens":
            pieces, delay = [f"t{i} " for i in range(int(words[1]))], float(words[2])
        else:
            answer = f"echo: {text}"
            third = max(1, len(answer) // 3)
            pieces, delay = [answer[:third], answer[third : 2 * third], answer[2 * third :]], 0.0
        model = payload.get("model", model_name)
        if not payload.get("stream"):
            body = _completion(model, "".join(pieces), len(pieces))
            return Response(json.dumps(body), mimetype="application/json")(environ, start_response)
        die_after = 2 if command == "!midstream" else None
        stream = _sse(model, pieces, delay, die_after, payload.get("stream_options", {}).get("include_usage"))
        return Response(stream, mimetype="text/event-stream")(environ, start_response)

    return app


def _error(status: int) -> Response:
    body = {"error": {"message": f"scripted failure {status}", "type": "server_error", "code": status}}
    return Response(json.dumps(body), status=status, mimetype="application/json")


def _completion(model: str, text: str, tokens: int) -> dict:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": 5 + tokens},
    }


def _sse(model: str, pieces: list[str], delay: float, die_after: int | None, usage: bool):
    def chunk(delta: dict, finish=None) -> bytes:
        body = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(body)}\n\n".encode()

    yield chunk({"role": "assistant", "content": ""})
    for i, piece in enumerate(pieces):
        if die_after is not None and i == die_after:
            raise ConnectionAbortedError("scripted mid-stream failure")  # the server drops the connection
        if delay:
            time.sleep(delay)
        yield chunk({"content": piece})
    yield chunk({}, "stop")
    if usage:
        body = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": len(pieces), "total_tokens": 5 + len(pieces)},
        }
        yield f"data: {json.dumps(body)}\n\n".encode()
    yield b"data: [DONE]\n\n"


@dataclass
class RunningUpstream:
    url: str
    log: UpstreamLog

    @property
    def base_url(self) -> str:
        return self.url + "/v1"


def _serve_fake_upstream():
    log = UpstreamLog()
    server = make_server("127.0.0.1", 0, fake_openai_app(log), threaded=True)
    serve_in_thread(server)
    return server, RunningUpstream(f"http://127.0.0.1:{server.server_port}", log)


@pytest.fixture
def fake_upstream():
    """A scriptable OpenAI-protocol server on a free loopback port, for one test."""
    server, upstream = _serve_fake_upstream()
    yield upstream
    server.shutdown()


@pytest.fixture(scope="module")
def module_fake_upstream():
    """The same, shared by a test module (for fixtures that are slow to start)."""
    server, upstream = _serve_fake_upstream()
    yield upstream
    server.shutdown()
