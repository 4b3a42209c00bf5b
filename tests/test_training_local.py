"""The local provider: assistant-only labels, real LoRA training in a worker process, early stopping,
lineage, restarts, cancel, and the adapter answering through a real model server.

The tiny model (tests/plugins/model.py) memorized 8 FAQ rows. Training data gives each question the
*next* row's answer, so a run that learned anything answers differently from the base model.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx2
import psutil
import pytest
import torch
from safetensors.torch import load_file

from config.settings import PROJECT_ROOT, load_settings
from feedback.db import new_id, open_db, utc_now
from feedback.versions import get_version
from tests.plugins.common import wait_for
from tests.plugins.model import qa, tuneloop_exe
from trainer.providers.local import process_running, worker_pid
from trainer.providers.local_data import AssistantOnlyCollator, ChatExamples, encode_messages, encode_with_template
from trainer.providers.runs import get_run, list_events
from trainer.starter.chat import IGNORE
from trainer.training import cancel_run, poll_run, resume_runs, run_checkpoints, start_run, wait_for_run

# Small and fast: 8 rows, 2 steps an epoch; 12 epochs at this rate learn every shifted answer (measured).
TRAINING = {
    "training.epochs": 12,
    "training.learning_rate": 0.01,
    "training.batch_size": 4,
    "training.lora_r": 8,
    "training.lora_alpha": 16,
    "training.lora_dropout": 0.0,
    "training.save_total_limit": 2,
    "training.early_stopping_patience": 2,
    # The feed-forward layers only, as for the real starter (README): its attention holds the copy circuit, and
    # LoRA on it at this learning rate diverged (train loss 1.47 -> 6.83, measured).
    "training.target_modules": ["gate_proj", "up_proj", "down_proj"],
}


def _env_value(value) -> str:
    """A setting as a TUNELOOP_* environment variable spells it (lists comma-separated)."""
    return ",".join(value) if isinstance(value, list) else str(value)


def shifted(rows: list[dict]) -> list[dict]:
    """Each question with the next row's answer."""
    pairs = [qa(r) for r in rows]
    return [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": pairs[(i + 1) % len(pairs)][1]}]}
        for i, (q, _) in enumerate(pairs)
    ]


def training_settings(folder: Path, model_dir: Path, **overrides):
    values = {"paths.data_dir": str(folder / "var"), "model_server.model_dir": str(model_dir), **TRAINING}
    values.update(overrides)
    return load_settings(env={}, overrides=values)


def add_dataset(db, settings, train: list[dict], val: list[dict]) -> str:
    """Write a dataset version the way `tuneloop dataset build` records one (files + `datasets` row)."""
    (version,) = db.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM datasets").fetchone()
    folder = settings.datasets_dir / f"v{version}"
    folder.mkdir(parents=True)
    for name, rows in (("train", train), ("val", val), ("test", [])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    (folder / "manifest.json").write_text("{}")
    dataset_id = new_id("ds")
    digest = hashlib.sha256((folder / "train.jsonl").read_bytes()).hexdigest()
    db.execute(
        "INSERT INTO datasets (id, version, path, sha256, counts, manifest_path, params, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, '{}', ?)",
        [
            dataset_id,
            version,
            str(folder),
            digest,
            json.dumps({"train": len(train), "val": len(val)}),
            str(folder / "manifest.json"),
            utc_now(),
        ],
    )
    db.conn.commit()
    return dataset_id


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, tiny_model_rows):
    """One LoRA run through the real worker process; validation rows are training rows, so loss falls."""
    folder = tmp_path_factory.mktemp("train-local")
    settings = training_settings(folder, tiny_model_dir)
    db = open_db(settings.db_path)
    rows = shifted(tiny_model_rows)
    dataset_id = add_dataset(db, settings, rows, rows[:2])
    started = start_run(db, settings)
    run = wait_for_run(db, settings, started.run.id, interval_s=0.2, timeout_s=120)
    yield {
        "settings": settings,
        "db": db,
        "run": run,
        "rows": rows,
        "dataset_id": dataset_id,
        "created": started.created,
    }
    db.close()


# --- labels -------------------------------------------------------------------------------------

CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "How do I return an item?"},
    {"role": "assistant", "content": "Open your orders and pick Return."},
    {"role": "user", "content": "배송비는 얼마인가요?"},
    {"role": "assistant", "content": "3,000원입니다."},
]
# A different layout of the same special tokens: a newline after every message, which belongs to the answer.
OTHER_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}<|system|>{{ m['content'] }}<|end|>\n"
    "{% elif m['role'] == 'user' %}<|user|>{{ m['content'] }}<|end|>\n"
    "{% else %}<|assistant|>{{ m['content'] }}<|end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _label_text(tokenizer, labels: list[int]) -> str:
    return tokenizer.decode([t for t in labels if t != IGNORE], skip_special_tokens=False)


def test_labels_are_the_assistant_tokens_and_nothing_else(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids, labels = encode_messages(tokenizer, CONVERSATION)
    assert len(ids) == len(labels)
    assert _label_text(tokenizer, labels) == "Open your orders and pick Return.<|end|>3,000원입니다.<|end|>"
    assert all(label in (IGNORE, token) for token, label in zip(ids, labels, strict=False))
    # The template-driven encoder (used for every other model) agrees with the starter's own encoder.
    assert encode_with_template(tokenizer, CONVERSATION) == (ids, labels)

    tokenizer.chat_template = OTHER_TEMPLATE
    ids2, labels2 = encode_messages(tokenizer, CONVERSATION)
    assert tokenizer.decode(ids2) == tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert _label_text(tokenizer, labels2) == "Open your orders and pick Return.<|end|>\n3,000원입니다.<|end|>\n"

    short = {"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}
    batch = AssistantOnlyCollator(pad_token_id=0)([{"input_ids": ids, "labels": labels}, short])
    assert batch["labels"][0].tolist() == labels
    assert batch["labels"][1].tolist() == [IGNORE, 6, 7] + [IGNORE] * (len(ids) - 3)
    assert batch["attention_mask"][1].tolist() == [1, 1, 1] + [0] * (len(ids) - 3)
    assert batch["input_ids"][1, 3:].eq(0).all()


def test_too_long_examples_are_cut_and_answerless_ones_skipped(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    long_prompt = {"messages": [{"role": "user", "content": "why " * 200}, {"role": "assistant", "content": "ok"}]}
    fine = {"messages": CONVERSATION[1:3]}
    examples = ChatExamples(tokenizer, [long_prompt, fine], max_length=64)
    assert (len(examples), examples.skipped, examples.truncated) == (1, 1, 1)


# --- a real run ---------------------------------------------------------------------------------


def test_lora_run_changes_the_model_and_registers_a_candidate(trained):
    run, db = trained["run"], trained["db"]
    assert trained["created"] and run.state == "succeeded", run.error
    adapter = Path(run.output)
    assert adapter == Path(run.work_dir) / "adapter"
    # LoRA's B matrices start at zero: non-zero ones prove training changed the model.
    weights = load_file(adapter / "adapter_model.safetensors")
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b and all(w.abs().max() > 0 for w in lora_b)
    m = run.metrics
    assert m["train_loss"] < m["first_train_loss"] / 4
    assert m["eval_losses"][-1] < m["initial_eval_loss"] / 4
    assert m["tokens_per_s"] > 0 and m["train_tokens"] > 0 and m["device"] == "cpu"
    # Lineage: the candidate knows its run and adapter; the run knows its dataset.
    version = get_version(db, run.candidate_version_id)
    assert (version.status, version.training_run_id, version.adapter_path) == ("candidate", run.id, run.output)
    assert version.name == f"starter-ft-{run.short_id}" and version.base_model == "starter"
    assert run.dataset_id == trained["dataset_id"]
    events = list_events(db, run.id)
    assert sum(e["message"] == "worker started" for e in events) == 1
    steps = [e["data"] for e in events if "loss" in e["data"]]
    assert steps and steps[-1]["step"] == steps[-1]["total_steps"] == m["steps"]
    assert run.progress == 1.0


def test_checkpoints_are_listed_with_their_validation_loss(trained):
    found = run_checkpoints(trained["db"], trained["settings"], trained["run"].id)
    assert 1 <= len(found) <= 2  # save_total_limit
    assert all(c["eval_loss"] is not None and Path(c["path"]).is_dir() for c in found)
    assert sum(c["best"] for c in found) == 1


def test_adapter_loads_into_the_model_server_and_answers(trained, model_server):
    run, db = trained["run"], trained["db"]
    version = get_version(db, run.candidate_version_id)
    loaded = httpx2.post(
        model_server.url + "/v1/load_lora_adapter",
        json={"lora_name": version.name, "lora_path": version.adapter_path},
        timeout=60,
    )
    assert loaded.status_code == 200, loaded.text
    question, new_answer = qa(trained["rows"][0])
    answer = httpx2.post(
        model_server.base_url + "/chat/completions",
        timeout=60,
        json={
            "model": version.name,
            "messages": [{"role": "user", "content": question}],
            "temperature": 0,
            "max_tokens": 200,
        },
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == new_answer


def test_same_dataset_and_config_is_not_trained_twice_unless_forced(trained):
    db, settings, run = trained["db"], trained["settings"], trained["run"]
    again = start_run(db, settings)
    assert (again.created, again.run.id) == (False, run.id)
    forced = start_run(db, settings, force=True)
    assert forced.created and forced.run.id != run.id and forced.run.state in ("queued", "running")
    pid = worker_pid(forced.run)
    cancelled = cancel_run(db, settings, forced.run.id)
    assert cancelled.state == "cancelled" and not process_running(pid, forced.run.id)
    assert poll_run(db, settings, forced.run.id).state == "cancelled"
    # The cancelled run does not count; the succeeded one still does.
    assert start_run(db, settings).run.id == run.id


def test_early_stopping_stops_when_validation_loss_rises(tmp_path, tiny_model_dir, tiny_model_rows):
    """Validation rows are the answers the model knows; training teaches other ones, so validation loss rises."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.providers.local_train import train_local

    settings = training_settings(tmp_path, tiny_model_dir, **{"training.early_stopping_patience": 1})
    hp = {
        key: getattr(settings.training, key)
        for key in (
            "method",
            "lora_r",
            "lora_alpha",
            "lora_dropout",
            "target_modules",
            "epochs",
            "early_stopping_patience",
            "learning_rate",
            "batch_size",
            "gradient_accumulation",
            "max_length",
            "seed",
            "device",
            "cpu_threads",
            "save_total_limit",
        )
    }
    events = []
    result = train_local(
        hp,
        tiny_model_dir,
        shifted(tiny_model_rows),
        tiny_model_rows[:4],
        tmp_path / "run",
        on_event=events.append,
        progress=False,
    )
    m = result["metrics"]
    assert m["stopped_early"] and m["epochs_run"] == 2 < hp["epochs"]
    assert m["eval_losses"][1] > m["eval_losses"][0]
    assert m["best_epoch"] == 1 and any("stopped early" in e.message for e in events)
    # What was saved is the best epoch's adapter, not the last one's.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), result["output"]).eval()
    val = ChatExamples(tokenizer, tiny_model_rows[:4], 512)
    with torch.no_grad():
        loss = model(**AssistantOnlyCollator(tokenizer.pad_token_id)(val.items)).loss.item()
    assert loss == pytest.approx(m["eval_losses"][0], rel=1e-3)


def test_a_restarted_poller_resumes_the_run_instead_of_training_again(tmp_path, tiny_model_dir, tiny_model_rows):
    settings = training_settings(tmp_path, tiny_model_dir, **{"training.epochs": 20})
    db = open_db(settings.db_path)
    rows = shifted(tiny_model_rows)
    add_dataset(db, settings, rows, rows[:2])
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELOOP_")}
    env.update({"TUNELOOP_" + k.upper().replace(".", "__"): _env_value(v) for k, v in TRAINING.items()})
    env.update(
        TUNELOOP_PATHS__DATA_DIR=str(settings.data_dir),
        TUNELOOP_MODEL_SERVER__MODEL_DIR=str(tiny_model_dir),
        TUNELOOP_TRAINING__EPOCHS="20",
    )
    poller = subprocess.Popen(
        [tuneloop_exe(), "train", "start"], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        run_id = wait_for(lambda: _started_run(db), what="the worker to start", timeout_s=60, interval_s=0.1)
    finally:
        poller.send_signal(signal.SIGKILL)  # the poller dies mid-run, without any clean-up
        poller.wait()
    run = get_run(db, run_id)
    assert not run.finished
    workers = [p for p in psutil.process_iter(["cmdline"]) if run_id in " ".join(p.info["cmdline"] or [])]
    assert [p.pid for p in workers] == [worker_pid(run)]
    # A second worker for the same run refuses to train.
    second = subprocess.run(
        [sys.executable, "-m", "trainer.providers.local_worker", run_id, "--db", str(settings.db_path)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 3, second.stderr
    # A new process resumes: polls, never submits again.
    (resumed,) = resume_runs(db, settings)
    assert resumed.id == run_id and resumed.external_job_id == run.external_job_id
    done = wait_for_run(db, settings, run_id, interval_s=0.2, timeout_s=120)
    assert done.state == "succeeded", done.error
    assert sum(e["message"] == "worker started" for e in list_events(db, run_id)) == 1
    assert db.execute("SELECT COUNT(*) FROM model_versions WHERE training_run_id = ?", [run_id]).fetchone() == (1,)
    db.close()


def test_a_worker_that_dies_or_fails_fails_the_run_visibly(tmp_path, tiny_model_dir, tiny_model_rows):
    settings = training_settings(tmp_path, tiny_model_dir, **{"training.max_length": 16})
    db = open_db(settings.db_path)
    rows = shifted(tiny_model_rows)
    add_dataset(db, settings, rows, [])
    # Killed from outside (out of memory, kill -9): no result, no error file.
    killed = start_run(db, settings).run
    os.killpg(worker_pid(killed), signal.SIGKILL)
    run = wait_for(
        lambda: (r := poll_run(db, settings, killed.id)).finished and r,
        what="the killed run to finish",
        timeout_s=30,
        interval_s=0.1,
    )
    assert run.state == "failed" and "exited without a result" in run.error and "worker.log" in run.error
    # A failed run does not count as trained: starting again trains. This time training raises, since every
    # example is cut before its answer at max_length 16.
    again = start_run(db, settings)
    assert again.created
    failed = wait_for_run(db, settings, again.run.id, interval_s=0.2, timeout_s=120)
    assert failed.state == "failed" and "no training example has an assistant token" in failed.error
    assert any(e["level"] == "error" for e in list_events(db, failed.id))
    assert failed.candidate_version_id is None
    db.close()


def _started_run(db) -> str | None:
    row = db.execute(
        "SELECT r.id FROM training_runs r JOIN training_events e ON e.run_id = r.id WHERE e.message = 'worker started'"
    ).fetchone()
    return row[0] if row else None
