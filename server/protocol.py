"""Wire models of the gateway's API (pydantic). Routes parse with :func:`parse_body`.

These models are also the source of ``/openapi.json``: what is validated is what
is documented. Both chat APIs hand the user's message over through
``user_message(max_chars)``, which checks it the one way (:func:`checked_message`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from flask import Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_serializer
from typing_extensions import TypeAliasType

from config.errors import InvalidRequest, PayloadTooLarge, ValidationFailed
from server.json_body import INT_MAX, INT_MIN, dotted, read_json

Model = TypeVar("Model", bound=BaseModel)
# Stop sequences: the built-in model server takes 16 (OpenAI 4, and says so in a 400 that reaches the client
# as a 422 on ``stop``); a 1,000-item list used to travel to the model and come back as a 502.
MAX_STOP = 16
MAX_STOP_CHARS = 256
MIN_TEMPERATURE = 1e-5  # vLLM's _SAMPLING_EPS: a lower temperature samples greedily
StopSequence = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STOP_CHARS)]
MODEL_FIELD = (
    "A model this gateway serves (GET /v1/models) or a name in model.aliases; empty: the live model. "
    "Any other name: 404 model_not_found."
)
# A field whose allowed values are a setting: ``/openapi.json`` lists that setting's values as its enum.
SETTINGS_ENUM = "x-enum-from-setting"


# Any JSON value, with numbers in the range server/json_body.py accepts: the free-form metadata of a conversation.
Number = Annotated[int, Field(ge=INT_MIN, le=INT_MAX)] | Annotated[float, Field(ge=INT_MIN, le=INT_MAX)]
JsonValue = TypeAliasType(
    "JsonValue",
    "str | bool | Number | None | list[JsonValue] | dict[str, JsonValue]",  # type: ignore[misc]
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ChatRequest(Strict):
    # Not blank: checked_message says so the same way on both chat APIs; the pattern only documents it.
    message: str = Field(min_length=1, json_schema_extra={"pattern": r"\S"}, description="The user's message.")
    conversation_id: str | None = Field(None, description="Continue this conversation; omit to start one.")
    stream: bool = Field(False, description="Answer as text/event-stream (events start, delta, done, error).")
    user: str | None = Field(
        None, max_length=256, description="Your stable id for the end user (stored only as a keyed hash)."
    )
    metadata: dict[str, JsonValue] = Field(
        default_factory=dict, description="Free-form data kept with a new conversation."
    )
    knowledge: bool = Field(
        True,
        description="Ground the answer in the knowledge base (default); false: the model answers alone, no sources.",
    )

    def user_message(self, max_chars: int) -> str:
        """The message to answer (:func:`checked_message`)."""
        return checked_message(self.message, field="message", max_chars=max_chars)


class Source(BaseModel):
    """A knowledge-base entry the answer was given: its id, its (first) question, how well it matched (0..1)."""

    id: str
    question: str
    score: float

    @classmethod
    def of(cls, snippets) -> list["Source"]:
        """Sources of the snippets a prompt was grounded in, best first."""
        return [cls(id=s.entry_id, question=s.question, score=s.score) for s in snippets]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class ChatResponse(BaseModel):
    conversation_id: str
    message_id: str
    answer: str
    model: str
    feedback_token: str = Field(description="Send back with POST /api/feedback to rate this answer.")
    usage: Usage
    latency_ms: float
    finish_reason: str | None = None
    sources: list[Source] = Field(
        default_factory=list, description="The knowledge-base entries the answer was given, best first."
    )


class ChatStartEvent(BaseModel):
    """``event: start`` of a streamed chat: the ids (the answer is already recorded under them) and the model."""

    conversation_id: str
    message_id: str
    model: str
    feedback_token: str = Field(description="Send back with POST /api/feedback to rate this answer.")
    sources: list[Source] = Field(
        default_factory=list, description="The knowledge-base entries the answer is given, best first."
    )


class ChatDeltaEvent(BaseModel):
    """``event: delta``: the next piece of the answer's text."""

    text: str


class ChatDoneEvent(BaseModel):
    """``event: done``: the answer is complete and recorded."""

    usage: Usage
    finish_reason: str | None = None
    latency_ms: float
    sources: list[Source] = Field(default_factory=list, description="The same entries as in start.")


class FeedbackRequest(Strict):
    message_id: str
    rating: Literal["up", "down"]
    feedback_token: str = Field(min_length=1, description="The token returned with the answer.")
    reason: str | None = Field(
        None,
        description="One of the configured reasons (feedback.reasons; GET /api/config lists them).",
        json_schema_extra={SETTINGS_ENUM: "feedback.reasons"},
    )
    comment: str | None = None
    correction: str | None = Field(None, description="What the right answer would have been.")
    user: str | None = Field(
        None, max_length=256, description="Your stable id for the voter; one vote per voter per message."
    )


class FeedbackResponse(BaseModel):
    feedback_id: str
    rating: Literal["up", "down"]
    updated: bool = Field(description="True when this changed an earlier vote of the same voter.")


class ConversationMessage(BaseModel):
    id: str
    role: str
    content: str
    created_at: str
    model: str | None = None
    latency_ms: float | None = None
    finish_reason: str | None = None
    error: str | None = None
    sources: list[Source] | None = Field(None, description="An answer's knowledge-base entries, best first.")


class ConversationResponse(BaseModel):
    id: str
    created_at: str
    metadata: dict[str, Any]
    messages: list[ConversationMessage]


class ConversationDeleteRequest(Strict):
    message_id: str = Field(description="Any answer of the conversation.")
    feedback_token: str = Field(
        min_length=1, description="That answer's token: proves the caller was served this conversation."
    )


class ConversationDeleteResponse(BaseModel):
    conversation_id: str
    deleted: bool
    erased: dict[str, int] = Field(description="How many rows of each kind went (counts only).")


class PrivacySubjectRequest(Strict):
    """Whose data, for the admin privacy API: a user (under every API key, or ``key``) or one conversation."""

    user: str | None = Field(None, min_length=1, description="The person, as the API's `user` field names them.")
    key: str | None = Field(None, min_length=1, description="Only the user's calls with this API key (id or prefix).")
    conversation: str | None = Field(None, min_length=1, description="One conversation (a widget visitor's).")
    actor: str | None = Field(None, min_length=1, description="Who runs it, when the admin token is used.")


class PrivacyEraseRequest(PrivacySubjectRequest):
    requested_by: str = Field("", description="Who asked, and how (required unless dry_run).")
    dry_run: bool = Field(False, description="Count what would go; erase nothing.")


class PrivacyPurgeRequest(Strict):
    dry_run: bool = Field(False, description="Preview the retention purge; delete nothing.")
    allow: bool = Field(False, description="Record that the preview was seen: the purge may delete from now.")
    actor: str | None = Field(None, min_length=1, description="Who runs it, when the admin token is used.")


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class OpenAIErrorBody(BaseModel):
    """OpenAI's error object: what the SDKs read (``message`` is what they show)."""

    message: str
    type: str = Field(
        description="invalid_request_error, authentication_error, permission_error, rate_limit_error or server_error."
    )
    param: str | None = Field(description="The request field at fault, when one is (our `field`).")
    code: str | None = Field(description="tuneloop's error code (model_not_found, validation_failed…).")


class OpenAIErrorResponse(BaseModel):
    """Every error on /v1, in OpenAI's shape (server/errors.py)."""

    error: OpenAIErrorBody


# A stream's events for /openapi.json: each SSE event name (``message`` when the stream sends data lines only)
# with what its data line holds, as JSON of one of these models or as this literal text.
EventData = tuple[type[BaseModel] | str, ...]

# A streamed chat, in the order it comes: start, delta…, then done or error. An error after the first byte
# cannot change the HTTP status, so it arrives as an event and the stream ends.
CHAT_EVENTS: dict[str, EventData] = {
    "start": (ChatStartEvent,),
    "delta": (ChatDeltaEvent,),
    "done": (ChatDoneEvent,),
    "error": (ErrorResponse,),
}


# --- OpenAI-compatible subset -------------------------------------------------------------


class OpenAITextPart(BaseModel):
    """A content part. Only text: the models behind the gateway read text, and an image or a file
    dropped without a word would be answered as if it had never been sent."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["text"] = Field(description="Only text parts are supported.")
    text: str


class OpenAIMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[OpenAITextPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class OpenAIChatRequest(BaseModel):
    # Unknown OpenAI parameters are accepted and ignored, as a compatible server should.
    model_config = ConfigDict(extra="ignore")
    model: str = Field("", description=MODEL_FIELD)
    messages: list[OpenAIMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: StopSequence | Annotated[list[StopSequence], Field(max_length=MAX_STOP)] | None = Field(
        None, description="Where the answer stops: one sequence or a list of them."
    )
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    user: str | None = Field(None, max_length=256)
    tuneloop: "TuneloopOptions | None" = Field(
        None, description='tuneloop\'s own options, e.g. {"knowledge": false} to answer without the knowledge base.'
    )

    @field_validator("temperature")
    @classmethod
    def _greedy_below_epsilon(cls, value: float | None) -> float | None:
        # A temperature of 5e-324 (found by Schemathesis) is greedy in effect, but dividing logits by it gave
        # inf and the built-in server's sampler failed (a 502). Below MIN_TEMPERATURE it is 0, as vLLM reads it.
        return 0.0 if value is not None and 0 < value < MIN_TEMPERATURE else value

    @property
    def max_tokens_field(self) -> str:
        """The name the client gave the answer's length under (OpenAI accepts both)."""
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"

    def user_message(self, max_chars: int) -> str:
        """The message to answer: the last one, which must be the user's (:func:`checked_message`)."""
        last = self.messages[-1]
        if last.role != "user":
            raise ValidationFailed("the last message must come from the user", field="messages")
        return checked_message(last.text(), field="messages", max_chars=max_chars)

    def prior_messages(self) -> list[dict[str, str]]:
        """The conversation before the last message, as chat messages (``developer`` is a system message)."""
        return [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages[:-1]
        ]

    def sampling(self) -> dict[str, Any]:
        """The generation parameters the client set (None: the gateway's default)."""
        return {
            "max_tokens": self.max_completion_tokens or self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": self.stop,
            "seed": self.seed,
        }


class TuneloopOptions(Strict):
    """The ``tuneloop`` field of an OpenAI-protocol request (the SDKs send it with ``extra_body``)."""

    knowledge: bool = True


class OpenAIIds(BaseModel):
    """The ``tuneloop`` field of a completion: what rating the answer through ``POST /api/feedback`` takes,
    and the knowledge-base entries the answer was given."""

    conversation_id: str
    message_id: str
    feedback_token: str
    sources: list[Source] = Field(default_factory=list)


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, usage: dict[str, int]) -> "OpenAIUsage":
        prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        return cls(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


class OpenAIAnswer(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = Field(None, description="Always null: the gateway's models answer in content.")


class OpenAIChoice(BaseModel):
    index: int = 0
    message: OpenAIAnswer
    finish_reason: str
    logprobs: None = None


class OpenAIChatResponse(BaseModel):
    """A chat completion, as OpenAI's API answers one; ``id`` is the assistant message's id."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[OpenAIChoice]
    usage: OpenAIUsage
    tuneloop: OpenAIIds


def _without_none(handler, value) -> dict:
    return {k: v for k, v in handler(value).items() if v is not None}


class OpenAIDelta(BaseModel):
    """What a chunk adds: the role (first chunk only), then text; ``{}`` in the last one."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _sparse(self, handler):
        return _without_none(handler, self)


class OpenAIChunkChoice(BaseModel):
    index: int = 0
    delta: OpenAIDelta
    finish_reason: str | None = None


class OpenAIChatChunk(BaseModel):
    """One ``data:`` line of a streamed completion, as OpenAI sends it.

    The first chunk carries the role and the ``tuneloop`` ids; then one per piece of text; then one with the
    ``finish_reason``; then one with no choices and the ``usage``; then ``data: [DONE]``. An error after the
    first byte is a ``data:`` line holding an OpenAIErrorResponse instead, and the stream ends.
    """

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[OpenAIChunkChoice]
    usage: OpenAIUsage | None = Field(None, description="Only in the chunk after the last choice.")
    tuneloop: OpenAIIds | None = Field(None, description="Only in the first chunk.")

    @model_serializer(mode="wrap")
    def _sparse(self, handler):
        body = handler(self)
        for name in ("usage", "tuneloop"):
            if body.get(name) is None:
                body.pop(name, None)
        return body


OPENAI_STREAM_EVENTS: dict[str, EventData] = {"message": (OpenAIChatChunk, OpenAIErrorResponse, "[DONE]")}


class OpenAIModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class OpenAIModelList(BaseModel):
    """``GET /v1/models``: the live model and any canaries, under the names the model server knows."""

    object: Literal["list"] = "list"
    data: list[OpenAIModelCard]


class ClientConfig(BaseModel):
    """What a client needs to render the rating UI."""

    reasons: list[str] = Field(description="The reasons a thumbs-down may give (feedback.reasons).")
    max_message_chars: int
    max_comment_chars: int
    max_correction_chars: int


def checked_message(text: str, *, field: str, max_chars: int) -> str:
    """The user's message as every chat route takes it: 422 when it is blank, 413 over ``max_chars`` characters."""
    if not text.strip():
        raise ValidationFailed("the user's message is blank", field=field)
    if len(text) > max_chars:
        raise PayloadTooLarge(
            f"message has {len(text)} characters; the limit is {max_chars}", field=field, code="message_too_long"
        )
    return text


def parse_body(request: Request, model: type[Model]) -> Model:
    """Parse the JSON body into ``model``: 400 for a body that is not JSON the gateway can hold
    (:mod:`server.json_body`), 413 over the size limit, 422 for wrong fields."""
    data = read_json(request)
    if not isinstance(data, dict):
        raise InvalidRequest("body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        field, message = _first_error(exc, data)
        raise ValidationFailed(f"{field}: {message}" if field else message, field=field) from None


def _first_error(exc: ValidationError, data: dict) -> tuple[str | None, str]:
    """The most specific error, with its path as the client wrote it.

    pydantic puts the union member it tried into the error's location (``content.str``,
    ``content.list[OpenAITextPart].0.text``); only the parts that exist in the body are kept,
    and of a union's errors the deepest one is the one that says what is wrong.
    """
    best: tuple[list, str] | None = None
    for error in exc.errors():
        path = _body_path(error["loc"], data, missing=error["type"] == "missing")
        if best is None or len(path) > len(best[0]):
            best = (path, error["msg"])
    assert best is not None
    path, message = best
    return (dotted(path) or None), message


def _body_path(loc: tuple, data: Any, *, missing: bool) -> list:
    path, node = [], data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif missing and i == len(loc) - 1:
            pass  # the absent field itself
        else:
            continue  # a union member's tag, not part of the body
        path.append(part)
    return path


OpenAIChatRequest.model_rebuild()
