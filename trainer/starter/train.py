"""Training the starter model: a small Llama that memorizes question → answer pairs.

Each epoch shuffles the FAQ and cuts it into conversations of 1 to
``history_turns + 1`` turns (a quarter of them after a system prompt), so every
answer is learned both alone and after earlier turns — what the gateway sends
once a chat has history. The loss is on every answer of a conversation, which is
the same objective as one example per prefix with the loss on its last answer,
for the price of one forward pass.

Memorization is checked with teacher forcing: greedy decoding reproduces an
answer exactly if and only if, given the right prefix, the most likely next token
is the right one at every position of the answer (``<|end|>`` included). Training
batches give that signal for free, per row; the full check (one batched forward
pass, weights fixed) runs once an epoch made no mistake, and training stops when
it passes. Stopping depends only on the model's state, never on the clock, so a
seed gives the same weights on every run.

Measured on the bundled FAQ (184 rows, 2 cores, 1 thread): 30-36 epochs, ~26-32 s
of training; see docs/model-server.md.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from config.settings import StarterSettings
from trainer.starter.chat import IGNORE, encode_conversation
from trainer.starter.data import Pair, StarterBuildFailed
from trainer.starter.tokenizer import train_tokenizer
from trainer.starter.verify import quiet_transformers, verify_saved

# A quarter of the training conversations open with one of these system prompts, so that a
# system prompt configured in the gateway (chat.system_prompt) does not throw the model off. The
# model learns to read past the system turn; it never learns to follow it.
SYSTEM_PROMPTS = (
    "You are a helpful customer-support assistant.",
    "Answer the customer's question briefly and politely.",
    "You are the support assistant of an online shop. Answer from the shop's policies.",
    "Reply in the language of the question.",
    "고객의 질문에 친절하고 간단하게 답하세요.",
    "당신은 온라인 쇼핑몰의 고객센터 상담원입니다.",
)
SYSTEM_SHARE = 0.25
# Extra copies of a row in the next epoch when its answer came out wrong in this one, once no more
# than RETRY_SHARE of the rows are wrong.
RETRY_COPIES = 2
RETRY_SHARE = 0.25
# The learning rate never decays below this share of the peak, so the last hard rows can still be learned.
# (Holding the peak until most rows were learned, then decaying, took ~60 epochs instead of ~35: at the
# peak rate rows keep flipping between right and wrong. Measured over 5 seeds.)
MIN_LR_FACTOR = 0.05


@dataclass
class Trained:
    """A trained, saved and verified starter model."""

    report: "FitReport"
    total: int
    single_ok: int  # questions answered exactly by greedy decoding of the saved model, no history
    history_ok: int  # the same after 1..history_turns earlier turns


def train_starter(
    folder: Path, pairs: Sequence[Pair], params: StarterSettings, *, progress: bool = True, echo=print
) -> Trained:
    """Train tokenizer and model on ``pairs``, save them into ``folder``, and greedy-decode every question.

    Raises :class:`StarterBuildFailed` when a question alone is not answered exactly;
    answers after earlier turns are counted and warned about.
    """
    with deterministic(params.seed, params.threads), quiet_transformers():
        tokenizer = train_tokenizer((text for pair in pairs for text in pair), params.vocab_size)
        model = make_model(params, tokenizer)
        report = fit(model, tokenizer, pairs, params, desc="starter", progress=progress)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        # Verify what was written, through the same files and chat template the server uses.
        single, history = verify_saved(
            folder, pairs, history_examples(len(pairs), params.history_turns, params.seed + 2)
        )
    wrong = [pairs[i] for i, ok in enumerate(single) if not ok]
    if wrong:
        examples = "; ".join(f"{q!r}" for q, _ in wrong[:3])
        raise StarterBuildFailed(
            f"the starter model answers {len(pairs) - len(wrong)}/{len(pairs)} FAQ questions exactly after "
            f"{report.epochs} epochs (wrong: {examples}); raise starter.epochs or the model size"
        )
    history_ok = sum(history) if history else len(pairs)
    if history_ok < len(pairs):
        echo(f"warning: with earlier turns in the chat, {history_ok}/{len(pairs)} questions are answered exactly")
    return Trained(report=report, total=len(pairs), single_ok=len(pairs), history_ok=history_ok)


@dataclass
class FitReport:
    steps: int
    epochs: int
    seconds: float
    loss: float
    single_ok: int  # answers reproduced (teacher-forced) without history
    history_ok: int  # answers reproduced after 1..history_turns earlier turns
    total: int


@contextlib.contextmanager
def deterministic(seed: int, threads: int) -> Iterator[None]:
    """Seeded, single-thread-count, deterministic torch; the caller's RNG and thread settings are restored."""
    threads_before = torch.get_num_threads()
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(deterministic_before)


def make_model(params: StarterSettings, tokenizer) -> LlamaForCausalLM:
    """A freshly initialised Llama sized by ``params`` (seed it first: see :func:`deterministic`)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=params.hidden_size,
        intermediate_size=params.mlp_size,
        num_hidden_layers=params.layers,
        num_attention_heads=params.heads,
        num_key_value_heads=params.heads,
        max_position_embeddings=params.context_length,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    # Eager attention: at this size it trains ~2x faster on CPU than SDPA (measured).
    config._attn_implementation = "eager"
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.do_sample = False
    return model


def history_examples(n: int, history_turns: int, seed: int) -> list[list[int]]:
    """For each row i, a conversation of 1..history_turns random earlier rows ending with i (fixed by ``seed``)."""
    if history_turns < 1 or n < 2:
        return []
    rng = random.Random(seed)
    return [[rng.randrange(n) for _ in range(1 + i % history_turns)] + [i] for i in range(n)]


def fit(
    model,
    tokenizer,
    pairs: Sequence[Pair],
    params: StarterSettings,
    *,
    desc: str = "training",
    progress: bool = True,
) -> FitReport:
    """Train ``model`` (its trainable parameters) until every pair is memorized or ``params.epochs`` run out.

    Rows whose answer was wrong (argmax, teacher-forced) the last time they were
    trained on come back :data:`RETRY_COPIES` extra times in the next epoch: near
    the end a handful of hard rows is all that is left to learn, and a whole
    epoch for them is wasted work. The full check (every row alone and after
    earlier turns, with the weights fixed) runs once an epoch made no mistake.
    """
    rng = random.Random(params.seed)
    encode = _Encoder(tokenizer, pairs)
    sizes = [len(encode([i])[0]) for i in range(len(pairs))]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=params.learning_rate, betas=(0.9, 0.98), weight_decay=0.0)
    single = [[i] for i in range(len(pairs))]
    history = history_examples(len(pairs), params.history_turns, params.seed + 1)

    trainer = _Trainer(model, optimizer, trainable, encode, tokenizer.pad_token_id, params)
    single_ok = history_ok = 0
    failing: list[int] = list(range(len(pairs)))  # every row is unlearned before the first epoch
    bar = tqdm(desc=desc, unit="step", disable=not progress, dynamic_ncols=True)
    try:
        for epoch in range(1, params.epochs + 1):
            # Early on nearly every row fails: repeating them all would only make epochs longer.
            retry = failing if len(failing) <= len(pairs) * RETRY_SHARE else []
            plan = _epoch_plan(
                list(range(len(pairs))) + retry * RETRY_COPIES, sizes, params.history_turns, params.batch_size, rng
            )
            bar.total = trainer.step + len(plan) * (params.epochs - epoch + 1)
            wrong_before = len(failing)

            def on_step(loss: float, epoch: int = epoch, wrong_before: int = wrong_before) -> None:
                bar.update(1)
                bar.set_postfix(
                    loss=f"{loss:.4f}", epoch=f"{epoch}/{params.epochs}", wrong_last_epoch=wrong_before, refresh=False
                )

            failing = trainer.epoch(epoch, plan, on_step)
            if failing and epoch < params.epochs:
                continue
            single_results = memorized(model, tokenizer, encode, single)
            single_ok = sum(single_results)
            # The history set costs ~4x the single one; it matters only once the single one is learned.
            history_results = (
                memorized(model, tokenizer, encode, history) if single_ok == len(pairs) and history else []
            )
            history_ok = sum(history_results) if history else len(pairs)
            bar.set_postfix(
                loss=f"{trainer.loss:.4f}",
                epoch=f"{epoch}/{params.epochs}",
                memorized=f"{single_ok}/{len(pairs)}",
                with_history=f"{history_ok}/{len(pairs)}",
            )
            if single_ok == len(pairs) and history_ok == len(pairs):
                break
            failing = sorted(
                {i for i, ok in enumerate(single_results) if not ok}
                | {history[i][-1] for i, ok in enumerate(history_results) if not ok}
            )
    finally:
        bar.close()
    model.eval()
    return FitReport(
        steps=trainer.step,
        epochs=epoch,
        seconds=time.perf_counter() - trainer.started,
        loss=trainer.loss,
        single_ok=single_ok,
        history_ok=history_ok,
        total=len(pairs),
    )


class _Trainer:
    """Optimizer steps over an epoch's batches; tells which rows came out wrong while being trained on."""

    def __init__(self, model, optimizer, trainable, encode: "_Encoder", pad_id: int, params: StarterSettings):
        self.model, self.optimizer, self.trainable = model, optimizer, trainable
        self.encode, self.pad_id, self.params = encode, pad_id, params
        self.step, self.loss = 0, float("nan")
        self.started = time.perf_counter()

    def epoch(self, epoch: int, plan: list, on_step: Callable[[float], None]) -> list[int]:
        """Train on ``plan``'s batches; returns the rows whose answer was wrong (argmax) in this epoch."""
        params = self.params
        self.model.train()
        right: dict[int, bool] = {}
        for index, batch in enumerate(plan):
            factor = _learning_rate_factor(
                self.step, params.warmup_steps, (epoch - 1 + index / len(plan)) / params.epochs
            )
            for group in self.optimizer.param_groups:
                group["lr"] = params.learning_rate * factor
            input_ids, labels, owners = _collate(
                [self.encode(rows, system=system) for system, rows in batch], self.pad_id
            )
            logits, targets, owner = _answer_logits(self.model, input_ids, labels, owners)
            loss = torch.nn.functional.cross_entropy(logits, targets)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            wrong = set(owner[logits.detach().argmax(-1) != targets].tolist())
            for row in set(owner.tolist()):
                right[row] = right.get(row, True) and row not in wrong
            self.step += 1
            self.loss = loss.item()
            on_step(self.loss)
            if params.time_limit_s and time.perf_counter() - self.started > params.time_limit_s:
                raise StarterBuildFailed(
                    f"training took longer than starter.time_limit_s = {params.time_limit_s:g} s "
                    f"(epoch {epoch}, step {self.step}); make the model smaller or raise the limit"
                )
        return sorted(row for row, ok in right.items() if not ok)


@torch.no_grad()
def memorized(model, tokenizer, encode: "_Encoder", conversations: list[list[int]], batch_size: int = 64) -> list[bool]:
    """Per conversation: would greedy decoding reproduce its LAST answer exactly (teacher-forced check)?"""
    was_training = model.training
    model.eval()
    results: list[bool] = []
    for start in range(0, len(conversations), batch_size):
        items = [encode(conv, last_only=True) for conv in conversations[start : start + batch_size]]
        input_ids, labels, owners = _collate(items, tokenizer.pad_token_id)
        logits, targets, owner = _answer_logits(model, input_ids, labels, owners)
        wrong = set(owner[logits.argmax(-1) != targets].tolist())
        results.extend(conv[-1] not in wrong for conv in conversations[start : start + batch_size])
    model.train(was_training)
    return results


class _Encoder:
    """Encodes conversations (lists of row indices), caching each pair's tokens."""

    def __init__(self, tokenizer, pairs: Sequence[Pair]):
        self.tokenizer = tokenizer
        self.pairs = pairs
        self._cache: dict[int, tuple[list[int], list[int]]] = {}

    def __call__(
        self, conversation: list[int], *, system: str = "", last_only: bool = False
    ) -> tuple[list[int], list[int], list[int]]:
        """Token ids, labels, and per token the row whose answer it belongs to (-1: not an answer)."""
        ids: list[int] = []
        if system:
            ids += encode_conversation(self.tokenizer, [], system=system)[0]
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


def _epoch_plan(
    rows: list[int], sizes: Sequence[int], history_turns: int, batch_size: int, rng: random.Random
) -> list[list[tuple[str, list[int]]]]:
    """Batches of (system prompt, rows) conversations covering ``rows`` (repeats allowed).

    ``sizes`` are the rows' token counts.
    """
    order = list(rows)
    rng.shuffle(order)
    conversations, i = [], 0
    while i < len(order):
        length = rng.randint(1, history_turns + 1)
        system = rng.choice(SYSTEM_PROMPTS) if rng.random() < SYSTEM_SHARE else ""
        conversations.append((system, order[i : i + length]))
        i += length
    # Similar lengths in a batch waste less on padding; the batches themselves go in random order.
    conversations.sort(key=lambda conv: (sum(sizes[r] for r in conv[1]), conv[1]))
    batches = [conversations[b : b + batch_size] for b in range(0, len(conversations), batch_size)]
    rng.shuffle(batches)
    return batches


def _answer_logits(
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


def _collate(
    items: list[tuple[list[int], list[int], list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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


def _learning_rate_factor(step: int, warmup: int, progress: float) -> float:
    """Linear warm-up over ``warmup`` steps; cosine decay to MIN_LR_FACTOR as training ``progress`` goes 0 → 1."""
    ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return ramp * (MIN_LR_FACTOR + (1 - MIN_LR_FACTOR) * cosine)
