"""Wire models of the built-in model server: OpenAI chat completions and vLLM's adapter endpoints.

Requests are pydantic models (parsed with :func:`server.protocol.parse_body`: 400
for malformed JSON, 422 for a wrong field). Responses are plain dicts built here,
in OpenAI's wire format, so the official ``openai`` SDK parses them unchanged.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from server.protocol import OpenAIChatRequest


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(OpenAIChatRequest):
    """The gateway's OpenAI subset plus what a model server must honour on top."""

    model: str = Field(min_length=1)
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="Only one choice per request is supported.")

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 16 or any(not s for s in stops):
            raise ValueError("stop must be up to 16 non-empty strings")
        return value

    @property
    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class LoadLoRAAdapterRequest(BaseModel):
    """vLLM's ``POST /v1/load_lora_adapter`` body."""

    model_config = ConfigDict(extra="ignore")
    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)
    load_inplace: bool = False


class UnloadLoRAAdapterRequest(BaseModel):
    """vLLM's ``POST /v1/unload_lora_adapter`` body."""

    model_config = ConfigDict(extra="ignore")
    lora_name: str = Field(min_length=1)
    lora_int_id: int | None = None


def completion_id() -> str:
    """A fresh ``chatcmpl-…`` id, as OpenAI names completions."""
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's usage object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(cid: str, model: str, created: int, text: str, finish_reason: str, usage_: dict) -> dict[str, Any]:
    """A whole ``chat.completion``."""
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage_,
    }


def chunk(
    cid: str,
    model: str,
    created: int,
    delta: dict | None,
    finish_reason: str | None = None,
    *,
    usage_field: bool = False,
) -> dict[str, Any]:
    """One ``chat.completion.chunk``; ``delta=None`` is the usage-only chunk with no choices."""
    body: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
    body["choices"] = (
        [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
    )
    if usage_field:
        # With include_usage, OpenAI sends "usage": null on every chunk but the last.
        body["usage"] = None
    return body


def model_card(name: str, root: str, parent: str | None, created: int, max_model_len: int | None) -> dict[str, Any]:
    """One entry of ``GET /v1/models``, shaped like vLLM's (``root`` = path, ``parent`` = base of an adapter)."""
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "tuneloop",
        "root": root,
        "parent": parent,
        "max_model_len": max_model_len,
    }


def now() -> int:
    """``created``: Unix seconds."""
    return int(time.time())
