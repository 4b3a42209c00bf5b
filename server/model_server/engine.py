"""Models, adapters and who may touch them: the built-in model server's engine.

Every loaded model lives on its own worker thread (:class:`ModelWorker`) that
runs, in arrival order, everything that touches its weights: generations,
switching the active LoRA adapter, loading and deleting adapters. That is the
"one generation at a time per model" rule and the queue in one place; request
threads only wait on the answer's events, so a slow client never holds the
model and a disconnected one cancels its answer.

Names are one namespace, as in vLLM: the base model, LoRA adapters on top of it
(``POST /v1/load_lora_adapter`` with a PEFT folder) and separate full models
loaded under a name (the same endpoint with a folder holding ``config.json``).
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from config.errors import InvalidRequest, NotFound, TuneloopError, ValidationFailed
from server.model_server.decode import Generation, SamplingParams, run_generation

log = logging.getLogger("tuneloop.model_server")


class ModelLoadError(InvalidRequest):
    """The folder is not a model or adapter this server can load."""

    code = "invalid_model_path"


def pick_device(device: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidRequest("model_server.device is cuda but no CUDA device is visible", field="model_server.device")
    return device


class ModelWorker:
    """One model, its tokenizer, its adapters, and the thread that runs everything touching them."""

    def __init__(self, name: str, path: Path, model, tokenizer, *, torch_threads: int = 0):
        self.name = name
        self.path = path
        self.model = model
        self.tokenizer = tokenizer
        self.created = int(time.time())
        self.context_length = _context_length(model, tokenizer)
        self._torch_threads = torch_threads
        self._active_adapter: str | None = None
        self._jobs: queue.Queue = queue.Queue()
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

        def job() -> None:
            try:
                self._use_adapter(adapter)
                run_generation(self.model, self.tokenizer, prompt_ids, params, out)
            except Exception as exc:  # noqa: BLE001 - the request gets a 500, the worker lives on
                log.exception("generation failed on %s", self.name)
                out.fail(TuneloopError(f"generation failed: {type(exc).__name__}: {exc}"))

        self._jobs.put((job, None))
        return out

    def stop(self) -> None:
        """Finish the queued jobs, then end the thread."""
        self._jobs.put((None, None))

    def _run(self) -> None:
        if self._torch_threads:
            torch.set_num_threads(self._torch_threads)
        while True:
            fn, future = self._jobs.get()
            if fn is None:
                return
            if future is None:
                fn()
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                future.set_exception(exc)

    # adapters: called on the worker thread only
    def _use_adapter(self, adapter: str | None) -> None:
        if adapter == self._active_adapter:
            return
        if adapter is None:
            # Once the last adapter is deleted the model has none to disable (PEFT raises).
            if getattr(self.model, "peft_config", None):
                self.model.disable_adapters()
        else:
            self.model.enable_adapters()
            self.model.set_adapter(adapter)
        self._active_adapter = adapter

    def _add_adapter(self, internal: str, path: Path) -> None:
        try:
            info = self.model.load_adapter(str(path), adapter_name=internal)
            missing = [k for k in (getattr(info, "missing_keys", None) or []) if f".{internal}." in k]
            if missing:
                raise ValueError(
                    f"the adapter's weights do not fit this model (missing {missing[0]} and {len(missing) - 1} more)"
                )
        except Exception:
            if internal in (getattr(self.model, "peft_config", None) or {}):
                self.model.delete_adapter(internal)
            raise
        finally:
            self._active_adapter = "?"  # load_adapter activates what it loads; force the next switch

    def _delete_adapter(self, internal: str) -> None:
        self.model.delete_adapter(internal)
        self._active_adapter = "?"


@dataclass
class Adapter:
    name: str
    path: Path
    base: ModelWorker
    internal: str  # the adapter's name inside PEFT (module keys cannot hold arbitrary text)
    created: int = field(default_factory=lambda: int(time.time()))


class Engine:
    """Every model and adapter the server knows, by served name."""

    def __init__(self, *, device: str = "auto", max_new_tokens: int = 512, torch_threads: int = 0):
        self.device = pick_device(device)
        self.max_new_tokens = max_new_tokens
        self.torch_threads = torch_threads  # 0: torch's default (one per core)
        self.base: ModelWorker | None = None
        self._models: dict[str, ModelWorker] = {}
        self._adapters: dict[str, Adapter] = {}
        self._lock = threading.Lock()  # guards the two dicts; loading itself happens outside it
        self._ids = itertools.count(1)

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

    def resolve(self, name: str) -> tuple[ModelWorker, str | None]:
        """The worker that serves ``name`` and the adapter to activate (None: the model itself)."""
        with self._lock:
            if name in self._models:
                return self._models[name], None
            if name in self._adapters:
                adapter = self._adapters[name]
                return adapter.base, adapter.internal
            known = ", ".join([*self._models, *self._adapters])
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
        """Serve ``path`` as ``name``: a PEFT adapter on the base model, or a full model. Returns "adapter" or "model"."""
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
        if (folder / "adapter_config.json").is_file():
            self._load_adapter(name, folder, replace=taken)
            return "adapter"
        if (folder / "config.json").is_file():
            worker = self._load_model(name, folder)
            if taken:
                self.unload(name)
            with self._lock:
                self._models[name] = worker
            return "model"
        raise ModelLoadError(
            f"{folder} is neither a PEFT adapter (adapter_config.json) nor a model (config.json)", field="lora_path"
        )

    def unload(self, name: str) -> None:
        """Stop serving ``name`` (an adapter, or a full model loaded under a name; never the base model)."""
        with self._lock:
            if self.base is not None and name == self.base.name:
                raise InvalidRequest(f"{name!r} is the base model; it cannot be unloaded", field="lora_name")
            adapter = self._adapters.pop(name, None)
            model = None if adapter else self._models.pop(name, None)
        if adapter:
            adapter.base.call(lambda: adapter.base._delete_adapter(adapter.internal))
        elif model:
            model.stop()
        else:
            raise NotFound(f"The lora adapter '{name}' cannot be found.", field="lora_name")

    def _load_adapter(self, name: str, folder: Path, *, replace: bool) -> None:
        base = self.base
        if base is None:
            raise ModelLoadError("no base model is loaded to put the adapter on")
        _check_adapter_config(folder)
        internal = f"adapter_{next(self._ids)}"
        try:
            base.call(lambda: base._add_adapter(internal, folder))
        except TuneloopError:
            raise
        except Exception as exc:  # noqa: BLE001 - PEFT/transformers raise many kinds
            raise ModelLoadError(f"cannot load the adapter in {folder}: {exc}", field="lora_path") from exc
        with self._lock:
            old = self._adapters.get(name) if replace else None
            self._adapters[name] = Adapter(name=name, path=folder, base=base, internal=internal)
        if old:
            base.call(lambda: base._delete_adapter(old.internal))
        log.info("loaded adapter %s from %s", name, folder)

    def _load_model(self, name: str, folder: Path) -> ModelWorker:
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"cannot load a tokenizer from {folder}: {exc}", field="lora_path") from exc
        if not tokenizer.chat_template:
            raise ModelLoadError(f"the tokenizer in {folder} has no chat template", field="lora_path")
        # float32 on CPU (half precision is slow or unsupported there); the saved dtype on a GPU.
        dtype = torch.float32 if self.device == "cpu" else "auto"
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"cannot load a model from {folder}: {exc}", field="lora_path") from exc
        model.to(self.device).eval()
        log.info("loaded model %s from %s on %s", name, folder, self.device)
        return ModelWorker(name, folder, model, tokenizer, torch_threads=self.torch_threads)

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
