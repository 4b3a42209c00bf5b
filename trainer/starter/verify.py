"""Checking a saved model the way it will be used: chat template in, greedy answer out.

Closed book, every FAQ question must come out word for word (alone; after earlier turns is counted).
Reading, four sets built from the FAQ with a seed of their own — never trained on as such:

- ``reworded``: a question in other words (``paraphrases`` when given, else a noisy version of the FAQ
  question) over a block with its entry first and two retrieved distractors → that entry's answer;
- ``corrections``: every FAQ question over a block whose first entry is its own entry with the answer
  changed (numbers, days, words, sentences) → the changed answer, not the one learned by heart;
- ``new_entries``: made-up entries first in the block, asked with their own question → their answer;
- ``unknown``: every FAQ question, reworded, over an empty block → the "I don't know" answer in its language.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from trainer.starter.data import Pair
from trainer.starter.reading import Example, ReadingExamples
from trainer.starter.rewording import reword

NEW_ENTRY_CHECKS = 60  # at most; as many as there are FAQ rows for a smaller FAQ
READ_SETS = ("reworded", "corrections", "new_entries")


@dataclass
class Checks:
    """Per check, whether the saved model's greedy answer was exactly the expected one."""

    closed: list[bool]
    history: list[bool]
    reading: dict[str, list[bool]] = field(default_factory=dict)

    @property
    def history_ok(self) -> int:
        return sum(self.history) if self.history else len(self.closed)

    def rates(self) -> dict[str, float]:
        """Share right per reading set."""
        return {name: sum(results) / len(results) for name, results in self.reading.items() if results}

    def below(self, min_read: float, min_unknown: float) -> str:
        """The reading sets under their floor, said in words ("" when none)."""
        failing = []
        for name, rate in self.rates().items():
            floor = min_unknown if name == "unknown" else min_read
            if rate < floor:
                failing.append(f"{name} {sum(self.reading[name])}/{len(self.reading[name])} < {floor:.0%}")
        return ", ".join(failing)

    def summary(self) -> str:
        return ", ".join(f"{name} {sum(r)}/{len(r)}" for name, r in self.reading.items())


def reading_checks(
    reading: ReadingExamples, paraphrases: Sequence[tuple[str, int]], *, seed: int
) -> dict[str, list[Example]]:
    """The four reading check sets (see the module docstring), fixed by ``seed``."""
    rng = random.Random(seed)
    pairs = reading.pairs
    if paraphrases:
        asked = list(paraphrases)
    else:
        asked = [(reword(q, rng), i) for i, (q, _) in enumerate(pairs)]
    reworded = [reading.at_first(question, pairs[row], row, rng, changed=False) for question, row in asked]
    corrections = [reading.at_first(q, (q, a), i, rng, changed=True) for i, (q, a) in enumerate(pairs)]
    top_k = reading.knowledge.top_k
    new_entries = [
        reading.read(rng, entries=top_k, kind="made_up", rank=1) for _ in range(min(NEW_ENTRY_CHECKS, len(pairs)))
    ]
    unknown = [reading.empty_for(reword(q, rng)) for q, _ in pairs]
    return {"reworded": reworded, "corrections": corrections, "new_entries": new_entries, "unknown": unknown}


def verify_saved(
    folder: Path, pairs: Sequence[Pair], history: list[list[int]], reading: dict[str, list[Example]]
) -> Checks:
    """Greedy-decode every check with the model in ``folder`` (see the module docstring).

    ``history`` holds, per row, row indices whose turns come first (the row itself last).
    """
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    conversations: list[list[dict]] = [[{"role": "user", "content": q}] for q, _ in pairs]
    expected = [answer for _, answer in pairs]
    for conversation in history:
        messages = []
        for i in conversation[:-1]:
            messages += [{"role": "user", "content": pairs[i][0]}, {"role": "assistant", "content": pairs[i][1]}]
        conversations.append(messages + [{"role": "user", "content": pairs[conversation[-1]][0]}])
        expected.append(pairs[conversation[-1]][1])
    for examples in reading.values():
        for example in examples:
            conversations.append(example_messages(example))
            expected.append(example.turns[-1][1])
    longest = max(len(tokenizer.encode(answer, add_special_tokens=False)) for answer in expected)
    answers = greedy_answers(model, tokenizer, conversations, max_new_tokens=longest + 8)
    right = [a == e for a, e in zip(answers, expected, strict=True)]
    checks = Checks(closed=right[: len(pairs)], history=right[len(pairs) : len(pairs) + len(history)])
    position = len(pairs) + len(history)
    for name, examples in reading.items():
        checks.reading[name] = right[position : position + len(examples)]
        position += len(examples)
    return checks


def example_messages(example: Example) -> list[dict]:
    """The chat messages of ``example`` up to its last question (what the gateway sends)."""
    messages = [{"role": "system", "content": example.system}] if example.system else []
    for question, answer in example.turns[:-1]:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages + [{"role": "user", "content": example.turns[-1][0]}]


@torch.no_grad()
def greedy_answers(
    model, tokenizer, conversations: list[list[dict]], *, max_new_tokens: int, batch_size: int = 32
) -> list[str]:
    """Greedy answers to chat ``conversations`` (batched, left-padded ``generate``; similar lengths batched)."""
    prompts = [
        tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False)
        for c in conversations
    ]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: dict[int, str] = {}
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in chunk)
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(prompts[i])) + prompts[i] for i in chunk])
        mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in chunk])
        output = model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        for i, row in zip(chunk, output, strict=True):
            answers[i] = tokenizer.decode(row[width:], skip_special_tokens=True)
    return [answers[i] for i in range(len(prompts))]


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No "Loading weights" / "Writing model shards" bars between ours."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
