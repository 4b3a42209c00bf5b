"""Wire models of the gateway's API (pydantic). Routes parse with :func:`parse_body`.

These models are also the source of ``/openapi.json``: what is validated is what
is documented.
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


class ConversationResponse(BaseModel):
    id: str
    created_at: str
    metadata: dict[str, Any]
    messages: list[ConversationMessage]


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


def parse_body(request: Request, model: type[Model], *, max_message_chars: int | None = None) -> Model:
    """Parse the JSON body into ``model``: 400 for malformed JSON, 422 for wrong fields."""
    raw = request.get_data(cache=True)
    try:
        data = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequest("body must be a JSON object", code="invalid_json")
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        raise ValidationFailed(f"{field}: {first['msg']}" if field else first["msg"], field=field) from None
    if max_message_chars is not None and isinstance(getattr(parsed, "message", None), str):
        if len(parsed.message) > max_message_chars:
            raise PayloadTooLarge(
                f"message has {len(parsed.message)} characters; the limit is {max_message_chars}",
                field="message",
                code="message_too_long",
            )
    return parsed
