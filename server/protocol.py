"""Wire models of the gateway's API (pydantic). Routes parse with :func:`parse_body`.

These models are also the source of ``/openapi.json``: what is validated is what
is documented. Both chat APIs hand the user's message over through
``user_message(max_chars)``, which checks it the one way (:func:`checked_message`).
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

from flask import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from config.errors import InvalidRequest, PayloadTooLarge, ValidationFailed

Model = TypeVar("Model", bound=BaseModel)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ChatRequest(Strict):
    message: str = Field(min_length=1, description="The user's message.")
    conversation_id: str | None = Field(None, description="Continue this conversation; omit to start one.")
    stream: bool = Field(False, description="Answer as text/event-stream (events start, delta, done, error).")
    user: str | None = Field(
        None, max_length=256, description="Your stable id for the end user (stored only as a keyed hash)."
    )
    metadata: dict[str, Any] = Field(default_factory=dict, description="Free-form data kept with a new conversation.")
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


class FeedbackRequest(Strict):
    message_id: str
    rating: Literal["up", "down"]
    feedback_token: str = Field(min_length=1, description="The token returned with the answer.")
    reason: str | None = Field(None, description="One of the configured reasons (GET /api/config).")
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


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


# --- OpenAI-compatible subset -------------------------------------------------------------


class OpenAIMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict[str, Any]]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")


class OpenAIChatRequest(BaseModel):
    # Unknown OpenAI parameters are accepted and ignored, as a compatible server should.
    model_config = ConfigDict(extra="ignore")
    model: str = ""
    messages: list[OpenAIMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = Field(None, max_length=256)
    tuneloop: "TuneloopOptions | None" = Field(
        None, description='tuneloop\'s own options, e.g. {"knowledge": false} to answer without the knowledge base.'
    )

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
    """Parse the JSON body into ``model``: 400 for malformed JSON, 422 for wrong fields."""
    raw = request.get_data(cache=True)
    try:
        data = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest("body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        raise ValidationFailed(f"{field}: {first['msg']}" if field else first["msg"], field=field) from None


OpenAIChatRequest.model_rebuild()
