"""server/sse.py: a spliced per-token line is exactly what rendering the documented event gives."""

import json

import pytest

from server.protocol import ChatDeltaEvent, OpenAIChatChunk, OpenAIChunkChoice, OpenAIDelta
from server.routes.api import sse
from server.sse import TextLines

TEXTS = [
    "",
    "hello",
    'quote " and \\ backslash',
    "new\nline\ttab",
    "한국어 답변",
    "emoji 🙂",
    "nul \x00 inside",
    "\x00tuneloop-text\x00",
]


def _openai(text: str) -> str:
    chunk = OpenAIChatChunk(
        id="msg_1", created=1, model="m", choices=[OpenAIChunkChoice(delta=OpenAIDelta(content=text))]
    )
    return f"data: {json.dumps(chunk.model_dump(), ensure_ascii=False)}\n\n"


def _ours(text: str) -> str:
    return sse("delta", ChatDeltaEvent(text=text).model_dump())


@pytest.mark.parametrize("render", [_openai, _ours], ids=["v1", "api"])
@pytest.mark.parametrize("text", TEXTS)
def test_a_spliced_line_is_the_rendered_line(render, text):
    assert TextLines(render)(text) == render(text)


def test_a_render_without_the_text_is_refused():
    with pytest.raises(ValueError):
        TextLines(lambda text: "data: {}\n\n")
