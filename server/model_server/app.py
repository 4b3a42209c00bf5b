"""The built-in model server's Flask app: thin routes over :class:`Engine`.

``create_app(settings=None, *, engine=None)`` loads the base model named by
``model_server.served_name`` from ``Settings.model_dir`` (unless an engine is
passed in) and serves:

- ``GET /health`` (``degraded`` with the reasons while an adapter has failed), ``GET /v1/models``,
  ``GET /metrics`` (Prometheus: adapter loads, switch failures, reloads, pauses, batch sizes)
- ``POST /v1/chat/completions`` (streaming as SSE, or one JSON body)
- ``POST /v1/load_lora_adapter``, ``POST /v1/unload_lora_adapter`` (vLLM's bodies and answers)

Errors are OpenAI's (and vLLM's) ``{"error": {"message", "type", "param", "code"}}`` on ``/v1``,
ours elsewhere (server/errors.py); an error after a stream has started is sent in-band as a
``data:`` line, as OpenAI does.
A chat request waits until the model's worker has switched to its adapter before
the response starts, so a failed switch is a plain 503 a gateway can fall back on.
"""

from __future__ import annotations

import json
import logging
from typing import Iterator

from flask import Blueprint, Flask, Response, current_app, jsonify, request

from config.errors import TuneloopError
from config.settings import Settings, load_settings
from server.errors import register_error_handlers
from server.model_server import protocol
from server.model_server.decode import Generation
from server.model_server.engine import Engine
from server.model_server.protocol import ChatCompletionRequest, LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest
from server.protocol import parse_body

log = logging.getLogger("tuneloop.model_server")

# Whole conversations arrive with every request; 8 MiB is far above any context this server runs.
MAX_BODY_BYTES = 8 << 20

bp = Blueprint("model_server", __name__)


def create_app(settings: Settings | None = None, *, engine: Engine | None = None) -> Flask:
    """The model server app; loads the base model unless ``engine`` is given."""
    settings = settings or load_settings()
    if engine is None:
        ms = settings.model_server
        engine = Engine(
            device=ms.device,
            max_new_tokens=ms.max_new_tokens,
            torch_threads=ms.torch_threads,
            adapter_check=ms.adapter_check,
            max_batch=ms.max_batch,
        )
        engine.load_base(ms.served_name, settings.model_dir)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.extensions["model_engine"] = engine
    register_error_handlers(app)
    app.register_blueprint(bp)
    return app


def _engine() -> Engine:
    return current_app.extensions["model_engine"]


@bp.get("/health")
def health():
    """200 while the process serves; ``degraded`` lists what failed (the base and the rest still answer)."""
    engine = _engine()
    problems = engine.problems()
    return jsonify({"status": "degraded" if problems else "ok", "models": engine.names(), "problems": problems})


@bp.get("/metrics")
def prometheus():
    body, content_type = _engine().metrics.render()
    return Response(body, content_type=content_type)


@bp.get("/v1/models")
def models():
    cards = [protocol.model_card(*card) for card in _engine().cards()]
    return jsonify({"object": "list", "data": cards})


@bp.post("/v1/chat/completions")
def chat_completions():
    body = parse_body(request, ChatCompletionRequest)
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    generation = _engine().generate(
        body.model,
        messages,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        stop=tuple(body.stop_list),
        seed=body.seed,
    )
    generation.wait_started()  # a failed adapter switch raises here: an HTTP error, not a broken stream
    cid, created = protocol.completion_id(), protocol.now()
    if body.stream:
        return Response(
            _sse(generation, cid, body.model, created, body.include_usage),
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    text = generation.collect()
    usage = protocol.usage(generation.prompt_tokens, generation.completion_tokens)
    return jsonify(protocol.completion(cid, body.model, created, text, generation.finish_reason, usage))


def _sse(generation: Generation, cid: str, model: str, created: int, include_usage: bool) -> Iterator[str]:
    def line(payload: dict) -> str:
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    def chunk(delta, finish_reason=None) -> str:
        return line(protocol.chunk(cid, model, created, delta, finish_reason, usage_field=include_usage))

    try:
        yield chunk({"role": "assistant", "content": ""})
        for piece in generation:
            yield chunk({"content": piece})
        yield chunk({}, generation.finish_reason)
        if include_usage:
            final = protocol.chunk(cid, model, created, None)
            final["usage"] = protocol.usage(generation.prompt_tokens, generation.completion_tokens)
            yield line(final)
    except TuneloopError as exc:
        yield line(exc.to_dict())
    finally:
        # A client that went away stops its answer; the next request gets the model.
        generation.cancel()
    yield "data: [DONE]\n\n"


@bp.post("/v1/load_lora_adapter")
def load_lora_adapter():
    body = parse_body(request, LoadLoRAAdapterRequest)
    kind = _engine().load(body.lora_name, body.lora_path, replace=body.load_inplace)
    log.info("serving %s %r from %s", kind, body.lora_name, body.lora_path)
    return Response(f"Success: LoRA adapter '{body.lora_name}' added successfully.", mimetype="text/plain")


@bp.post("/v1/unload_lora_adapter")
def unload_lora_adapter():
    body = parse_body(request, UnloadLoRAAdapterRequest)
    _engine().unload(body.lora_name)
    return Response(f"Success: LoRA adapter '{body.lora_name}' removed successfully.", mimetype="text/plain")
