"""The starter model's chat format: special tokens, the Jinja template, and the training encoding.

A conversation renders as ``<|system|>…<|end|>`` (only when the system message is
not empty), then ``<|user|>…<|end|><|assistant|>…<|end|>`` per turn; a generation
prompt is a trailing ``<|assistant|>``. ``<|end|>`` is the end-of-turn (EOS) token.

The template marks where each knowledge-base answer starts in the system message
(the context block, see ``feedback.knowledge.prompt``): ``\\nA: `` becomes
``\\nA:<|answer|>``. After a special token the byte-level tokenizer starts afresh,
so an entry's answer is the very same token sequence the model must produce after
``<|assistant|>`` — without the marker its first word would be `` Add`` in the
block and ``Add`` in the answer, a different token (or tokens) the model would
have to learn to map for every word an approved correction could start with.

:func:`encode_conversation` builds the same ids piece by piece so it knows which
tokens are answers (the only ones with a loss); ``tests/test_starter.py`` checks
that it agrees with ``apply_chat_template`` on the saved tokenizer.
"""

from __future__ import annotations

from typing import Sequence

PAD, END, SYSTEM, USER, ASSISTANT = "<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"
ANSWER = "<|answer|>"  # where a knowledge-base entry's answer starts in the context block
SPECIAL_TOKENS = [PAD, END, SYSTEM, USER, ASSISTANT, ANSWER]
IGNORE = -100  # label of tokens without a loss (prompts, history questions, padding)
DEFAULT_ENTRY_FORMAT = "[{n}] Q: {question}\nA: {answer}"
MAX_ENTRIES = 20  # knowledge.top_k is at most 20


def answer_prefix(entry_format: str) -> str:
    """The text an entry's answer follows in ``[knowledge] entry_format`` (``"\\nA: "`` by default), or ""."""
    question, answer = entry_format.find("{question}"), entry_format.find("{answer}")
    if question < 0 or answer < question:
        return ""
    prefix = entry_format[question + len("{question}") : answer]
    return prefix if prefix.strip() else ""  # a bare separator also occurs inside answers: nothing to mark


def entry_starts(entry_format: str) -> list[str]:
    """What comes right after an answer when another entry follows: ``"\\n[2] Q: "`` … ``"\\n[20] Q: "``."""
    head = entry_format[: entry_format.find("{question}")] if "{question}" in entry_format else ""
    if not head.strip() or not entry_format.endswith("{answer}"):
        return []  # the block's entries cannot be told apart from the text: nothing to mark
    if "{n}" not in head:
        return ["\n" + head]
    return ["\n" + head.replace("{n}", str(n)) for n in range(2, MAX_ENTRIES + 1)]


def mark_answers(system: str, entry_format: str = DEFAULT_ENTRY_FORMAT) -> str:
    """``system`` with each answer of a context block between ``<|answer|>`` and ``<|end|>`` (as the template does).

    The last answer of the block needs no end mark: the system turn's own ``<|end|>`` follows it.
    """
    prefix = answer_prefix(entry_format)
    if not prefix:
        return system
    marked = system.replace(prefix, prefix.rstrip(" ") + ANSWER)
    for start in entry_starts(entry_format):
        marked = marked.replace(start, END + start)
    return marked


def _jinja_string(text: str) -> str:
    """A Jinja string literal for ``text``."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def chat_template(entry_format: str = DEFAULT_ENTRY_FORMAT) -> str:
    """The Jinja chat template for a model trained on context blocks in ``entry_format`` (see :func:`mark_answers`)."""
    prefix = answer_prefix(entry_format)
    marks = ""
    if prefix:
        marks = "{%- set ns.text = ns.text | replace(" + _jinja_string(prefix) + ", "
        marks += _jinja_string(prefix.rstrip(" ") + ANSWER) + ") -%}"
        for start in entry_starts(entry_format):
            marks += "{%- set ns.text = ns.text | replace(" + _jinja_string(start) + ", "
            marks += _jinja_string(END + start) + ") -%}"
    return (
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'system' -%}"
        "{%- if message['content'] -%}"
        "{%- set ns = namespace(text=message['content']) -%}" + marks + SYSTEM + "{{ ns.text }}" + END + "{%- endif -%}"
        "{%- elif message['role'] == 'user' -%}"
        + USER
        + "{{ message['content'] }}"
        + END
        + "{%- elif message['role'] == 'assistant' -%}"
        + ASSISTANT
        + "{{ message['content'] }}"
        + END
        + "{%- else -%}{{ raise_exception('unsupported role: ' + message['role']) }}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}" + ASSISTANT + "{%- endif -%}"
    )


CHAT_TEMPLATE = chat_template()


def encode_conversation(
    tokenizer,
    turns: Sequence[tuple[str, str]],
    *,
    system: str = "",
    entry_format: str = DEFAULT_ENTRY_FORMAT,
) -> tuple[list[int], list[int]]:
    """Token ids and labels for ``turns`` (question, answer) pairs; every answer (and its ``<|end|>``) is a target.

    ``entry_format`` is the context-block format the tokenizer's template was made for (:func:`chat_template`).
    """
    special = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    ids: list[int] = []
    labels: list[int] = []

    def prompt(*pieces: int | str) -> None:
        for piece in pieces:
            part = [piece] if isinstance(piece, int) else tokenizer.encode(piece, add_special_tokens=False)
            ids.extend(part)
            labels.extend([IGNORE] * len(part))

    if system:
        prompt(special[SYSTEM], mark_answers(system, entry_format), special[END])
    for question, answer in turns:
        prompt(special[USER], question, special[END], special[ASSISTANT])
        target = tokenizer.encode(answer, add_special_tokens=False) + [special[END]]
        ids.extend(target)
        labels.extend(target)
    return ids, labels
