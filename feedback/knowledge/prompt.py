"""The context block: how retrieved knowledge-base entries are shown to a model.

One renderer for everyone who builds a grounded prompt — the gateway, the evaluation's *as served* view
and the starter model's training data — so the model is trained on, evaluated on and served exactly the
same text. The format comes from ``[knowledge]`` (``header``, ``entry_format``, ``empty_text``):

    <chat.system_prompt, if any>

    Knowledge:
    [1] Q: How long does standard delivery take?
    A: Standard delivery takes 2-3 business days. ...
    [2] Q: ...
    A: ...

It is one system message in front of the conversation. Three cases, kept apart on purpose:

- ``snippets is None`` — *closed book*: no block at all, the model answers alone (what fine-tuning taught it);
- ``snippets == []`` — retrieval ran and found nothing above ``min_score``: the block says ``empty_text``, and
  a model trained on this format says it does not know instead of inventing;
- otherwise the entries, best first, numbered from 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from config.settings import KnowledgeSettings


@dataclass(frozen=True)
class Snippet:
    """One knowledge-base entry as given to the model: which entry, its question, its answer, the score.

    ``version`` is the entry's version that was given (the answer's lineage, ``message_sources``); 0 when the
    snippet does not come from the store (training data, tests).
    """

    entry_id: str
    question: str
    answer: str
    score: float
    version: int = 0


def render_knowledge(snippets: Sequence[Snippet], settings: KnowledgeSettings) -> str:
    """The context block for ``snippets`` (best first); ``empty_text`` under the header when there are none."""
    lines = [settings.header]
    if not snippets:
        lines.append(settings.empty_text)
    for n, snippet in enumerate(snippets, start=1):
        lines.append(settings.entry_format.format(n=n, question=snippet.question, answer=snippet.answer))
    return "\n".join(lines)


def grounded_messages(
    system_prompt: str,
    history: Sequence[dict],
    question: str,
    snippets: Sequence[Snippet] | None,
    settings: KnowledgeSettings,
) -> list[dict]:
    """The messages a model is sent: system turn (prompt + context block), earlier turns, the new question.

    ``history`` holds earlier ``user``/``assistant`` turns (a ``system`` message in it, sent by an OpenAI-protocol
    client, replaces ``system_prompt``). ``snippets=None`` is the closed-book prompt (see the module docstring).
    """
    earlier = [dict(m) for m in history if m.get("role") != "system"]
    client_system = [m["content"] for m in history if m.get("role") == "system"]
    system = "\n\n".join(client_system) if client_system else system_prompt
    if snippets is not None:
        block = render_knowledge(snippets, settings)
        system = f"{system}\n\n{block}" if system else block
    messages = [{"role": "system", "content": system}] if system else []
    return messages + earlier + [{"role": "user", "content": question}]
