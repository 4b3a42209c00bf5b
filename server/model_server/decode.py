"""The token loop: one answer, token by token, with a KV cache, exact stop strings, seeds and usage.

Written by hand rather than with ``model.generate`` + a streamer so that what the
wire promises is exact: text is sent as soon as it is final (never half a UTF-8
character, never the start of a stop string that may still complete), a stop
string is cut from the answer, ``seed`` fixes sampling, and the token counts are
the tokens actually produced.
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
        if not self._started.is_set():
            self._failed_to_start = error
            self._started.set()
        self._events.put(("error", error))


@torch.inference_mode()
def run_generation(model, tokenizer, prompt_ids: list[int], params: SamplingParams, out: Generation) -> None:
    """Produce the answer to ``prompt_ids`` into ``out`` (runs on the model's worker thread)."""
    if out.cancelled:
        return
    device = model.device
    eos = _eos_ids(model, tokenizer)
    generator = torch.Generator(device=device)
    generator.manual_seed(params.seed % (1 << 63) if params.seed is not None else secrets.randbits(63))
    produced: list[int] = []
    sent = 0  # characters of the decoded answer already emitted
    inputs = torch.tensor([prompt_ids], device=device)
    cache = None
    reason, cut_at_stop = "length", False
    for _ in range(params.max_tokens):
        if out.cancelled:
            return
        output = model(input_ids=inputs, past_key_values=cache, use_cache=True)
        cache = output.past_key_values
        token = _pick(output.logits[0, -1], params, generator)
        produced.append(token)
        if token in eos:
            reason = "stop"
            break
        text = tokenizer.decode(produced, skip_special_tokens=True)
        cut = _find_stop(text, params.stop, sent)
        if cut is not None:
            out.emit(text[sent:cut])
            reason, cut_at_stop = "stop", True
            break
        ready = _settled_length(text, params.stop)
        if ready > sent:
            out.emit(text[sent:ready])
            sent = ready
        inputs = torch.tensor([[token]], device=device)
    if not cut_at_stop:
        # Nothing more will come, so what was held back (a partial stop string) is final.
        out.emit(tokenizer.decode(produced, skip_special_tokens=True)[sent:])
    out.finish(reason, len(produced))


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
