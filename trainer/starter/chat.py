"""The starter model's chat format: special tokens, the Jinja template, and the training encoding.

A conversation renders as ``<|system|>…<|end|>`` (only when the system message is
not empty), then ``<|user|>…<|end|><|assistant|>…<|end|>`` per turn; a generation
prompt is a trailing ``<|assistant|>``. ``<|end|>`` is the end-of-turn (EOS) token.
:func:`encode_conversation` builds the same ids piece by piece so it knows which
tokens are answers (the only ones with a loss); ``tests/test_starter.py`` checks
that it agrees with ``apply_chat_template`` on the saved tokenizer.
"""

from __future__ import annotations

from typing import Sequence

PAD, END, SYSTEM, USER, ASSISTANT = "<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"
SPECIAL_TOKENS = [PAD, END, SYSTEM, USER, ASSISTANT]
IGNORE = -100  # label of tokens without a loss (prompts, history questions, padding)

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- if message['content'] -%}" + SYSTEM + "{{ message['content'] }}" + END + "{%- endif -%}"
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


def encode_conversation(
    tokenizer,
    turns: Sequence[tuple[str, str]],
    *,
    system: str = "",
) -> tuple[list[int], list[int]]:
    """Token ids and labels for ``turns`` (question, answer) pairs; every answer (and its ``<|end|>``) is a target."""
    special = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    ids: list[int] = []
    labels: list[int] = []

    def prompt(*pieces: int | str) -> None:
        for piece in pieces:
            part = [piece] if isinstance(piece, int) else tokenizer.encode(piece, add_special_tokens=False)
            ids.extend(part)
            labels.extend([IGNORE] * len(part))

    if system:
        prompt(special[SYSTEM], system, special[END])
    for question, answer in turns:
        prompt(special[USER], question, special[END], special[ASSISTANT])
        target = tokenizer.encode(answer, add_special_tokens=False) + [special[END]]
        ids.extend(target)
        labels.extend(target)
    return ids, labels
