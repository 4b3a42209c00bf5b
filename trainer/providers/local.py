"""The ``local`` provider: fine-tune on this machine in a worker process, CPU or GPU.

``submit`` starts ``python -m trainer.providers.local_worker RUN_ID --db DB`` (or
``training.launcher`` in front of ``-m …``, e.g. ``accelerate launch --multi_gpu
--num_processes 4`` for several GPUs) in its own session, with its output in
``<work_dir>/worker.log``, and returns ``pid:HOST:N`` (``pid:N`` from older
releases means this host). The training itself is in ``local_train.py``; this
module imports no torch, so the CLI and the scheduler stay quick to start.

Nothing here lives only in memory. ``poll`` looks at the files the worker
leaves in the run's folder — ``result.json`` once it succeeded, ``error.json``
when it failed — and, while neither exists, at whether the worker lives: on this
host, whether process N is still that run's worker (``/proc/N/cmdline`` names
the run; a zombie counts as gone); on another host (a scheduler that took over
the lead from the one that started the run, with ``paths.data_dir`` on a shared
volume), whether the worker's heartbeat (``training_runs.heartbeat_at``, written
every :data:`HEARTBEAT_S` seconds) is younger than :data:`HEARTBEAT_STALE_S`.
The heartbeat also carries a cancel made on another host: a worker that finds
its run cancelled stops itself.
Progress is the newest ``step/total_steps`` the worker logged into
``training_events``. A process that died without either file (killed, out of
memory) is a failed run whose error points at the log. So a restarted poller
picks up where the last one was, and the worker holds ``worker.lock`` for its
lifetime, so a second worker for the same run exits at once instead of
training twice.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from config.profile import PROFILE_KEYS
from config.settings import PROJECT_ROOT, Settings
from trainer.providers.base import CandidateSpec, PollResult, Provider, ProviderError
from trainer.providers.runs import TrainingRun, latest_event_data

RESULT_FILE = "result.json"
ERROR_FILE = "error.json"
LOG_FILE = "worker.log"
LOCK_FILE = "worker.lock"
WORKER_MODULE = "trainer.providers.local_worker"
HEARTBEAT_S = 5.0  # how often a worker writes training_runs.heartbeat_at
HEARTBEAT_STALE_S = 60.0  # a worker on another host whose heartbeat is older than this is gone
DATABASE_URL_VARIABLE = "TUNELOOP_DATABASE__URL"  # how the worker learns a PostgreSQL store
# [training] keys a local run records as its hyperparameters: every key a fine-tuning profile may set (each
# changes the weights), then the ones about this machine and run.
LOCAL_KEYS = (*PROFILE_KEYS["training"], "seed", "device", "cpu_threads", "save_total_limit", "launcher")

# Workers this process started. Their exit must be reaped through Popen, or a
# finished worker would linger as a zombie that still "exists".
_CHILDREN: dict[int, subprocess.Popen] = {}


class LocalProvider(Provider):
    """Trains with transformers (+ PEFT) in a worker process; see the module docstring."""

    name = "local"

    def __init__(self, settings: Settings, db: Database):
        self.settings = settings
        self.db = db

    def base_model(self) -> str:
        return self.settings.model_server.served_name

    def hyperparameters(self) -> dict[str, Any]:
        values = {key: getattr(self.settings.training, key) for key in LOCAL_KEYS}
        values["base_model_path"] = str(self.settings.model_dir.resolve())
        return values

    def setting_keys(self) -> tuple[str, ...]:
        return ("model_server.model_dir", "model_server.served_name", *(f"training.{key}" for key in LOCAL_KEYS))

    def check_submit(self) -> None:
        base = self.settings.model_dir
        if not (base / "config.json").is_file():
            raise ProviderError(
                f"no base model in {base}: build the starter model with `tuneloop starter build`, "
                "or set model_server.model_dir to the model the server serves",
                code="no_base_model",
            )

    def command(self, run: TrainingRun) -> list[str]:
        """The worker's command line (a PostgreSQL store's URL goes in its environment: it may hold a password,
        and a command line is visible to every user of the machine)."""
        launcher = shlex.split(self.settings.training.launcher) or [sys.executable]
        if self.settings.database.url:
            return [*launcher, "-m", WORKER_MODULE, run.id]
        return [*launcher, "-m", WORKER_MODULE, run.id, "--db", str(self.settings.db_path.resolve())]

    def find_submitted(self, run: TrainingRun) -> str | None:
        # A worker started before its pid was stored logged "worker started" with its pid.
        started = latest_event_data(self.db, run.id, "pid")
        if not started:
            return None
        pid, host = int(started["pid"]), started.get("host") or socket.gethostname()
        finished = (Path(run.work_dir) / RESULT_FILE).exists() or (Path(run.work_dir) / ERROR_FILE).exists()
        return job_id(host, pid) if finished or self._alive(run, host, {pid}) else None

    def submit(self, run: TrainingRun) -> str:
        work = Path(run.work_dir)
        work.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
        if self.settings.database.url:
            env[DATABASE_URL_VARIABLE] = self.settings.database.url
        with open(work / LOG_FILE, "ab") as log:
            try:
                # Its own session: Ctrl-C or a killed poller must not take the training with it.
                process = subprocess.Popen(
                    self.command(run),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    cwd=work,
                    start_new_session=True,
                )
            except OSError as exc:
                raise ProviderError(f"cannot start the local worker ({self.command(run)[0]}): {exc}") from exc
        _CHILDREN[process.pid] = process
        return job_id(socket.gethostname(), process.pid)

    def poll(self, run: TrainingRun) -> PollResult:
        work = Path(run.work_dir)
        pid, host = worker_pid(run), worker_host(run)
        # The worker that trains logged its own pid: under a launcher (accelerate) it is not the pid we started.
        started = latest_event_data(self.db, run.id, "pid")
        pids = {p for p in (pid, started and int(started["pid"])) if p}
        alive = self._alive(run, host, pids)
        # Read the files only after sampling the process: a worker that was gone by then had written them.
        result, error = _read_json(work / RESULT_FILE), _read_json(work / ERROR_FILE)
        if result:
            return PollResult("succeeded", 1.0, metrics=result["metrics"], output=result["output"])
        if error:
            return PollResult("failed", error=f"{error['error']} (log: {work / LOG_FILE})")
        if alive:
            return PollResult("running", progress=self._progress(run))
        gone = f"the local worker (pid {pid}) exited without a result"
        if host != socket.gethostname():
            age = heartbeat_age(self.db, run)
            gone = f"the local worker on {host} (pid {pid}) sent no heartbeat for " + (
                "ever" if age is None else f"{age:.0f} s"
            )
        return PollResult("failed", error=f"{gone}; its log {work / LOG_FILE} ends: {_tail(work / LOG_FILE)}")

    def _alive(self, run: TrainingRun, host: str, pids: set[int]) -> bool:
        # On this host the process table answers; another host's worker is judged by its heartbeat's age.
        if host == socket.gethostname():
            return any(process_running(p, run.id) for p in pids)
        age = heartbeat_age(self.db, run)
        return age is not None and age < HEARTBEAT_STALE_S

    def _progress(self, run: TrainingRun) -> float | None:
        data = latest_event_data(self.db, run.id, "total_steps")
        if not data or not data.get("total_steps"):
            return None
        return min(1.0, data["step"] / data["total_steps"])

    def cancel(self, run: TrainingRun) -> None:
        pid = worker_pid(run)
        if worker_host(run) != socket.gethostname():
            return  # the worker's next heartbeat finds its run cancelled and stops it (local_worker.py)
        if pid is None or not process_running(pid, run.id):
            return
        for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                group = os.getpgid(pid)
                if group == os.getpgrp():  # started by hand from our own shell job: never signal our own group
                    os.kill(pid, sig)
                else:
                    os.killpg(group, sig)  # the worker leads its session: this reaches accelerate's children too
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                if not process_running(pid, run.id):
                    return
                time.sleep(0.1)
        raise ProviderError(f"the local worker (pid {pid}) did not stop")

    def checkpoints(self, run: TrainingRun) -> list[dict[str, Any]]:
        found, best = [], None
        for state_file in Path(run.work_dir).glob("checkpoints/checkpoint-*/trainer_state.json"):
            state = json.loads(state_file.read_text())
            step = state.get("global_step") or 0
            eval_loss = next(
                (e["eval_loss"] for e in state.get("log_history", []) if "eval_loss" in e and e.get("step") == step),
                None,
            )
            found.append(
                {"step": step, "epoch": state.get("epoch"), "eval_loss": eval_loss, "path": str(state_file.parent)}
            )
            if not found or step >= max(c["step"] for c in found):
                best = state.get("best_model_checkpoint")  # as the newest checkpoint saw it
        for checkpoint in found:
            checkpoint["best"] = bool(best) and Path(best).name == Path(checkpoint["path"]).name
        return sorted(found, key=lambda c: c["step"])

    def candidate(self, run: TrainingRun) -> CandidateSpec:
        # The adapter is served by the model server of the configured model (built-in or vLLM), under a LoRA name.
        serving = self.settings.model.provider if self.settings.model.provider in ("builtin", "vllm") else "builtin"
        return CandidateSpec(
            name=f"{run.base_model}-ft-{run.short_id}",
            provider=serving,
            base_model=run.base_model,
            adapter_path=run.output,
        )


def job_id(host: str, pid: int) -> str:
    """A local run's external id: ``pid:HOST:N``."""
    return f"pid:{host}:{pid}"


def worker_pid(run: TrainingRun) -> int | None:
    """The pid in a local run's ``pid:HOST:N`` (or older ``pid:N``) external id."""
    pid = (run.external_job_id or "").rpartition(":")[2]
    return int(pid) if (run.external_job_id or "").startswith("pid:") and pid.isdigit() else None


def worker_host(run: TrainingRun) -> str:
    """The host in a local run's ``pid:HOST:N`` external id (this host for an older ``pid:N``)."""
    parts = (run.external_job_id or "").split(":")
    return parts[1] if len(parts) == 3 and parts[0] == "pid" else socket.gethostname()


def heartbeat_age(db: Database, run: TrainingRun) -> float | None:
    """Seconds since the run's worker last wrote its heartbeat (None: it never did)."""
    row = db.execute("SELECT heartbeat_at FROM training_runs WHERE id = ?", [run.id]).fetchone()
    if not row or not row[0]:
        return None
    beat = datetime.fromisoformat(row[0].replace("Z", "+00:00"))
    return (datetime.now(timezone.utc) - beat).total_seconds()


def process_running(pid: int, run_id: str) -> bool:
    """Whether ``pid`` is alive and still the worker of ``run_id`` (not a zombie, not a reused pid)."""
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is None:
            return True
        del _CHILDREN[pid]  # reaped: from now on the pid is nobody's (or someone else's)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    proc = Path(f"/proc/{pid}")
    if not proc.is_dir():
        return True  # no procfs (macOS): existence is all we can tell
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X") and run_id in cmdline


def write_json_atomic(path: Path, value: Any) -> None:
    """Write JSON so a reader sees the whole file or none (rename after fsync)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(value, fh, ensure_ascii=False, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


def _tail(path: Path, chars: int = 600) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return text[-chars:].replace("\r", "\n").strip() or "(empty)"
