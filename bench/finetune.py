"""Benchmark: fine-tuning time and throughput (docs/benchmarks.md, "Fine-tuning").

    .venv/bin/python bench/finetune.py                       # CPU: the starter model, LoRA and full fine-tuning
    .venv/bin/python bench/finetune.py --gpu --peak-tflops 989   # CUDA: LoRA SFT on an 8B-shaped Llama

**CPU** (the default). The real starter model (built with ``tuneloop starter build``
when missing) is fine-tuned by the local provider's own code (``train_local``: the
transformers Trainer, validation loss per epoch, early stopping, checkpoints) with
the ``[training]`` defaults, on a dataset built by the real builder from the bundled
FAQ plus ``--corrections`` approved corrections (answers changed the way a reviewer
would). Once with LoRA, once with every weight (``--methods``). Reported: wall
seconds, seconds inside training steps, tokens/s, epochs run, and how many
corrected answers (and a sample of untouched ones) greedy decoding reproduces
exactly afterwards. The baseline, measured in the same run on the same model and
batches: one plain forward+backward pass over one epoch's tokens (no optimizer, no
Trainer) — the ratio says what a whole run costs in such passes.

**GPU** (``--gpu``). An 8B-shaped ``LlamaConfig`` (Llama 3 8B: hidden 4096, 32 layers,
32 heads / 8 KV heads, MLP 14336, vocabulary 128256) with random weights in bf16,
a PEFT LoRA on every linear layer, AdamW on the adapter, ``--steps`` timed steps of
``--batch`` × ``--seq`` tokens after ``--warmup`` steps. MFU = 6 · N · tokens /
(seconds · peak FLOP/s), N = every parameter (the usual convention); a LoRA
backward skips the frozen weights' gradients, so its real work is nearer 4 · N per
token, which is printed too. ``--shape tiny --device cpu`` runs the same code small,
to check the script on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

LLAMA_8B = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=8192,
    rope_theta=500000.0,
)
TINY = dict(
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=4096,
    max_position_embeddings=1024,
)
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# --- CPU: the starter model ------------------------------------------------------------------------


def corrected_answer(answer: str) -> str:
    """What a reviewer's correction looks like here: a changed figure and a note."""
    changed = answer.replace("3", "4").replace("7", "8")
    return ("Update: " if answer.isascii() else "변경: ") + changed


def build_bench_dataset(settings, db, corrections: int, seed: int):
    """The FAQ as base dataset plus ``corrections`` approved corrections, through the real builder."""
    from feedback import review
    from trainer.dataset import build_dataset

    rows = [json.loads(line) for line in (ROOT / "data" / "faq.jsonl").read_text(encoding="utf-8").splitlines()]
    picked = random.Random(seed).sample(rows, corrections)
    for row in picked:
        question, answer = row["messages"][0]["content"], row["messages"][1]["content"]
        review.create_item(db, question=question, answer=corrected_answer(answer), reviewer="bench")
    return build_dataset(db, settings)


def read_split(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def baseline_pass(model_dir: Path, rows: list[dict], batch_size: int, max_length: int) -> dict:
    """One forward+backward pass over ``rows`` in the training batches: no optimizer, no Trainer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.providers.local_data import AssistantOnlyCollator, ChatExamples

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).train()
    examples = ChatExamples(tokenizer, rows, max_length)
    collate = AssistantOnlyCollator(tokenizer.pad_token_id)
    batches = [collate(examples.items[i : i + batch_size]) for i in range(0, len(examples), batch_size)]
    model(**batches[0]).loss.backward()  # warm-up (allocations, kernels)
    model.zero_grad(set_to_none=True)
    started = time.perf_counter()
    for batch in batches:
        model(**batch).loss.backward()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "tokens": examples.tokens, "tokens_per_s": examples.tokens / seconds}


def exact_answers(model_dir: Path, output: str, method: str, rows: list[dict]) -> int:
    """How many of ``rows`` greedy decoding of the trained model answers exactly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if method == "lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), output)
    else:
        model = AutoModelForCausalLM.from_pretrained(output)
    model.eval()
    right = 0
    with torch.no_grad():
        for row in rows:
            prompt = tokenizer.apply_chat_template(
                row["messages"][:-1], add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            out = model.generate(**prompt, max_new_tokens=256, do_sample=False)
            answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
            right += answer == row["messages"][-1]["content"]
    return right


def run_cpu(args) -> dict:
    from bench import model_dir_or_starter
    from config.settings import load_settings
    from feedback import review
    from feedback.db import open_db
    from trainer.providers.local import LOCAL_KEYS
    from trainer.providers.local_train import train_local

    settings = load_settings(args.config)
    model_dir = model_dir_or_starter(args.model, settings)
    torch.set_num_threads(settings.training.cpu_threads or torch.get_num_threads())
    report: dict = {"model_dir": str(model_dir), "threads": torch.get_num_threads(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        bench_settings = load_settings(args.config, overrides={"paths.data_dir": tmp})
        db = open_db(bench_settings.db_path)
        dataset = build_bench_dataset(bench_settings, db, args.corrections, args.seed)
        train, val = read_split(dataset.path / "train.jsonl"), read_split(dataset.path / "val.jsonl")
        corrected = {item.answer for item in review.approved_items(db)}
        corrections = [r for r in train if r["messages"][-1]["content"] in corrected]
        kept = [r for r in train if r["messages"][-1]["content"] not in corrected][: args.kept_sample]
        report["dataset"] = {"train": len(train), "val": len(val), "corrections": len(corrections)}
        hp = {key: getattr(settings.training, key) for key in LOCAL_KEYS}
        report["baseline"] = baseline_pass(model_dir, train, hp["batch_size"], hp["max_length"])
        print(
            f"dataset: {len(train)} train / {len(val)} val rows, {len(corrections)} corrections; "
            f"baseline fwd+bwd over one epoch: {report['baseline']['seconds']:.2f} s, "
            f"{report['baseline']['tokens_per_s']:,.0f} tokens/s",
            flush=True,
        )
        plans = [("lora", lr) for lr in (args.lora_lrs or [hp["learning_rate"]]) if "lora" in args.methods]
        plans += [("full", args.full_lr)] if "full" in args.methods else []
        for method, learning_rate in plans:
            params = dict(hp, method=method, device="cpu", learning_rate=learning_rate)
            started = time.perf_counter()
            result = train_local(params, model_dir, train, val, Path(tmp) / f"run-{method}", progress=False)
            wall = time.perf_counter() - started
            m = result["metrics"]
            row = {
                "method": method,
                "learning_rate": params["learning_rate"],
                "wall_s": wall,
                "train_s": m["train_seconds"],
                "tokens_per_s": m["tokens_per_s"],
                "epochs": m["epochs_run"],
                "best_epoch": m["best_epoch"],
                "stopped_early": m["stopped_early"],
                "steps": m["steps"],
                "trainable_params": m["trainable_params"],
                "total_params": m["total_params"],
                "eval_loss_before": m["initial_eval_loss"],
                "eval_loss": m["eval_loss"],
                "baseline_passes": wall / report["baseline"]["seconds"],
                "step_passes_per_epoch": m["train_seconds"]
                / max(m["epochs_run"], 1e-9)
                / report["baseline"]["seconds"],
            }
            if not args.no_check:
                row["corrections_exact"] = exact_answers(model_dir, result["output"], method, corrections)
                row["kept_exact"] = exact_answers(model_dir, result["output"], method, kept)
                row["kept_total"] = len(kept)
            report["runs"].append(row)
            print(json.dumps(row), flush=True)
        db.close()
    print_cpu_table(report)
    return report


def print_cpu_table(report: dict) -> None:
    base = report["baseline"]
    print(
        f"\nbaseline: one forward+backward pass over one epoch ({base['tokens']:,} tokens): "
        f"{base['seconds']:.2f} s, {base['tokens_per_s']:,.0f} tokens/s ({report['threads']} thread(s))"
    )
    print(
        "| method | trainable params | epochs (best) | wall s | in steps s | tokens/s | × baseline pass "
        "| step time per epoch × pass | val loss before → after | corrections exact | others exact |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for r in report["runs"]:
        check = (
            f"{r['corrections_exact']}/{report['dataset']['corrections']} | {r['kept_exact']}/{r['kept_total']}"
            if "corrections_exact" in r
            else "- | -"
        )
        print(
            f"| {r['method']} (lr {r['learning_rate']:g}) | {r['trainable_params']:,} of {r['total_params']:,} "
            f"| {r['epochs']:g} ({r['best_epoch']:g}){' stopped early' if r['stopped_early'] else ''} "
            f"| {r['wall_s']:.1f} | {r['train_s']:.1f} | {r['tokens_per_s']:,.0f} | {r['baseline_passes']:.1f} "
            f"| {r['step_passes_per_epoch']:.2f} | {r['eval_loss_before']:.4f} → {r['eval_loss']:.4f} | {check} |"
        )


# --- GPU: an 8B-shaped Llama -----------------------------------------------------------------------


def run_gpu(args) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device (or --device cpu with --shape tiny to check the script)")
    shape = LLAMA_8B if args.shape == "8b" else TINY
    config = LlamaConfig(**shape, tie_word_embeddings=False, attn_implementation="sdpa")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with device:  # built in place, in bf16: an fp32 copy of 8B weights would need 32 GB first
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    total = sum(p.numel() for p in model.parameters())
    if args.grad_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model = get_peft_model(
        model,
        LoraConfig(
            task_type="CAUSAL_LM", r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0, target_modules=LINEAR
        ),
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    generator = torch.Generator(device="cpu").manual_seed(0)

    def step() -> None:
        ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), generator=generator).to(device)
        loss = model(input_ids=ids, labels=ids).loss  # packed SFT: every position has a target
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = time.perf_counter() - started
    tokens = args.steps * args.batch * args.seq
    tokens_per_s = tokens / seconds
    report = {
        "shape": args.shape,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "params": total,
        "trainable": trainable,
        "batch": args.batch,
        "seq": args.seq,
        "steps": args.steps,
        "grad_checkpointing": args.grad_checkpointing,
        "seconds": seconds,
        "tokens_per_s": tokens_per_s,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "torch": torch.__version__,
    }
    if args.peak_tflops:
        peak = args.peak_tflops * 1e12
        report["mfu_6n"] = 6 * total * tokens_per_s / peak
        report["mfu_4n_lora"] = 4 * total * tokens_per_s / peak
    print(json.dumps(report, indent=2))
    if args.peak_tflops:
        print(
            f"\n{report['device']}: {tokens_per_s:,.0f} tokens/s, MFU {report['mfu_6n']:.1%} (6·N), "
            f"{report['mfu_4n_lora']:.1%} counting LoRA's real 4·N; N = {total / 1e9:.2f} B, "
            f"{trainable / 1e6:.1f} M trainable"
        )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu", action="store_true", help="LoRA SFT throughput of an 8B-shaped Llama (CUDA)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    cpu = parser.add_argument_group("CPU (default)")
    cpu.add_argument("--config", help="settings file (default: config/default.toml)")
    cpu.add_argument("--model", help="model folder (default: the starter model, built when missing)")
    cpu.add_argument("--methods", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    cpu.add_argument(
        "--lora-lrs", type=float, nargs="+", help="learning rates of LoRA runs (default: training.learning_rate)"
    )
    cpu.add_argument("--full-lr", type=float, default=0.0005, help="learning rate of the full fine-tuning run")
    cpu.add_argument("--corrections", type=int, default=5, help="approved corrections added to the FAQ")
    cpu.add_argument("--kept-sample", type=int, default=30, help="untouched training answers checked after training")
    cpu.add_argument("--no-check", action="store_true", help="skip the greedy-answer checks")
    cpu.add_argument("--seed", type=int, default=0)
    gpu = parser.add_argument_group("GPU (--gpu)")
    gpu.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak in TFLOP/s (H100 SXM: 989)")
    gpu.add_argument("--shape", choices=["8b", "tiny"], default="8b")
    gpu.add_argument("--device", default="cuda")
    gpu.add_argument("--batch", type=int, default=2)
    gpu.add_argument("--seq", type=int, default=2048)
    gpu.add_argument("--steps", type=int, default=10)
    gpu.add_argument("--warmup", type=int, default=3)
    gpu.add_argument("--lora-r", type=int, default=16)
    gpu.add_argument("--grad-checkpointing", action="store_true", help="recompute activations (less memory)")
    args = parser.parse_args()
    report = run_gpu(args) if args.gpu else run_cpu(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
