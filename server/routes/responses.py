"""``/v1/responses``: the OpenAI Responses API, translated to the gateway's chat by :mod:`server.responses`.

Thin on purpose: parse, call, map to HTTP. Errors are OpenAI-shaped like everywhere on ``/v1``.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request, stream_with_context

from server.auth import caller_key_id, publishable
from server.context import gateway, get_db
from server.openapi import documented
from server.protocol import parse_body
from server.responses import forget_response, start_response, stored_response
from server.responses_protocol import RESPONSES_STREAM_EVENTS, DeletedResponse, ResponseObject, ResponsesRequest

bp = Blueprint("responses", __name__, url_prefix="/v1")


@bp.post("/responses")
@publishable
@documented(
    "OpenAI Responses API: answer input (a string or messages), logged and rateable like a chat completion "
    "(streaming with stream: true). Fields the gateway cannot honour (tools, background, structured output) "
    "are a 400 naming the field.",
    request=ResponsesRequest,
    response=ResponseObject,
    events=RESPONSES_STREAM_EVENTS,
    errors=(404, 429, 502, 503, 504),
    tag="openai",
)
def create_response():
    body = parse_body(request, ResponsesRequest)
    answer = start_response(get_db(), gateway(), body, caller_key_id())
    headers = {"X-Tuneloop-Message-Id": answer.message_id, "X-Tuneloop-Conversation-Id": answer.conversation_id}
    if body.stream:
        headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return Response(stream_with_context(answer.events()), mimetype="text/event-stream", headers=headers)
    response = jsonify(answer.collect().model_dump())
    response.headers.update(headers)
    return response


@bp.get("/responses/<response_id>")
@documented(
    "A stored response of this key's (OpenAI Responses API), with its tuneloop ids to rate it.",
    response=ResponseObject,
    errors=(404,),
    tag="openai",
)
def get_response(response_id: str):
    return jsonify(stored_response(get_db(), gateway(), response_id, caller_key_id()).model_dump())


@bp.delete("/responses/<response_id>")
@documented(
    "Forget a stored response of this key's: it can no longer be retrieved or continued. Its turn stays "
    "in the log (rated and ranked like every turn).",
    response=DeletedResponse,
    errors=(404,),
    tag="openai",
)
def delete_response(response_id: str):
    forget_response(get_db(), response_id, caller_key_id())
    return jsonify(DeletedResponse(id=response_id).model_dump())
