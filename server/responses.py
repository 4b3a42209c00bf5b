"""The Responses API on top of the gateway's chat: a ``/v1/responses`` request in, a response object out.

Every backend speaks chat completions (the built-in server, vLLM, a hosted ``ft:`` model), so the
gateway translates here rather than forwarding: ``instructions`` becomes a system message,
``previous_response_id`` the stored turns of that response's conversation (up to that answer), each
input message a chat message (an ``item_reference`` to one of the caller's stored messages, its text),
the last user message the question, ``max_output_tokens`` the answer's ``max_tokens``. Then
:meth:`ChatService.start` does what it does for every chat — knowledge grounding, the model version,
retries and fallbacks — and the turn is recorded like any other, with its sources and lineage.

A stored response is a ``responses`` row (feedback/responses.py) written once its turn is recorded, so
``GET /v1/responses/{id}`` and ``previous_response_id`` only ever see answered responses. The output
message's id is the assistant message's id, so the ``tuneloop`` ids and an ``item_reference`` name the
same thing. Streaming follows OpenAI's event sequence (:data:`RESPONSES_STREAM_EVENTS`); an error after
the first byte is an ``error`` event, then ``response.failed``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator

from pydantic import BaseModel
from sqlite_utils import Database

from config.errors import NotFound, TuneloopError, ValidationFailed
from feedback import turns
from feedback.access import check_visible
from feedback.db import utc_text
from feedback.knowledge.lineage import sources_of
from feedback.responses import StoredResponse, delete_response, get_response, message_item, record_response
from feedback.tokens import feedback_token
from server.context import Gateway
from server.model_limits import check_sampling
from server.model_names import check_model
from server.protocol import OpenAIIds, Source, checked_message
from server.responses_protocol import (
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseErrorEvent,
    ResponseFailedEvent,
    ResponseIncompleteEvent,
    ResponseInProgressEvent,
    ResponseObject,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseOutputTextDeltaEvent,
    ResponseOutputTextDoneEvent,
    ResponsesError,
    ResponsesIncompleteDetails,
    ResponsesOutputMessage,
    ResponsesOutputText,
    ResponsesRequest,
    ResponsesUsage,
)
from server.serving import Caller, PendingAnswer

log = logging.getLogger("tuneloop.gateway")
RESPONSE_PREFIX = "resp_"


def status_of(finish_reason: str | None, error: str | None) -> str:
    """A response's status from its turn: failed, incomplete (cut at max_output_tokens) or completed."""
    if error:
        return "failed"
    return "incomplete" if finish_reason == "length" else "completed"


@dataclass
class Echo:
    """What a response object repeats from its request."""

    id: str
    created_at: int
    instructions: str | None
    max_output_tokens: int | None
    previous_response_id: str | None
    temperature: float | None
    top_p: float | None
    store: bool
    metadata: dict[str, str]

    def response(
        self,
        *,
        model: str,
        ids: OpenAIIds,
        status: str,
        text: str | None,
        usage: ResponsesUsage | None = None,
        error: ResponsesError | None = None,
    ) -> ResponseObject:
        """The response object; ``text`` None: no output item yet (a response just created)."""
        output = []
        if text is not None:
            item_status = "completed" if status == "completed" else "incomplete"
            output = [_message(ids.message_id, item_status, text)]
        return ResponseObject(
            id=self.id,
            created_at=self.created_at,
            status=status,
            error=error,
            incomplete_details=ResponsesIncompleteDetails(reason="max_output_tokens")
            if status == "incomplete"
            else None,
            instructions=self.instructions,
            max_output_tokens=self.max_output_tokens,
            model=model,
            output=output,
            previous_response_id=self.previous_response_id,
            store=self.store,
            temperature=self.temperature,
            top_p=self.top_p,
            usage=usage,
            metadata=self.metadata,
            tuneloop=ids,
        )


def _message(message_id: str, status: str, text: str) -> ResponsesOutputMessage:
    return ResponsesOutputMessage(id=message_id, status=status, content=[ResponsesOutputText(text=text)])


def start_response(db: Database, gw: Gateway, body: ResponsesRequest, api_key_id: str | None) -> "ResponseTurn":
    """Everything up to the first token of the answer to ``body`` (raises the client's 4xx, or the model's 5xx)."""
    body.check_supported()
    check_model(body.model, gw.router.served_names(), gw.settings.model.aliases)
    conversation_id, history = None, []
    if body.previous_response_id:
        previous = _visible_response(db, body.previous_response_id, api_key_id, field="previous_response_id")
        conversation_id = previous.conversation_id
        history = turns.history(
            db, conversation_id, gw.settings.chat.history_turns, until_message_id=previous.message_id
        )
    messages = _input_messages(db, body, api_key_id)
    last = messages[-1]
    if last["role"] != "user":
        raise ValidationFailed("the last input message must come from the user", field="input")
    question = checked_message(last["content"], field="input", max_chars=gw.settings.gateway.max_message_chars)
    instructions = [{"role": "system", "content": body.instructions}] if body.instructions else []
    params = {"max_tokens": body.max_output_tokens, "temperature": body.temperature, "top_p": body.top_p}
    check_sampling(params, gw.settings, max_tokens_field="max_output_tokens")
    try:
        pending = gw.chat.start(
            db,
            Caller(api_key_id, gw.chat.user_ref(api_key_id, body.user)),
            message=question,
            conversation_id=conversation_id,
            prior=instructions + history + messages[:-1],
            source="openai",
            params=params,
            use_knowledge=body.tuneloop.knowledge if body.tuneloop else True,
            message_field="input",
        )
    except ValidationFailed as exc:
        raise _as_max_output_tokens(exc) from None
    created = int(time.time())
    echo = Echo(
        id=RESPONSE_PREFIX + pending.turn.assistant_message_id.removeprefix("msg_"),
        created_at=created,
        instructions=body.instructions,
        max_output_tokens=body.max_output_tokens,
        previous_response_id=body.previous_response_id,
        temperature=body.temperature,
        top_p=body.top_p,
        store=body.store,
        metadata=body.metadata or {},
    )
    return ResponseTurn(gw, pending, echo)


def _as_max_output_tokens(exc: ValidationFailed) -> ValidationFailed:
    # The chat layer names the answer's length max_tokens; the Responses API calls it max_output_tokens.
    if exc.field != "max_tokens":
        return exc
    return ValidationFailed(exc.message.replace("max_tokens", "max_output_tokens"), field="max_output_tokens")


def _visible_response(db: Database, response_id: str, api_key_id: str | None, *, field: str) -> StoredResponse:
    """The stored response, if this caller may see its conversation; else the same 404 as an unknown id."""
    stored = get_response(db, response_id, field=field)
    try:
        check_visible(db, api_key_id, conversation_id=stored.conversation_id)
    except NotFound:
        raise NotFound(f"no response {response_id!r}", field=field) from None
    return stored


def _input_messages(db: Database, body: ResponsesRequest, api_key_id: str | None) -> list[dict[str, str]]:
    """``input`` as chat messages, oldest first (``developer`` is a system message, as on chat completions)."""
    if isinstance(body.input, str):
        return [{"role": "user", "content": body.input}]
    messages = []
    for i, item in enumerate(body.input):
        if item.type == "item_reference":
            messages.append(_referenced(db, item.id, api_key_id, field=f"input.{i}.id"))
            continue
        if item.role is None:
            raise ValidationFailed(f"input.{i}.role: a message needs a role", field=f"input.{i}.role")
        if item.content is None:
            raise ValidationFailed(f"input.{i}.content: a message needs content", field=f"input.{i}.content")
        role = "system" if item.role == "developer" else item.role
        messages.append({"role": role, "content": item.text()})
    return messages


def _referenced(db: Database, message_id: str | None, api_key_id: str | None, *, field: str) -> dict[str, str]:
    """The text of a stored message of the caller's that an ``item_reference`` names."""
    if not message_id:
        raise ValidationFailed(f"{field}: an item_reference needs the id of a message", field=field)
    try:
        check_visible(db, api_key_id, message_id=message_id)
    except NotFound:
        raise NotFound(f"no item {message_id!r}", field=field) from None
    item = message_item(db, message_id)
    assert item is not None  # check_visible found it
    return item


class ResponseTurn:
    """One ``/v1/responses`` answer under way: collect it (JSON) or stream it (SSE); both store the response."""

    def __init__(self, gw: Gateway, pending: PendingAnswer, echo: Echo):
        self.gw = gw
        self.pending = pending
        self.echo = echo

    @property
    def message_id(self) -> str:
        return self.pending.turn.assistant_message_id

    @property
    def conversation_id(self) -> str:
        return self.pending.turn.conversation_id

    def ids(self) -> OpenAIIds:
        turn = self.pending.turn
        return OpenAIIds(
            conversation_id=turn.conversation_id,
            message_id=turn.assistant_message_id,
            feedback_token=self.pending.feedback_token,
            sources=Source.of(turn.sources),
        )

    def _response(self, status: str, text: str | None, **extra: Any) -> ResponseObject:
        return self.echo.response(model=self.pending.model, ids=self.ids(), status=status, text=text, **extra)

    def _usage(self) -> ResponsesUsage:
        usage = self.pending.reply.usage
        return ResponsesUsage.of(usage.get("prompt_tokens"), usage.get("completion_tokens"))

    def collect(self) -> ResponseObject:
        """The whole answer, its turn recorded and the response stored."""
        turn = self.pending.collect()
        self._store()
        return self._response(status_of(turn.finish_reason, None), turn.answer, usage=self._usage())

    def _store(self) -> None:
        """Store the response (its turn is recorded by now) unless the request said ``store: false``."""
        if not self.echo.store:
            return
        echo = self.echo
        row = StoredResponse(
            id=echo.id,
            conversation_id=self.conversation_id,
            message_id=self.message_id,
            previous_response_id=echo.previous_response_id,
            instructions=echo.instructions,
            max_output_tokens=echo.max_output_tokens,
            temperature=echo.temperature,
            top_p=echo.top_p,
            metadata=echo.metadata,
            created_at=utc_text(datetime.fromtimestamp(echo.created_at, timezone.utc)),
        )
        with self.gw.chat.connection() as db:
            record_response(db, row)

    def events(self) -> Iterator[str]:
        """The stream, as OpenAI sends it: each event named by its ``type``, numbered from 0."""
        numbers = iter(range(1 << 62))

        def event(model: type[BaseModel], **fields: Any) -> str:
            body = model(sequence_number=next(numbers), **fields).model_dump()
            return f"event: {body['type']}\ndata: {json.dumps(body, ensure_ascii=False)}\n\n"

        item_id = self.message_id
        part = ResponsesOutputText(text="")
        yield event(ResponseCreatedEvent, response=self._response("in_progress", None))
        yield event(ResponseInProgressEvent, response=self._response("in_progress", None))
        yield event(
            ResponseOutputItemAddedEvent, item=ResponsesOutputMessage(id=item_id, status="in_progress", content=[])
        )
        yield event(ResponseContentPartAddedEvent, item_id=item_id, part=part)
        for kind, value in self.pending.events():
            if kind == "delta":
                yield event(ResponseOutputTextDeltaEvent, item_id=item_id, delta=value)
            elif kind == "error":
                yield from self._failed(event, value["error"])
                return
            else:
                try:
                    self._store()
                except TuneloopError as exc:
                    yield from self._failed(event, exc.to_dict()["error"])
                    return
                text, status = value.answer, status_of(value.finish_reason, None)
                done = ResponsesOutputText(text=text)
                yield event(ResponseOutputTextDoneEvent, item_id=item_id, text=text)
                yield event(ResponseContentPartDoneEvent, item_id=item_id, part=done)
                item_status = "completed" if status == "completed" else "incomplete"
                yield event(ResponseOutputItemDoneEvent, item=_message(item_id, item_status, text))
                last = ResponseCompletedEvent if status == "completed" else ResponseIncompleteEvent
                yield event(last, response=self._response(status, text, usage=self._usage()))

    def _failed(self, event, error: dict) -> Iterator[str]:
        """An ``error`` event, then ``response.failed`` with the text so far. The failed turn is recorded
        (serving.py); its response is stored too, so ``GET`` shows it failed."""
        try:
            self._store()
        except Exception:  # noqa: BLE001 - the stream still ends with the first error, which is the one to tell
            log.exception("could not store a failed response")
        yield event(ResponseErrorEvent, code=error["code"], message=error["message"], param=error.get("field"))
        failure = ResponsesError(code=error["code"], message=error["message"])
        yield event(ResponseFailedEvent, response=self._response("failed", self.pending.reply.text, error=failure))


def stored_response(db: Database, gw: Gateway, response_id: str, api_key_id: str | None) -> ResponseObject:
    """``GET /v1/responses/{id}``: a stored response of the caller's, rebuilt from its row and its turn."""
    stored = _visible_response(db, response_id, api_key_id, field="response_id")
    ids = OpenAIIds(
        conversation_id=stored.conversation_id,
        message_id=stored.message_id,
        feedback_token=feedback_token(gw.secret, stored.message_id),
        sources=[
            Source(id=s["id"], question=s["question"], score=s["score"]) for s in sources_of(db, stored.message_id)
        ],
    )
    echo = Echo(
        id=stored.id,
        created_at=int(datetime.fromisoformat(stored.created_at.replace("Z", "+00:00")).timestamp()),
        instructions=stored.instructions,
        max_output_tokens=stored.max_output_tokens,
        previous_response_id=stored.previous_response_id,
        temperature=stored.temperature,
        top_p=stored.top_p,
        store=True,
        metadata=stored.metadata,
    )
    status = status_of(stored.finish_reason, stored.error)
    error = ResponsesError(code="server_error", message=stored.error) if stored.error else None
    return echo.response(
        model=stored.model or gw.settings.model.name,
        ids=ids,
        status=status,
        text=stored.answer,
        usage=ResponsesUsage.of(stored.tokens_in, stored.tokens_out),
        error=error,
    )


def forget_response(db: Database, response_id: str, api_key_id: str | None) -> None:
    """``DELETE /v1/responses/{id}``: the caller's stored response can no longer be retrieved or continued."""
    _visible_response(db, response_id, api_key_id, field="response_id")
    delete_response(db, response_id)
