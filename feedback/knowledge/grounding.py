"""``ground()``: the prompt a model is sent for a question — retrieval, the context block, the token budget.

The gateway calls it for every chat, and the evaluation's *as served* view calls the very same function, so
"retrieval exactly as the gateway does it" is true by construction::

    grounded = ground(index, settings, "배송비 얼마에요?", history, budget=Budget(1024, 256, counter))
    grounded.messages   # system prompt + context block, the earlier turns that fit, the question
    grounded.sources    # the entries given to the model, best first (Snippet: id, question, answer, score)

1. **Retrieval**: the ``[knowledge] top_k`` best entries scoring ``min_score`` or more, from ``index`` (a
   :class:`~feedback.knowledge.live.LiveIndex`, or anything with its ``search``). Closed book — no context
   block at all — when ``use_knowledge`` is False (a request's opt-out, the evaluation's closed-book view),
   when ``[knowledge] enabled`` is false, or when there is no index.
2. **The prompt**: :func:`~feedback.knowledge.prompt.grounded_messages`, the one renderer of the block.
3. **The budget** (when one is given): the prompt must fit ``budget.limit`` = the model's context window minus
   the answer's ``max_tokens``. The system prompt and the question always go; then the entries, best first,
   as many as fit; then the earlier turns, newest first, as many as fit (a client's own system message is
   always kept). If the question cannot fit even alone, :class:`~config.errors.PayloadTooLarge` names
   ``field`` (``message`` on /api, ``messages`` on /v1) — a 413 the user can act on, never a 502 from the
   model server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from config.errors import PayloadTooLarge
from config.settings import Settings
from feedback.knowledge.budget import Budget
from feedback.knowledge.prompt import Snippet, grounded_messages


class Index(Protocol):
    def search(self, question: str, k: int | None = None, min_score: float | None = None) -> list[Snippet]: ...


@dataclass(frozen=True)
class Grounded:
    """What :func:`ground` built: the messages to send and what went into them."""

    messages: list[dict]
    sources: list[Snippet]  # the entries given to the model, best first; [] when none (or closed book)
    closed_book: bool  # no context block at all
    history_sent: int  # earlier messages sent (a client's system message not counted)
    history_dropped: int  # earlier messages left out so the prompt fits the window
    prompt_tokens: int | None  # the prompt's tokens as the budget counted them; None without a budget


def ground(
    index: Index | None,
    settings: Settings,
    question: str,
    history: Sequence[dict] = (),
    *,
    use_knowledge: bool = True,
    budget: Budget | None = None,
    field: str = "message",
) -> Grounded:
    """The grounded prompt for ``question`` after ``history`` (earlier user/assistant messages, oldest first)."""
    knowledge = settings.knowledge
    closed_book = not (use_knowledge and knowledge.enabled and index is not None)
    snippets = None if closed_book else list(index.search(question, knowledge.top_k, knowledge.min_score))
    system_prompt = settings.chat.system_prompt
    systems = [m for m in history if m.get("role") == "system"]
    earlier = [m for m in history if m.get("role") != "system"]

    def build(kept_snippets, kept_turns: int) -> list[dict]:
        turns = earlier[len(earlier) - kept_turns :] if kept_turns else []
        while turns and turns[0].get("role") == "assistant":  # a conversation sent on starts with the user
            turns = turns[1:]
        return grounded_messages(system_prompt, systems + turns, question, kept_snippets, knowledge)

    if budget is None:
        messages = build(snippets, len(earlier))
        return Grounded(messages, snippets or [], closed_book, _sent(messages), 0, None)

    # Most prompts fit whole (``chat.history_turns`` bounds the history): one count says so, where the search
    # below counts the whole prompt, knowledge block included, 2 + log2(history) times (a tokenizer and a
    # template render each: 4 ms a chat with 20 earlier messages and the starter model's tokenizer).
    messages = build(snippets, len(earlier))
    tokens = budget.count(messages)
    if tokens <= budget.limit:
        sent = _sent(messages)
        return Grounded(messages, snippets or [], closed_book, sent, len(earlier) - sent, tokens)
    tokens = budget.count(build(snippets, 0)) if earlier else tokens
    while tokens > budget.limit and snippets:
        snippets = snippets[:-1]  # the weakest entry goes first
        tokens = budget.count(build(snippets, 0))
    if tokens > budget.limit:
        raise PayloadTooLarge(
            f"{field} does not fit the model's context window: the prompt needs {tokens} tokens with no earlier "
            f"turns, and {budget.limit} are available ({budget.window} in the window, {budget.reserve} kept for "
            "the answer); send a shorter message",
            field=field,
            code="context_length_exceeded",
        )
    # The most earlier messages that still fit: more messages never take fewer tokens, so bisect.
    low, high = 0, len(earlier)
    while low < high:
        middle = (low + high + 1) // 2
        count = budget.count(build(snippets, middle))
        if count <= budget.limit:
            low, tokens = middle, count
        else:
            high = middle - 1
    messages = build(snippets, low)
    sent = _sent(messages)
    return Grounded(messages, snippets or [], closed_book, sent, len(earlier) - sent, tokens)


def _sent(messages: list[dict]) -> int:
    # Everything but the system message and the new question.
    return sum(1 for m in messages[:-1] if m.get("role") != "system")
