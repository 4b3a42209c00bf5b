"""``/v1``: the OpenAI-compatible face of the gateway, so the official SDK works unchanged.

The client sends the whole conversation each time (that is the protocol); the
gateway logs the last user message and the answer as a turn, and returns the
assistant message id as the completion ``id`` plus a ``tuneloop`` object with the
ids, the feedback token (so the answer can be rated through ``/api/feedback``) and
the knowledge-base entries the answer was given (``sources``). A request opts out of
the knowledge base with ``"tuneloop": {"knowledge": false}`` (the SDKs' ``extra_body``).
Continue a logged conversation with the ``X-Tuneloop-Conversation-Id`` header.
"""

from __future__ import annotations

import json
import time
from typing import Iterator

from flask import Blueprint, Response, jsonify, request, stream_with_context

from server.auth import caller_key_id, publishable
from server.context import gateway, get_db
from server.errors import openai_in_band
from server.model_limits import check_sampling
from server.model_names import check_model, listed_names
from server.openapi import documented
from server.protocol import (
    OPENAI_STREAM_EVENTS,
    OpenAIAnswer,
    OpenAIChatChunk,
    OpenAIChatRequest,
    OpenAIChatResponse,
    OpenAIChoice,
    OpenAIChunkChoice,
    OpenAIDelta,
    OpenAIErrorResponse,
    OpenAIIds,
    OpenAIModelCard,
    OpenAIModelList,
    OpenAIUsage,
    Source,
    parse_body,
)
from server.serving import Caller, PendingAnswer
from server.sse import TextLines

bp = Blueprint("openai", __name__, url_prefix="/v1")


@bp.post("/chat/completions")
@publishable
@documented(
    "OpenAI-compatible chat completion (streaming with stream: true).",
    request=OpenAIChatRequest,
    response=OpenAIChatResponse,
    events=OPENAI_STREAM_EVENTS,
    headers={
        "X-Tuneloop-Conversation-Id": "Log this turn in that conversation (one this key started); else a new one."
    },
    errors=(404, 429, 502, 503, 504),
    tag="openai",
)
def chat_completions():
    gw = gateway()
    body = parse_body(request, OpenAIChatRequest)
    check_model(body.model, gw.router.served_names(), gw.settings.model.aliases)
    question = body.user_message(gw.settings.gateway.max_message_chars)
    params = body.sampling()
    check_sampling(params, gw.settings, max_tokens_field=body.max_tokens_field)
    key_id = caller_key_id()
    pending = gw.chat.start(
        get_db(),
        Caller(key_id, gw.chat.user_ref(key_id, body.user)),
        message=question,
        conversation_id=request.headers.get("X-Tuneloop-Conversation-Id") or None,
        prior=body.prior_messages(),
        source="openai",
        params=params,
        use_knowledge=body.tuneloop.knowledge if body.tuneloop else True,
        message_field="messages",
    )
    created = int(time.time())
    if body.stream:
        return Response(
            stream_with_context(_chunks(pending, created)),
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    turn = pending.collect()
    completion = OpenAIChatResponse(
        id=turn.assistant_message_id,
        created=created,
        model=pending.model,
        choices=[OpenAIChoice(message=OpenAIAnswer(content=turn.answer), finish_reason=turn.finish_reason or "stop")],
        usage=OpenAIUsage.of(pending.reply.usage),
        tuneloop=_ids(pending),
    )
    response = jsonify(completion.model_dump())
    response.headers["X-Tuneloop-Message-Id"] = turn.assistant_message_id
    response.headers["X-Tuneloop-Conversation-Id"] = turn.conversation_id
    return response


def _ids(pending: PendingAnswer) -> OpenAIIds:
    return OpenAIIds(
        conversation_id=pending.turn.conversation_id,
        message_id=pending.turn.assistant_message_id,
        feedback_token=pending.feedback_token,
        sources=Source.of(pending.turn.sources),
    )


def _chunks(pending: PendingAnswer, created: int) -> Iterator[str]:
    # Each line is built from its documented model (OPENAI_STREAM_EVENTS), so /openapi.json says what is sent.
    def chunk(choices: list[OpenAIChunkChoice], **extra) -> str:
        body = OpenAIChatChunk(
            id=pending.turn.assistant_message_id, created=created, model=pending.model, choices=choices, **extra
        )
        return line(body.model_dump())

    def line(payload: dict) -> str:
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    delta = TextLines(lambda text: chunk([OpenAIChunkChoice(delta=OpenAIDelta(content=text))]))
    yield chunk([OpenAIChunkChoice(delta=OpenAIDelta(role="assistant", content=""))], tuneloop=_ids(pending))
    for kind, value in pending.events():
        if kind == "delta":
            yield delta(value)
        elif kind == "error":
            yield line(OpenAIErrorResponse.model_validate(openai_in_band(value)).model_dump())  # the SDK raises it
        else:
            yield chunk([OpenAIChunkChoice(delta=OpenAIDelta(), finish_reason=value.finish_reason or "stop")])
            yield chunk([], usage=OpenAIUsage.of(pending.reply.usage))
            yield "data: [DONE]\n\n"


@bp.get("/models")
@documented(
    "The models this gateway serves (OpenAI list shape): the live model, any canaries, then model.aliases.",
    response=OpenAIModelList,
    tag="openai",
)
def models():
    gw = gateway()
    created = int(time.time())
    names = listed_names(gw.router.served_names(), gw.settings.model.aliases)
    cards = [OpenAIModelCard(id=name, created=created, owned_by="tuneloop") for name in names]
    return jsonify(OpenAIModelList(data=cards).model_dump())
