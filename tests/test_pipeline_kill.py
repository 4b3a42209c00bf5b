"""The scheduler killed during training and restarted gives one training run, resumed — with a real kill.

``tests/test_pipeline.py`` stands in for the crash with an exception raised from a hook; here the real CLI,
``tuneloop pipeline run --kind manual``, runs in its own process group on the real starter model, and the
whole group gets SIGKILL once the pipeline has stored its training run and the worker has logged training steps.

The designed behaviour (``trainer/providers/local.py``): the local worker is started in its own session,
"so Ctrl-C or a killed poller must not take the training with it", and nothing about the run lives only in
memory. So the kill of the pipeline's group leaves the worker training; the same command started again
resumes the same ``pipeline_runs`` row at the train step, adopts the surviving worker (polls the stored
``pid:N``, never submits again), and goes on through evaluate and the gate.

A worker that dies as well (the OOM killer, a reboot) is polled as gone without ``result.json``: the
training run fails with "exited without a result" and its log, the resumed pipeline run fails at the train
step and the command exits 1. The next run is a new pipeline run that finds the corrections already in a
dataset, so it trains nothing — no duplicate job, and retraining that dataset is left to a person.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlite_utils import Database

from config.settings import load_settings
from feedback.db import open_db
from feedback.ranking import RankingOptions
from feedback.report.weeks import utc_text
from feedback.review import approve, collect_worst
from feedback.text import question_key
from feedback.versions import ModelVersion, live_version
from server.app import create_app
from tests.plugins.gateway import write_config
from tests.plugins.model import start_model_server, stop_model_server, tuneloop_exe
from tests.test_loop_cli_e2e import CORRECTIONS
from tests.test_loop_e2e import LOOP, rate_down_with_corrections
from trainer.pipeline import get_pipeline_run, list_pipeline_runs
from trainer.providers.local import LOG_FILE, process_running, worker_pid
from trainer.providers.runs import get_run, latest_event_data

# Two pipeline runs on the starter model, each evaluating both views of the gate's suites (hundreds of answers), on 2
# shared cores: minutes; the suite's 300 s per test is for single features.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

# How long the test waits for the pipeline to reach the running training job, and for the resumed one to end.
SUBMIT_TIMEOUT_S = 60
FINISH_TIMEOUT_S = 600


@pytest.fixture
def server(tmp_path, starter_model_dir):
    # Its own model server: the pipeline deploys the adapter into it, which must not reach the shared one.
    running = start_model_server(starter_model_dir, tmp_path / "model-server", name="starter")
    yield running
    stop_model_server(running, quick=True)


def loop_config(tmp_path, base_url: str, model_dir) -> dict:
    """LOOP (the loop test's model/scheduler keys; other training settings come from the starter's profile) as TOML."""
    values: dict = {}
    for dotted, value in LOOP.items():
        section, key = dotted.split(".", 1)
        values.setdefault(section, {})[key] = value
    values.setdefault("paths", {})["data_dir"] = str(tmp_path / "var")
    values["model"]["base_url"] = base_url
    values.setdefault("model_server", {})["model_dir"] = str(model_dir)
    values.setdefault("limits", {})["enabled"] = False
    values["scheduler"]["poll_interval_s"] = 0.2
    # What this file proves (a killed pipeline resumes its run and adopts the surviving worker; a dead worker fails
    # the run visibly) needs a training to kill in the middle of and an evaluation and gate after it, not their
    # full size: 4 epochs instead of the profile's 10 (~180 steps, still seconds of training left at the kill), and
    # the suites the gate needs (config/default.toml, evaluation.suites) instead of every one (576 answers → 332).
    values["training"] = {"epochs": 4}
    values["evaluation"] = {"suites": ["corrections", "golden"]}
    return values


def wait_for_running_training(db, process, log_path) -> tuple[str, str]:
    """(pipeline run id, training run id) once the pipeline stored its running training run and it is mid-training."""
    deadline = time.monotonic() + SUBMIT_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the pipeline ended before training ran:\n{log_path.read_text()}"
        row = db.execute("SELECT id, step, context FROM pipeline_runs WHERE kind = 'manual'").fetchone()
        if row and row[1] == "train":
            training_id = json.loads(row[2] or "{}").get("training_run_id")
            state = (
                training_id and db.execute("SELECT state FROM training_runs WHERE id = ?", [training_id]).fetchone()[0]
            )
            # Killed during training: the worker has logged training steps, and has steps left.
            progress = state == "running" and latest_event_data(db, training_id, "total_steps")
            if progress and progress["step"] < progress["total_steps"]:
                return row[0], training_id
        time.sleep(0.1)
    pytest.fail(f"no running training run within {SUBMIT_TIMEOUT_S} s:\n{log_path.read_text()}")


@dataclass
class Loop:
    """A platform with approved corrections waiting to be trained, and its ``tuneloop`` config."""

    folder: Path
    config: Path
    db: Database
    first_live: ModelVersion
    workers: list[tuple[int, str]]  # (pid, training run id) the test saw: killed at teardown if still alive

    def pipeline(self, log_name: str) -> subprocess.Popen:
        """``tuneloop --config CONFIG pipeline run --kind manual`` as its own process group, output to a log."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNELOOP_")}
        with open(self.folder / log_name, "wb") as log:
            command = [tuneloop_exe(), "--config", str(self.config), "pipeline", "run", "--kind", "manual"]
            return subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.folder,
                process_group=0,
            )

    def run_to_end(self, log_name: str) -> tuple[int, str]:
        """Run the pipeline command to its end: (exit code, output)."""
        process = self.pipeline(log_name)
        try:
            process.wait(timeout=FINISH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        output = (self.folder / log_name).read_text()
        print(f"$ tuneloop pipeline run --kind manual → {process.returncode}\n{output}")  # shown when a test fails
        return process.returncode, output

    def kill_during_training(self) -> tuple[str, str, int]:
        """Start the pipeline, SIGKILL its process group once its training run is running: (pipeline run id,
        training run id, the worker's pid)."""
        process = self.pipeline("pipeline-killed.log")
        try:
            pipeline_id, training_id = wait_for_running_training(self.db, process, self.folder / "pipeline-killed.log")
        finally:
            os.killpg(process.pid, signal.SIGKILL)  # the pipeline and everything in its process group
            process.wait()
        assert process.returncode == -signal.SIGKILL
        # The kill left the row where the process died.
        stuck = get_pipeline_run(self.db, pipeline_id)
        assert (stuck.step, stuck.state) == ("train", "running")
        worker = worker_pid(get_run(self.db, training_id))
        assert worker
        self.workers.append((worker, training_id))
        return pipeline_id, training_id, worker


@pytest.fixture
def loop(tmp_path, server, starter_model_dir):
    config = write_config(tmp_path / "tuneloop.toml", loop_config(tmp_path, server.base_url, starter_model_dir))
    settings = load_settings(config, env={})
    app = create_app(settings=settings)
    db = open_db(settings.db_path)
    state = Loop(folder=tmp_path, config=config, db=db, first_live=live_version(db), workers=[])
    # Users rate the outdated answers down with the new ones; the reviewer approves each correction.
    rate_down_with_corrections(app)
    now = datetime.now(timezone.utc)
    collected = collect_worst(
        db,
        model_version_id=state.first_live.id,
        since=utc_text(now - timedelta(days=7)),
        until=utc_text(now + timedelta(minutes=1)),
        options=RankingOptions.from_settings(settings.report),
    )
    queued = {item.question_key: item for item in collected.added}
    for question, new_answer in CORRECTIONS.items():
        approve(db, queued[question_key(question)].id, answer=new_answer, reviewer="reviewer@test")
    yield state
    for pid, training_id in state.workers:
        if process_running(pid, training_id):
            os.killpg(pid, signal.SIGKILL)  # a failed test must not leave the training running
    db.close()


def worker_starts(db: Database, training_id: str) -> int:
    """How many workers began training ``training_id`` (each logs "worker started" with its pid)."""
    (count,) = db.execute(
        "SELECT COUNT(*) FROM training_events WHERE run_id = ? AND json_extract(data, '$.pid') IS NOT NULL",
        [training_id],
    ).fetchone()
    return count


def test_killed_pipeline_resumes_the_same_run_and_adopts_the_surviving_worker(loop):
    started = time.monotonic()
    pipeline_id, training_id, worker = loop.kill_during_training()
    # The worker leads its own session: the kill of the pipeline's group did not reach it.
    assert os.getpgid(worker) == worker
    assert process_running(worker, training_id), "the kill of the pipeline's group took the worker with it"

    # The same command again: resumes the same pipeline run, adopts the run, trains nothing twice.
    code, output = loop.run_to_end("pipeline-resumed.log")
    print(f"killed and resumed in {time.monotonic() - started:.1f} s")
    assert code == 0, output
    db = loop.db
    assert [r.id for r in list_pipeline_runs(db, kind="manual")] == [pipeline_id]
    run = get_pipeline_run(db, pipeline_id)
    steps = "\n".join(f"{s.step} {s.state} {s.detail}" for s in run.steps)
    assert run.state == "succeeded", f"{run.error}\n{steps}"
    assert run.context.training_run_id == training_id
    assert db.execute("SELECT id FROM training_runs").fetchall() == [(training_id,)]
    training = get_run(db, training_id)
    assert training.state == "succeeded", training.error
    assert training.external_job_id == f"pid:{socket.gethostname()}:{worker}"
    # One worker ever started for it: the resumed pipeline polled the survivor instead of submitting.
    assert worker_starts(db, training_id) == 1
    assert "another worker is training" not in (Path(training.work_dir) / LOG_FILE).read_text(errors="replace")
    assert run.outcome("train").state == "succeeded"
    assert run.context.candidate_id == training.candidate_version_id
    gate = run.outcome("gate")
    assert gate and gate.state == "succeeded" and gate.action in ("promoted", "rejected", "held"), steps
    promoted = gate.action == "promoted"
    assert live_version(db).id == (training.candidate_version_id if promoted else loop.first_live.id)


def test_a_worker_killed_too_fails_the_resumed_run_visibly_and_is_not_trained_twice(loop):
    pipeline_id, training_id, worker = loop.kill_during_training()
    # The machine-wide kill the session does not protect against (OOM killer, reboot): the worker dies too.
    os.killpg(worker, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while process_running(worker, training_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not process_running(worker, training_id)

    # Resumed: the same pipeline run polls the dead worker, fails the run and itself, naming the worker's log.
    code, output = loop.run_to_end("pipeline-resumed.log")
    assert code == 1, output
    db = loop.db
    run = get_pipeline_run(db, pipeline_id)
    assert [r.id for r in list_pipeline_runs(db, kind="manual")] == [pipeline_id]
    assert (run.step, run.state) == ("train", "failed")
    training = get_run(db, training_id)
    assert training.state == "failed"
    assert f"the local worker (pid {worker}) exited without a result" in training.error
    assert run.error.startswith(f"train: training run {training_id} failed: the local worker (pid {worker})")
    assert f"error: {run.error}" in output  # what the person who runs it sees
    assert run.context.candidate_id is None and live_version(db).id == loop.first_live.id

    # Run again: a new pipeline run, which finds the corrections already in a dataset and trains nothing —
    # no duplicate job for the dataset whose run failed.
    code, output = loop.run_to_end("pipeline-again.log")
    assert code == 0, output
    again = list_pipeline_runs(db, kind="manual")[0]
    assert again.id != pipeline_id and again.state == "succeeded"
    assert again.outcome("build").detail == "skipped: no approved corrections since the last dataset"
    assert again.outcome("train").state == "skipped"
    assert db.execute("SELECT id, state FROM training_runs").fetchall() == [(training_id, "failed")]
    assert worker_starts(db, training_id) == 1
