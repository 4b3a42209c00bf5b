"""Counting a prompt's tokens, so a conversation is trimmed by tokens (not turns) to fit the model's window.

A model server refuses a prompt longer than its context window (the starter model's is 1,024 tokens; the
built-in server and vLLM answer 400). So before the model is called, :func:`feedback.knowledge.grounding.ground`
fits the prompt into ``window − reserve`` tokens (``reserve``: the answer's ``max_tokens``), counting with:

- :class:`TokenizerCounter` — the model's own tokenizer (``tokenizer.json``, read with the ``tokenizers``
  library, no model loaded) and its chat template (``chat_template.jinja`` or ``tokenizer_config.json``)
  rendered the way transformers renders it, so the count is the number the model server will see;
- :class:`EstimateCounter` — when the tokenizer is not at hand (a vLLM or OpenAI model the gateway has no
  files for): :func:`estimate_tokens` per message plus :data:`PER_MESSAGE` for the chat template's role
  markers and :data:`PER_PROMPT` for the prompt's own. It over-counts on purpose: a prompt trimmed a little
  too much costs an old turn; one trimmed too little fails the answer.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

# Chat templates put a few tokens around each message (Llama 3: 5, ChatML: 5, the starter model: 2) and a few
# around the prompt (a BOS token, the assistant's header); these are above all of them.
PER_MESSAGE = 8
PER_PROMPT = 16
# Tokens per character, over-estimated: English runs about 4 characters a token in the common BPE vocabularies
# (counted as 3), Korean about one token a syllable in multilingual ones (counted as 1.5), and anything else
# outside ASCII (emoji, other scripts) is counted like Korean.
ASCII_CHARS_PER_TOKEN = 3.0
OTHER_TOKENS_PER_CHAR = 1.5


class TokenCounter(Protocol):
    """How many tokens a list of chat messages makes as a prompt (generation prompt included)."""

    name: str

    def count_messages(self, messages: Sequence[dict]) -> int: ...


def estimate_tokens(text: str) -> int:
    """A conservative token count for ``text`` without a tokenizer (see the module constants)."""
    ascii_chars = sum(1 for ch in text if ord(ch) < 128)
    other = len(text) - ascii_chars
    return math.ceil(ascii_chars / ASCII_CHARS_PER_TOKEN + other * OTHER_TOKENS_PER_CHAR)


class EstimateCounter:
    """Counts with :func:`estimate_tokens` and a fixed allowance for the chat template."""

    name = "estimate"

    def count_messages(self, messages: Sequence[dict]) -> int:
        return PER_PROMPT + sum(PER_MESSAGE + estimate_tokens(str(m.get("content") or "")) for m in messages)


class TokenizerCounter:
    """Counts with a model's ``tokenizer.json`` and, when it has one, its chat template (exact)."""

    def __init__(self, tokenizer: Tokenizer, template: jinja2.Template | None, variables: dict, name: str):
        self.tokenizer = tokenizer
        self.template = template
        self.variables = variables
        self.name = name

    @classmethod
    def from_path(cls, path: str | Path) -> "TokenizerCounter":
        """From a model folder (``tokenizer.json`` and its template files) or a ``tokenizer.json`` file.

        Raises ``OSError``/``ValueError`` when there is no readable tokenizer there.
        """
        path = Path(path).expanduser()
        folder, file = (path, path / "tokenizer.json") if path.is_dir() else (path.parent, path)
        tokenizer = Tokenizer.from_file(str(file))
        config = _read_json(folder / "tokenizer_config.json")
        source = _template_source(folder, config)
        template = _compile(source) if source else None
        # What transformers passes to a template besides the messages: the special tokens by name.
        variables = {k: v for k, v in config.items() if k.endswith("_token") and isinstance(v, str)}
        return cls(tokenizer, template, variables, name=f"tokenizer:{folder}")

    def count_text(self, text: str) -> int:
        """Tokens of plain text (special tokens written in it count as one each)."""
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def count_messages(self, messages: Sequence[dict]) -> int:
        if self.template is not None:
            try:
                text = self.template.render(messages=list(messages), add_generation_prompt=True, **self.variables)
            except jinja2.TemplateError:
                text = None
            if text is not None:
                return self.count_text(text)
        return PER_PROMPT + sum(PER_MESSAGE + self.count_text(str(m.get("content") or "")) for m in messages)


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _template_source(folder: Path, config: dict) -> str | None:
    file = folder / "chat_template.jinja"  # where transformers 5 saves it
    if file.is_file():
        return file.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next(
            (t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None
        )
    return template if isinstance(template, str) else None


def _raise_exception(message: str):
    raise jinja2.TemplateError(message)


def _compile(source: str) -> jinja2.Template | None:
    # The environment transformers renders chat templates in (sandboxed, trim_blocks, lstrip_blocks,
    # loop controls, raise_exception, tojson), so the text, and so the count, is the same.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = _raise_exception
    try:
        return env.from_string(source)
    except jinja2.TemplateError:
        return None


@dataclass(frozen=True)
class Budget:
    """A prompt may take ``window − reserve`` tokens, counted by ``counter``; ``reserve`` is the answer's room."""

    window: int
    reserve: int
    counter: TokenCounter

    @property
    def limit(self) -> int:
        return self.window - self.reserve

    def count(self, messages: Sequence[dict]) -> int:
        return self.counter.count_messages(messages)
