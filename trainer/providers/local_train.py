"""Local fine-tuning: ``transformers.Trainer`` with a PEFT LoRA adapter (or every weight), CPU or GPU.

What a run does, in order (one function each):

1. :func:`encode` the train and validation rows with the loss on assistant tokens only
   (``local_data.py``);
2. :func:`load_model`: the base model (float32 on CPU, bf16 on a GPU that has it) and, for
   ``method = "lora"``, wrap it in a LoRA adapter (rank, alpha, dropout and target
   modules from the run's hyperparameters);
3. train (:func:`build_trainer`) for at most ``epochs`` epochs, measuring validation loss after each one
   and saving a checkpoint per epoch under ``<work_dir>/checkpoints``. Training
   stops once validation loss has not improved for ``early_stopping_patience``
   epochs — on small datasets the extra epochs only overfit — and the best
   epoch's weights are the ones kept (``load_best_model_at_end``);
4. :func:`save` the adapter (PEFT ``save_pretrained``: what vLLM and the built-in model
   server load) into ``<work_dir>/adapter``, or the whole model and tokenizer into
   ``<work_dir>/model``.

Progress goes to ``on_event`` (the worker stores it in ``training_events``) and to
a tqdm bar on stderr (the worker's log). Tokens/s counts non-padding input tokens
over the time spent in training steps (evaluation and checkpoint saving excluded).
Run under ``accelerate launch`` the same code trains data-parallel on several
GPUs; only the main process reports and saves.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    EarlyStoppingCallback,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from trainer.providers.local_data import AssistantOnlyCollator, ChatExamples
from trainer.providers.runs import RunEvent
from trainer.starter.verify import quiet_transformers

EventSink = Callable[[RunEvent], None]


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device is cuda but torch sees no CUDA device")
    return device


def train_local(
    hp: dict[str, Any],
    base_model_path: str | Path,
    train_rows: Sequence[dict],
    val_rows: Sequence[dict],
    work_dir: str | Path,
    *,
    on_event: EventSink | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune ``base_model_path`` on ``train_rows``; returns ``{"output": folder, "metrics": {...}}``.

    ``hp`` holds the run's hyperparameters (the keys of ``[training]`` that the
    local provider records). ``on_event`` receives progress and loss events.
    The phases are the module docstring's, one function each.
    """
    emit = on_event or (lambda _event: None)
    work_dir = Path(work_dir)
    device = resolve_device(hp["device"])
    if device == "cpu" and hp.get("cpu_threads"):
        torch.set_num_threads(hp["cpu_threads"])  # oversubscribed cores were 40x slower (default.toml)
    set_seed(hp["seed"])
    tokenizer, train, val = encode(base_model_path, train_rows, val_rows, hp["max_length"])
    model, total_params, trainable = load_model(base_model_path, hp, device)
    reporter = _Reporter(emit)
    trainer = build_trainer(model, tokenizer, train, val, hp, device, work_dir, [reporter], progress=progress)
    main = trainer.is_world_process_zero()
    if main:
        emit(
            RunEvent(
                "training started",
                data={
                    "device": device,
                    "method": hp["method"],
                    "train_examples": len(train),
                    "val_examples": len(val),
                    "skipped": train.skipped + val.skipped,
                    "truncated": train.truncated + val.truncated,
                    "trainable_params": trainable,
                    "total_params": total_params,
                    "max_epochs": hp["epochs"],
                },
            )
        )
        if not len(val):
            emit(RunEvent("no validation examples: no early stopping, the last epoch is kept", level="warning"))
    initial_eval = trainer.evaluate()["eval_loss"] if len(val) else None
    result = trainer.train()
    output = save(trainer, tokenizer, hp["method"], work_dir, main=main)
    metrics = _metrics(trainer, result, reporter, initial_eval, hp, device)
    metrics.update(
        train_examples=len(train),
        val_examples=len(val),
        trainable_params=trainable,
        total_params=total_params,
        train_target_tokens=train.target_tokens,
    )
    if main:
        verdict = (
            f"stopped early after epoch {metrics['epochs_run']:g} (best: epoch {metrics['best_epoch']:g})"
            if metrics["stopped_early"]
            else f"trained {metrics['epochs_run']:g} epochs"
        )
        emit(RunEvent(f"{verdict}; saved {output.name} to {output}", data=metrics))
    return {"output": str(output), "metrics": metrics}


def encode(
    base_model_path: str | Path, train_rows: Sequence[dict], val_rows: Sequence[dict], max_length: int
) -> tuple[Any, ChatExamples, ChatExamples]:
    """Phase 1: the base model's tokenizer (padding with EOS when it has no pad token) and the train and
    validation rows encoded with the loss on assistant tokens only. Fails when no row has one to learn."""
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(base_model_path)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        train = ChatExamples(tokenizer, train_rows, max_length)
        val = ChatExamples(tokenizer, val_rows, max_length)
    if not len(train):
        raise ValueError("no training example has an assistant token to learn")
    return tokenizer, train, val


def load_model(base_model_path: str | Path, hp: dict[str, Any], device: str) -> tuple[Any, int, int]:
    """Phase 2: the base model (float32 on CPU, bf16 on a GPU that has it), wrapped in a LoRA adapter for
    ``method = "lora"``; returns (model, all parameters, trainable parameters)."""
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(base_model_path, dtype=_dtype(device))
    total_params = sum(p.numel() for p in model.parameters())
    if hp["method"] == "lora":
        model = _with_lora(model, hp)
    return model, total_params, sum(p.numel() for p in model.parameters() if p.requires_grad)


def _dtype(device: str) -> torch.dtype:
    return torch.bfloat16 if _bf16(device) else torch.float32


def _bf16(device: str) -> bool:
    return device == "cuda" and torch.cuda.is_bf16_supported()


def build_trainer(
    model,
    tokenizer,
    train: ChatExamples,
    val: ChatExamples,
    hp: dict[str, Any],
    device: str,
    work_dir: Path,
    callbacks: list[TrainerCallback],
    *,
    progress: bool,
) -> Trainer:
    """Phase 3's set-up: at most ``epochs`` epochs with validation loss and a checkpoint after each under
    ``<work_dir>/checkpoints``, early stopping after ``early_stopping_patience`` epochs without improvement
    and the best epoch kept (only when there are validation rows)."""
    evaluate = len(val) > 0
    steps_per_epoch = math.ceil(len(train) / (hp["batch_size"] * hp["gradient_accumulation"]))
    args = TrainingArguments(
        output_dir=str(work_dir / "checkpoints"),
        num_train_epochs=hp["epochs"],
        per_device_train_batch_size=hp["batch_size"],
        # Rows of like length in one batch: closed-book rows are a few dozen tokens, the same rows as served a few
        # hundred, and a batch is padded to its longest row.
        train_sampling_strategy="group_by_length",
        per_device_eval_batch_size=hp["batch_size"],
        gradient_accumulation_steps=hp["gradient_accumulation"],
        learning_rate=hp["learning_rate"],
        lr_scheduler_type="linear",
        warmup_steps=min(10, steps_per_epoch),
        weight_decay=0.0,
        eval_strategy="epoch" if evaluate else "no",
        save_strategy="epoch",
        save_total_limit=hp["save_total_limit"],
        save_only_model=True,  # no optimizer state: checkpoints are for picking the best epoch, not resuming
        load_best_model_at_end=evaluate,
        metric_for_best_model="eval_loss" if evaluate else None,
        greater_is_better=False,
        logging_strategy="steps",
        logging_steps=max(1, steps_per_epoch // 4),
        logging_first_step=True,
        include_num_input_tokens_seen="non_padding",
        seed=hp["seed"],
        data_seed=hp["seed"],
        use_cpu=device == "cpu",
        bf16=_bf16(device),
        report_to=[],
        disable_tqdm=not progress,
        remove_unused_columns=False,
        dataloader_pin_memory=device == "cuda",
    )
    callbacks = list(callbacks)
    if evaluate and hp["early_stopping_patience"] > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=hp["early_stopping_patience"]))
    trainer = Trainer(
        model=model,
        args=args,
        data_collator=AssistantOnlyCollator(tokenizer.pad_token_id),
        train_dataset=train,
        eval_dataset=val if evaluate else None,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    if not progress:
        trainer.remove_callback(PrinterCallback)  # it prints every log dict when there is no bar
    return trainer


def save(trainer: Trainer, tokenizer, method: str, work_dir: Path, *, main: bool) -> Path:
    """Phase 4: the adapter (PEFT ``save_pretrained``: what vLLM and the built-in model server load) into
    ``<work_dir>/adapter``, or the whole model and its tokenizer into ``<work_dir>/model``."""
    output = work_dir / ("adapter" if method == "lora" else "model")
    trainer.save_model(str(output))
    if main and method != "lora":
        tokenizer.save_pretrained(str(output))
    return output


def _with_lora(model, hp: dict[str, Any]):
    from peft import LoraConfig, get_peft_model

    modules = hp["target_modules"]
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=hp["lora_r"],
        lora_alpha=hp["lora_alpha"],
        lora_dropout=hp["lora_dropout"],
        target_modules="all-linear" if modules == ["all-linear"] else list(modules),
    )
    return get_peft_model(model, config)


def _metrics(
    trainer: Trainer, result, reporter: "_Reporter", initial_eval: float | None, hp: dict[str, Any], device: str
) -> dict[str, Any]:
    history = trainer.state.log_history
    train_losses = [entry["loss"] for entry in history if "loss" in entry]
    evals = [(entry.get("epoch", 0), entry["eval_loss"]) for entry in history if "eval_loss" in entry]
    best_epoch, best_loss = min(evals, key=lambda pair: pair[1]) if evals else (None, None)
    epochs_run = round(trainer.state.epoch or 0, 4)
    tokens = int(trainer.state.num_input_tokens_seen)
    return {
        "device": device,
        "steps": trainer.state.global_step,
        "epochs_run": epochs_run,
        "stopped_early": epochs_run < hp["epochs"] - 1e-6,
        "best_epoch": best_epoch if best_epoch is not None else epochs_run,
        "initial_eval_loss": initial_eval,
        "eval_loss": best_loss,
        "eval_losses": [loss for _epoch, loss in evals],
        "first_train_loss": train_losses[0] if train_losses else None,
        "train_loss": train_losses[-1] if train_losses else None,
        "train_tokens": tokens,
        "train_seconds": round(reporter.step_seconds, 3),
        "tokens_per_s": round(tokens / reporter.step_seconds, 1) if reporter.step_seconds else None,
        "runtime_s": round(result.metrics.get("train_runtime", 0.0), 3),
    }


class _Reporter(TrainerCallback):
    """Sends progress and losses as events; times the training steps for tokens/s."""

    def __init__(self, emit: EventSink):
        self.emit = emit
        self.step_seconds = 0.0
        self._step_started: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._step_started is not None:
            self.step_seconds += time.perf_counter() - self._step_started
            self._step_started = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        base = {"step": state.global_step, "total_steps": state.max_steps, "epoch": round(state.epoch or 0, 4)}
        if "loss" in logs:
            self.emit(
                RunEvent(
                    f"step {state.global_step}/{state.max_steps}: loss {logs['loss']:.4f}",
                    data={**base, "loss": logs["loss"], "learning_rate": logs.get("learning_rate")},
                )
            )
        if "eval_loss" in logs:
            self.emit(
                RunEvent(
                    f"epoch {base['epoch']:g}: validation loss {logs['eval_loss']:.4f}",
                    data={**base, "eval_loss": logs["eval_loss"]},
                )
            )
