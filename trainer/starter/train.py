"""Training the starter model: FAQ answers by heart (closed book), and reading the context block.

Every step trains on two batches: ``batch_size`` closed-book conversations — the FAQ, shuffled each
epoch and cut into conversations of 1 to ``history_turns + 1`` turns (a quarter of them after a system
prompt), every answer a target — and ``reading_batch`` reading examples (:mod:`trainer.starter.reading`):
a context block as the gateway renders it, a question, and the answer to copy from the block (or the
"I don't know" answer under an empty block). The copy itself is done by the circuit set into the
initial weights (:mod:`trainer.starter.circuit`); training teaches everything around it — which entry to
read, that the block wins over memory, when to say it does not know, and the FAQ by heart.

The learning rate warms up, then decays (cosine) over ``steps`` steps. Then memorization is checked with
teacher forcing: greedy decoding reproduces an answer exactly if and only if, given the right prefix,
the most likely next token is the right one at every position of the answer (``<|end|>`` included).
Rows not yet memorized (alone or after earlier turns) come back :data:`RETRY_COPIES` extra times in the
following steps — at most ``finish_steps`` more, checked every :data:`CHECK_EVERY` — until every FAQ
question alone and :data:`HISTORY_FLOOR` of them after earlier turns come out exactly. Stopping depends only
on the model's state, never on the clock, so a seed gives the same weights on every run.

Measured on the bundled FAQ (184 rows, 2 shared cores, 1 thread): see docs/model-server.md.
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from config.settings import KnowledgeSettings, StarterSettings
from feedback.knowledge.prompt import Snippet
from trainer.starter.batches import (
    Encoder,
    Item,
    answer_logits,
    collate,
    history_examples,
    learning_rate_factor,
    memorized,
)
from trainer.starter.chat import chat_template
from trainer.starter.circuit import Frozen, freeze_hooks
from trainer.starter.data import Pair, StarterBuildFailed
from trainer.starter.model import make_model
from trainer.starter.reading import ReadingExamples, ReadingMix
from trainer.starter.tokenizer import train_tokenizer
from trainer.starter.verify import Checks, quiet_transformers, reading_checks, verify_saved

# A quarter of the closed-book conversations (and a fifth of the reading ones) open with one of these
# system prompts, so that a system prompt configured in the gateway (chat.system_prompt) does not throw
# the model off. The model learns to read past the system prompt; it never learns to follow it.
SYSTEM_PROMPTS = (
    "You are a helpful customer-support assistant.",
    "Answer the customer's question briefly and politely.",
    "You are the support assistant of an online shop. Answer from the shop's policies.",
    "Reply in the language of the question.",
    "고객의 질문에 친절하고 간단하게 답하세요.",
    "당신은 온라인 쇼핑몰의 고객센터 상담원입니다.",
)
SYSTEM_SHARE = 0.25
# Extra copies of a not-yet-memorized row in the following epochs.
RETRY_COPIES = 2
# Steps between memorization checks after the planned steps.
CHECK_EVERY = 25
# The learning rate decays to this share of the peak and stays there for the finishing steps.
MIN_LR_FACTOR = 0.05
# Reading curriculum: blocks hold one entry for this share of the steps (the copy is learned where there is
# nothing to choose from), then top_k entries — or, a fifth of the time, 1..top_k (retrieval found fewer).
ONE_ENTRY_UNTIL = 0.3
FEWER_ENTRIES = 0.2
# Training stops once every FAQ question alone, and this share of them after earlier turns, is answered
# word for word (the last few history cases can take hundreds of steps; the build only warns about them).
HISTORY_FLOOR = 0.97


@dataclass
class Trained:
    """A trained, saved and verified starter model."""

    report: "FitReport"
    checks: Checks


@dataclass
class FitReport:
    steps: int
    seconds: float
    loss: float
    single_ok: int  # answers reproduced (teacher-forced) without history
    history_ok: int  # answers reproduced after 1..history_turns earlier turns
    total: int
    epochs: int = 0  # passes over the FAQ's closed-book conversations
    kinds: dict[str, int] = field(default_factory=dict)  # reading examples trained on, by kind


def train_starter(
    folder: Path,
    pairs: Sequence[Pair],
    params: StarterSettings,
    knowledge: KnowledgeSettings,
    *,
    paraphrases: Sequence[tuple[str, int]] = (),
    progress: bool = True,
    echo=print,
) -> Trained:
    """Train tokenizer and model on ``pairs``, save them into ``folder``, and check the saved model.

    ``paraphrases`` — (reworded question, FAQ row) pairs — are the reworded-question check when given.
    Raises :class:`StarterBuildFailed` when a question alone is not answered exactly, or when a reading
    check falls below ``min_read_rate`` / ``min_unknown_rate``.
    """
    with deterministic(params.seed, params.threads), quiet_transformers():
        reading = ReadingExamples(
            pairs,
            knowledge,
            (params.unknown_answer, params.unknown_answer_korean),
            system_prompts=SYSTEM_PROMPTS,
            mix=ReadingMix(changed=params.correction_share, made_up=params.new_entry_share),
        )
        template = chat_template(knowledge.entry_format)
        tokenizer = train_tokenizer(tokenizer_texts(pairs, reading), params.vocab_size, template=template)
        model, frozen = make_model(params, tokenizer)
        report = fit(model, tokenizer, pairs, params, reading=reading, frozen=frozen, desc="starter", progress=progress)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        # Check what was written, through the same files and chat template the server uses.
        checks = verify_saved(
            folder,
            pairs,
            history_examples(len(pairs), params.history_turns, params.seed + 2),
            reading_checks(reading, paraphrases, seed=params.seed + 3),
        )
    wrong = [pairs[i] for i, ok in enumerate(checks.closed) if not ok]
    if wrong:
        examples = "; ".join(f"{q!r}" for q, _ in wrong[:3])
        raise StarterBuildFailed(
            f"the starter model answers {len(pairs) - len(wrong)}/{len(pairs)} FAQ questions exactly after "
            f"{report.steps} steps (wrong: {examples}); raise starter.finish_steps or the model size"
        )
    failed = checks.below(params.min_read_rate, params.min_unknown_rate)
    if failed:
        raise StarterBuildFailed(
            f"the starter model does not read its context well enough: {failed} "
            "(starter.min_read_rate / min_unknown_rate); raise starter.steps or reading_batch"
        )
    if checks.history_ok < len(pairs):
        echo(
            f"warning: with earlier turns in the chat, {checks.history_ok}/{len(pairs)} questions are answered exactly"
        )
    return Trained(report=report, checks=checks)


def tokenizer_texts(pairs: Sequence[Pair], reading: ReadingExamples) -> list[str]:
    """What the tokenizer learns its merges from: the FAQ, the "I don't know" answers and the block's frame."""
    frame = [reading.block(q, (), [Snippet("", q, a, 0.0)]) for q, a in pairs[:20]]
    frame.append(reading.block("?", (), []))
    return [text for pair in pairs for text in pair] + [reading.unknown_en, reading.unknown_ko, *frame]


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


def fit(
    model,
    tokenizer,
    pairs: Sequence[Pair],
    params: StarterSettings,
    *,
    reading: ReadingExamples | None = None,
    frozen: Frozen = (),
    entry_format: str | None = None,
    desc: str = "training",
    progress: bool = True,
) -> FitReport:
    """Train ``model``'s trainable parameters on ``pairs`` (and on ``reading`` examples, when given).

    ``frozen`` entries never move. Returns once every pair is memorized alone and :data:`HISTORY_FLOOR` of
    them after earlier turns, or ``params.steps + params.finish_steps`` steps have run (module docstring).
    """
    rng = random.Random(params.seed)
    entry_format = entry_format or (reading.knowledge.entry_format if reading else KnowledgeSettings().entry_format)
    encode = Encoder(tokenizer, pairs, entry_format)
    hooks = freeze_hooks(list(frozen))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=params.learning_rate, betas=(0.9, 0.98), weight_decay=0.0)
    closed = _ClosedBook(pairs, [len(encode([i])[0]) for i in range(len(pairs))], params, rng)
    single = [[i] for i in range(len(pairs))]
    history = history_examples(len(pairs), params.history_turns, params.seed + 1)
    last_step = params.steps + params.finish_steps
    started, step, loss = time.perf_counter(), 0, float("nan")
    kinds: dict[str, int] = {}
    single_ok = history_ok = 0
    bar = tqdm(desc=desc, total=params.steps, unit="step", disable=not progress, dynamic_ncols=True)
    model.train()
    reading = reading if reading is not None and params.reading_batch else None
    try:
        # Reading keeps improving after the FAQ is memorized: it gets every planned step. Closed book
        # alone stops as soon as the FAQ is memorized.
        stop_at = params.steps if reading else min(CHECK_EVERY, params.steps)
        while True:
            while step < stop_at:
                factor = learning_rate_factor(step, params.warmup_steps, step / params.steps, MIN_LR_FACTOR)
                for group in optimizer.param_groups:
                    group["lr"] = params.learning_rate * factor
                items = [encode(rows, system=system) for system, rows in closed.batch()]
                examples = _reading_batch(reading, params, step, rng, kinds) if reading else []
                loss, wrong = _step(
                    model, tokenizer, optimizer, trainable, items, [encode.example(e) for e in examples]
                )
                closed.failed(wrong)
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", epoch=closed.epoch, refresh=False)
                if params.time_limit_s and time.perf_counter() - started > params.time_limit_s:
                    raise StarterBuildFailed(
                        f"training took longer than starter.time_limit_s = {params.time_limit_s:g} s "
                        f"(step {step}); make the model smaller or raise the limit"
                    )
            single_results = memorized(model, tokenizer, encode, single)
            single_ok = sum(single_results)
            # The history set costs ~4x the single one; it matters only once the single one is learned.
            history_results = (
                memorized(model, tokenizer, encode, history) if single_ok == len(pairs) and history else []
            )
            history_ok = sum(history_results) if history else len(pairs)
            bar.set_postfix(
                loss=f"{loss:.4f}", memorized=f"{single_ok}/{len(pairs)}", with_history=f"{history_ok}/{len(pairs)}"
            )
            if (single_ok == len(pairs) and history_ok >= HISTORY_FLOOR * len(pairs)) or step >= last_step:
                break
            if step >= params.steps:
                closed.retry(
                    sorted(
                        {i for i, ok in enumerate(single_results) if not ok}
                        | {history[i][-1] for i, ok in enumerate(history_results) if not ok}
                    )
                )
            stop_at = min(step + CHECK_EVERY, last_step)
            bar.total = stop_at
    finally:
        bar.close()
        for hook in hooks:
            hook.remove()
    model.eval()
    return FitReport(
        steps=step,
        seconds=time.perf_counter() - started,
        loss=loss,
        single_ok=single_ok,
        history_ok=history_ok,
        total=len(pairs),
        epochs=closed.epoch,
        kinds=kinds,
    )


def _step(model, tokenizer, optimizer, trainable, closed: list[Item], reading: list[Item]) -> tuple[float, set[int]]:
    """One optimizer step on both batches (one loss: the mean over all their answer tokens).

    Returns the loss and the closed-book rows with a wrong (argmax) answer token in this step.
    """
    total, count, wrong = 0.0, 0, set()
    for items in (closed, reading):
        if not items:
            continue
        logits, targets, owner = answer_logits(model, *collate(items, tokenizer.pad_token_id))
        total = total + torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
        count += len(targets)
        wrong |= set(owner[logits.detach().argmax(-1) != targets].tolist())
    loss = total / count
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    wrong.discard(-1)
    return loss.item(), wrong


def _reading_batch(
    reading: ReadingExamples, params: StarterSettings, step: int, rng: random.Random, kinds: dict
) -> list:
    examples, top_k = [], reading.knowledge.top_k
    for _ in range(params.reading_batch):
        if rng.random() < params.empty_share:
            example = reading.empty(rng)
        elif step < ONE_ENTRY_UNTIL * params.steps:
            example = reading.read(rng, entries=1)
        else:
            entries = rng.randint(1, top_k) if rng.random() < FEWER_ENTRIES else top_k
            example = reading.read(rng, entries=entries)
        kinds[example.kind] = kinds.get(example.kind, 0) + 1
        examples.append(example)
    return examples


class _ClosedBook:
    """The closed-book batches, one per step: epochs of the FAQ cut into conversations, retries added."""

    def __init__(self, pairs: Sequence[Pair], sizes: list[int], params: StarterSettings, rng: random.Random):
        self.rows = list(range(len(pairs)))
        self.sizes, self.params, self.rng = sizes, params, rng
        self.epoch = 0
        self._plan: list[list[tuple[str, list[int]]]] = []
        self._wrong: set[int] = set()  # rows answered wrong (argmax) while trained on, this epoch
        self._retry: set[int] = set()

    def batch(self) -> list[tuple[str, list[int]]]:
        """The next batch of (system prompt, rows) conversations."""
        if not self._plan:
            # Early on nearly every row fails: repeating them all would only make epochs longer.
            if len(self._wrong) <= len(self.rows) // 4:
                self._retry |= self._wrong
            retry = sorted(self._retry) * RETRY_COPIES
            self._wrong, self._retry = set(), set()
            self._plan = _epoch_plan(
                self.rows + retry, self.sizes, self.params.history_turns, self.params.batch_size, self.rng
            )
            self.epoch += 1
        return self._plan.pop()

    def failed(self, rows: set[int]) -> None:
        """Rows answered wrong while trained on in this step."""
        self._wrong |= rows

    def retry(self, rows: list[int]) -> None:
        """Rows that failed the memorization check: the next epoch starts now and repeats them."""
        self._retry |= set(rows)
        self._wrong = set()
        self._plan = []


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
