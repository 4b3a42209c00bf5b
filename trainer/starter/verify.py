"""Checking a saved model the way it will be used: chat template in, greedy answer out."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from trainer.starter.data import Pair


def verify_saved(folder: Path, pairs: Sequence[Pair], history: list[list[int]]) -> tuple[list[bool], list[bool]]:
    """Greedy-decode every question of the model in ``folder``, alone and in the ``history`` conversations.

    ``history`` holds, per row, row indices whose turns come first (the row itself
    last). Returns, per row, whether each answer came out exactly.
    """
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    longest = max(len(tokenizer.encode(answer, add_special_tokens=False)) for _, answer in pairs)
    single = [[{"role": "user", "content": q}] for q, _ in pairs]
    with_history = []
    for conversation in history:
        messages = []
        for i in conversation[:-1]:
            messages += [{"role": "user", "content": pairs[i][0]}, {"role": "assistant", "content": pairs[i][1]}]
        with_history.append(messages + [{"role": "user", "content": pairs[conversation[-1]][0]}])
    answers = greedy_answers(model, tokenizer, single + with_history, max_new_tokens=longest + 8)
    expected = [answer for _, answer in pairs]
    single_ok = [a == e for a, e in zip(answers[: len(pairs)], expected, strict=False)]
    history_ok = [a == expected[conv[-1]] for a, conv in zip(answers[len(pairs) :], history, strict=False)]
    return single_ok, history_ok


@torch.no_grad()
def greedy_answers(
    model, tokenizer, conversations: list[list[dict]], *, max_new_tokens: int, batch_size: int = 32
) -> list[str]:
    """Greedy answers to chat ``conversations`` (batched, left-padded ``generate``)."""
    answers: list[str] = []
    for start in range(0, len(conversations), batch_size):
        prompts = [
            tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False)
            for c in conversations[start : start + batch_size]
        ]
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        output = model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        answers.extend(tokenizer.decode(row[width:], skip_special_tokens=True) for row in output)
    return answers


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
