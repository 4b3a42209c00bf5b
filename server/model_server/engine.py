"""Models, adapters and who may touch them: the built-in model server's engine.

Every loaded model lives on its own worker thread (:class:`ModelWorker`) that
runs, in arrival order, everything that touches its weights: generations,
switching the active LoRA adapter, loading and deleting adapters. When it takes
an answer it also takes the answers already queued behind it for the same
adapter (up to ``model_server.max_batch``, never past other work) and decodes
them as one batch (:func:`decode.run_batch`); answers arriving meanwhile wait
for the next batch. Request threads only wait on the answer's events, so a slow
client never holds the model and a disconnected one cancels its answer.

Names are one namespace, as in vLLM: the base model, LoRA adapters on top of it
(``POST /v1/load_lora_adapter`` with a PEFT folder) and separate full models
loaded under a name (the same endpoint with a folder holding ``config.json``).

A bad adapter never takes serving down (see docs/model-server.md, "When an
adapter fails"):

- before it becomes selectable it is checked (``checks.attach``: the weights fit,
  a short generation runs with it) in a scratch copy of the base read from disk,
  while the serving model keeps answering (``model_server.adapter_check``), then
  attached to the serving model the same way;
- whenever adapter work on a serving model fails, the model is cleaned up and
  :func:`checks.verify` proves the base and every other adapter still give their
  recorded logits; if cleaning up raises or the logits moved, the model is
  reloaded from disk (with the adapters that still pass) before the next request;
- a switch that fails while serving fails only that request, or the batch
  waiting for that adapter (503 ``adapter_unavailable``), and the worker's record of the active adapter is
  only ever set after a switch succeeded.
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from config.errors import InvalidRequest, NotFound, TuneloopError, ValidationFailed
from server.model_server.checks import Fingerprints, activate, attach, probe, probe_ids, verify
from server.model_server.decode import Generation, Request, SamplingParams, run_batch
from server.model_server.metrics import ServerMetrics

log = logging.getLogger("tuneloop.model_server")

ADAPTER_CHECKS = ("scratch", "in_place")
_UNKNOWN = "<unknown>"  # the active adapter while a failed switch is being repaired


class ModelLoadError(InvalidRequest):
    """The folder is not a model or adapter this server can load."""

    code = "invalid_model_path"


class AdapterRefused(ModelLoadError):
    """The adapter failed its check (its weights do not fit, or running it raised); nothing changed."""

    code = "adapter_refused"


class ModelUnavailable(TuneloopError):
    """This request cannot be answered by that model now (its adapter failed); others are unaffected."""

    status = 503
    code = "adapter_unavailable"


def pick_device(device: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidRequest("model_server.device is cuda but no CUDA device is visible", field="model_server.device")
    return device


@dataclass(frozen=True)
class _Answer:
    """A queued generation job: the request and the adapter it must run with (None: the base)."""

    request: Request
    adapter: str | None


class _Jobs:
    """A worker's FIFO of jobs (an :class:`_Answer`, a ``(fn, future)`` call, or ``None`` to stop).

    Unlike ``queue.Queue`` it lets the worker take the answers queued behind the
    one it got, to decode them in the same batch.
    """

    def __init__(self):
        self._items: deque = deque()
        self._ready = threading.Condition()

    def put(self, job) -> None:
        with self._ready:
            self._items.append(job)
            self._ready.notify()

    def get(self):
        with self._ready:
            while not self._items:
                self._ready.wait()
            return self._items.popleft()

    def take_answers(self, adapter: str | None, limit: int) -> list[_Answer]:
        """Remove and return up to ``limit`` queued answers for ``adapter``, stopping at the first job of another kind.

        Answers for other adapters stay queued in their order; nothing moves ahead of
        adapter work or a call queued before it. Answers already cancelled are dropped.
        """
        taken: list[_Answer] = []
        with self._ready:
            kept: list = []
            while self._items and len(taken) < limit and isinstance(self._items[0], _Answer):
                job = self._items.popleft()
                if job.request.out.cancelled:
                    continue
                (taken if job.adapter == adapter else kept).append(job)
            self._items.extendleft(reversed(kept))
        return taken


@dataclass(frozen=True)
class AttachedAdapter:
    """An adapter on a worker's model: its served name and the folder it is (re)loaded from."""

    name: str
    folder: Path


class ModelWorker:
    """One model, its tokenizer, its adapters, and the thread that runs everything touching them.

    ``loader`` reads the model from disk again (same device and dtype): it is how a
    model that can no longer be trusted is replaced. ``on_dropped(name, internal,
    reason)`` is told when an adapter failed while serving and was taken off.
    """

    def __init__(
        self,
        name: str,
        path: Path,
        model,
        tokenizer,
        *,
        loader: Callable[[], Any],
        metrics: ServerMetrics,
        on_dropped: Callable[[str, str, str], None] | None = None,
        torch_threads: int = 0,
        max_batch: int = 1,
    ):
        self.name = name
        self.path = path
        self.model = model
        self.tokenizer = tokenizer
        self.created = int(time.time())
        self.context_length = _context_length(model, tokenizer)
        self.probe_ids = probe_ids(tokenizer)
        self.fingerprints: Fingerprints = {None: probe(model, self.probe_ids)}
        self.adapters: dict[str, AttachedAdapter] = {}  # by internal name
        self.problem: str | None = None  # why the model is unusable (a reload from disk failed); None: fine
        self._loader = loader
        self._metrics = metrics
        self._on_dropped = on_dropped
        self._torch_threads = torch_threads
        self._max_batch = max_batch
        self._active_adapter: str | None = None
        self._jobs = _Jobs()
        self._thread = threading.Thread(target=self._run, name=f"model:{name}", daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the worker thread after the jobs queued before it; returns its result or raises."""
        future: Future = Future()
        self._jobs.put((fn, future))
        return future.result()

    def generate(self, prompt_ids: list[int], params: SamplingParams, adapter: str | None) -> Generation:
        """Queue an answer; returns at once with a :class:`Generation` to iterate."""
        out = Generation(prompt_tokens=len(prompt_ids))
        self._jobs.put(_Answer(Request(prompt_ids, params, out), adapter))
        return out

    def stop(self) -> None:
        """Finish the queued jobs, then end the thread."""
        self._jobs.put(None)

    def _run(self) -> None:
        if self._torch_threads:
            torch.set_num_threads(self._torch_threads)
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if isinstance(job, _Answer):
                if job.request.out.cancelled:
                    continue  # its client left while it waited
                self._answer([job, *self._jobs.take_answers(job.adapter, self._max_batch - 1)])
                continue
            fn, future = job
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                future.set_exception(exc)

    # --- everything below runs on the worker thread only ----------------------------------

    def _answer(self, batch: list[_Answer]) -> None:
        """Switch to the batch's adapter, then decode its answers together."""
        try:
            self._switch(batch[0].adapter)
        except TuneloopError as exc:  # these requests only; the model was repaired for the next ones
            for job in batch:
                job.request.out.fail(exc)
            return
        for job in batch:
            job.request.out.start()
        self._metrics.batch_size.observe(len(batch))
        try:
            run_batch(self.model, self.tokenizer, [job.request for job in batch])
        except Exception as exc:  # noqa: BLE001 - the unfinished requests get a 500, the worker lives on
            log.exception("generation failed on %s", self.name)
            error = TuneloopError(f"generation failed: {type(exc).__name__}: {exc}")
            for job in batch:
                job.request.out.fail(error)

    def _label(self, internal: str | None) -> str:
        if internal is None:
            return f"the base model {self.name!r}"
        attached = self.adapters.get(internal)
        return f"adapter {attached.name!r}" if attached else f"adapter {internal}"

    def _ensure_usable(self) -> None:
        if self.problem:
            self._reload(self.problem)  # the last reload failed: try again before using the model
        if self.problem:
            raise ModelUnavailable(
                f"model {self.name!r} is unavailable: {self.problem}", field="model", code="model_unavailable"
            )

    def _switch(self, adapter: str | None) -> None:
        """Make ``adapter`` (None: the base) active, or fail this request and repair the model."""
        self._ensure_usable()
        if adapter is not None and adapter not in self.adapters:
            raise ModelUnavailable("the adapter this request was routed to was unloaded meanwhile", field="model")
        if adapter == self._active_adapter:
            return
        label = self._label(adapter)
        try:
            activate(self.model, adapter)
        except Exception as exc:  # noqa: BLE001 - PEFT raises many kinds; the model state is now unknown
            self._active_adapter = _UNKNOWN
            self._metrics.switch_failures.labels(self.name).inc()
            log.exception("switching %s to %s failed", self.name, label)
            reason = f"switching to {label} raised {type(exc).__name__}: {exc}"
            self._reload(reason)
            raise ModelUnavailable(
                f"{reason}; this request failed and the model was reloaded from disk", field="model"
            ) from exc
        self._active_adapter = adapter

    def _add_adapter(self, internal: str, name: str, folder: Path) -> None:
        """Attach a checked adapter to the serving model; on failure leave the model as it was, provably."""
        started = time.perf_counter()
        try:
            self._ensure_usable()
            self._active_adapter = _UNKNOWN  # attach switches adapters on and off
            try:
                fingerprint = attach(self.model, internal, folder, self.probe_ids)
                verify(self.model, self.probe_ids, self.fingerprints)  # the base and the others: unchanged
            except Exception:
                self._restore(internal, f"attaching adapter {name!r} failed")
                raise
            self._active_adapter = None
            self.adapters[internal] = AttachedAdapter(name, folder)
            self.fingerprints[internal] = fingerprint
        finally:
            self._metrics.pause_seconds.labels("adapter_load").observe(time.perf_counter() - started)

    def _delete_adapter(self, internal: str) -> None:
        started = time.perf_counter()
        attached = self.adapters.pop(internal, None)
        self.fingerprints.pop(internal, None)
        try:
            if internal in (getattr(self.model, "peft_config", None) or {}):
                self._active_adapter = _UNKNOWN  # PEFT picks another active adapter when it deletes one
                self.model.delete_adapter(internal)
                activate(self.model, None)
                self._active_adapter = None
        except Exception as exc:  # noqa: BLE001 - it is gone from the served names either way
            name = attached.name if attached else internal
            self._reload(f"unloading adapter {name!r} raised {type(exc).__name__}: {exc}")
        finally:
            self._metrics.pause_seconds.labels("adapter_unload").observe(time.perf_counter() - started)

    def _restore(self, leftover: str, what: str) -> None:
        """After adapter work failed: remove ``leftover``, then prove the rest answers as before, else reload."""
        try:
            if leftover in (getattr(self.model, "peft_config", None) or {}):
                self.model.delete_adapter(leftover)
            verify(self.model, self.probe_ids, self.fingerprints)
            self._active_adapter = None
        except Exception as exc:  # noqa: BLE001 - cleanup that raises means the model cannot be trusted
            log.exception("cleaning up %s after a failure", self.name)
            self._reload(f"{what}, and cleaning up raised {type(exc).__name__}: {exc}")

    def _reload(self, reason: str) -> None:
        """Replace the model with a fresh copy from disk and re-attach every adapter that still passes.

        An adapter that no longer attaches is dropped (``on_dropped``) and the copy is
        read again without it, so the result is always a model nothing half-failed on.
        If reading fails, :attr:`problem` says why and the next request tries again.
        """
        started = time.perf_counter()
        log.warning("reloading model %s from %s: %s", self.name, self.path, reason)
        self._active_adapter = _UNKNOWN
        self.model = None  # free the untrusted copy first: a GPU may not hold two
        _free_memory()
        while True:
            try:
                model = self._loader()
                fingerprints: Fingerprints = {None: probe(model, self.probe_ids)}
            except Exception as exc:  # noqa: BLE001
                log.exception("reloading model %s failed", self.name)
                self.problem = f"{reason}; reloading it from {self.path} failed: {type(exc).__name__}: {exc}"
                self._metrics.reloads.labels(self.name, "failed").inc()
                self._metrics.pause_seconds.labels("reload").observe(time.perf_counter() - started)
                return
            failed = None
            for internal, attached in self.adapters.items():
                try:
                    fingerprints[internal] = attach(model, internal, attached.folder, self.probe_ids)
                except Exception as exc:  # noqa: BLE001
                    failed = (internal, f"{reason}; re-attaching it after a reload raised {type(exc).__name__}: {exc}")
                    break
            if failed is None:
                break
            self._drop(*failed)
            del model
            _free_memory()
        self.model, self.fingerprints, self._active_adapter, self.problem = model, fingerprints, None, None
        self._metrics.reloads.labels(self.name, "ok").inc()
        self._metrics.pause_seconds.labels("reload").observe(time.perf_counter() - started)
        log.warning("reloaded model %s in %.2f s", self.name, time.perf_counter() - started)

    def _drop(self, internal: str, reason: str) -> None:
        attached = self.adapters.pop(internal)
        self.fingerprints.pop(internal, None)
        self._metrics.adapters_dropped.labels(self.name).inc()
        log.error("adapter %s taken off model %s: %s", attached.name, self.name, reason)
        if self._on_dropped:
            self._on_dropped(attached.name, internal, reason)


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class Adapter:
    name: str
    path: Path
    base: ModelWorker
    internal: str  # the adapter's name inside PEFT (module keys cannot hold arbitrary text)
    created: int = field(default_factory=lambda: int(time.time()))


class Engine:
    """Every model and adapter the server knows, by served name.

    ``adapter_check`` is where an adapter is checked before it is attached to the
    serving model: ``scratch`` (a second copy of the base, read from disk, while
    answers go on; needs memory for the base twice) or ``in_place`` (on the serving
    model, answers wait; a failure is cleaned up, verified, or reloaded from disk).
    """

    def __init__(
        self,
        *,
        device: str = "auto",
        max_new_tokens: int = 512,
        torch_threads: int = 0,
        adapter_check: str = "scratch",
        max_batch: int = 8,
    ):
        if max_batch < 1:
            raise InvalidRequest("model_server.max_batch must be >= 1", field="model_server.max_batch")
        if adapter_check not in ADAPTER_CHECKS:
            raise InvalidRequest(
                f"model_server.adapter_check must be one of {ADAPTER_CHECKS}", field="model_server.adapter_check"
            )
        self.device = pick_device(device)
        self.max_new_tokens = max_new_tokens
        self.torch_threads = torch_threads  # 0: torch's default (one per core)
        self.adapter_check = adapter_check
        self.max_batch = max_batch  # answers decoded together per model; 1: one at a time
        self.metrics = ServerMetrics()
        self.base: ModelWorker | None = None
        self._models: dict[str, ModelWorker] = {}
        self._adapters: dict[str, Adapter] = {}
        self._failed: dict[str, str] = {}  # adapters dropped while serving: name -> why
        self._lock = threading.Lock()  # guards the three dicts; loading itself happens outside it
        # One load at a time, so at most one scratch copy of the base is in memory.
        self._load_lock = threading.Lock()
        self._ids = itertools.count(1)
        self.metrics.failed_adapters.set_function(lambda: len(self._failed))
        self.metrics.degraded.set_function(lambda: 1.0 if self.problems() else 0.0)

    # --- names ------------------------------------------------------------------------------

    def names(self) -> list[str]:
        with self._lock:
            return [*self._models, *self._adapters]

    def cards(self) -> list[tuple[str, str, str | None, int, int | None]]:
        """(name, root path, parent, created, context length) for ``GET /v1/models``."""
        with self._lock:
            cards = [(m.name, str(m.path), None, m.created, m.context_length) for m in self._models.values()]
            cards += [
                (a.name, str(a.path), a.base.name, a.created, a.base.context_length) for a in self._adapters.values()
            ]
        return cards

    def problems(self) -> dict[str, str]:
        """What does not work now, by served name: adapters dropped after a failure, models that cannot reload."""
        with self._lock:
            found = dict(self._failed)
            found.update({name: m.problem for name, m in self._models.items() if m.problem})
        return found

    def resolve(self, name: str) -> tuple[ModelWorker, str | None]:
        """The worker that serves ``name`` and the adapter to activate (None: the model itself)."""
        with self._lock:
            if name in self._models:
                return self._models[name], None
            if name in self._adapters:
                adapter = self._adapters[name]
                return adapter.base, adapter.internal
            failure = self._failed.get(name)
            known = ", ".join([*self._models, *self._adapters])
        if failure:
            # 503, not 404: the name was served and may be again; a gateway tries its next model.
            raise ModelUnavailable(
                f"adapter {name!r} failed while serving and was unloaded ({failure}); "
                "load it again with POST /v1/load_lora_adapter",
                field="model",
            )
        raise NotFound(
            f"the model {name!r} does not exist; this server has: {known}", field="model", code="model_not_found"
        )

    # --- loading ----------------------------------------------------------------------------

    def load_base(self, name: str, path: str | Path) -> ModelWorker:
        """Load the model served under ``name`` at start-up (LoRA adapters attach to it)."""
        worker = self._load_model(name, _model_dir(path))
        with self._lock:
            self._models[name] = worker
            self.base = worker
        return worker

    def load(self, name: str, path: str | Path, *, replace: bool = False) -> str:
        """Serve ``path`` as ``name``: a PEFT adapter on the base model, or a full model. Returns "adapter" or "model".

        Raises :class:`ModelLoadError` (400) for a folder that is neither, and
        :class:`AdapterRefused` (400) for an adapter that failed its check; either way
        every name served before answers exactly as before.
        """
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise ModelLoadError(f"no such folder: {folder}", field="lora_path")
        with self._lock:
            if self.base is not None and name == self.base.name:
                raise InvalidRequest(f"{name!r} is the base model's name; pick another name", field="lora_name")
            taken = name in self._models or name in self._adapters
        if taken and not replace:
            raise InvalidRequest(
                f"The lora adapter '{name}' has already been loaded.", field="lora_name", code="already_loaded"
            )
        with self._load_lock:
            try:
                kind = self._load_folder(name, folder, replace=taken)
            except TuneloopError:
                self.metrics.adapter_loads.labels("refused").inc()
                raise
        self.metrics.adapter_loads.labels("loaded").inc()
        return kind

    def unload(self, name: str) -> None:
        """Stop serving ``name`` (an adapter, or a full model loaded under a name; never the base model).

        Unloading an adapter that failed while serving clears its failure.
        """
        with self._lock:
            if self.base is not None and name == self.base.name:
                raise InvalidRequest(f"{name!r} is the base model; it cannot be unloaded", field="lora_name")
            adapter = self._adapters.pop(name, None)
            model = None if adapter else self._models.pop(name, None)
            failed = self._failed.pop(name, None)
        if adapter:
            adapter.base.call(lambda: adapter.base._delete_adapter(adapter.internal))
        elif model:
            model.stop()
        elif failed is None:
            raise NotFound(f"The lora adapter '{name}' cannot be found.", field="lora_name")

    def _load_folder(self, name: str, folder: Path, *, replace: bool) -> str:
        if (folder / "adapter_config.json").is_file():
            self._load_adapter(name, folder, replace=replace)
            return "adapter"
        if (folder / "config.json").is_file():
            worker = self._load_model(name, folder)
            if replace:
                self.unload(name)
            with self._lock:
                self._models[name] = worker
                self._failed.pop(name, None)
            return "model"
        raise ModelLoadError(
            f"{folder} is neither a PEFT adapter (adapter_config.json) nor a model (config.json)", field="lora_path"
        )

    def _load_adapter(self, name: str, folder: Path, *, replace: bool) -> None:
        base = self.base
        if base is None:
            raise ModelLoadError("no base model is loaded to put the adapter on")
        _check_adapter_config(folder)
        internal = f"adapter_{next(self._ids)}"
        try:
            if self.adapter_check == "scratch":
                self._check_in_scratch(base, internal, folder)
            base.call(lambda: base._add_adapter(internal, name, folder))
        except TuneloopError:
            raise
        except Exception as exc:  # noqa: BLE001 - PEFT/transformers raise many kinds
            raise _refusal(folder, f"{type(exc).__name__}: {exc}") from exc
        with self._lock:
            old = self._adapters.get(name) if replace else None
            self._adapters[name] = Adapter(name=name, path=folder, base=base, internal=internal)
            self._failed.pop(name, None)
        if old:
            base.call(lambda: base._delete_adapter(old.internal))
        log.info("loaded adapter %s from %s", name, folder)

    def _check_in_scratch(self, base: ModelWorker, internal: str, folder: Path) -> None:
        """Attach and run the adapter on a fresh copy of the base from disk; the serving model is not touched."""
        started = time.perf_counter()
        if self.torch_threads:
            # As many threads as a model's worker gets: on a small CPU machine more would slow the answers.
            torch.set_num_threads(self.torch_threads)
        try:
            scratch = self._read_weights(base.path)
        except Exception as exc:  # noqa: BLE001 - the server's trouble, not the adapter's: 503, not a refusal
            raise ModelUnavailable(
                f"cannot check the adapter: reading a scratch copy of the base model from {base.path} failed "
                f'({type(exc).__name__}: {exc}); free memory, or set model_server.adapter_check = "in_place"',
                code="model_unavailable",
            ) from exc
        failure = None
        try:
            attach(scratch, internal, folder, base.probe_ids)
        except Exception as exc:  # noqa: BLE001 - PEFT/transformers raise many kinds
            # Keep the words, not the exception: its traceback would keep the scratch copy in memory.
            failure = f"{type(exc).__name__}: {exc}"
        del scratch
        _free_memory()
        self.metrics.check_seconds.observe(time.perf_counter() - started)
        if failure:
            raise _refusal(folder, failure)

    def _read_weights(self, folder: Path):
        # float32 on CPU (half precision is slow or unsupported there); the saved dtype on a GPU.
        dtype = torch.float32 if self.device == "cpu" else "auto"
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
        return model.to(self.device).eval()

    def _load_model(self, name: str, folder: Path) -> ModelWorker:
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"cannot load a tokenizer from {folder}: {exc}", field="lora_path") from exc
        if not tokenizer.chat_template:
            raise ModelLoadError(f"the tokenizer in {folder} has no chat template", field="lora_path")
        try:
            model = self._read_weights(folder)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"cannot load a model from {folder}: {exc}", field="lora_path") from exc
        try:
            worker = ModelWorker(
                name,
                folder,
                model,
                tokenizer,
                loader=lambda: self._read_weights(folder),
                metrics=self.metrics,
                on_dropped=self._adapter_dropped,
                torch_threads=self.torch_threads,
                max_batch=self.max_batch,
            )
        except Exception as exc:  # noqa: BLE001 - the probe generation raised: not servable
            raise ModelLoadError(f"the model in {folder} cannot answer: {type(exc).__name__}: {exc}") from exc
        log.info("loaded model %s from %s on %s", name, folder, self.device)
        return worker

    def _adapter_dropped(self, name: str, internal: str, reason: str) -> None:
        """A worker took an adapter off after it failed while serving (runs on that worker's thread)."""
        with self._lock:
            adapter = self._adapters.get(name)
            if adapter is not None and adapter.internal == internal:
                del self._adapters[name]
                self._failed[name] = reason

    # --- generation -------------------------------------------------------------------------

    def prepare(
        self, name: str, messages: list[dict[str, str]], *, max_tokens: int | None, **sampling: Any
    ) -> tuple[ModelWorker, str | None, list[int], SamplingParams]:
        """Everything that can fail before an answer starts: model, prompt, limits. Raises 4xx errors."""
        worker, adapter = self.resolve(name)
        try:
            prompt = worker.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=False
            )
        except Exception as exc:  # noqa: BLE001 - template errors (e.g. an unsupported role) are the caller's
            raise ValidationFailed(
                f"the messages do not fit the model's chat template: {exc}", field="messages"
            ) from exc
        room = worker.context_length - len(prompt)
        if room < 1:
            raise InvalidRequest(
                f"the prompt is {len(prompt)} tokens; model {name!r} accepts at most {worker.context_length} "
                "(send fewer or shorter messages)",
                field="messages",
                code="context_length_exceeded",
            )
        if max_tokens is not None and max_tokens > self.max_new_tokens:
            raise ValidationFailed(
                f"max_tokens is {max_tokens}; this server allows at most {self.max_new_tokens} (model_server.max_new_tokens)",
                field="max_tokens",
            )
        limit = min(max_tokens or self.max_new_tokens, room)
        return worker, adapter, prompt, SamplingParams(max_tokens=limit, **sampling)

    def generate(
        self, name: str, messages: list[dict[str, str]], *, max_tokens: int | None = None, **sampling: Any
    ) -> Generation:
        """Validate, then queue an answer on the model's worker."""
        worker, adapter, prompt, params = self.prepare(name, messages, max_tokens=max_tokens, **sampling)
        return worker.generate(prompt, params, adapter)


def _refusal(folder: Path, failure: str) -> AdapterRefused:
    log.warning("refused the adapter in %s: %s", folder, failure)
    return AdapterRefused(f"the adapter in {folder} did not pass its check: {failure}", field="lora_path")


def _model_dir(path: str | Path) -> Path:
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"no model in {folder} (config.json is missing)", field="model_server.model_dir")
    return folder


def _check_adapter_config(folder: Path) -> None:
    try:
        config = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{folder}/adapter_config.json is not readable JSON: {exc}", field="lora_path") from None
    if not any((folder / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
        raise ModelLoadError(f"{folder} has adapter_config.json but no adapter_model.safetensors", field="lora_path")
    if not isinstance(config, dict) or "peft_type" not in config:
        raise ModelLoadError(f"{folder}/adapter_config.json is not a PEFT adapter config", field="lora_path")


def _context_length(model, tokenizer) -> int:
    lengths = [getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    usable = [n for n in lengths if isinstance(n, int) and 0 < n < 10_000_000]
    return min(usable) if usable else 2048
