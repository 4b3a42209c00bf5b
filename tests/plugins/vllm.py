"""A stand-in for ``vllm serve BASE --enable-lora`` (with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``): its HTTP only.

vLLM cannot run here (it needs a GPU and its own torch), so this real local HTTP
server speaks what vLLM documents and answers for the parts tuneloop uses:

- ``GET /v1/models``: the base model and every loaded adapter (``root``, ``parent``);
- ``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path"}``: ``200`` with the plain
  text ``Success: LoRA adapter 'NAME' added successfully.``; ``400`` BadRequestError
  "The lora adapter 'NAME' has already been loaded."; ``404`` NotFoundError
  "Loading lora NAME failed: No adapter found for PATH" when the folder has no
  adapter; ``400`` BadRequestError with the engine's exception text when the engine
  cannot load it (here: an ``adapter_config.json`` whose ``r`` is over
  ``--max-lora-rank``, the common real case);
- ``POST /v1/unload_lora_adapter``: ``200`` text, or ``404`` "cannot be found";
- ``POST /v1/chat/completions`` (streamed, as tuneloop always asks): the answer is
  ``"<model> says: <question>"``; an unknown model is ``404`` NotFoundError
  "The model `NAME` does not exist.".

Errors use vLLM's current body ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from tests.plugins.common import serve_in_thread

BASE = "base-model"
MAX_LORA_RANK = 16


@dataclass
class FakeVLLM:
    base_url: str = ""  # .../v1
    adapters: dict[str, str] = field(default_factory=dict)  # name -> path
    requests: list[dict] = field(default_factory=list)  # chat request bodies, in order


def _error(message: str, err_type: str, status: int, param: str | None = None) -> Response:
    body = {"error": {"message": message, "type": err_type, "param": param, "code": status}}
    return Response(json.dumps(body), status=status, mimetype="application/json")


def _engine_refusal(path: Path) -> str | None:
    """What vLLM's engine says when ``add_lora`` fails, or None when it would load."""
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        return None
    rank = json.loads(config_file.read_text()).get("r", 8)
    if rank > MAX_LORA_RANK:
        return (
            f"LoRA rank {rank} is greater than max_lora_rank {MAX_LORA_RANK}. "
            "Please launch the server with a larger --max-lora-rank."
        )
    return None


def _app(state: FakeVLLM):
    def app(environ, start_response):
        req = Request(environ)
        body = json.loads(req.get_data() or b"{}") if req.method == "POST" else {}
        if req.path == "/v1/models":
            cards = [{"id": BASE, "object": "model", "created": 0, "owned_by": "vllm", "root": BASE, "parent": None}]
            cards += [
                {"id": n, "object": "model", "created": 0, "owned_by": "vllm", "root": p, "parent": BASE}
                for n, p in state.adapters.items()
            ]
            response = Response(json.dumps({"object": "list", "data": cards}), mimetype="application/json")
        elif req.path == "/v1/load_lora_adapter":
            name, path = body["lora_name"], body["lora_path"]
            if name in state.adapters:
                response = _error(f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput", 400)
            elif not (Path(path) / "adapter_config.json").is_file():
                response = _error(f"Loading lora {name} failed: No adapter found for {path}", "NotFoundError", 404)
            elif refusal := _engine_refusal(Path(path)):
                response = _error(refusal, "BadRequestError", 400)
            else:
                state.adapters[name] = path
                response = Response(f"Success: LoRA adapter '{name}' added successfully.", mimetype="text/plain")
        elif req.path == "/v1/unload_lora_adapter":
            name = body["lora_name"]
            if state.adapters.pop(name, None) is None:
                response = _error(f"The lora adapter '{name}' cannot be found.", "NotFoundError", 404)
            else:
                response = Response(f"Success: LoRA adapter '{name}' removed successfully.", mimetype="text/plain")
        elif req.path == "/v1/chat/completions":
            state.requests.append(body)
            model = body["model"]
            if model != BASE and model not in state.adapters:
                response = _error(f"The model `{model}` does not exist.", "NotFoundError", 404, "model")
            else:
                response = Response(_stream(model, body["messages"][-1]["content"]), mimetype="text/event-stream")
        else:
            response = Response(json.dumps({"detail": "Not Found"}), status=404, mimetype="application/json")
        return response(environ, start_response)

    return app


def _stream(model: str, question: str):
    for delta, finish in (
        ({"role": "assistant", "content": ""}, None),
        ({"content": f"{model} says: {question}"}, None),
    ):
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
        chunk["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        yield f"data: {json.dumps(chunk)}\n\n".encode()
    last = {"id": "c", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    last["choices"] = [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]
    yield f"data: {json.dumps(last)}\n\n".encode()
    yield b"data: [DONE]\n\n"


@pytest.fixture
def fake_vllm():
    """A fake vLLM on a free port serving ``base-model``; ``.adapters`` is what it has loaded."""
    state = FakeVLLM()
    server = make_server("127.0.0.1", 0, _app(state), threaded=True)
    serve_in_thread(server)
    state.base_url = f"http://127.0.0.1:{server.server_port}/v1"
    yield state
    server.shutdown()
