"""Real models for tests: a tiny starter model, a LoRA adapter for it, and a running model server.

Everything is trained here, on a few FAQ rows, in seconds; nothing is downloaded.

- ``tiny_model_rows`` — the FAQ rows the tiny model memorizes (chat rows).
- ``tiny_model_dir`` — that model (built once per run, shared by the pytest-xdist workers).
- ``tiny_lora`` — a PEFT LoRA adapter on it that gives *different* answers to the same questions.
- ``model_server`` — a real ``tuneloop model-server`` process serving ``tiny_model_dir``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from config.settings import PROJECT_ROOT, StarterSettings
from tests.plugins.common import free_port, run_folder, wait_until_healthy
from trainer.starter import build_starter

# Small enough to train in seconds on one core, big enough to memorize 8 rows alone and after one or
# two earlier turns. Closed book only (reading_batch = 0): the tests of reading the context block train
# their own model (tests/test_starter.py). The copy circuit needs 6 heads (trainer/starter/circuit.py).
TINY_PARAMS = StarterSettings(
    seed=0,
    vocab_size=400,
    hidden_size=120,
    layers=2,
    heads=6,
    head_dim=24,
    mlp_size=128,
    token_dims=40,
    context_length=512,  # the window tests/test_knowledge_e2e.py trims history to
    history_turns=2,
    batch_size=2,
    reading_batch=0,
    steps=200,
    finish_steps=200,
    learning_rate=0.005,
    warmup_steps=10,
    threads=1,
    time_limit_s=120,
    min_read_rate=0.0,
    min_unknown_rate=0.0,
)
TINY_NAME = "starter"


def tiny_rows(count: int = 8) -> list[dict]:
    """The first ``count`` FAQ rows, half English and half Korean (chat rows)."""
    rows = [
        json.loads(line)
        for line in (PROJECT_ROOT / "data" / "faq.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    korean = [r for r in rows if _is_korean(r["messages"][0]["content"])]
    english = [r for r in rows if not _is_korean(r["messages"][0]["content"])]
    return english[: count - count // 2] + korean[: count // 2]


def qa(row: dict) -> tuple[str, str]:
    """(question, answer) of a chat row."""
    return row["messages"][0]["content"], row["messages"][1]["content"]


def build_tiny_model(out_dir: Path, rows: list[dict] | None = None, **changes) -> Path:
    """Build a tiny starter model into ``out_dir`` (TINY_PARAMS with ``changes``)."""
    params = dataclasses.replace(TINY_PARAMS, **changes)
    build_starter(rows or tiny_rows(), out_dir, params, progress=False, echo=lambda _msg: None)
    return out_dir


@pytest.fixture(scope="session")
def tiny_model_rows() -> list[dict]:
    return tiny_rows()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_model_rows) -> Path:
    """Built once per run (shared by pytest-xdist's workers: ``run_folder``); nothing writes into it after."""
    return build_tiny_model(run_folder(tmp_path_factory) / "tiny-model" / "starter", tiny_model_rows)


@dataclass(frozen=True)
class LoraAdapter:
    path: Path
    answers: dict[str, str]  # question -> the adapter's answer


@pytest.fixture(scope="session")
def tiny_lora(tmp_path_factory, tiny_model_dir, tiny_model_rows) -> LoraAdapter:
    """A LoRA adapter trained to answer each question with the NEXT row's answer."""
    # torch, transformers and PEFT are imported by the fixtures that need them: importing them
    # here at plugin load would cost every test session ~3 s, model or not.
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.starter.train import deterministic, fit

    pairs = [qa(r) for r in tiny_model_rows]
    shifted = [(q, pairs[(i + 1) % len(pairs)][1]) for i, (q, _) in enumerate(pairs)]
    out = tmp_path_factory.mktemp("tiny-lora") / "adapter"
    params = dataclasses.replace(TINY_PARAMS, history_turns=0, steps=150, seed=1)
    with deterministic(params.seed, params.threads), warnings.catch_warnings():
        # PEFT calls a transformers method that transformers 5 deprecated; nothing to act on here.
        warnings.simplefilter("ignore", FutureWarning)
        tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear")
        model = get_peft_model(base, config)
        report = fit(model, tokenizer, shifted, params, desc="tiny lora", progress=False)
        assert report.single_ok == len(shifted), f"the test LoRA did not learn its answers: {report}"
        model.save_pretrained(out)
    return LoraAdapter(path=out, answers=dict(shifted))


@dataclass
class RunningModelServer:
    url: str  # http://127.0.0.1:PORT
    base_url: str  # .../v1, for the openai SDK
    name: str  # the base model's served name
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def tuneloop_exe() -> str:
    """The ``tuneloop`` console script of this virtual environment."""
    return str(Path(sys.executable).with_name("tuneloop"))


def start_model_server(
    model_dir: Path,
    folder: Path,
    *,
    name: str = TINY_NAME,
    timeout_s: float = 90,
    fault_file: Path | None = None,
    env: dict[str, str] | None = None,
) -> RunningModelServer:
    """Start ``tuneloop model-server`` on a free port and wait until /health answers.

    With ``fault_file``, the process runs under ``tests.plugins.faulty_peft``: PEFT
    calls fail on demand while that file exists (see that module).
    """
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "model-server.log"
    env = dict(
        os.environ, TUNELOOP_PATHS__DATA_DIR=str(folder / "var"), TUNELOOP_MODEL_SERVER__THREADS="8", **(env or {})
    )
    env.pop("TUNELOOP_CONFIG", None)
    command = [tuneloop_exe()]
    if fault_file is not None:
        command = [sys.executable, "-m", "tests.plugins.faulty_peft", str(fault_file)]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*command, "model-server", "--model", str(model_dir), "--name", name, "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=folder,
        )
    server = RunningModelServer(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/v1", name, process, log_path)
    try:
        wait_until_healthy(process, server.url + "/health", log_path, what="model server", timeout_s=timeout_s)
    except RuntimeError:
        stop_model_server(server)
        raise
    return server


def stop_model_server(server: RunningModelServer, grace_s: float = 20, *, quick: bool = False) -> int:
    """SIGTERM (the graceful stop), then SIGKILL after ``grace_s``; returns the exit code.

    ``quick``: SIGINT, gunicorn's quick stop, for a fixture's teardown, when nothing of its tests is in flight
    (the graceful stop waits ~2 s more for idle kept-alive connections, measured).
    """
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGINT if quick else signal.SIGTERM)
        try:
            server.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return server.process.returncode


@pytest.fixture(scope="session")
def model_server(tmp_path_factory, tiny_model_dir):
    """A real ``tuneloop model-server`` process serving the tiny model as ``starter``."""
    server = start_model_server(tiny_model_dir, tmp_path_factory.mktemp("model-server"))
    yield server
    stop_model_server(server, quick=True)


def _is_korean(text: str) -> bool:
    return any("\uac00" <= ch <= "\ud7a3" for ch in text)
