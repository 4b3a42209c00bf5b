"""Wire models of ``/v1/responses``, the OpenAI Responses API as the gateway speaks it.

What is validated is what ``/openapi.json`` documents. The request takes what the official SDKs,
LangChain's ``ChatOpenAI(use_responses_api=True)`` and the Vercel AI SDK send: ``input`` as a string or
a list of messages (text parts), ``instructions``, ``max_output_tokens``, ``temperature``, ``top_p``,
``stream``, ``previous_response_id``, and the fields those clients send with their default values.
A field the gateway cannot honour with the value sent (tools to call, built-in tools, background
mode, structured output, reasoning effort, logprobs) is a 400 ``unsupported_parameter`` naming it,
never a silent drop: :meth:`ResponsesRequest.check_supported`. Unknown fields are ignored, as on
``/v1/chat/completions``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints, WithJsonSchema, field_validator

from config.errors import InvalidRequest
from server.protocol import MIN_TEMPERATURE, MODEL_FIELD, EventData, OpenAIIds, TuneloopOptions

# OpenAI's limits on a response's metadata: 16 pairs, keys up to 64 characters, values up to 512.
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]
# Reasoning summaries and encrypted reasoning: the gateway's models never produce reasoning items, so asking
# to include them asks for nothing. Logprobs are a real request the gateway cannot answer.
VACUOUS_INCLUDES = {
    "reasoning.encrypted_content",
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "code_interpreter_call.outputs",
    "computer_call_output.output.image_url",
    "message.input_image.image_url",
}


# A request field the gateway accepts only empty or refuses with a 400 naming it holds any JSON when a client
# sends it (a tool's JSON Schema, a prompt's variables), so it is validated as any object. Its documented schema
# is one level of scalars: enough to say what the field is, and a schema Schemathesis can generate from (any
# nested JSON made its generator recurse until Python's compiler failed).
_SCALAR = {"type": ["string", "number", "integer", "boolean", "null"]}
AnyObject = Annotated[dict[str, Any], WithJsonSchema({"type": "object", "additionalProperties": _SCALAR})]
NoTools = Annotated[
    list[dict[str, Any]],
    WithJsonSchema({"type": "array", "maxItems": 0, "items": {"type": "object", "additionalProperties": _SCALAR}}),
]


def unsupported(field: str, message: str) -> InvalidRequest:
    """OpenAI's 400 for a parameter (or value) the gateway does not support, naming it."""
    return InvalidRequest(f"{field}: {message}", field=field, code="unsupported_parameter")


class ResponsesTextPart(BaseModel):
    """A content part of an input message. Only text: ``input_text``, or ``output_text`` in an earlier answer
    sent back as history. An image, a file or audio is refused (422) rather than answered as if unsent."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["input_text", "output_text"] = Field(description="Only text parts are supported.")
    text: str


class ResponsesInputItem(BaseModel):
    """One item of a list ``input``: a message (``role`` + ``content``, with or without ``type: "message"``),
    or an ``item_reference`` to a stored message of the caller's (the Vercel AI SDK sends earlier answers so).
    Other item types (function calls and their outputs, reasoning) need tools: 400 naming the item's type."""

    model_config = ConfigDict(extra="ignore")
    type: str = Field("message", description='"message" (the default) or "item_reference".')
    role: Literal["user", "assistant", "system", "developer"] | None = None
    content: str | list[ResponsesTextPart] | None = None
    id: str | None = Field(None, description="For an item_reference: the id of a message this gateway answered.")

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content or [])


class ResponsesTextFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str = Field("text", description='Only "text": structured output (json_schema, json_object) is a 400.')


class ResponsesText(BaseModel):
    model_config = ConfigDict(extra="ignore")
    format: ResponsesTextFormat | None = None
    verbosity: str | None = Field(None, description='Only "medium" (the default).')


class ResponsesReasoning(BaseModel):
    model_config = ConfigDict(extra="ignore")
    effort: str | None = Field(None, description='The gateway\'s models do not reason: only null or "none".')
    summary: str | None = Field(None, description="Only null: there is no reasoning to summarise.")


class ResponsesRequest(BaseModel):
    """``POST /v1/responses``. Unknown fields are ignored; known ones the gateway cannot honour are a 400."""

    # Numbers and switches are strict: ``"top_logprobs": false`` or ``"stream": "yes"`` is a 422, not a guess
    # (Schemathesis found false read as 0). Unknown fields are still ignored, as OpenAI-compatible servers do.
    model_config = ConfigDict(extra="ignore")
    model: str = Field("", description=MODEL_FIELD)
    input: (
        Annotated[str, StringConstraints(min_length=1)] | Annotated[list[ResponsesInputItem], Field(min_length=1)]
    ) = Field(description="The user's message, or a list of messages ending with the user's.")
    instructions: str | None = Field(
        None, description="A system message for this response (not carried over by previous_response_id)."
    )
    previous_response_id: str | None = Field(
        None, description="Continue the stored conversation of that response (one this key created)."
    )
    max_output_tokens: int | None = Field(None, ge=1, strict=True)
    temperature: float | None = Field(None, ge=0, le=2, strict=True)
    top_p: float | None = Field(None, gt=0, le=1, strict=True)
    stream: bool = Field(False, strict=True, description="Answer as text/event-stream with the Responses API's events.")
    store: bool = Field(
        True,
        strict=True,
        description="false: the response cannot be retrieved or continued (the turn is still logged and "
        "rateable, as every turn is).",
    )
    metadata: dict[MetadataKey, MetadataValue] | None = Field(None, max_length=16)
    user: str | None = Field(None, max_length=256, description="Your stable id for the end user (stored hashed).")
    # Accepted with the values the clients send by default; anything else is refused by check_supported.
    tools: NoTools = Field(default_factory=list, description="Only []: the gateway calls no tools.")
    tool_choice: str | AnyObject | None = Field(None, description='Only "auto" or "none" (there are no tools).')
    parallel_tool_calls: bool | None = Field(None, strict=True)
    max_tool_calls: int | None = Field(None, ge=0, le=2**63 - 1, strict=True)
    text: ResponsesText | None = None
    truncation: Literal["auto", "disabled"] | None = Field(
        None, description="Either: the oldest earlier turns that do not fit the context window are left out."
    )
    background: bool | None = Field(None, strict=True, description="Only false: responses are answered while you wait.")
    reasoning: ResponsesReasoning | None = None
    include: list[str] | None = Field(None, description="No logprobs; includes of items never produced are no-ops.")
    top_logprobs: int | None = Field(None, ge=0, le=20, strict=True, description="Only 0: no logprobs.")
    service_tier: str | None = Field(None, description='Only "auto" or "default".')
    conversation: str | AnyObject | None = Field(None, description="Not supported: continue with previous_response_id.")
    prompt: AnyObject | None = Field(None, description="Not supported: reusable prompts live at OpenAI.")
    prompt_cache_key: str | None = None
    safety_identifier: str | None = Field(None, max_length=256)
    stream_options: dict[str, StrictBool] | None = Field(
        None, description="Accepted and ignored (OpenAI's only option, include_obfuscation, pads events)."
    )
    tuneloop: TuneloopOptions | None = Field(
        None, description='tuneloop\'s own options, e.g. {"knowledge": false} to answer without the knowledge base.'
    )

    @field_validator("temperature")
    @classmethod
    def _greedy_below_epsilon(cls, value: float | None) -> float | None:
        # As on /v1/chat/completions: a temperature this small is greedy, and dividing by it overflows.
        return 0.0 if value is not None and 0 < value < MIN_TEMPERATURE else value

    def check_supported(self) -> None:
        """400 ``unsupported_parameter`` naming the first field whose value the gateway cannot honour."""
        if self.tools:
            raise unsupported("tools", "this gateway's models call no tools (function or built-in); send []")
        choice = self.tool_choice
        if choice is not None and choice not in ("auto", "none"):
            raise unsupported("tool_choice", 'there are no tools to choose; send "auto" or "none"')
        if self.background:
            raise unsupported("background", "background responses are not supported; send false")
        text = self.text
        if text and text.format and text.format.type != "text":
            raise unsupported("text.format", f"structured output ({text.format.type}) is not supported; use text")
        if text and text.verbosity not in (None, "medium"):
            raise unsupported("text.verbosity", 'only "medium" is supported')
        reasoning = self.reasoning
        if reasoning and reasoning.effort not in (None, "none"):
            raise unsupported("reasoning.effort", "this gateway's models do not reason")
        if reasoning and reasoning.summary is not None:
            raise unsupported("reasoning.summary", "this gateway's models do not reason")
        for i, item in enumerate(self.include or []):
            if item not in VACUOUS_INCLUDES:
                raise unsupported(f"include.{i}", f"{item!r} cannot be included (no logprobs)")
        if self.top_logprobs:
            raise unsupported("top_logprobs", "logprobs are not supported")
        if self.service_tier not in (None, "auto", "default"):
            raise unsupported("service_tier", 'only "auto" or "default"')
        if self.conversation is not None:
            raise unsupported("conversation", "conversations are continued with previous_response_id")
        if self.prompt is not None:
            raise unsupported("prompt", "reusable prompts are not supported; send input and instructions")
        for i, item in enumerate(self.input if isinstance(self.input, list) else []):
            if item.type not in ("message", "item_reference"):
                raise unsupported(f"input.{i}.type", f"{item.type!r} items are not supported (no tools); send messages")


# --- The response object ------------------------------------------------------------------------------


class ResponsesOutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[dict[str, Any]] = Field(default_factory=list)
    logprobs: list[dict[str, Any]] = Field(default_factory=list)


class ResponsesOutputMessage(BaseModel):
    """The answer. Its ``id`` is the assistant message's id: an ``item_reference`` to it sends it back."""

    type: Literal["message"] = "message"
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[ResponsesOutputText]


class ResponsesInputTokensDetails(BaseModel):
    cached_tokens: int = 0


class ResponsesOutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponsesUsage(BaseModel):
    input_tokens: int
    input_tokens_details: ResponsesInputTokensDetails = Field(default_factory=ResponsesInputTokensDetails)
    output_tokens: int
    output_tokens_details: ResponsesOutputTokensDetails = Field(default_factory=ResponsesOutputTokensDetails)
    total_tokens: int

    @classmethod
    def of(cls, tokens_in: int | None, tokens_out: int | None) -> "ResponsesUsage":
        prompt, completion = tokens_in or 0, tokens_out or 0
        return cls(input_tokens=prompt, output_tokens=completion, total_tokens=prompt + completion)


class ResponsesError(BaseModel):
    code: str
    message: str


class ResponsesIncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponsesTextConfig(BaseModel):
    format: ResponsesTextFormat = Field(default_factory=ResponsesTextFormat)


class ResponsesReasoningConfig(BaseModel):
    effort: None = None
    summary: None = None


class ResponseObject(BaseModel):
    """A response, as OpenAI's API answers one, plus the ``tuneloop`` ids to rate it with."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    error: ResponsesError | None = None
    incomplete_details: ResponsesIncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[ResponsesOutputMessage]
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    reasoning: ResponsesReasoningConfig = Field(default_factory=ResponsesReasoningConfig)
    store: bool = True
    temperature: float | None = None
    text: ResponsesTextConfig = Field(default_factory=ResponsesTextConfig)
    tool_choice: Literal["auto"] = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    top_p: float | None = None
    truncation: Literal["auto", "disabled"] = "auto"
    usage: ResponsesUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    tuneloop: OpenAIIds


class DeletedResponse(BaseModel):
    """``DELETE /v1/responses/{id}``'s answer, as OpenAI's."""

    id: str
    object: Literal["response"] = "response"
    deleted: Literal[True] = True


# --- Stream events ------------------------------------------------------------------------------------


class _Event(BaseModel):
    sequence_number: int


class ResponseCreatedEvent(_Event):
    """First: the response, ``in_progress``, with its ``tuneloop`` ids (the turn is recorded under them)."""

    type: Literal["response.created"] = "response.created"
    response: ResponseObject


class ResponseInProgressEvent(_Event):
    type: Literal["response.in_progress"] = "response.in_progress"
    response: ResponseObject


class ResponseOutputItemAddedEvent(_Event):
    type: Literal["response.output_item.added"] = "response.output_item.added"
    output_index: int = 0
    item: ResponsesOutputMessage


class ResponseContentPartAddedEvent(_Event):
    type: Literal["response.content_part.added"] = "response.content_part.added"
    item_id: str
    output_index: int = 0
    content_index: int = 0
    part: ResponsesOutputText


class ResponseOutputTextDeltaEvent(_Event):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    item_id: str
    output_index: int = 0
    content_index: int = 0
    delta: str
    logprobs: list[dict[str, Any]] = Field(default_factory=list)


class ResponseOutputTextDoneEvent(_Event):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    item_id: str
    output_index: int = 0
    content_index: int = 0
    text: str
    logprobs: list[dict[str, Any]] = Field(default_factory=list)


class ResponseContentPartDoneEvent(_Event):
    type: Literal["response.content_part.done"] = "response.content_part.done"
    item_id: str
    output_index: int = 0
    content_index: int = 0
    part: ResponsesOutputText


class ResponseOutputItemDoneEvent(_Event):
    type: Literal["response.output_item.done"] = "response.output_item.done"
    output_index: int = 0
    item: ResponsesOutputMessage


class ResponseCompletedEvent(_Event):
    """Last: the whole response, recorded, with its usage and the ``tuneloop`` ids again."""

    type: Literal["response.completed"] = "response.completed"
    response: ResponseObject


class ResponseIncompleteEvent(_Event):
    """Last, instead of ``response.completed``, when the answer was cut at ``max_output_tokens``."""

    type: Literal["response.incomplete"] = "response.incomplete"
    response: ResponseObject


class ResponseErrorEvent(_Event):
    """An error after the first byte (the model server failed mid-answer): then ``response.failed``."""

    type: Literal["error"] = "error"
    code: str | None
    message: str
    param: str | None = None


class ResponseFailedEvent(_Event):
    """Last after an ``error`` event: the response, ``failed``, with the text so far (recorded too)."""

    type: Literal["response.failed"] = "response.failed"
    response: ResponseObject


# In the order they come. Each SSE event's name is its ``type``, as OpenAI sends them.
RESPONSES_STREAM_EVENTS: dict[str, EventData] = {
    event.model_fields["type"].default: (event,)
    for event in (
        ResponseCreatedEvent,
        ResponseInProgressEvent,
        ResponseOutputItemAddedEvent,
        ResponseContentPartAddedEvent,
        ResponseOutputTextDeltaEvent,
        ResponseOutputTextDoneEvent,
        ResponseContentPartDoneEvent,
        ResponseOutputItemDoneEvent,
        ResponseCompletedEvent,
        ResponseIncompleteEvent,
        ResponseErrorEvent,
        ResponseFailedEvent,
    )
}
