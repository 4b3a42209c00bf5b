"""``/api``: chat, feedback and conversations — the product's own API."""

from __future__ import annotations

import json
from typing import Iterator

from flask import Blueprint, Response, jsonify, request, stream_with_context

from config.errors import Forbidden, NotFound, ValidationFailed
from feedback import ratings, turns
from feedback.access import check_visible
from feedback.audit import Actor
from feedback.privacy.erase import erase
from feedback.privacy.subjects import Subject
from feedback.tokens import pseudonym, token_matches
from server import metrics
from server.auth import caller_key_id, publishable
from server.context import gateway, get_db
from server.openapi import documented
from server.protocol import (
    CHAT_EVENTS,
    ChatDeltaEvent,
    ChatDoneEvent,
    ChatRequest,
    ChatResponse,
    ChatStartEvent,
    ClientConfig,
    ConversationDeleteRequest,
    ConversationDeleteResponse,
    ConversationResponse,
    ErrorResponse,
    FeedbackRequest,
    FeedbackResponse,
    Source,
    parse_body,
)
from server.serving import Caller, PendingAnswer

bp = Blueprint("api", __name__, url_prefix="/api")
# Who asks for, and runs, a conversation's deletion through the API: whoever holds one of its feedback tokens.
CONVERSATION_OWNER = "the conversation's visitor (DELETE /api/conversations)"


def sse(event: str, data: dict) -> str:
    """One server-sent event."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


@bp.post("/chat")
@publishable
@documented(
    "Send a message and get the answer (JSON, or text/event-stream with stream: true).",
    request=ChatRequest,
    response=ChatResponse,
    events=CHAT_EVENTS,
    headers={"X-Tuneloop-Client": "'widget' when the bundled widget asks (recorded as the turn's source)."},
    errors=(404, 429, 502, 503, 504),
)
def chat():
    gw = gateway()
    body = parse_body(request, ChatRequest)
    message = body.user_message(gw.settings.gateway.max_message_chars)
    key_id = caller_key_id()
    caller = Caller(key_id, gw.chat.user_ref(key_id, body.user))
    pending = gw.chat.start(
        get_db(),
        caller,
        message=message,
        conversation_id=body.conversation_id,
        metadata=body.metadata,
        source="widget" if request.headers.get("X-Tuneloop-Client") == "widget" else "api",
        use_knowledge=body.knowledge,
    )
    if body.stream:
        return Response(
            stream_with_context(_event_stream(pending)),
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    turn = pending.collect()
    return jsonify(_chat_response(pending, turn))


def _chat_response(pending: PendingAnswer, turn: turns.Turn) -> dict:
    return ChatResponse(
        conversation_id=turn.conversation_id,
        message_id=turn.assistant_message_id,
        answer=turn.answer,
        model=pending.model,
        feedback_token=pending.feedback_token,
        usage=_usage(pending),
        latency_ms=round(turn.latency_ms or 0.0, 2),
        finish_reason=turn.finish_reason,
        sources=Source.of(turn.sources),
    ).model_dump()


def _event_stream(pending: PendingAnswer) -> Iterator[str]:
    # Each event is built from its documented model (CHAT_EVENTS), so /openapi.json says what is sent.
    turn = pending.turn
    yield sse(
        "start",
        ChatStartEvent(
            conversation_id=turn.conversation_id,
            message_id=turn.assistant_message_id,
            model=pending.model,
            feedback_token=pending.feedback_token,
            sources=Source.of(turn.sources),
        ).model_dump(),
    )
    for kind, value in pending.events():
        if kind == "delta":
            yield sse("delta", ChatDeltaEvent(text=value).model_dump())
        elif kind == "error":
            yield sse("error", ErrorResponse.model_validate(value).model_dump(exclude_none=True))
        else:
            done = ChatDoneEvent(
                usage=_usage(pending),
                finish_reason=value.finish_reason,
                latency_ms=round(value.latency_ms or 0.0, 2),
                sources=Source.of(value.sources),
            )
            yield sse("done", done.model_dump())


def _usage(pending: PendingAnswer) -> dict:
    usage = pending.reply.usage
    return {"prompt_tokens": usage.get("prompt_tokens", 0), "completion_tokens": usage.get("completion_tokens", 0)}


@bp.post("/feedback")
@publishable
@documented(
    "Rate an answer: thumbs up or down, with an optional reason, comment and correction.",
    request=FeedbackRequest,
    response=FeedbackResponse,
    errors=(404, 409, 429),
    tag="feedback",
)
def feedback():
    gw = gateway()
    body = parse_body(request, FeedbackRequest)
    fb = gw.settings.feedback
    if body.reason is not None and body.reason not in fb.reasons:
        raise ValidationFailed(f"reason must be one of: {', '.join(fb.reasons)}", field="reason")
    for name, limit in (("comment", fb.max_comment_chars), ("correction", fb.max_correction_chars)):
        value = getattr(body, name)
        if value is not None and len(value) > limit:
            raise ValidationFailed(f"{name} has {len(value)} characters; the limit is {limit}", field=name)
    db = get_db()
    key_id = caller_key_id()
    check_visible(db, key_id, message_id=body.message_id)
    if not token_matches(gw.secret, body.message_id, body.feedback_token):
        raise Forbidden("feedback_token does not match this message", field="feedback_token", code="bad_feedback_token")
    voter = body.user or request.remote_addr or "anonymous"
    result = ratings.record_rating(
        db,
        message_id=body.message_id,
        voter_ref=pseudonym(gw.secret, "voter", f"{key_id}:{voter}"),
        rating=body.rating,
        reason=body.reason,
        comment=_blank_to_none(body.comment),
        correction=_blank_to_none(body.correction),
    )
    metrics.observe_rating(body.rating)
    return jsonify(
        FeedbackResponse(feedback_id=result.feedback_id, rating=result.rating, updated=result.updated).model_dump()
    )


def _blank_to_none(value: str | None) -> str | None:
    return value.strip() or None if value is not None else None


@bp.get("/conversations/<conversation_id>")
@documented(
    "A conversation with its messages, as recorded.",
    response=ConversationResponse,
    errors=(404,),
)
def conversation(conversation_id: str):
    conv = turns.get_conversation(get_db(), conversation_id, api_key_id=caller_key_id())
    return jsonify(ConversationResponse.model_validate(conv).model_dump())


@bp.delete("/conversations/<conversation_id>")
@publishable
@documented(
    "Delete a conversation and everything derived from it: its messages, ratings, comments and corrections, "
    "their copies in review evidence, the knowledge base, datasets and reports (the widget's 'delete this "
    "conversation'). Proven with any of its answers' feedback tokens.",
    request=ConversationDeleteRequest,
    response=ConversationDeleteResponse,
    errors=(400, 401, 403, 404, 422, 429),
    tag="privacy",
)
def delete_conversation(conversation_id: str):
    gw = gateway()
    body = parse_body(request, ConversationDeleteRequest)
    db = get_db()
    key_id = caller_key_id()
    check_visible(db, key_id, conversation_id=conversation_id)
    if check_visible(db, key_id, message_id=body.message_id) != conversation_id:
        raise NotFound(f"no message {body.message_id!r} in this conversation", field="message_id")
    if not token_matches(gw.secret, body.message_id, body.feedback_token):
        raise Forbidden("feedback_token does not match this message", field="feedback_token", code="bad_feedback_token")
    result = erase(
        db,
        gw.settings,
        Subject.of(conversation=conversation_id),
        requested_by=CONVERSATION_OWNER,
        actor=Actor(CONVERSATION_OWNER, via="api"),
    )
    return jsonify(
        ConversationDeleteResponse(conversation_id=conversation_id, deleted=True, erased=result.counts).model_dump()
    )


@bp.get("/config")
@publishable
@documented("What a client needs to render the rating UI: reasons and limits.", response=ClientConfig, tag="feedback")
def client_config():
    s = gateway().settings
    return jsonify(
        ClientConfig(
            reasons=s.feedback.reasons,
            max_message_chars=s.gateway.max_message_chars,
            max_comment_chars=s.feedback.max_comment_chars,
            max_correction_chars=s.feedback.max_correction_chars,
        ).model_dump()
    )
