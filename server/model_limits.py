"""What the model accepts, checked before it is asked, and its refusals told apart from its failures.

A client's mistake comes back as the client's 4xx naming the field — never as a 502 "upstream error"
carrying the model server's address, and never recorded as a failed model turn: an outside test (issue 14)
found ``max_tokens`` over the model's limit, a 1,000-item ``stop`` list and a message longer than the model's
context all answered 502 with ``model 'starter' at http://127.0.0.1:…/v1 answered 422``, each stored as a
model failure that inflated the weekly report's failure figures.

- :func:`check_sampling` refuses, before the model is called, what the gateway knows the model refuses:
  ``max_tokens`` over the built-in server's ``model_server.max_new_tokens``; :func:`check_answer_room`,
  ``max_tokens`` that leaves no room for a prompt in the context window (``max_model_len``, as
  ``server/prompt_budget.py`` learns it). (``stop`` and ``seed`` are bounded by the wire model,
  ``server/protocol.py``.)
- :func:`client_fault` turns the model server's own refusal (:class:`~config.errors.UpstreamRejected`) into
  the client's 4xx when it names something the client sent; a refusal of what the gateway itself added (its
  ``chat.max_tokens``, say) is a configuration problem and stays a 502.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from config.errors import ConfigError, PayloadTooLarge, TuneloopError, UpstreamError, UpstreamRejected, ValidationFailed
from config.settings import Settings

# The chat-completion parameters a /v1 client may set, as the model server names them.
CLIENT_PARAMS = ("max_tokens", "temperature", "top_p", "stop", "seed")


@dataclass(frozen=True)
class ModelLimits:
    """The limits of the configured model that the gateway knows without asking it."""

    max_output_tokens: int | None  # most tokens one answer may have; None: not known here

    @classmethod
    def of(cls, settings: Settings) -> "ModelLimits":
        # The built-in server refuses max_tokens above model_server.max_new_tokens (the same settings start it
        # under `tuneloop up`). vLLM and OpenAI allow up to the context window and say so in their 400.
        if settings.model.provider == "builtin":
            return cls(max_output_tokens=settings.model_server.max_new_tokens)
        return cls(max_output_tokens=None)


def check_sampling(params: Mapping[str, Any], settings: Settings, *, max_tokens_field: str = "max_tokens") -> None:
    """422 naming the field when the client's generation parameters exceed what the model accepts."""
    limit = ModelLimits.of(settings).max_output_tokens
    asked = params.get("max_tokens")
    if asked is not None and limit is not None and asked > limit:
        raise ValidationFailed(
            f"{max_tokens_field} is {asked}; model {settings.model.name!r} answers with at most {limit} tokens",
            field=max_tokens_field,
        )


def check_answer_room(max_tokens: int, window: int | None, *, model: str, client_set: bool) -> None:
    """Refuse an answer length that leaves no room for a prompt in the model's context window.

    The prompt shares the window with the answer, so such a request can never be served; without this check
    the prompt budget (``server/prompt_budget.py``) would blame the user's message for not fitting in what is
    left. The client's ``max_tokens``: 422 on that field. The gateway's own ``chat.max_tokens``: a
    configuration error (500 ``config_error``, naming the setting), not the client's to fix.
    """
    if window is None or max_tokens < window:
        return
    if client_set:
        raise ValidationFailed(
            f"max_tokens is {max_tokens}; model {model!r} has a context window of {window} tokens, which the "
            "prompt shares with the answer: ask for fewer",
            field="max_tokens",
        )
    raise ConfigError(
        f"chat.max_tokens is {max_tokens}, but model {model!r} has a context window of only {window} tokens "
        "for the prompt and the answer together; lower chat.max_tokens",
        field="chat.max_tokens",
    )


def client_fault(exc: UpstreamError, *, params: Mapping[str, Any] | None, message_field: str) -> TuneloopError | None:
    """The client's 4xx for a model server's refusal of what the client sent; None when it is not theirs.

    ``params`` are the generation parameters the client set (None values: not set); ``message_field`` is
    where the client's text came from (``message`` on /api, ``messages`` on /v1).
    """
    if not isinstance(exc, UpstreamRejected):
        return None
    field = "max_tokens" if exc.field == "max_completion_tokens" else exc.field
    if field in CLIENT_PARAMS:
        if (params or {}).get(field) is None:
            return None  # the gateway's own setting (chat.max_tokens…): not the client's to fix
        return ValidationFailed(f"{field}: {exc.message}", field=field)
    if field not in (None, "messages"):
        return None
    if exc.upstream_code == "context_length_exceeded" or "context length" in exc.message.lower():
        return PayloadTooLarge(
            f"{message_field}: the conversation does not fit the model's context window; send a shorter message "
            f"({exc.message})",
            field=message_field,
            code="context_length_exceeded",
        )
    if field == "messages":
        return ValidationFailed(f"{message_field}: {exc.message}", field=message_field)
    return None
