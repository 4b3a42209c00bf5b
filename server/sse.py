"""Per-token SSE lines without building and dumping a pydantic model for every token.

A streamed answer sends one event per token, and every event but the text is the same for the whole
stream. Building the documented model (so ``/openapi.json`` says what is sent) and ``model_dump`` +
``json.dumps`` for each token was the largest share of a stream's per-token CPU in the gateway's profile
(docs/benchmarks.md). :class:`TextLines` renders the documented event once, around a marker, and then
splices each token's JSON-encoded text into the same bytes: the output is identical, character for
character, to rendering the model for that text.
"""

from __future__ import annotations

import json
from typing import Callable

_MARKER = "\x00tuneloop-text\x00"  # cannot occur in a rendered event: JSON escapes NUL


class TextLines:
    """``lines(text)`` → the line ``render(text)`` would give, computed once per stream and spliced per token."""

    def __init__(self, render: Callable[[str], str]):
        line = render(_MARKER)
        encoded = json.dumps(_MARKER, ensure_ascii=False)
        if line.count(encoded) != 1:
            raise ValueError("the rendered event must carry the text exactly once")
        self._head, _, self._tail = line.partition(encoded)

    def __call__(self, text: str) -> str:
        return self._head + json.dumps(text, ensure_ascii=False) + self._tail
