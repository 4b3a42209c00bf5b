"""The token loop: a batch of answers, token by token, with a KV cache, exact stop strings, seeds and usage.

Written by hand rather than with ``model.generate`` + a streamer so that what the
wire promises is exact for every answer of a batch: text is sent as soon as it is
final (never half a UTF-8 character, never the start of a stop string that may
still complete), a stop string is cut from the answer, ``seed`` fixes sampling,
and the token counts are the tokens actually produced. There is one path: an
answer alone is a batch of one.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
from dataclasses import dataclass
from typing import Iterator

import torch

from config.errors import TuneloopError

log = logging.getLogger("tuneloop.model_server")


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


class Generation:
    """A queued or running answer. Iterate for text pieces; then read ``finish_reason`` and the counts.

    Iteration blocks while the request waits its turn. Stopping early (or
    :meth:`cancel`) tells the model's worker to drop the rest of the answer.
    :meth:`wait_started` blocks until the worker took the request and switched the
    model to its adapter, and raises what failed before that, so such a failure
    can still become an HTTP status instead of an error inside a 200 stream.
    """

    def __init__(self, prompt_tokens: int):
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._cancelled = threading.Event()
        self._started = threading.Event()
        self._failed_to_start: TuneloopError | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            while True:
                kind, value = self._events.get()
                if kind == "text":
                    yield value
                elif kind == "error":
                    raise value
                else:
                    return
        finally:
            self.cancel()

    def collect(self) -> str:
        """The whole answer."""
        return "".join(self)

    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def wait_started(self) -> None:
        """Wait until the answer has started; raise the error that stopped it before it did."""
        self._started.wait()
        if self._failed_to_start is not None:
            raise self._failed_to_start

    # the worker's side
    def start(self) -> None:
        self._started.set()

    def emit(self, text: str) -> None:
        if text:
            self._events.put(("text", text))

    def finish(self, reason: str, completion_tokens: int) -> None:
        self.finish_reason = reason
        self.completion_tokens = completion_tokens
        self._events.put(("done", None))

    def fail(self, error: TuneloopError) -> None:
        if self.finish_reason is not None:
            return  # finished before its batch failed: the answer stands
        if not self._started.is_set():
            self._failed_to_start = error
            self._started.set()
        self._events.put(("error", error))


@dataclass(frozen=True)
class Request:
    """One answer to produce: the templated prompt, how to sample, where the text goes."""

    prompt_ids: list[int]
    params: SamplingParams
    out: Generation


class _Row:
    """One answer of a batch being decoded: its own generator, tokens so far, and text already sent."""

    def __init__(self, request: Request, device, tokenizer, eos: set[int]):
        self.params = request.params
        self.out = request.out
        self.generator = torch.Generator(device=device)
        seed = self.params.seed % (1 << 63) if self.params.seed is not None else secrets.randbits(63)
        self.generator.manual_seed(seed)
        self.produced: list[int] = []
        self.sent = 0  # characters of the decoded answer already emitted
        self._tokenizer = tokenizer
        self._eos = eos

    def advance(self, logits: torch.Tensor) -> bool:
        """Pick the next token from ``logits``, send what became final; True when the answer is finished."""
        token = _pick(logits, self.params, self.generator)
        self.produced.append(token)
        if token in self._eos:
            return self._finish("stop")
        text = self._tokenizer.decode(self.produced, skip_special_tokens=True)
        cut = _find_stop(text, self.params.stop, self.sent)
        if cut is not None:
            self.out.emit(text[self.sent : cut])
            self.out.finish("stop", len(self.produced))
            return True
        ready = _settled_length(text, self.params.stop)
        if ready > self.sent:
            self.out.emit(text[self.sent : ready])
            self.sent = ready
        if len(self.produced) >= self.params.max_tokens:
            return self._finish("length")
        return False

    def _finish(self, reason: str) -> bool:
        # Nothing more will come, so what was held back (a partial stop string) is final.
        self.out.emit(self._tokenizer.decode(self.produced, skip_special_tokens=True)[self.sent :])
        self.out.finish(reason, len(self.produced))
        return True


@torch.inference_mode()
def run_batch(model, tokenizer, requests: list[Request]) -> None:
    """Produce the answers to ``requests`` together, one forward pass per token (runs on the model's worker thread).

    Prompts are left-padded to the longest; the attention mask hides the padding and
    each row's position ids start at 0, so every row sees exactly what it would see
    alone (a batch of one is plain decoding). A row that ends (end of turn, stop
    string, ``max_tokens``, cancelled) leaves the batch and the KV cache at once.
    """
    device = model.device
    eos = _eos_ids(model, tokenizer)
    rows = [_Row(r, device, tokenizer, eos) for r in requests if not r.out.cancelled]
    prompts = [r.prompt_ids for r in requests if not r.out.cancelled]
    if not rows:
        return
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # any id: it is masked out
    inputs = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = None
    while True:
        output = model(
            input_ids=inputs,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        cache = output.past_key_values
        logits = output.logits[:, -1]
        going = [i for i, row in enumerate(rows) if not row.out.cancelled and not row.advance(logits[i])]
        going = [i for i in going if not rows[i].out.cancelled]  # a client that left meanwhile
        if not going:
            return
        if len(going) < len(rows):
            keep = torch.tensor(going, device=device)
            cache.batch_select_indices(keep)
            mask, positions = mask[keep], positions[keep]
            rows = [rows[i] for i in going]
        inputs = torch.tensor([[row.produced[-1]] for row in rows], device=device)
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=-1)
        positions = positions[:, -1:] + 1


def _pick(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    if params.temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest set of most likely tokens whose mass reaches top_p (always at least one).
        outside = (torch.cumsum(sorted_probs, dim=-1) - sorted_probs) >= params.top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        return int(order[torch.multinomial(sorted_probs, 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))


def _eos_ids(model, tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    ids.discard(None)
    return ids


def _find_stop(text: str, stops: tuple[str, ...], sent: int) -> int | None:
    """Index where the earliest stop string starts, searching only text that can still contain a new one."""
    if not stops:
        return None
    start = max(0, sent - max(len(s) for s in stops))
    hits = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(hits) if hits else None


def _settled_length(text: str, stops: tuple[str, ...]) -> int:
    """How much of ``text`` can be sent: not a trailing partial UTF-8 character, not a possible stop-string start."""
    end = len(text)
    # Byte-level BPE can end mid-character; decode shows that as U+FFFD until the rest arrives.
    while end and text[end - 1] == "\ufffd":
        end -= 1
    for stop in stops:
        for k in range(min(len(stop) - 1, end), 0, -1):
            if text.endswith(stop[:k], 0, end):
                end -= k
                break
    return end
