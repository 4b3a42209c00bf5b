"""How many tokens a prompt may take for the model that answers it: its context window, and a token counter.

:class:`PromptBudgets` gives ``ground()`` (``feedback/knowledge/grounding.py``) a
:class:`~feedback.knowledge.budget.Budget` per target model:

- the **window**: ``[chat] context_window`` when set, else what the model server reports (``max_model_len`` in
  ``GET /v1/models``: vLLM and the built-in server), asked once per model and kept for
  :data:`WINDOW_TTL_S`; a server that cannot be reached is asked again after :data:`RETRY_S`, and meanwhile the
  prompt is not trimmed by tokens (``chat.history_turns`` still bounds it). No window known: no budget.
- the **counter**: the tokenizer in ``[chat] tokenizer`` when set; else, for the built-in server, its model folder
  (``tokenizer.json`` and the chat template — exact counts); else a conservative estimate. A built-in model folder
  that does not exist yet (``tuneloop up`` builds the starter model while the gateway starts) is looked for again
  at most every :data:`RETRY_S` seconds.

The reserve is the answer's ``max_tokens`` (the request's, else ``chat.max_tokens``): a model server refuses a
prompt that leaves it less.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from config.errors import ConfigError, UpstreamError
from config.settings import Settings
from feedback.knowledge.budget import Budget, EstimateCounter, TokenCounter, TokenizerCounter
from modelclient.chat import ChatClient, Target

log = logging.getLogger("tuneloop.gateway")

WINDOW_TTL_S = 600.0  # a model's window does not change while it is served
RETRY_S = 10.0  # after a failed look-up (server down, model folder not built yet)


class PromptBudgets:
    """Per-target budgets for the gateway (see the module docstring)."""

    def __init__(self, settings: Settings, client: ChatClient, *, clock=time.monotonic):
        self.settings = settings
        self.client = client
        self.clock = clock
        self._windows: dict[tuple[str, str], tuple[int | None, float]] = {}
        self._counter: TokenCounter | None = None
        self._counter_checked = float("-inf")
        self._lock = threading.Lock()
        if settings.chat.tokenizer:
            try:
                self._counter = TokenizerCounter.from_path(settings.chat.tokenizer)
            except Exception as exc:  # tokenizers raises its own exception types, none of them an OSError
                raise ConfigError(
                    f"chat.tokenizer: cannot read a tokenizer from {settings.chat.tokenizer}: {exc}",
                    field="chat.tokenizer",
                ) from exc

    def budget(self, target: Target, reserve: int) -> Budget | None:
        """The budget of a prompt to ``target`` leaving ``reserve`` tokens for the answer; None: no window known."""
        window = self.window(target)
        if window is None:
            return None
        return Budget(window=window, reserve=min(reserve, window - 1), counter=self.counter())

    def window(self, target: Target) -> int | None:
        """``chat.context_window``, or the target's window as its server reports it (cached)."""
        if self.settings.chat.context_window:
            return self.settings.chat.context_window
        key = (target.base_url, target.name)
        now = self.clock()
        cached = self._windows.get(key)
        if cached is not None and now < cached[1]:
            return cached[0]
        try:
            window = self.client.context_window(target)
        except UpstreamError as exc:
            log.warning("context window of %s unknown for now: %s", target.name, exc.message)
            window, expires = None, now + RETRY_S
        else:
            expires = now + (WINDOW_TTL_S if window else RETRY_S)
        self._windows[key] = (window, expires)
        return window

    def counter(self) -> TokenCounter:
        """The most exact counter available (see the module docstring)."""
        if self._counter is not None:
            return self._counter
        now = self.clock()
        if self.settings.model.provider == "builtin" and now - self._counter_checked >= RETRY_S:
            with self._lock:
                self._counter_checked = now
                folder = Path(self.settings.model_dir)
                if (folder / "tokenizer.json").is_file():
                    try:
                        self._counter = TokenizerCounter.from_path(folder)
                        return self._counter
                    except Exception as exc:  # noqa: BLE001 - an unreadable tokenizer: estimate instead, and say so
                        log.warning("counting tokens by estimate: cannot read the tokenizer in %s: %s", folder, exc)
        return ESTIMATE


ESTIMATE = EstimateCounter()
