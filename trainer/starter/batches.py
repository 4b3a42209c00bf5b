"""Training batches: conversations → token ids with labels, padded tensors, and the logits of answer tokens.

Two kinds of conversation are trained on: closed-book ones — lists of FAQ row indices, every answer a
target — and :class:`~trainer.starter.reading.Example` ones (a system message holding a context block,
then turns) where only the last answer is a target.
"""

from __future__ import annotations

import math
import random
from typing import Sequence

import torch

from trainer.starter.chat import IGNORE, encode_conversation
from trainer.starter.data import Pair
from trainer.starter.reading import Example

Item = tuple[list[int], list[int], list[int]]  # token ids, labels, the row each target belongs to (-1: none)


class Encoder:
    """Encodes conversations into :data:`Item` s, caching each FAQ pair's tokens."""

    def __init__(self, tokenizer, pairs: Sequence[Pair], entry_format: str):
        self.tokenizer = tokenizer
        self.pairs = pairs
        self.entry_format = entry_format
        self._cache: dict[int, tuple[list[int], list[int]]] = {}

    def __call__(self, conversation: list[int], *, system: str = "", last_only: bool = False) -> Item:
        """A closed-book conversation of FAQ rows; every answer is a target (only the last: ``last_only``)."""
        ids: list[int] = []
        if system:
            ids += encode_conversation(self.tokenizer, [], system=system, entry_format=self.entry_format)[0]
        labels: list[int] = [IGNORE] * len(ids)
        owners: list[int] = [-1] * len(ids)
        for position, row in enumerate(conversation):
            if row not in self._cache:
                self._cache[row] = encode_conversation(self.tokenizer, [self.pairs[row]])
            turn_ids, turn_labels = self._cache[row]
            scored = not last_only or position == len(conversation) - 1
            ids += turn_ids
            labels += turn_labels if scored else [IGNORE] * len(turn_labels)
            owners += [row if scored and label != IGNORE else -1 for label in turn_labels]
        return ids, labels, owners

    def example(self, example: Example, owner: int = -1) -> Item:
        """A conversation with a context block; only its last answer is a target (owned by ``owner``)."""
        ids, labels = encode_conversation(
            self.tokenizer, list(example.turns), system=example.system, entry_format=self.entry_format
        )
        answer = len(labels)  # the last answer: the final run of targets (earlier turns' answers are context)
        while answer and labels[answer - 1] != IGNORE:
            answer -= 1
        labels = [IGNORE] * answer + labels[answer:]
        return ids, labels, [owner if label != IGNORE else -1 for label in labels]


def collate(items: Sequence[Item], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, labels and owners."""
    width = max(len(ids) for ids, _, _ in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    owners = torch.full((len(items), width), -1, dtype=torch.long)
    for row, (ids, labs, owns) in enumerate(items):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        owners[row, : len(owns)] = torch.tensor(owns)
    return input_ids, labels, owners


def answer_logits(
    model, input_ids: torch.Tensor, labels: torch.Tensor, owners: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits at the positions that predict an answer token, those tokens, and the rows they belong to.

    The output layer runs only there: over a 2,048-token vocabulary it is a third
    of the model's work, and half of the positions are prompts or padding.
    Right padding needs no attention mask: causal attention never looks right.
    """
    hidden = model.get_decoder()(input_ids=input_ids).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE
    return model.get_output_embeddings()(hidden[:, :-1][keep]), targets[keep], owners[:, 1:][keep]


@torch.no_grad()
def memorized(model, tokenizer, encode: Encoder, conversations: list[list[int]], batch_size: int = 64) -> list[bool]:
    """Per conversation: would greedy decoding reproduce its LAST answer exactly (teacher-forced check)?"""
    was_training = model.training
    model.eval()
    results: list[bool] = []
    for start in range(0, len(conversations), batch_size):
        items = [encode(conv, last_only=True) for conv in conversations[start : start + batch_size]]
        input_ids, labels, owners = collate(items, tokenizer.pad_token_id)
        logits, targets, owner = answer_logits(model, input_ids, labels, owners)
        wrong = set(owner[logits.argmax(-1) != targets].tolist())
        results.extend(conv[-1] not in wrong for conv in conversations[start : start + batch_size])
    model.train(was_training)
    return results


def history_examples(n: int, history_turns: int, seed: int) -> list[list[int]]:
    """For each row i, a conversation of 1..history_turns random earlier rows ending with i (fixed by ``seed``)."""
    if history_turns < 1 or n < 2:
        return []
    rng = random.Random(seed)
    return [[rng.randrange(n) for _ in range(1 + i % history_turns)] + [i] for i in range(n)]


def learning_rate_factor(step: int, warmup: int, progress: float, floor: float) -> float:
    """Linear warm-up over ``warmup`` steps; cosine decay to ``floor`` as training ``progress`` goes 0 → 1."""
    ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return ramp * (floor + (1 - floor) * cosine)
