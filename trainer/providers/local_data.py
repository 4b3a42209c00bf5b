"""Training examples for the local provider: chat rows → token ids with labels on assistant tokens only.

The loss is on what the model should say — every assistant message and its
end-of-turn token — never on the system prompt, the user's words or padding
(label ``IGNORE``). Two encoders produce those labels:

- the starter model's chat format is encoded by ``trainer.starter.chat.encode_conversation``,
  the same code that trained the starter model (its tests check it against the template);
- any other tokenizer's chat template is rendered to text, and the character
  span each assistant message adds (render up to it with the generation prompt,
  then with it) is mapped to tokens through the tokenizer's offsets.
  ``tests/test_training_local.py`` checks both agree on the starter tokenizer.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch

from trainer.starter.chat import CHAT_TEMPLATE, IGNORE, encode_conversation


class ExampleError(ValueError):
    """A chat row the encoder cannot turn into a training example."""


def encode_messages(tokenizer, messages: Sequence[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """Token ids and labels of one conversation; labels are ``IGNORE`` except on assistant tokens."""
    if tokenizer.chat_template == CHAT_TEMPLATE:
        system, turns = _starter_turns(messages)
        return encode_conversation(tokenizer, turns, system=system)
    return encode_with_template(tokenizer, messages)


def _starter_turns(messages: Sequence[dict[str, Any]]) -> tuple[str, list[tuple[str, str]]]:
    system = ""
    rest = list(messages)
    if rest and rest[0]["role"] == "system":
        system = rest.pop(0)["content"]
    roles = [m["role"] for m in rest]
    if len(rest) % 2 or roles != ["user", "assistant"] * (len(rest) // 2) or not rest:
        raise ExampleError(f"expected user/assistant turns after an optional system message, got {roles}")
    return system, [(rest[i]["content"], rest[i + 1]["content"]) for i in range(0, len(rest), 2)]


def encode_with_template(tokenizer, messages: Sequence[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """Encode through ``tokenizer``'s chat template; each assistant message's characters become targets."""
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    full = _render(tokenizer, messages, generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(_render(tokenizer, messages[:i], generation_prompt=True))
        upto = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        if not full.startswith(upto) or not upto.startswith(full[:start]):
            raise ExampleError(
                "the chat template does not render conversations prefix by prefix; assistant tokens cannot be located"
            )
        spans.append((start, len(upto)))
    if not spans:
        raise ExampleError("the conversation has no assistant message to learn")
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    labels = [
        tok if any(s <= begin < e for s, e in spans) else IGNORE
        for tok, (begin, _end) in zip(ids, encoded["offset_mapping"], strict=False)
    ]
    return ids, labels


def _render(tokenizer, messages: list[dict[str, Any]], *, generation_prompt: bool) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


class ChatExamples(torch.utils.data.Dataset):
    """Encoded, length-capped chat rows; rows left without an answer token are skipped and counted."""

    def __init__(self, tokenizer, rows: Iterable[dict[str, Any]], max_length: int):
        self.items: list[dict[str, list[int]]] = []
        self.skipped = 0
        self.truncated = 0
        for row in rows:
            ids, labels = encode_messages(tokenizer, row["messages"])
            if len(ids) > max_length:
                ids, labels = ids[:max_length], labels[:max_length]
                self.truncated += 1
            # A label at position 0 is never predicted (nothing comes before it).
            if all(label == IGNORE for label in labels[1:]):
                self.skipped += 1
                continue
            self.items.append({"input_ids": ids, "labels": labels})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.items[index]

    @property
    def tokens(self) -> int:
        """Tokens in one pass over the examples (padding excluded)."""
        return sum(len(item["input_ids"]) for item in self.items)

    @property
    def target_tokens(self) -> int:
        """Tokens with a loss in one pass."""
        return sum(sum(1 for label in item["labels"] if label != IGNORE) for item in self.items)


class AssistantOnlyCollator:
    """Right-pads a batch: ``input_ids``, ``attention_mask``, and ``labels`` that are ``IGNORE`` on padding."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, feature in enumerate(features):
            size = len(feature["input_ids"])
            input_ids[row, :size] = torch.tensor(feature["input_ids"])
            labels[row, :size] = torch.tensor(feature["labels"])
            attention_mask[row, :size] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
